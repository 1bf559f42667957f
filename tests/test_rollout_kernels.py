"""FastEngine's fused C decode kernels (rollout/kernels.c) against float64 references of the
formulas, in both compute dtypes, and the fused decode step against the torch-operator one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from r1lab.rollout import kernels as kernels_mod
from r1lab.rollout.kernels import load

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

DTYPES = (torch.float32, torch.bfloat16)
# float32 kernels: float32 rounding; bf16 kernels: one bf16 rounding (2^-8 relative) of the result
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}


@pytest.fixture(scope="module", autouse=True)
def kernels_switched_on():
    """These tests are of the kernels themselves, so they ignore R1LAB_KERNELS=0 (which the numerics
    run's no-c-kernels variant sets for the engines' tests)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(kernels_mod.ENV_SWITCH, raising=False)
        kernels_mod._library.cache_clear()
        yield
    kernels_mod._library.cache_clear()


@pytest.fixture(scope="module")
def have_kernels():
    if load(torch.float32) is None:
        pytest.fail("the C kernels did not build on this machine (a C compiler is part of the test setup)")


@pytest.fixture(scope="module")
def portable(tmp_path_factory, have_kernels):
    """kernels.c built for plain x86-64 with AVX2 (no AVX-512): the portable loops that CPUs without
    AVX-512 run, checked here against the same references."""
    import ctypes
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the portable build is checked on x86-64")
    out = tmp_path_factory.mktemp("portable") / "kernels_avx2.so"
    kernels_mod.build(kernels_mod._compiler(), out, march="x86-64-v3")
    return ctypes.CDLL(str(out))


BUILDS = ("native", "portable")


def k(dtype, build="native", portable=None):
    return load(dtype) if build == "native" else kernels_mod.Kernels(portable, dtype)


def test_exp_is_accurate_over_the_float32_range(have_kernels):
    lib = kernels_mod._library()
    x = torch.cat([torch.linspace(-87, 88, 20001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0])])
    out = torch.empty_like(x)
    lib.r1_exp_f32(x.data_ptr(), out.data_ptr(), x.numel())
    rel = ((out.double() - x.double().exp()) / x.double().exp()).abs()
    assert rel.max() < 3e-7
    # outside the clamp: below, exactly 0 (masked logits get no mass); above, exp(88); never inf / nan
    lo = torch.tensor([-1e4, -200.0, -88.0, float("-inf")])
    out = torch.empty_like(lo)
    lib.r1_exp_f32(lo.data_ptr(), out.data_ptr(), lo.numel())
    assert torch.equal(out, torch.zeros(4))
    hi = torch.tensor([88.5, 1e4, float("inf")])
    out = torch.empty_like(hi)
    lib.r1_exp_f32(hi.data_ptr(), out.data_ptr(), hi.numel())
    assert torch.isfinite(out).all() and torch.allclose(out.double(), torch.tensor(88.0).double().exp(), rtol=1e-6)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rmsnorm_matches_float64(have_kernels, portable, build, dtype):
    torch.manual_seed(0)
    n, D, eps = 5, 96, 1e-6
    x = torch.randn(n, D) * 3
    w = torch.randn(D)
    add = torch.randn(n, D).to(dtype)
    out = torch.empty(n, D, dtype=dtype)
    x_k = x.clone()
    k(dtype, build, portable).add_rmsnorm(x_k.data_ptr(), add.data_ptr(), w.data_ptr(), out.data_ptr(), n, D, eps)
    x64 = x.double() + add.double()
    ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w.double()
    torch.testing.assert_close(x_k.double(), x64, rtol=1e-7, atol=1e-6)  # the residual stream, updated in place
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    # without an addend the residual stream is left as it is
    x_k = x.clone()
    k(dtype, build, portable).add_rmsnorm(x_k.data_ptr(), None, w.data_ptr(), out.data_ptr(), n, D, eps)
    assert torch.equal(x_k, x)
    ref = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + eps) * w.double()
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_kv_rotates_and_writes_the_cache_rows(have_kernels, portable, build, dtype):
    torch.manual_seed(1)
    n, H, KV, hd, slots, max_len = 3, 6, 2, 32, 4, 20
    qkv = torch.randn(n, (H + 2 * KV) * hd).to(dtype)
    ang = torch.randn(max_len, hd // 2).double()
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
    pos = torch.tensor([0, 7, 19])
    q = torch.empty(n, H, hd, dtype=dtype)
    kc = torch.full((slots, KV, max_len, hd), 9.0).to(dtype)
    vc = kc.clone()
    k(dtype, build, portable).rope_kv(qkv.data_ptr(), n, H, KV, hd, cos.data_ptr(), sin.data_ptr(), pos.data_ptr(),
                     q.data_ptr(), kc.data_ptr(), vc.data_ptr(), max_len)
    x = qkv.double()[:, : (H + KV) * hd].view(n, H + KV, hd)
    c, s = cos.double()[pos].unsqueeze(1), sin.double()[pos].unsqueeze(1)
    rotated = x * c + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * s  # HF's rotate_half
    torch.testing.assert_close(q.double(), rotated[:, :H], **TOL[dtype])
    rows = torch.arange(n)
    torch.testing.assert_close(kc[rows, :, pos].double(), rotated[:, H:], **TOL[dtype])
    assert torch.equal(vc[rows, :, pos], qkv[:, (H + KV) * hd:].view(n, KV, hd))
    # nothing else of the cache was touched (slot 3 is not a row; other positions keep their 9s)
    written = torch.zeros(slots, KV, max_len, dtype=torch.bool)
    written[rows, :, pos] = True
    assert torch.all(kc[~written] == 9) and torch.all(vc[~written] == 9)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hd,H,KV", [(64, 9, 3), (32, 4, 4), (128, 4, 1), (48, 6, 2), (40, 4, 2)])
def test_decode_attention_matches_float64(have_kernels, portable, build, dtype, hd, H, KV):
    """Per row, attention over its own cache positions 0..pos only, grouped-query heads in HF's
    order; spans around the 16-position blocks of the vectorised path (1, 15, 16, 17, 40)."""
    torch.manual_seed(2)
    n, slots, max_len = 5, 6, 48
    kc = torch.randn(slots, KV, max_len, hd).to(dtype)
    vc = torch.randn(slots, KV, max_len, hd).to(dtype)
    q = (torch.randn(n, H, hd) * 2).to(dtype)
    pos = torch.tensor([0, 14, 15, 16, 39])
    out = torch.empty(n, H * hd, dtype=dtype)
    scale = 1 / math.sqrt(hd)
    k(dtype, build, portable).decode_attention(q.data_ptr(), kc.data_ptr(), vc.data_ptr(), pos.data_ptr(), n, H, KV, hd, max_len,
                              scale, out.data_ptr())
    for r in range(n):
        L = int(pos[r]) + 1
        kk = kc[r, :, :L].double().repeat_interleave(H // KV, 0)  # query head h reads kv head h // (H / KV)
        vv = vc[r, :, :L].double().repeat_interleave(H // KV, 0)
        att = torch.softmax(q[r].double().unsqueeze(1) @ kk.transpose(-1, -2) * scale, -1) @ vv
        torch.testing.assert_close(out[r].double(), att.reshape(-1), **TOL[dtype])


def test_decode_attention_threads_agree_with_one_thread(have_kernels):
    """A batch big enough to run on the thread team gives the same numbers as rows run alone."""
    torch.manual_seed(3)
    n, H, KV, hd, max_len = 16, 9, 3, 64, 200
    kc = torch.randn(n, KV, max_len, hd).to(torch.bfloat16)
    vc = torch.randn(n, KV, max_len, hd).to(torch.bfloat16)
    q = torch.randn(n, H, hd).to(torch.bfloat16)
    pos = torch.randint(100, 200, (n,))
    both = torch.empty(n, H * hd, dtype=torch.bfloat16)
    kb = k(torch.bfloat16)
    kb.decode_attention(q.data_ptr(), kc.data_ptr(), vc.data_ptr(), pos.data_ptr(), n, H, KV, hd, max_len, 0.125,
                        both.data_ptr())
    for r in range(n):
        one = torch.empty(1, H * hd, dtype=torch.bfloat16)
        kb.decode_attention(q[r:].data_ptr(), kc[r:].data_ptr(), vc[r:].data_ptr(), pos[r:].data_ptr(), 1, H, KV, hd,
                            max_len, 0.125, one.data_ptr())
        assert torch.equal(one[0], both[r])


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_torch_and_float64(have_kernels, portable, build, dtype):
    torch.manual_seed(4)
    n, inter = 4, 200
    gu = (torch.randn(n, 2 * inter) * 4).to(dtype)
    gu[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0]).to(dtype)  # saturation both ways, signed zero
    out = torch.empty(n, inter, dtype=dtype)
    k(dtype, build, portable).silu_mul(gu.data_ptr(), n, inter, out.data_ptr())
    g, u = gu[:, :inter].double(), gu[:, inter:].double()
    torch.testing.assert_close(out.double(), g * torch.sigmoid(g) * u, **TOL[dtype])
    torch.testing.assert_close(out, F.silu(gu[:, :inter]) * gu[:, inter:], **TOL[dtype])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_decode_step_matches_the_torch_step(have_kernels, tiny, dtype):
    """One decode step over a prefilled cache: logits and the new K/V rows of the fused step equal
    the torch-operator step's (float32: to rounding; bf16: within a few bf16 ulps of the logits)."""
    from r1lab.rollout import FastEngine

    model, tok = tiny
    eng = FastEngine(model, tok, dtype=dtype)
    assert eng._kernels is not None
    W = eng._weights()
    torch.manual_seed(5)
    n, max_len = 6, 40
    cache = torch.zeros((len(W.layers), 2, 8, W.n_kv, max_len, W.head_dim), dtype=W.dtype)
    prompts = [torch.randint(0, W.vocab, (L,)).tolist() for L in (3, 9, 17)]
    with torch.inference_mode():
        eng._prefill(W, cache, prompts, torch.arange(n), torch.tensor([0, 0, 1, 1, 2, 2]))
        tok_ids = torch.randint(0, W.vocab, (n,))
        pos = torch.tensor([3, 3, 9, 9, 17, 17])
        c_torch, c_fused = cache.clone(), cache.clone()
        a = eng._decode(W, c_torch, tok_ids, pos)
        b = eng._decode_fused(W, c_fused, tok_ids, pos)
    if dtype == "float32":
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c_fused, c_torch, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(b.log_softmax(-1), a.log_softmax(-1), rtol=0, atol=0.1)
        torch.testing.assert_close(c_fused.float(), c_torch.float(), rtol=0.02, atol=0.05)


def test_kernels_can_be_switched_off_and_decode_the_same(tiny):
    import copy

    from r1lab.records import Problem
    from r1lab.rollout import FastEngine, SamplingParams

    model, tok = tiny
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger random weights: greedy decoding wanders instead of repeating a token
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 3 / p.shape[1] ** 0.5)
    probs = [Problem(id=f"p{i}", prompt=f"Compute {i} + {i * 7}.", answer="1") for i in range(5)]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    fused = FastEngine(model, tok, dtype="float32", batch_size=3)
    plain = FastEngine(model, tok, dtype="float32", batch_size=3, kernels="torch")
    a, b = fused.generate(probs, params), plain.generate(probs, params)
    assert len({tuple(c.response_ids) for c in a}) > 1
    assert fused.stats["kernels"] == "c" and plain.stats["kernels"] == "torch"
    assert [c.response_ids for c in a] == [c.response_ids for c in b]
    for x, y in zip(a, b):
        assert max(abs(p - r) for p, r in zip(x.logprobs, y.logprobs)) < 1e-4
    with pytest.raises(ValueError, match="kernels"):
        FastEngine(model, tok, kernels="cuda")


def test_a_failed_build_falls_back_to_torch(monkeypatch, tmp_path, caplog):
    """No compiler or a broken one: load() returns None with a logged reason, never an exception."""
    kernels_mod._library.cache_clear()
    try:
        monkeypatch.setenv("R1LAB_HOME", str(tmp_path))
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
        with caplog.at_level("WARNING"):
            assert load(torch.bfloat16) is None
        assert "unavailable" in caplog.text
        monkeypatch.setenv("CC", "false")  # a compiler that fails
        kernels_mod._library.cache_clear()
        assert load(torch.float32) is None
        assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-written left behind
        monkeypatch.setenv(kernels_mod.ENV_SWITCH, "0")
        kernels_mod._library.cache_clear()
        assert load(torch.float32) is None
        assert load(torch.float16) is None
    finally:
        kernels_mod._library.cache_clear()


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("V,temperature", [(316, 1.0), (3000, 0.7), (1024, 1.3)])
def test_sample_draws_what_the_torch_sampler_draws(have_kernels, portable, build, V, temperature):
    """Same generator state -> the same uniforms -> the same tokens as `sample_next` (up to a boundary
    case of float rounding), and log-probs of the chosen tokens equal to log_softmax(z / T)."""
    from r1lab.rollout.base import SamplingParams, sample_next

    torch.manual_seed(6)
    B = 400
    logits = torch.randn(B, V) * 3
    logits[:, 5] = float("-inf")  # a masked entry
    params = SamplingParams(temperature=temperature)
    tok_k, lp_k = k(torch.float32, build, portable).sample(logits, temperature, torch.Generator().manual_seed(1))
    tok_t, lp_t = sample_next(logits, params, torch.Generator().manual_seed(1))
    assert (tok_k != tok_t).sum() <= 2
    assert not (tok_k == 5).any() and (tok_k >= 0).all() and (tok_k < V).all()
    ref = torch.log_softmax(logits.double() / temperature, -1).gather(1, tok_k.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(lp_k.double(), ref, rtol=0, atol=2e-5)


def test_sample_frequencies_follow_the_softmax(have_kernels):
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    logits = probs.log().float().expand(20000, -1).contiguous()
    tok, _ = k(torch.float32).sample(logits, 1.0, torch.Generator().manual_seed(2))
    freq = torch.bincount(tok, minlength=6).double() / len(tok)
    sd = (probs.double() * (1 - probs.double()) / len(tok)).sqrt()
    assert ((freq - probs.double()).abs() <= 4 * sd + 1e-12).all(), freq
    assert freq[5] == 0


def test_a_damaged_cached_library_is_rebuilt(monkeypatch, tmp_path):
    """A cached file that does not load (a truncated write from an older version, a copied cache) is
    replaced by a fresh build. (Not overwritten in place: the process may have it mapped.)"""
    kernels_mod._library.cache_clear()
    try:
        monkeypatch.setenv("R1LAB_HOME", str(tmp_path))
        path = kernels_mod.library_path(kernels_mod._compiler())
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a shared library")
        assert load(torch.float32) is not None
        assert path.read_bytes()[:4] == b"\x7fELF"
        x, out = torch.tensor([0.0, 1.0, -1.0]), torch.empty(3)
        kernels_mod._library().r1_exp_f32(x.data_ptr(), out.data_ptr(), 3)
        torch.testing.assert_close(out, x.exp())
    finally:
        kernels_mod._library.cache_clear()

"""FastEngine against the HF reference engine and the trainer: same tokens, same log-probs, same
stops; sampling filters, stop strings, seeds, policy updates, fallback, and the real model."""

import copy
import logging
from collections import Counter

import pytest
import torch

from helpers_numerics import logprob_bound

from r1lab.records import Problem
from r1lab.rollout import FastEngine, HFEngine, SamplingParams, make_engine
from r1lab.train.common import pad_sequences, scatter_response_values, token_logprobs

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute ((1 + 2) * 3) - 4 + 12 * 5."]


def problems(k=4):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer="1") for i in range(k)]


def _stop_id(completions) -> int:
    """A token that appears in several rows, at different first positions."""
    first: dict[int, list[int]] = {}
    for c in completions:
        seen = set()
        for i, t in enumerate(c.response_ids):
            if t not in seen:
                seen.add(t)
                first.setdefault(t, []).append(i)
    return max(first, key=lambda t: (len(set(first[t])), -min(first[t])))


def _trainer_logprobs(model, tok, cs, T):
    batch = pad_sequences([c.prompt_ids for c in cs], [c.response_ids for c in cs], tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], temperature=T)
    engine_lp = scatter_response_values([c.logprobs for c in cs], batch["response_mask"])
    return (lp - engine_lp).abs() * batch["response_mask"], batch["response_mask"]


def test_greedy_fp32_equals_hf_with_rows_finishing_at_different_steps_and_refill(lively):
    model, tok = lively
    free = SamplingParams(temperature=0.0, max_new_tokens=30)
    stop = _stop_id(HFEngine(model, tok).generate(problems(), free))
    params = SamplingParams(temperature=0.0, max_new_tokens=30, stop_token_ids=(stop,))
    ref = HFEngine(model, tok, batch_size=64).generate(problems(), params, n=2)
    engine = FastEngine(model, tok, batch_size=3, dtype="float32")  # 8 sequences through 3 slots: refills
    fast = engine.generate(problems(), params, n=2)
    assert engine.stats["slots"] == 3
    lengths = [len(c.response_ids) for c in ref]
    assert len(set(lengths)) >= 3 and "stop" in {c.finish_reason for c in ref}
    for a, b in zip(ref, fast):
        assert (a.problem_id, a.response_ids, a.finish_reason, a.text) == (b.problem_id, b.response_ids, b.finish_reason, b.text)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    assert [c.prompt_ids for c in ref] == [c.prompt_ids for c in fast]
    # finished rows left the batch: only live rows were decoded
    assert engine.stats["decoded_tokens"] == sum(lengths) - len(lengths)


def test_sampled_logprobs_equal_the_trainers_in_fp32(lively):
    model, tok = lively
    cs = FastEngine(model, tok, batch_size=5, dtype="float32").generate(
        problems(), SamplingParams(temperature=0.7, max_new_tokens=24), n=3, seed=1)
    assert len(cs) == 12 and [c.problem_id for c in cs] == [f"p{i}" for i in range(4) for _ in range(3)]
    diff, _ = _trainer_logprobs(model, tok, cs, 0.7)
    assert diff.max().item() < 1e-4
    assert all(len(c.logprobs) == len(c.response_ids) for c in cs)


def test_bf16_logprob_mismatch_is_small(tiny):
    model, tok = tiny
    mismatch = {}
    for dtype in ("bfloat16", "float32"):
        cs = FastEngine(model, tok, dtype=dtype).generate(problems(), SamplingParams(max_new_tokens=24), n=4, seed=0)
        diff, mask = _trainer_logprobs(model, tok, cs, 1.0)  # the trainer is fp32
        mismatch[dtype] = ((diff.sum() / mask.sum()).item(), diff.max().item())
    assert mismatch["float32"][1] < 1e-5
    assert 1e-5 < mismatch["bfloat16"][0] < 5e-3 and mismatch["bfloat16"][1] < 0.05  # measured: 5e-4, 4e-3 (bf16 LM head)


def test_top_k_1_and_tiny_top_p_sample_the_argmax_but_report_the_full_logprob(lively):
    model, tok = lively
    engine = FastEngine(model, tok, dtype="float32")
    greedy = engine.generate(problems(), SamplingParams(temperature=0.0, max_new_tokens=16))
    for params in (SamplingParams(top_k=1, max_new_tokens=16), SamplingParams(top_p=1e-6, max_new_tokens=16)):
        cs = engine.generate(problems(), params, seed=3)
        assert [c.response_ids for c in cs] == [c.response_ids for c in greedy]
        assert sum((c.logprobs for c in cs), []) == pytest.approx(sum((c.logprobs for c in greedy), []), abs=1e-6)
    top3 = engine.generate(problems(), SamplingParams(top_k=3, max_new_tokens=16), n=4, seed=0)
    diff, _ = _trainer_logprobs(model, tok, top3, 1.0)
    assert diff.max().item() < 1e-4  # log-probs are of the untruncated distribution
    assert any(c.response_ids != greedy[i // 4].response_ids for i, c in enumerate(top3))


def test_stop_strings_end_the_text_right_after_the_string_in_both_engines(lively):
    model, tok = lively
    free = SamplingParams(temperature=0.0, max_new_tokens=24)
    full = FastEngine(model, tok, dtype="float32").generate(problems(), free)
    text = full[0].text
    stop = text[len(text) // 3: len(text) // 3 + 3]
    assert stop.strip()
    params = SamplingParams(temperature=0.0, max_new_tokens=24, stop=(stop,))
    for engine in (FastEngine(model, tok, dtype="float32"), HFEngine(model, tok)):
        cs = engine.generate(problems(), params)
        c = cs[0]
        assert c.finish_reason == "stop" and c.text.endswith(stop) and text.startswith(c.text)
        assert c.text.count(stop) == 1 and len(c.response_ids) < 24
        assert c.response_ids == full[0].response_ids[: len(c.response_ids)]
        for c, f in zip(cs, full):  # rows without the string run on unchanged
            if stop not in f.text:
                assert c.response_ids == f.response_ids


def test_same_seed_same_samples(lively):
    model, tok = lively
    engine = FastEngine(model, tok, batch_size=5, dtype="bfloat16")
    a = engine.generate(problems(), SamplingParams(max_new_tokens=12), n=3, seed=5)
    b = engine.generate(problems(), SamplingParams(max_new_tokens=12), n=3, seed=5)
    c = engine.generate(problems(), SamplingParams(max_new_tokens=12), n=3, seed=6)
    assert [x.response_ids for x in a] == [x.response_ids for x in b]
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert [x.response_ids for x in a] != [x.response_ids for x in c]


def test_weights_are_repacked_after_an_optimizer_step(lively):
    model, tok = lively
    model = copy.deepcopy(model)
    engine = FastEngine(model, tok, dtype="float32")
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    before = engine.generate(problems(), params)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    out[0, -1, before[0].response_ids[0]].backward()
    opt.step()  # in place, as every trainer updates the policy
    after = engine.generate(problems(), params)
    ref = HFEngine(model, tok).generate(problems(), params)
    assert [c.response_ids for c in after] == [c.response_ids for c in ref]
    assert [c.response_ids for c in after] != [c.response_ids for c in before]


def test_weights_are_repacked_after_a_step_of_r1labs_fused_optimizer(lively):
    """Fused AdamW updates parameters without bumping their version counters; r1lab's optimizers
    say so explicitly, and the engine's log-probs stay the trainer's after every step."""
    from r1lab.train.common import make_optimizer

    model, tok = lively
    model = copy.deepcopy(model)
    engine = FastEngine(model, tok, dtype="float32")
    opt = make_optimizer(model, lr=0.05, weight_decay=0.0)
    params = SamplingParams(max_new_tokens=12)
    engine.generate(problems(), params, seed=0)
    for step in range(2):
        out = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
        out[0, -1].logsumexp(-1).backward()
        opt.step()
        opt.zero_grad()
        cs = engine.generate(problems(), params, n=2, seed=step)
        diff, _ = _trainer_logprobs(model, tok, cs, 1.0)
        assert diff.max().item() < 1e-4, step


def test_unsupported_models_fall_back_to_hf_with_a_note(tiny, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = tiny
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128)).eval()
    with caplog.at_level(logging.WARNING, logger="r1lab.rollout"):
        engine = make_engine(gpt2, tok, "fast")
    assert isinstance(engine, HFEngine) and "model_type 'gpt2'" in caplog.text
    assert len(engine.generate(problems(1), SamplingParams(max_new_tokens=4), seed=0)[0].response_ids) >= 1
    assert isinstance(make_engine(tiny[0], tok, "fast"), FastEngine)
    assert isinstance(make_engine(tiny[0], tok, "hf"), HFEngine)


def test_smollm2_fast_engine_matches_hf_and_bf16_stays_close(prepared):
    model, tok, _ = prepared
    model.eval()
    ps = [Problem(id="a", prompt="What is 2+3?", answer="5"), Problem(id="b", prompt="Name a color.", answer="x")]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    ref = HFEngine(model, tok).generate(ps, greedy)
    fast = FastEngine(model, tok, dtype="float32").generate(ps, greedy)
    for a, b in zip(ref, fast):
        assert a.response_ids == b.response_ids and a.text == b.text
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    assert "5" in fast[0].text
    cs = FastEngine(model, tok, dtype="bfloat16").generate(ps, SamplingParams(max_new_tokens=16), n=2, seed=0)
    diff, mask = _trainer_logprobs(model, tok, cs, 1.0)
    assert (diff.sum() / mask.sum()).item() < 0.05 and diff.max().item() < 0.5
    assert Counter(c.finish_reason for c in cs).keys() <= {"stop", "length"}


def test_bf16_on_a_cpu_without_native_bf16_warns_and_auto_picks_fp32(tiny, monkeypatch, caplog, tmp_path):
    """Emulated bf16 is ~100x slower than fp32 (AVX2 hosts): `auto` must not pick it, and an explicit
    bf16 setting is honoured but named in a warning."""
    import r1lab.models as models
    from r1lab.rollout import fast

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)
    model, tok = tiny
    big = copy.deepcopy(model)
    big.config.hidden_size = 576  # the size rule alone would pick bf16
    assert fast._resolve_dtype("auto", big) is torch.float32
    if not torch.cuda.is_available():
        assert models.torch_dtype("auto") is torch.float32
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
        assert models.torch_dtype("auto") is torch.bfloat16
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(models.ModelError, match="float32, bfloat16 or auto"):
        models.torch_dtype("fp8")
    path = models.save_model(model, tok, tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="r1lab.models"):
        loaded, _ = models.load_model(path, dtype="bfloat16")
    assert next(loaded.parameters()).dtype is torch.bfloat16
    assert "model.dtype=bfloat16: this CPU has no native bf16 matmuls" in caplog.text


def test_model_device_auto_is_cpu_without_a_gpu_and_bad_devices_are_named():
    import r1lab.models as models

    if not torch.cuda.is_available():
        assert models.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(models.ModelError, match="model.device=cuda: torch sees no CUDA GPU"):
            models.resolve_device("cuda")
    assert models.resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "tpu:0", ""):
        with pytest.raises(models.ModelError, match="model.device"):
            models.resolve_device(bad)


def test_lora_wrapped_policy_runs_in_the_fast_engine_and_follows_adapter_updates(lively):
    """LoRA RL keeps the fast engine: it applies W + (alpha/r) B A. Greedy ids and log-probs equal HF's
    on the wrapped model, and a change to an adapter weight is picked up by the next generate."""
    from r1lab.config import LoRAConfig
    from r1lab.train.lora import apply_lora

    model, tok = lively
    model = copy.deepcopy(model)
    torch.manual_seed(0)  # peft draws lora_A from the global stream: the same adapters whatever ran before
    apply_lora(model, LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # B starts at zero: give the adapters an effect to get right
                p.copy_(torch.randn(p.shape, generator=g))
    model.eval()
    engine = make_engine(model, tok, "fast", dtype="float32")
    assert isinstance(engine, FastEngine) and engine._fallback is None
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    refs = []
    for _ in range(2):
        ref = HFEngine(model, tok).generate(problems(), params)
        fast = engine.generate(problems(), params)
        assert [c.response_ids for c in fast] == [c.response_ids for c in ref]
        for a, b in zip(ref, fast):
            # float32 sums in another order over logits of magnitude ~12 (B ~ N(0, 1) adapters): over
            # 16 adapter seeds the gap to HF reached 7.6e-5 with the torch-operator step, 5.7e-5 with
            # the C kernels
            assert b.logprobs == pytest.approx(a.logprobs, abs=2e-4)
        refs.append([c.logprobs for c in ref])
        with torch.no_grad():  # an update of one adapter only
            model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.mul_(-3.0)
    assert refs[0] != refs[1]  # the update mattered, so the engine's agreement after it is a real check


def _splitmix_uniform(seed: int, sample: int, step: int) -> float:
    """sample_uniforms in Python integers modulo 2**64: the reference the torch lanes must match."""
    M = (1 << 64) - 1

    def mix(x):
        x &= M
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
        return x ^ (x >> 31)

    key = mix(seed + 0x9E3779B97F4A7C15)
    h = mix(mix(key + sample * 0x9E3779B97F4A7C15) + step * 0x94D049BB133111EB)
    return (h >> 11) / 2.0**53


def test_sample_uniforms_match_the_integer_reference_and_are_uniform():
    from r1lab.rollout.base import sample_uniforms

    for seed in (0, 5, 2**62 + 3, -1):
        samples, steps = torch.tensor([0, 1, 7, 10**9, 3]), torch.tensor([0, 0, 63, 5, 10**6])
        got = sample_uniforms(seed, samples, steps).tolist()
        assert got == [_splitmix_uniform(seed & ((1 << 64) - 1), int(a), int(b)) for a, b in zip(samples, steps)]
    u = sample_uniforms(1, torch.arange(200_000), torch.arange(200_000) % 97)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / len(u)
    assert float((hist - 0.1).abs().max()) < 0.005


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=16), SamplingParams(top_k=5, top_p=0.9, max_new_tokens=16)])
def test_a_call_split_in_parts_or_decoded_in_smaller_batches_samples_the_same(lively, params):
    """Each sample's draws depend on the seed and its number in the call only (what lets a rollout
    group split a call across engines and return the single engine's samples)."""
    model, tok = lively
    whole = FastEngine(model, tok, dtype="float32").generate(problems(), params, n=3, seed=11)
    parts = (FastEngine(model, tok, dtype="float32").generate(problems()[:1], params, n=3, seed=11)
             + FastEngine(model, tok, dtype="float32").generate(problems()[1:], params, n=3, seed=11, first_sample=3))
    small = FastEngine(model, tok, dtype="float32", batch_size=2).generate(problems(), params, n=3, seed=11)
    ids = lambda cs: [c.response_ids for c in cs]  # noqa: E731
    assert ids(whole) == ids(parts) == ids(small)
    assert len({tuple(r) for r in ids(whole)}) > 6  # samples differ from each other
    # the same tokens, but the parts decode in other batch shapes: the GEMMs cut their sums
    # differently, so the log-probs agree to float32 rounding of this model's forward, not bitwise
    batch = pad_sequences([c.prompt_ids for c in whole], [c.response_ids for c in whole], tok.pad_token_id)
    bound = logprob_bound(model, batch["input_ids"], batch["attention_mask"], params.temperature)
    assert [x for c in whole for x in c.logprobs] == pytest.approx([x for c in parts for x in c.logprobs], abs=bound)

"""The trainer's CPU attention: the matmul form against a float64 reference (values and gradients),
and the switch that puts it into a model only inside the trainer's forwards."""

import copy

import pytest
import torch

from r1lab.train.attention import NAME, matmul_attention, trainer_attention, use_cpu_training_attention
from r1lab.train.common import token_logprobs

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py


def reference_attention(q, k, v, allowed, scaling):
    """float64, K/V repeated per query head (HF's repeat_kv order), -inf where not allowed."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("mask_kind", ["causal", "bool_padding", "additive"])
def test_matmul_attention_matches_float64_values_and_gradients(mask_kind):
    torch.manual_seed(0)
    B, H, KV, L, hd = 3, 6, 2, 7, 8
    q64 = torch.randn(B, H, L, hd, dtype=torch.float64, requires_grad=True)
    k64 = torch.randn(B, KV, L, hd, dtype=torch.float64, requires_grad=True)
    v64 = torch.randn(B, KV, L, hd, dtype=torch.float64, requires_grad=True)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, 5:] = False  # right padding: keys 5, 6 of row 1 are pads
    allowed = (causal & keep[:, None, None, :]) if mask_kind != "causal" else causal.expand(B, 1, L, L)
    mask = None
    if mask_kind == "bool_padding":
        mask = allowed
    elif mask_kind == "additive":
        mask = torch.zeros(B, 1, L, L).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ref = reference_attention(q64, k64, v64, allowed, 0.35)
    q, k, v = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
    out = matmul_attention(q, k, v, mask, 0.35)
    assert out.shape == (B, H, L, hd)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    (out * grad.float()).sum().backward()
    for mine, theirs in ((q, q64), (k, k64), (v, v64)):
        assert torch.allclose(mine.grad.double(), theirs.grad, atol=1e-4)


def test_the_switch_changes_only_the_trainers_forwards(tiny):
    model, tok = tiny
    sdpa = copy.deepcopy(model)
    mine = copy.deepcopy(model)
    assert use_cpu_training_attention(mine) and mine.config._attn_implementation == NAME
    assert use_cpu_training_attention(mine)  # a second call is harmless
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    assert not use_cpu_training_attention(eager) and eager.config._attn_implementation == "eager"

    ids = torch.tensor([tok("Compute ((7 + 3) * 4) - 5. <think>")["input_ids"]] * 2)
    am = torch.ones_like(ids)
    am[1, -3:] = 0  # right padding
    with torch.no_grad():  # outside the trainer: SDPA itself, bit for bit
        assert torch.equal(token_logprobs(sdpa, ids, am)[0], token_logprobs(mine, ids, am)[0])
    lp_ref, _ = token_logprobs(sdpa, ids, am)
    with trainer_attention():
        lp, _ = token_logprobs(mine, ids, am)
    keep = am[:, 1:].bool()
    assert torch.allclose(lp[keep], lp_ref[keep], atol=1e-5)
    lp_ref[keep].sum().backward()
    lp[keep].sum().backward()
    for (name, p_ref), (_, p) in zip(sdpa.named_parameters(), mine.named_parameters()):
        assert torch.allclose(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4), name

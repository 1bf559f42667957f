"""The trainer's attention on CPU: SDPA for forwards without a backward, plain matmul attention
when a backward follows.

torch's CPU flash-attention kernel (what SDPA picks there) is fast forward and an order of
magnitude slower backward than plain matmul attention at training shapes (BENCHMARKS.md). So a model trained on CPU gets the registered `r1lab_cpu` implementation: inside the trainer's
forwards (`trainer_attention()`: the update, and the old-policy, reference and critic forwards,
so the first update's ratio stays exactly 1 and the starting KL exactly 0) it runs the matmul form
(query heads of one KV group stacked, so K/V are never repeated; softmax in float32, as HF's eager
attention does); everywhere else (generation, evaluation) it calls HF's SDPA function unchanged.
The mask comes from HF's SDPA mask builder, so padding and causality are handled exactly as under
"sdpa". GPU models keep their own choice.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F

NAME = "r1lab_cpu"
_trainer_depth = 0


@contextmanager
def trainer_attention():
    """Forwards inside this block use the trainer's attention kernel (see the module docstring)."""
    global _trainer_depth
    _trainer_depth += 1
    try:
        yield
    finally:
        _trainer_depth -= 1


@cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, cpu_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_cpu_training_attention(model) -> bool:
    """Switch a CPU model whose attention is SDPA to `r1lab_cpu`; True if it did. Safe to call again."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if any(p.device.type != "cpu" for p in model.parameters()):
        return False
    _register()
    if config._attn_implementation != NAME:
        model.set_attn_implementation(NAME)
    return True


def cpu_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  is_causal: bool | None = None, **kwargs):
    """HF attention-function signature: query [B, H, L, hd], key/value [B, KV, S, hd] ->
    ([B, L, H, hd], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _trainer_depth:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = matmul_attention(query, key, value, attention_mask, scaling if scaling is not None else query.shape[-1] ** -0.5,
                           causal=causal, dropout=dropout if module.training else 0.0)
    return out.transpose(1, 2).contiguous(), None


def matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                     scaling: float, causal: bool = True, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scaling, masked) v with grouped-query heads. mask: bool [B or 1, 1, L, S]
    (True = may attend) or None (causal, aligned to the last key, when `causal`). Returns [B, H, L, hd]."""
    B, H, L, hd = query.shape
    KV, S = key.shape[1], key.shape[2]
    g = H // KV
    q = query.reshape(B, KV, g * L, hd)  # heads kv*g .. kv*g+g-1 share key head kv (HF's repeat_kv order)
    acc = torch.promote_types(query.dtype, torch.float32)  # bf16 -> float32 softmax; float64 stays float64
    scores = torch.matmul(q, key.transpose(-1, -2)).to(acc).mul_(scaling).view(B, KV, g, L, S)
    if mask is None and causal and L > 1:
        mask = torch.ones(L, S, dtype=torch.bool, device=query.device).tril(S - L)
    if mask is not None:
        mask = mask.view(-1, 1, 1, L, S)
        if mask.dtype is torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(acc).min)
        else:  # an additive float mask
            scores = scores + mask.to(acc)
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(B, KV, g * L, S)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs, value).view(B, H, L, hd)

"""Tolerances for float32 comparisons, derived from the arithmetic instead of tuned on one host.

A float32 result computed along one kernel path (a batch shape, a SIMD width, a fused C kernel,
another process) is off from the exact value by about eps32 x (the magnitude of what it sums) at
each rounding stage, and those errors add over the stages done in sequence. A length-K reduction
counts as ceil(log2 K) stages: blocked and SIMD summations add in a tree, and two paths differ in
how they cut it. Two float32 computations of one quantity can then differ by up to

    computations x eps32 x magnitude x depth        (computations = 2: each errs on its own)

`numerics.py` runs the tests that use these bounds under other kernel dispatches.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps


def _log2(k: int) -> int:
    return max(1, math.ceil(math.log2(max(k, 2))))


def decoder_depth(config, seq_len: int) -> int:
    """Rounding stages in sequence from the embeddings to a log-prob of a decoder (Qwen2 / Llama):
    per layer two RMSNorms (a width-H reduction each), the q/k/v projections (H), scores (head
    dim), softmax and weighted sum (seq_len), the output projection (H), gate/up (H), SiLU, down
    (intermediate), two residual adds; then the final norm, the LM head (H) and the log-softmax
    over the vocabulary."""
    H, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or H // config.num_attention_heads
    per_layer = (2 * _log2(H) + _log2(H) + _log2(head_dim) + 2 * _log2(seq_len) + _log2(H)
                 + _log2(H) + 1 + _log2(inter) + 2)
    return config.num_hidden_layers * per_layer + _log2(H) + _log2(H) + _log2(config.vocab_size)


def fp32_bound(magnitude: float, depth: int, computations: int = 2) -> float:
    return computations * EPS32 * magnitude * depth


@torch.no_grad()
def logprob_bound(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                  computations: int = 2) -> float:
    """The bound for two float32 computations of the log-probs of `input_ids` [B, L]: the
    magnitude is the largest |logit / T| (what the log-softmax sums), the depth the decoder's."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    magnitude = float(logits.abs().max()) / (temperature if temperature > 0 else 1.0)
    return fp32_bound(magnitude, decoder_depth(model.config, input_ids.shape[1]), computations)

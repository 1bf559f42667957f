"""Rollout corrections: per-token weights for the gap between the engine that sampled a response
and the trainer that learns from it. Pure functions of tensors, registered by name.

Signature: fn(trainer_logprobs, engine_logprobs, mask=None, *, <hparams>) -> weights [B, T];
all tensors [B, T] over response tokens. Keyword-only parameters are the method's settings
(`algo.correction_args`).
"""

from __future__ import annotations

import torch

from r1lab.algos.registry import Registry
from r1lab.domains import Domain

CORRECTIONS = Registry("rollout correction")
register_correction = CORRECTIONS.register
get_correction = CORRECTIONS.get_or_raise


@register_correction("tis", domains={"cap": Domain(ge=1)})
def truncated_is_weight(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                        mask: torch.Tensor | None = None, *, cap: float = 2.0) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings
    You Off-Policy RL Training", Eq. 3-4): the tokens were sampled from the engine's distribution
    pi_engine (another kernel, another precision) but the gradient is of the trainer's pi_old, so each
    token's policy-gradient term is multiplied by

        w_t = min(pi_old(y_t) / pi_engine(y_t), C) = min(exp(log pi_old - log pi_engine), C),

    detached (a constant weight, not a path for the gradient); C caps the variance (the paper: 2).
    Positions outside `mask` get weight 0."""
    if cap <= 0:
        raise ValueError("the truncation cap C must be > 0")
    w = torch.exp((trainer_logprobs - engine_logprobs).detach()).clamp(max=cap)  # exp overflow -> inf -> C
    if mask is not None:
        w = w * mask.to(w.dtype)
    return w


@register_correction("masked_is", domains={"cap": Domain(ge=1)})
def masked_is_weight(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                     mask: torch.Tensor | None = None, *, cap: float = 2.0) -> torch.Tensor:
    """Masked importance sampling (Yao et al. 2025, the token-level masked variant of the correction
    in "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"): where the ratio
    r_t = pi_old(y_t) / pi_engine(y_t) stays inside [1/C, C] the token keeps the weight r_t, outside
    it the token is dropped (weight 0) instead of clipped to C, so a token the two policies disagree
    on strongly contributes nothing rather than a capped, still biased term:

        w_t = r_t * 1[1/C <= r_t <= C],

    detached, and 0 outside `mask`. C must be > 1 (the bounds [1/C, C] must hold ratio 1)."""
    if cap <= 1:
        raise ValueError("the masked correction's bound C must be > 1 (tokens are kept for ratios in [1/C, C])")
    log_ratio = (trainer_logprobs - engine_logprobs).detach()
    bound = torch.log(torch.as_tensor(cap, dtype=log_ratio.dtype))
    keep = log_ratio.abs() <= bound  # in log space: no overflow for extreme ratios
    w = torch.where(keep, torch.exp(log_ratio.clamp(max=bound)), torch.zeros_like(log_ratio))
    if mask is not None:
        w = w * mask.to(w.dtype)
    return w

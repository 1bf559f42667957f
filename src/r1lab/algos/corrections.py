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
    return _kept_in_band(trainer_logprobs, engine_logprobs, mask, 1.0 / cap, cap)


@register_correction("icepop", domains={"low": Domain(gt=0, lt=1), "high": Domain(gt=1)})
def icepop_weight(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                  mask: torch.Tensor | None = None, *, low: float = 0.5, high: float = 5.0) -> torch.Tensor:
    """IcePop (Ling team 2025, Ring-1T): two-sided token masking with a band of its own. A token
    whose ratio k_t = pi_old(y_t) / pi_engine(y_t) lies in [low, high] keeps the weight k_t; outside
    it the token's gradient is dropped:

        w_t = k_t * 1[low <= k_t <= high]    (the paper's defaults: low 0.5, high 5),

    detached, 0 outside `mask`. The band is asymmetric on purpose: a token the trainer finds far
    likelier than the engine did (k_t up to 5) still teaches, one it finds less than half as likely
    is dropped."""
    if not 0 < low < 1 < high:
        raise ValueError(f"icepop's band must hold ratio 1 inside it: 0 < low < 1 < high, got [{low}, {high}]")
    return _kept_in_band(trainer_logprobs, engine_logprobs, mask, low, high)


@register_correction("seq_masked_is", domains={"cap": Domain(gt=1)})
def sequence_masked_is_weight(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                              mask: torch.Tensor | None = None, *, cap: float = 2.0) -> torch.Tensor:
    """Sequence-level masked importance sampling (the sequence variant of Yao et al. 2025's masked
    correction): the response's ratio is the product of its tokens' ratios,

        rho(y) = prod_t pi_old(y_t) / pi_engine(y_t) = exp(sum_t (log pi_old - log pi_engine)),

    over the tokens in `mask` only (a multi-turn episode's environment tokens are no draw of either
    policy); every token of y gets the weight rho(y) * 1[rho(y) <= C]: a response the engine drew
    far likelier than the trainer would is dropped whole, the others are reweighted as one draw.
    One-sided, as the source: a rho below 1 only shrinks its response's share. Detached; computed
    in log space (a sum over thousands of tokens overflows exp otherwise)."""
    if cap <= 1:
        raise ValueError("the sequence-level masked correction's cap C must be > 1")
    log_ratio = (trainer_logprobs - engine_logprobs).detach()
    if mask is not None:
        log_ratio = log_ratio * mask.to(log_ratio.dtype)
    seq = log_ratio.sum(-1, keepdim=True)
    bound = torch.log(torch.as_tensor(cap, dtype=seq.dtype))
    w = torch.where(seq <= bound, torch.exp(seq.clamp(max=bound)), torch.zeros_like(seq)).expand_as(log_ratio)
    if mask is not None:
        w = w * mask.to(w.dtype)
    return w


def _kept_in_band(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor | None,
                  low: float, high: float) -> torch.Tensor:
    """w_t = r_t where low <= r_t <= high, else 0 (and 0 outside `mask`), compared in log space so
    extreme ratios never overflow."""
    log_ratio = (trainer_logprobs - engine_logprobs).detach()
    lo = torch.log(torch.as_tensor(low, dtype=log_ratio.dtype))
    hi = torch.log(torch.as_tensor(high, dtype=log_ratio.dtype))
    keep = (log_ratio >= lo) & (log_ratio <= hi)
    w = torch.where(keep, torch.exp(log_ratio.clamp(max=hi)), torch.zeros_like(log_ratio))
    if mask is not None:
        w = w * mask.to(w.dtype)
    return w

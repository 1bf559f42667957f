"""Policy losses, KL estimators and loss aggregation: pure functions of tensors.

Shapes: logprobs, old_logprobs, ref_logprobs, advantages, mask are all [B, T] over response tokens.
Per-token losses come back unaggregated; `aggregate` turns them into one scalar with an explicit
mode, normalised by the counts of the whole optimizer step so micro-batching never changes the
gradient (docs/pitfalls.md, "Loss normalisation").

A policy loss's keyword-only parameters are its hyper-parameters (set from `algo.policy_loss_args`),
except `response_mask`, which the trainer supplies to the losses that declare it. Traits:
`needs_old_logprobs` (default true: the loss has an importance ratio against the policy that
sampled), `loss_agg` (a method whose paper fixes the aggregation; any other setting is refused).
"""

from __future__ import annotations

from typing import Callable

import torch

from r1lab.algos.registry import Registry
from r1lab.domains import Domain

POLICY_LOSSES = Registry("policy loss", context=("response_mask",))
register_policy_loss = POLICY_LOSSES.register
get_policy_loss = POLICY_LOSSES.get_or_raise

KL_ESTIMATORS = Registry("KL estimator")
register_kl_estimator = KL_ESTIMATORS.register
get_kl_estimator = KL_ESTIMATORS.get_or_raise


# ---------------------------------------------------------------------------------------------
# KL(pi_theta || pi_ref) per token, Schulman's estimators (http://joschu.net/blog/kl-approx.html),
# all evaluated on tokens sampled from pi_theta.


@register_kl_estimator("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi_theta - log pi_ref (unbiased, high variance, can be negative)."""
    return logprobs - ref_logprobs


@register_kl_estimator("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 (log pi_theta - log pi_ref)^2."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@register_kl_estimator("k3", domains={"clamp": Domain(gt=0), "max_value": Domain(gt=0)})
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *, clamp: float = 20.0,
          max_value: float = 10.0) -> torch.Tensor:
    """k3 = exp(x) - x - 1 with x = log pi_ref - log pi_theta (>= 0, low variance).

    x is clamped to [-clamp, clamp] so exp cannot overflow, and the value is capped at `max_value`:
    past the cap (x > 2.61, a sampled token the reference finds ~14x likelier than the policy does;
    or x < -11) a token adds a constant and no gradient. Uncapped, its gradient is exp(x) - 1, over
    2e4 at x = 10: one token far from the reference would outweigh the rest of the batch. Inside the
    cap the estimator and its gradient are exact."""
    x = torch.clamp(ref_logprobs - logprobs, min=-clamp, max=clamp)
    return torch.clamp(torch.exp(x) - x - 1.0, max=max_value)


# ---------------------------------------------------------------------------------------------
# policy losses: return (per-token loss [B, T], stats of named [B, T] indicator/value tensors)


@register_policy_loss("ppo_clip", domains={"clip_eps_low": Domain(ge=0, lt=1), "clip_eps_high": Domain(ge=0),
                                          "dual_clip_c": Domain(gt=1, off=0.0)})
def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip_c: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7), negated for minimisation:
    l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), rho = exp(logp - logp_old).
    eps_high > eps_low is DAPO's clip-higher; dual_clip_c > 1 adds the dual clip for A < 0."""
    log_ratio = torch.clamp(logprobs - old_logprobs, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    if dual_clip_c:
        # dual clip (Ye et al. 2020): for A < 0 the loss is capped at c|A| so a huge ratio on a
        # bad token cannot produce an unbounded update
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip_c * advantages), loss)
    stats = {
        "clip_frac": (clipped < unclipped).float(),
        "clip_frac_high": ((ratio > 1.0 + clip_eps_high) & (advantages > 0)).float(),
        "clip_frac_low": ((ratio < 1.0 - clip_eps_low) & (advantages < 0)).float(),
        "ratio": ratio.detach(),
    }
    return loss, stats


@register_policy_loss("gpg", needs_old_logprobs=False)
def gpg_loss(logprobs, old_logprobs, advantages) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG (Chu et al. 2025, Eq. 7): the plain policy gradient -log pi(o_t) A, no ratio, no clip
    (so no old-policy forward is needed and no reference model)."""
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20.0, 20.0)).detach()
    zeros = torch.zeros_like(logprobs)
    return -logprobs * advantages, {"clip_frac": zeros, "clip_frac_high": zeros, "clip_frac_low": zeros, "ratio": ratio}


@register_policy_loss("gspo", loss_agg="seq-mean-token-mean",
                      domains={"clip_eps_low": Domain(ge=0, lt=1), "clip_eps_high": Domain(ge=0)})
def gspo_loss(
    logprobs, old_logprobs, advantages, *, response_mask: torch.Tensor | None = None,
    clip_eps_low: float = 3e-4, clip_eps_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al. 2025, Eq. 5-7): one importance ratio per sequence, the geometric mean
    s_i = exp(mean_t (log pi - log pi_old)), clipped at the sequence level; every token of o_i
    carries -min(s_i A_i, clip(s_i) A_i). The objective is a mean over sequences, so the method fixes
    the aggregation to seq-mean-token-mean (each sequence counts once); its clip range is the
    paper's (3e-4, 4e-4), far narrower than PPO's token-level 0.2."""
    if response_mask is None:
        response_mask = torch.ones_like(logprobs)
    mask = response_mask.to(logprobs.dtype)
    n = mask.sum(dim=-1).clamp(min=1)
    seq_log_ratio = ((logprobs - old_logprobs) * mask).sum(dim=-1) / n  # [B]
    s = torch.exp(torch.clamp(seq_log_ratio, -20.0, 20.0)).unsqueeze(-1)  # [B, 1]
    seq_adv = (advantages * mask).sum(dim=-1, keepdim=True) / n.unsqueeze(-1)  # the sequence's advantage
    unclipped = s * seq_adv
    clipped = torch.clamp(s, 1.0 - clip_eps_low, 1.0 + clip_eps_high) * seq_adv
    loss = -torch.minimum(unclipped, clipped).expand_as(logprobs)
    clip = (clipped < unclipped).to(logprobs.dtype).expand_as(logprobs)
    stats = {
        "clip_frac": clip,
        "clip_frac_high": ((s > 1.0 + clip_eps_high) & (seq_adv > 0)).to(logprobs.dtype).expand_as(logprobs),
        "clip_frac_low": ((s < 1.0 - clip_eps_low) & (seq_adv < 0)).to(logprobs.dtype).expand_as(logprobs),
        "ratio": s.detach().expand_as(logprobs),
    }
    return loss, stats


# ---------------------------------------------------------------------------------------------
# critic, entropy and auxiliary terms


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
    """Per-token clipped value loss (PPO; ORZ, VC-PPO, VAPO):
    0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2); clip 0 = unclipped."""
    loss = (values - returns) ** 2
    if clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * loss


def adaptive_entropy_coef(coef: float, entropy: float, target: float, delta: float, max_coef: float) -> float:
    """Skywork-OR1 adaptive entropy control (Sec. 4.4): raise the coefficient by delta while the
    entropy is below target, lower it otherwise, kept within [0, max_coef]."""
    coef = coef + delta if entropy < target else coef - delta
    return min(max(coef, 0.0), max_coef)


def positive_nll(logprobs: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """VAPO's positive-example LM loss (Sec. 4.2): per-token NLL on the responses that were correct
    (`correct` [B] bool), zero elsewhere; aggregate it like the policy loss."""
    return -logprobs * correct.to(logprobs.dtype).unsqueeze(-1) * mask


# ---------------------------------------------------------------------------------------------
# aggregation


def _seq_token_sum(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (loss * mask).sum(dim=-1)


def _token_mean(loss, mask, num_seqs, num_tokens, norm_len):
    """DAPO: sum over all tokens / total tokens of the optimizer step."""
    return (loss * mask).sum() / max(num_tokens, 1)


def _seq_mean_token_mean(loss, mask, num_seqs, num_tokens, norm_len):
    """Original GRPO: mean over sequences of the per-sequence token mean."""
    per_seq = _seq_token_sum(loss, mask) / mask.sum(dim=-1).clamp(min=1)
    return per_seq.sum() / max(num_seqs, 1)


def _seq_mean_token_sum(loss, mask, num_seqs, num_tokens, norm_len):
    return _seq_token_sum(loss, mask).sum() / max(num_seqs, 1)


def _seq_mean_token_sum_norm(loss, mask, num_seqs, num_tokens, norm_len):
    """Dr. GRPO: token sums divided by a constant L (the max generation length), not by |o_i|."""
    return _seq_token_sum(loss, mask).sum() / (max(num_seqs, 1) * norm_len)


AGGREGATIONS: dict[str, Callable] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_seqs: int | None = None,
    num_tokens: int | None = None,
    norm_len: float = 1.0,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    num_seqs / num_tokens are the counts of the whole optimizer step (mini-batch); pass them when
    `loss` is one micro-batch of it, so that the micro-batch contributions add up to exactly the
    full-batch value. They default to this tensor's own counts.
    """
    if mode not in AGGREGATIONS:
        from r1lab.errors import ConfigError

        raise ConfigError(f"unknown loss aggregation '{mode}' (known: {', '.join(AGGREGATIONS)})")
    mask = mask.to(loss.dtype)
    if num_seqs is None:
        num_seqs = int(loss.shape[0])
    if num_tokens is None:
        num_tokens = int(mask.sum().item())
    return AGGREGATIONS[mode](loss, mask, num_seqs, num_tokens, norm_len)

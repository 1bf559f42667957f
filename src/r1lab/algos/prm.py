"""Implicit process rewards (PRIME: Cui et al. 2025, "Process Reinforcement through Implicit
Rewards", Eq. 3 and its cross-entropy objective; the implicit PRM of Yuan et al. 2024, "Free Process
Rewards without Process Labels").

The PRM is a language model pi_phi trained as an outcome reward model whose logit is
beta * sum_t log(pi_phi(y_t | y_<t) / pi_ref(y_t | y_<t)); each term of that sum is a token's
process reward. Pure tensor functions: log-probs in, rewards or losses out, masks explicit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def implicit_process_rewards(prm_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor,
                             beta: float) -> torch.Tensor:
    """r_t = beta * (log pi_phi(y_t | y_<t) - log pi_ref(y_t | y_<t)) on the response tokens, 0
    elsewhere. All three tensors [B, T]; returns [B, T] in the log-probs' dtype."""
    return beta * (prm_logprobs - ref_logprobs) * response_mask.to(prm_logprobs.dtype)


def implicit_outcome_logits(prm_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor,
                            beta: float) -> torch.Tensor:
    """The PRM's outcome logit of each sequence: the sum of its process rewards, [B]."""
    return implicit_process_rewards(prm_logprobs, ref_logprobs, response_mask, beta).sum(dim=-1)


def outcome_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] bool: the PRM classifies each sequence as its label says. A logit > 0 predicts correct;
    0 predicts wrong (the sign convention of a classifier thresholded at probability 1/2)."""
    return (logits > 0) == (labels > 0.5)


def prm_ce_loss(prm_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor,
                labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-sequence binary cross-entropy of the implicit outcome logit against the outcome label:
    -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], z = beta * sum_t log-ratio_t, [B].

    labels: [B] in [0, 1] (1 = verified correct). Computed from the logit, so a sequence whose
    log-ratios add up to hundreds gives a finite loss and gradient. The caller averages over the
    sequences of its optimizer step."""
    z = implicit_outcome_logits(prm_logprobs, ref_logprobs, response_mask, beta)
    return F.binary_cross_entropy_with_logits(z, labels.to(z.dtype), reduction="none")

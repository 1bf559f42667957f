"""Preference losses (DPO and relatives): pure functions of per-pair sequence log-probabilities.

Shapes: every input is [B], one entry per (prompt, chosen, rejected) pair.
- policy_chosen, policy_rejected: sum over response tokens of log pi_theta(y_t | x, y_<t)
- ref_chosen, ref_rejected: the same sums under the frozen reference policy (ignored by the
  reference-free losses, which the trainer then never computes)
- chosen_tokens, rejected_tokens: response lengths in tokens (float)

Each loss returns (per-pair loss [B], stats) where stats holds [B] tensors: `reward_chosen` and
`reward_rejected` (the loss's implicit rewards, whose difference is the logged margin) and, when the
loss has one, `nll` (the chosen response's length-normalised negative log-likelihood). The trainer
averages the per-pair losses over the optimizer step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r1lab.algos.registry import Registry
from r1lab.domains import Domain

# the policy's sums are positional; the reference's sums and the lengths are context the trainer
# passes to the losses that declare them; every other keyword is the loss's own setting (dpo.loss_args).
# Trait `reference_free`: the loss never looks at a reference, so the trainer skips that forward.
PREFERENCE_LOSSES = Registry("preference loss", context=("ref_chosen", "ref_rejected", "chosen_tokens", "rejected_tokens"))
register_preference_loss = PREFERENCE_LOSSES.register
get_preference_loss = PREFERENCE_LOSSES.get_or_raise


def _implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)


@register_preference_loss("dpo", domains={"beta": Domain(gt=0)})
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023, Eq. 7): l = -log sigmoid(r_w - r_l) with implicit rewards
    r = beta * (log pi_theta(y|x) - log pi_ref(y|x)). logsigmoid keeps large margins finite."""
    r_w, r_l = _implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return -F.logsigmoid(r_w - r_l), {"reward_chosen": r_w.detach(), "reward_rejected": r_l.detach()}


@register_preference_loss("rpo", domains={"beta": Domain(gt=0), "nll_coef": Domain(ge=0)})
def rpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    beta: float = 0.1,
    nll_coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO + NLL of Iterative RPO (Pang et al. 2024, Eq. 1-3): l = l_DPO + nll_coef * l_NLL with
    l_NLL = -log pi_theta(y_w|x) / |y_w|, the chosen response's NLL per token. The paper writes
    l_NLL + alpha * l_DPO with alpha = 1, which is this loss at nll_coef = 1."""
    dpo, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected, beta=beta)
    nll = -policy_chosen / chosen_tokens.clamp(min=1)
    return dpo + nll_coef * nll, {**stats, "nll": nll.detach()}


@register_preference_loss("ipo", domains={"beta": Domain(gt=0)})
def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Azar et al. 2023, Eq. 17, tau = beta): l = (h - 1/(2 beta))^2 with
    h = [log pi_theta(y_w) - log pi_ref(y_w)] - [log pi_theta(y_l) - log pi_ref(y_l)]: the log-ratio
    gap is regressed to a fixed target instead of pushed without bound."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    r_w, r_l = _implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return (h - 1.0 / (2.0 * beta)) ** 2, {"reward_chosen": r_w.detach(), "reward_rejected": r_l.detach()}


@register_preference_loss("simpo", reference_free=True, domains={"beta": Domain(gt=0), "gamma": Domain(ge=0)})
def simpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPO (Meng et al. 2024, Eq. 6), reference-free: l = -log sigmoid(r_w - r_l - gamma) with
    r = beta * log pi_theta(y|x) / |y|, the length-normalised log-likelihood, and target margin gamma."""
    r_w = beta * policy_chosen / chosen_tokens.clamp(min=1)
    r_l = beta * policy_rejected / rejected_tokens.clamp(min=1)
    return -F.logsigmoid(r_w - r_l - gamma), {"reward_chosen": r_w.detach(), "reward_rejected": r_l.detach()}


@register_preference_loss("simper", reference_free=True)
def simper_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPER (Xiao et al. 2025, the SimPER objective), reference-free and without settings:
    l = -exp(log pi_theta(y_w|x) / |y_w|) + exp(log pi_theta(y_l|x) / |y_l|), i.e. raise the chosen
    response's inverse perplexity and lower the rejected one's; each term lies in (0, 1], so neither
    can run away. The implicit rewards logged are the two inverse perplexities. EXAONE Deep's
    preference stage used it."""
    r_w = torch.exp(policy_chosen / chosen_tokens.clamp(min=1))
    r_l = torch.exp(policy_rejected / rejected_tokens.clamp(min=1))
    return r_l - r_w, {"reward_chosen": r_w.detach(), "reward_rejected": r_l.detach()}

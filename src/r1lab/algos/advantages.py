"""Advantage estimators. Each takes sequence rewards and returns per-token advantages.

Signature of every estimator:
    fn(rewards: [B] float, response_mask: [B, T] {0,1}, group_index: [B] long, **hparams) -> [B, T]
`group_index[i]` names the prompt sample i was drawn for, so group statistics are vectorised.
Advantages are zero outside the response mask.
"""

from __future__ import annotations

import torch

from r1lab.algos.registry import Registry

ADVANTAGES = Registry("advantage estimator")
register_advantage = ADVANTAGES.register
get_advantage = ADVANTAGES.get_or_raise


def group_stats(values: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor | None = None):
    """Per-sample group mean, unbiased group std and group size, ignoring samples where valid is False.

    values: [B]; group_index: [B] (any integers); returns three [B] tensors aligned with values.
    """
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    _, inv = torch.unique(group_index, return_inverse=True)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    v = torch.where(valid, values, torch.zeros_like(values)).double()
    w = valid.double()
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inv, w)
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inv, v)
    mean = total / count.clamp(min=1)
    sq = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inv, w * (v - mean[inv]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return mean[inv], std[inv], count[inv]


@register_advantage("grpo")
def grpo_advantage(
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_index: torch.Tensor,
    std_eps: float = 1e-6,
    scale_by_std: bool = True,
    **_: object,
) -> torch.Tensor:
    """GRPO outcome advantage, DeepSeekMath (Shao et al. 2024) Eq. 3 / Sec. 4.1.2:
    A_i = (r_i - mean(r_group)) / (std(r_group) + eps), the same for every token of o_i.

    Guarantees (PITFALLS #9): a group whose rewards are all equal gets exactly 0 (no float residue
    blown up by the std); a group of one gets 0; a NaN reward is excluded from its group's statistics
    and its own advantage is 0. `std` is the unbiased (Bessel-corrected) sample std, as in verl and TRL.
    """
    valid = torch.isfinite(rewards)
    mean, std, count = group_stats(rewards, group_index, valid)
    r = torch.where(valid, rewards.double(), mean)
    centred = r - mean
    adv = centred / (std + std_eps) if scale_by_std else centred
    # all-equal groups and singletons carry no signal: exactly zero, not 1e-17 / 1e-6
    no_signal = (std <= 1e-12) | (count < 2) | ~valid
    adv = torch.where(no_signal, torch.zeros_like(adv), adv)
    return adv.to(torch.float32).unsqueeze(-1) * response_mask.to(torch.float32)

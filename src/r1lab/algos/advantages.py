"""Advantage estimators. Each takes sequence rewards and returns per-token advantages.

Signature of every estimator:
    fn(rewards: [B] float, response_mask: [B, T] {0,1}, group_index: [B] long, *, <context>, <hparams>) -> [B, T]
`group_index[i]` names the prompt sample i was drawn for, so group statistics are vectorised.
Context inputs, passed only to estimators that declare them: `values` [B, T] (the critic's),
`token_penalty` [B, T] (beta * KL_t when the KL is in the reward), `gamma` (the discount, shared with
the critic), `process_rewards` [B, T] (per-token rewards of an implicit process reward model). Every other keyword is the estimator's own hyper-parameter, set from
`algo.advantage_args`. Advantages are zero outside the response mask.
"""

from __future__ import annotations

import torch

from r1lab.algos.registry import Registry
from r1lab.domains import Domain

ADVANTAGES = Registry("advantage estimator", context=("values", "token_penalty", "gamma", "process_rewards"))
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


@register_advantage("grpo", needs_groups=True, domains={"std_eps": Domain(ge=0)})
def grpo_advantage(rewards: torch.Tensor, response_mask: torch.Tensor, group_index: torch.Tensor, *,
                   std_eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantage, DeepSeekMath (Shao et al. 2024) Eq. 3 / Sec. 4.1.2:
    A_i = (r_i - mean(r_group)) / (std(r_group) + eps), the same for every token of o_i.

    Guarantees (docs/pitfalls.md, "Zero-variance groups"): a group whose rewards are all equal gets exactly 0 (no float residue
    blown up by the std); a group of one gets 0; a NaN reward is excluded from its group's statistics
    and its own advantage is 0. `std` is the unbiased (Bessel-corrected) sample std, as in verl and TRL.
    `std_eps` is the floor added to the group std.
    """
    return _group_centred(rewards, response_mask, group_index, std_eps, scale_by_std=True)


def _group_centred(rewards, response_mask, group_index, std_eps: float, scale_by_std: bool) -> torch.Tensor:
    valid = torch.isfinite(rewards)
    mean, std, count = group_stats(rewards, group_index, valid)
    r = torch.where(valid, rewards.double(), mean)
    centred = r - mean
    adv = centred / (std + std_eps) if scale_by_std else centred
    # all-equal groups and singletons carry no signal: exactly zero, not 1e-17 / 1e-6
    no_signal = (std <= 1e-12) | (count < 2) | ~valid
    adv = torch.where(no_signal, torch.zeros_like(adv), adv)
    return adv.to(torch.float32).unsqueeze(-1) * response_mask.to(torch.float32)


@register_advantage("dr_grpo", needs_groups=True)
def dr_grpo_advantage(rewards, response_mask, group_index) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", Sec. 3.1):
    A_i = r_i - mean(r_group) — the std division removed (it up-weights too-easy and too-hard
    questions). Pair it with loss_agg=seq-mean-token-sum-norm to also remove the 1/|o_i| bias."""
    return _group_centred(rewards, response_mask, group_index, 0.0, scale_by_std=False)


@register_advantage("rloo", needs_groups=True)
def rloo_advantage(rewards, response_mask, group_index) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - (1/(G-1)) sum_{j != i} r_j = G/(G-1) (r_i - mean).
    Groups of one (no leave-one-out baseline) and NaN rewards get 0."""
    valid = torch.isfinite(rewards)
    mean, _, count = group_stats(rewards, group_index, valid)
    r = torch.where(valid, rewards.double(), mean)
    adv = (r - mean) * count / (count - 1).clamp(min=1)
    adv = torch.where((count < 2) | ~valid, torch.zeros_like(adv), adv)
    return adv.to(torch.float32).unsqueeze(-1) * response_mask.to(torch.float32)


def last_token_rewards(rewards: torch.Tensor, response_mask: torch.Tensor,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B] sequence rewards placed on each response's last token: [B, T] of `dtype`."""
    mask = response_mask.to(dtype)
    T = mask.shape[1]
    last = (mask * torch.arange(1, T + 1, dtype=dtype)).argmax(dim=1)  # index of the last valid token
    out = torch.zeros_like(mask)
    has_tokens = mask.sum(dim=1) > 0
    out[has_tokens, last[has_tokens]] = torch.nan_to_num(rewards.to(dtype)[has_tokens])
    return out


def discounted_returns(token_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return-to-go G_t = sum_{s >= t} gamma^(s-t) r_s over the response tokens, [B, T], in the
    dtype of `token_rewards`. s and t count the tokens inside the mask only: a hole in the mask (an
    episode's observation) is not a step, so the return crosses it with one gamma, as `gae` does,
    and a reward placed inside it is not read."""
    mask = response_mask.to(token_rewards.dtype)
    out = torch.zeros_like(mask)
    running = torch.zeros(mask.shape[0], dtype=token_rewards.dtype)
    for t in range(mask.shape[1] - 1, -1, -1):
        running = torch.where(mask[:, t] > 0, token_rewards[:, t] + gamma * running, running)
        out[:, t] = running
    return out * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over the valid tokens of the whole batch; 0 outside the mask.

    In float64: when every reward of the batch is equal, x is the KL penalty alone, with a spread of
    ~1e-5, and float32 cancellation error divided by that std leaves the result visibly off-centre."""
    x64, mask64 = x.double(), mask.double()
    n = mask64.sum().clamp(min=1)
    mean = (x64 * mask64).sum() / n
    var = (((x64 - mean) * mask64) ** 2).sum() / (n - 1).clamp(min=1)
    return ((x64 - mean) / (var.sqrt() + eps) * mask64).to(x.dtype if x.is_floating_point() else torch.float32)


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(rewards, response_mask, group_index, *, token_penalty: torch.Tensor | None = None,
                           gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): token reward r_t = 1[t = last] r - beta KL_t (the KL penalty arrives
    in `token_penalty`, already multiplied by beta, when algo.kl_in_reward is set), the gamma = 1
    return-to-go, then whitening over every valid token of the batch (no critic, no groups).

    Returns accumulate in float64: with equal rewards only the small KL penalties differ between
    tokens, and float32 sums lose them before the whitening divides by their spread."""
    mask64 = response_mask.double()
    token_rewards = last_token_rewards(rewards, response_mask, torch.float64)
    if token_penalty is not None:
        token_rewards = token_rewards - token_penalty.double() * mask64
    returns = discounted_returns(token_rewards, mask64, gamma)
    return masked_whiten(returns, mask64).to(torch.float32)


@register_advantage("reinforce_pp_baseline", needs_groups=True)
def reinforce_pp_baseline_advantage(rewards, response_mask, group_index, *, token_penalty: torch.Tensor | None = None,
                                    gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++-baseline: r' = r - mean_group(r) (no std), then REINFORCE++'s return and global
    whitening. The KL goes into the loss in this variant, so `token_penalty` is normally None."""
    valid = torch.isfinite(rewards)
    mean, _, count = group_stats(rewards, group_index, valid)
    centred = torch.where(valid & (count > 1), rewards.double() - mean, torch.zeros_like(mean))
    return reinforce_pp_advantage(centred, response_mask, group_index, token_penalty=token_penalty, gamma=gamma)


@register_advantage("gpg", needs_groups=True)
def gpg_advantage(rewards, response_mask, group_index) -> torch.Tensor:
    """GPG (Chu et al. 2025, Eq. 8-9): A_i = alpha (r_i - mean_group(r)), alpha = B / (B - M) with
    M the number of samples in zero-variance groups: the gradient of the informative samples is
    rescaled so that dropping the uninformative ones does not shrink it."""
    valid = torch.isfinite(rewards)
    mean, std, count = group_stats(rewards, group_index, valid)
    zero_var = (std <= 1e-12) | (count < 2)
    B = rewards.numel()
    M = int(zero_var.sum())
    alpha = B / (B - M) if B > M else 0.0
    adv = torch.where(zero_var | ~valid, torch.zeros_like(mean), alpha * (rewards.double() - mean))
    return adv.to(torch.float32).unsqueeze(-1) * response_mask.to(torch.float32)


def gae(token_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
        gamma: float = 1.0, lam: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the response tokens.

    delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0);
    A_t = delta_t + gamma lam A_{t+1}; returns R_t = A_t + V_t. `lam` may be a [B] tensor
    (VAPO's length-adaptive lambda: one per sequence). Returns (advantages, returns), both [B, T].
    """
    mask = response_mask.to(torch.float32)
    values = values.to(torch.float32) * mask
    B, T = mask.shape
    lam_t = torch.as_tensor(lam, dtype=torch.float32).expand(B) if not torch.is_tensor(lam) or lam.dim() == 0 else lam.to(torch.float32)
    adv = torch.zeros_like(mask)
    next_value = torch.zeros(B)
    next_adv = torch.zeros(B)
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam_t * next_adv
        adv[:, t] = a * m
        # a padding position passes the later values through unchanged (responses are left-aligned)
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    return adv, (adv + values) * mask


def vapo_lambda(response_mask: torch.Tensor, alpha: float = 0.05) -> torch.Tensor:
    """VAPO's length-adaptive GAE lambda (Yue et al. 2025, Eq. 7): lambda = 1 - 1 / (alpha l),
    l the response length, so long responses get lambda near 1 (less bias over long horizons)."""
    lengths = response_mask.to(torch.float32).sum(dim=1).clamp(min=1)
    return (1.0 - 1.0 / (alpha * lengths)).clamp(min=0.0, max=1.0)


@register_advantage("gae", needs_critic=True,
                    domains={"lam_actor": Domain(ge=0, le=1), "length_adaptive_alpha": Domain(ge=0)})
def gae_advantage(rewards, response_mask, group_index, *, values: torch.Tensor | None = None,
                  token_penalty: torch.Tensor | None = None, gamma: float = 1.0, lam_actor: float = 1.0,
                  length_adaptive_alpha: float = 0.0, whiten: bool = True) -> torch.Tensor:
    """PPO's advantage from a critic (ORZ, VC-PPO, VAPO): GAE with lambda_actor (VC-PPO decouples
    it from the critic's lambda), or VAPO's length-adaptive lambda when length_adaptive_alpha > 0;
    batch-whitened as ORZ does."""
    if values is None:
        raise ValueError("the 'gae' advantage needs a critic: set algo.critic: true")
    token_rewards = last_token_rewards(rewards, response_mask)
    if token_penalty is not None:
        token_rewards = token_rewards - token_penalty * response_mask
    lam = vapo_lambda(response_mask, length_adaptive_alpha) if length_adaptive_alpha > 0 else lam_actor
    adv, _ = gae(token_rewards, values, response_mask, gamma, lam)
    return masked_whiten(adv, response_mask) if whiten else adv


@register_advantage("prime", needs_prm=True, needs_groups=True, domains={"process_coef": Domain(ge=0)})
def prime_advantage(rewards, response_mask, group_index, *, process_rewards: torch.Tensor | None = None,
                    gamma: float = 1.0, process_coef: float = 1.0, whiten: bool = True) -> torch.Tensor:
    """PRIME (Cui et al. 2025, Eq. 5): leave-one-out baselines for the outcome reward and for the
    implicit process rewards, combined:

        A_t^i = sum_{s >= t} gamma^(s-t) [r_s^i - 1/(K-1) sum_{j != i} rbar^j]  (process, scaled by process_coef)
                + r^i - 1/(K-1) sum_{j != i} r^j                                  (outcome)

    where rbar^j is the mean process reward over the tokens of response j and K its group's size;
    then whitened over every valid token of the batch (`whiten`), as the paper's PPO update uses it.
    `process_rewards` [B, T] come from the trainer's implicit PRM. Groups of one have no
    leave-one-out baseline and get no advantage from either term; a NaN reward gets no outcome term.
    Accumulates in float64."""
    if process_rewards is None:
        raise ValueError("the 'prime' advantage needs process rewards from an implicit PRM")
    mask64 = response_mask.double()
    valid = torch.isfinite(rewards)
    mean, _, count = group_stats(rewards, group_index, valid)
    r = torch.where(valid, rewards.double(), mean)
    outcome = torch.where((count < 2) | ~valid, torch.zeros_like(r), (r - mean) * count / (count - 1).clamp(min=1))
    token_r = process_rewards.double() * mask64
    seq_mean = token_r.sum(dim=1) / mask64.sum(dim=1).clamp(min=1)
    g_mean, _, g_count = group_stats(seq_mean, group_index)
    others = (g_mean * g_count - seq_mean) / (g_count - 1).clamp(min=1)  # mean of the other responses' rbar
    centred = (token_r - others.unsqueeze(-1)) * mask64
    centred = torch.where((g_count < 2).unsqueeze(-1), torch.zeros_like(centred), centred)
    adv = outcome.unsqueeze(-1) * mask64 + process_coef * discounted_returns(centred, mask64, gamma)
    return (masked_whiten(adv, mask64) if whiten else adv).to(torch.float32)

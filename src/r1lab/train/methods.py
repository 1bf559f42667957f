"""The method a config names, bound once: each registered piece with its own settings fixed, and
the flags the loop reads instead of method names (does it need a critic, an old-policy pass, a
reference model). Every inconsistency is a ConfigError before anything runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from r1lab.algos import ADVANTAGES, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES
from r1lab.config import CRITIC_SETTINGS, PRM_SETTINGS, AlgoConfig, RunConfig
from r1lab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundMethod:
    advantage: Callable  # (rewards, response_mask, group_index, **context) -> [B, T]
    advantage_context: tuple[str, ...]  # which of values / token_penalty / gamma / process_rewards it takes
    policy_loss: Callable  # (logprobs, old_logprobs, advantages[, response_mask=]) -> (per-token loss, stats)
    loss_takes_mask: bool
    kl: Callable | None  # (logprobs, ref_logprobs) -> [B, T]; None when kl_coef is 0
    correction: Callable | None  # (trainer_logprobs, engine_logprobs, mask) -> weights; None when off
    needs_critic: bool
    needs_old_logprobs: bool  # the loss has a ratio against the sampling policy
    needs_prm: bool = False  # the advantage takes process rewards from an implicit PRM (train/prm.py)

    @property
    def needs_reference(self) -> bool:
        return self.kl is not None


def bind_method(algo: AlgoConfig) -> BoundMethod:
    advantage = ADVANTAGES.method(algo.advantage)
    loss = POLICY_LOSSES.method(algo.policy_loss)
    needs_critic = bool(advantage.trait("needs_critic", False))
    if needs_critic and not algo.critic:
        raise ConfigError(f"algo.advantage={algo.advantage} needs a value model: set algo.critic=true")
    if algo.critic and "values" not in advantage.context:
        raise ConfigError(f"algo.critic=true: advantage '{algo.advantage}' does not use a value model "
                          "(a critic-based one is 'gae')")
    if not algo.critic:
        defaults = AlgoConfig()
        for name in CRITIC_SETTINGS:
            if getattr(algo, name) != getattr(defaults, name):
                raise ConfigError(f"algo.{name} is a critic setting, but algo.critic is false")
    needs_prm = bool(advantage.trait("needs_prm", False))
    if not needs_prm:
        defaults = AlgoConfig()
        for name in PRM_SETTINGS:
            if getattr(algo, name) != getattr(defaults, name):
                raise ConfigError(f"algo.{name} is a process reward model setting, but advantage '{algo.advantage}' "
                                  "uses none (the one that does is 'prime')")
    if algo.gamma != 1.0 and "gamma" not in advantage.context and not algo.critic:
        raise ConfigError(f"algo.gamma={algo.gamma}: advantage '{algo.advantage}' does not discount and there is no critic")
    fixed_agg = loss.trait("loss_agg")
    if fixed_agg and algo.loss_agg != fixed_agg:
        raise ConfigError(f"algo.loss_agg={algo.loss_agg}: policy loss '{algo.policy_loss}' aggregates as {fixed_agg}")
    kl = None
    if algo.kl_coef > 0:
        kl = KL_ESTIMATORS.bind(algo.kl_estimator, algo.kl_args, "algo.kl_args")
        if algo.kl_in_reward and "token_penalty" not in advantage.context:
            raise ConfigError(f"algo.kl_in_reward=true: advantage '{algo.advantage}' takes no per-token reward penalty "
                              "(put the KL in the loss: algo.kl_in_reward=false)")
    elif algo.kl_args:
        raise ConfigError("algo.kl_args is set but the KL term is off (algo.kl_coef is 0)")
    correction = None
    if algo.correction:
        correction = CORRECTIONS.bind(algo.correction, algo.correction_args, "algo.correction_args")
    elif algo.correction_args:
        raise ConfigError("algo.correction_args is set but no correction is on (set algo.correction, e.g. tis)")
    return BoundMethod(
        advantage=ADVANTAGES.bind(algo.advantage, algo.advantage_args, "algo.advantage_args"),
        advantage_context=advantage.context,
        policy_loss=POLICY_LOSSES.bind(algo.policy_loss, algo.policy_loss_args, "algo.policy_loss_args"),
        loss_takes_mask="response_mask" in loss.context,
        kl=kl,
        correction=correction,
        needs_critic=needs_critic,
        needs_old_logprobs=bool(loss.trait("needs_old_logprobs", True)),
        needs_prm=needs_prm,
    )


def check_method_settings(cfg: RunConfig) -> None:
    """The settings outside the algo section that a method's traits make meaningless: refused in
    one line before anything is written (each setting's own domain was checked when it was read)."""
    advantage = ADVANTAGES.method(cfg.algo.advantage)
    t = cfg.train
    if advantage.trait("needs_groups", False) and t.group_size < 2:
        raise ConfigError(f"train.group_size={t.group_size}: advantage '{advantage.name}' compares each sample with "
                          "the other samples of its prompt, so with one sample every advantage is 0; use group_size "
                          ">= 2, or a batch-level advantage (reinforce_pp, gae)")
    if t.dynamic_sampling and t.group_size < 2:
        raise ConfigError(f"train.dynamic_sampling=true with train.group_size={t.group_size}: a group of one always "
                          "has equal outcomes, so every group would be dropped")
    if t.ppo_epochs * t.mini_batches > 1 and not POLICY_LOSSES.method(cfg.algo.policy_loss).trait("needs_old_logprobs", True):
        log.warning("train.ppo_epochs=%d, train.mini_batches=%d: policy loss '%s' has no ratio to the sampling policy, "
                    "so the later updates on the batch are off-policy and uncorrected", t.ppo_epochs, t.mini_batches,
                    cfg.algo.policy_loss)
    batch = t.prompts_per_step * t.group_size
    if batch % t.mini_batches:
        log.warning("train.mini_batches=%d does not divide the batch of %d sequences: the optimizer steps see "
                    "mini-batches of unequal size", t.mini_batches, batch)


def describe_methods() -> str:
    """Every registered piece and the settings it takes (with defaults and domains): `r1lab recipes --methods`."""
    lines = []
    for title, table, key in (("advantages", ADVANTAGES, "algo.advantage_args"),
                              ("policy losses", POLICY_LOSSES, "algo.policy_loss_args"),
                              ("KL estimators", KL_ESTIMATORS, "algo.kl_args"),
                              ("rollout corrections", CORRECTIONS, "algo.correction_args")):
        lines.append(f"{title} ({key}):")
        for name, m in sorted(table.methods.items()):
            settings = ", ".join(f"{k}={v}" + (f" ({m.domains[k].describe(type(v) is int)})" if k in m.domains else "")
                                 for k, v in m.hparams.items()) or "no settings"
            notes = [f"{k}={v}" for k, v in m.traits.items()] + ([f"uses {', '.join(m.context)}"] if m.context else [])
            lines.append(f"  {name:<24} {settings}" + (f"   [{'; '.join(notes)}]" if notes else ""))
    from r1lab.rewards import SPAN_CREDITS  # importing the reward terms registers the task families' span terms

    lines.append("span credit terms (reward.token_credit: name -> coef):")
    for name, fn in sorted(SPAN_CREDITS.items()):
        lines.append(f"  {name:<24} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines)


"""What one RL step logs about its samples and its batch (the update's own statistics come from
the policy worker). Names are stable: plots, reports and the health checks read them."""

from __future__ import annotations

from statistics import mean
from typing import Any

import torch

from r1lab.models import token_logprobs
from r1lab.records import Completion
from r1lab.reward_hacks import rewarded_but_wrong
from r1lab.train.batch import RolloutBatch, first_response_col, masked_mean, rollout_batch
from r1lab.train.collect import Collected
from r1lab.train.common import scatter_response_values
from r1lab.train.sampler import PromptSampler


def group_signal(rewards: torch.Tensor, correct: list[bool], group_size: int) -> tuple[float, float]:
    """(fraction of groups whose total rewards are all equal, fraction all right or all wrong).

    The first is the groups with zero advantage and no gradient. The second is what dynamic sampling
    drops (DAPO filters on accuracy); with a format or length term in the reward such a group can still
    carry signal, so the two differ and both are logged."""
    flat = rewards.view(-1, group_size)
    grouped = torch.tensor(correct, dtype=torch.float32).view(-1, group_size)
    equal = lambda g: float((g.max(1).values == g.min(1).values).float().mean())  # noqa: E731
    return equal(flat), equal(grouped)


def sample_metrics(col: Collected, group_size: int) -> dict[str, Any]:
    completions, rewards = col.completions, col.rewards
    lengths = [c.model_tokens for c in completions]  # an episode's observations are not the model's length
    correct = [bool(c.verdict and c.verdict.correct) for c in completions]
    zero_variance, same_correctness = group_signal(rewards, correct, group_size)
    return {
        "reward/total": float(rewards.mean()),
        **{f"reward/{k}": mean(v) for k, v in col.terms.items()},
        "accuracy": mean(correct),
        "response/length": mean(lengths),
        "response/length_correct": mean([n for n, ok in zip(lengths, correct) if ok]) if any(correct) else None,
        "response/length_wrong": mean([n for n, ok in zip(lengths, correct) if not ok]) if not all(correct) else None,
        "response/truncated": mean(c.truncated for c in completions),
        "response/unparsable": mean(bool(c.verdict and c.verdict.status == "unparsable") for c in completions),
        "batch/zero_variance_groups": zero_variance,
        "batch/same_correctness_groups": same_correctness,
    }


def hack_metrics(col: Collected, weights: dict[str, float]) -> dict[str, Any]:
    """The reward-hacking measurement (reward_hacks.rewarded_but_wrong) of the step's samples:
    `hack/rewarded_but_wrong`, the share of the samples paid at least the mean of the right ones
    that the verifier rejects (None when no sample is right), and `hack/paid_wrong/<term>`, what
    each term paid the rewarded wrong samples on average (weighted; logged when there are any)."""
    correct = [bool(c.verdict and c.verdict.correct) for c in col.completions]
    weighted = {name: [weights.get(name, 0.0) * v for v in values] for name, values in col.terms.items()}
    m = rewarded_but_wrong([c.reward for c in col.completions], correct, weighted)
    return {"hack/rewarded_but_wrong": m.share, **{f"hack/paid_wrong/{k}": v for k, v in m.paid_by.items()}}


def batch_metrics(batch: RolloutBatch) -> dict[str, float]:
    adv, mask = batch.advantages, batch.response_mask
    return {
        "adv/abs_mean": masked_mean(adv.abs(), mask),
        "adv/abs_max": float((adv.abs() * mask).max()),
        "adv/mean": masked_mean(adv, mask),
        "sampling/max_new_tokens": batch.max_new_tokens,
    }


@torch.no_grad()
def behaviour_logprob_gap(model: torch.nn.Module, completions: list[Completion], version: int, pad_id: int,
                          temperature: float, bf16: bool = False) -> dict[str, float]:
    """`rollout/logprob_diff_mean` and `_max`: |engine - trainer| log-prob of the tokens of
    `completions` that policy `version` sampled, the trainer's side computed by `model` holding that
    version's weights (the trainer's forward: float32 log-softmax, bf16 autocast under train.bf16).

    An asynchronous run needs this: its trainer scores the samples a few versions later, so its own
    comparison measures how far the policy moved, not whether the engine computes what the trainer
    does. Empty when no token of `completions` came from `version`."""
    if not completions:
        return {}
    b = rollout_batch(completions, pad_id, overlong_filter=False, temperature=temperature, max_new_tokens=0, plan=[])
    if any(c.token_versions is not None for c in completions):  # partial rollouts: per token (no episodes there)
        same = [[float(v == version) for v in (c.token_versions or [c.policy_version] * len(c.response_ids))]
                for c in completions]
        mask = b.response_mask * scatter_response_values(same, b.response_mask)
    else:
        mask = b.response_mask * torch.tensor([float(c.policy_version == version) for c in completions]).unsqueeze(-1)
    n = float(mask.sum())
    if n == 0:
        return {}
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logprobs, _ = token_logprobs(model, b.input_ids, b.attention_mask, temperature,
                                     start=first_response_col(b.response_mask), vision=b.vision)
    diff = (b.engine_logprobs - logprobs.float()).abs() * mask
    return {"rollout/logprob_diff_mean": float(diff.sum()) / n, "rollout/logprob_diff_max": float(diff.max()),
            "rollout/logprob_diff_tokens": n}


def sampler_metrics(sampler: PromptSampler) -> dict[str, int]:
    return {
        "data/epoch": sampler.epoch,
        "data/stage": sampler.stage,
        "data/dropped_solved": sampler.dropped_last_epoch,
        "data/solved": len(sampler.solved),
        "data/easy_pool": len(sampler.easy),
    }

"""Sample and score: one step's groups of completions, with dynamic sampling.

Under dynamic sampling (DAPO), groups whose outcomes (verdicts, not the shaped reward) are all equal
are dropped and new prompts are sampled, up to `max_sampling_rounds`; GPG's variant keeps them but
samples again until `min_valid_fraction` of the groups carry signal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from r1lab.config import RunConfig
from r1lab.languages import language_metrics
from r1lab.records import Completion, Problem
from r1lab.rewards import compute_rewards
from r1lab.rollout.base import SamplingParams
from r1lab.train.sampler import PromptSampler


@dataclass
class Collected:
    problems: list[Problem]  # one per completion
    completions: list[Completion]
    rewards: torch.Tensor  # [B]
    group_index: torch.Tensor  # [B]
    terms: dict[str, list[float]]  # reward term -> its value for each completion
    info: dict[str, float]  # sampling/* and time/* metrics


def collect(cfg: RunConfig, sampler: PromptSampler, params: SamplingParams,
            rollout: Callable[[list[Problem], int], list[Completion]], seed: int,
            score: Callable[..., object] | None = None) -> Collected:
    """prompts_per_step groups of group_size completions, scored. `rollout(prompts, seed)` returns
    group_size completions per prompt, in order; round r of the step samples with seed `seed + r`.
    `score` (compute_rewards' signature; default compute_rewards) writes the rewards into them."""
    score = score if score is not None else compute_rewards
    train = cfg.train
    P, G = train.prompts_per_step, train.group_size
    keep_zero_var = train.min_valid_fraction > 0
    valid_groups: list[tuple[Problem, list[Completion]]] = []
    flat_groups: list[tuple[Problem, list[Completion]]] = []
    rounds = dropped = gen_tokens = generated = 0
    t_gen = t_score = 0.0
    while True:
        prompts = sampler.next(P if not train.dynamic_sampling else max(1, P - len(valid_groups)))
        t0 = time.time()
        completions = rollout(prompts, seed + rounds)
        t1 = time.time()
        score([p for p in prompts for _ in range(G)], completions, cfg.reward.terms,
                        timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers,
                        settings={"max_new_tokens": params.max_new_tokens, "group_size": G, **cfg.reward.settings,
                                  "language": cfg.reward.language, "languages": cfg.reward.languages})
        t_gen, t_score = t_gen + t1 - t0, t_score + time.time() - t1
        gen_tokens += sum(c.model_tokens for c in completions)
        generated += len(completions)
        rounds += 1
        for i, p in enumerate(prompts):
            group = completions[i * G : (i + 1) * G]
            correct = [bool(c.verdict and c.verdict.correct) for c in group]
            sampler.record(p, all(correct))
            if len(set(correct)) > 1 or not train.dynamic_sampling:
                valid_groups.append((p, group))
            elif keep_zero_var:
                flat_groups.append((p, group))
            else:
                dropped += 1
        if not train.dynamic_sampling or rounds >= train.max_sampling_rounds:
            break
        if keep_zero_var:
            if len(valid_groups) >= P or (len(valid_groups) + len(flat_groups) >= P
                                          and len(valid_groups) / P >= train.min_valid_fraction):
                break
        elif len(valid_groups) >= P:
            break
    groups = (valid_groups + flat_groups)[:P] if train.dynamic_sampling else valid_groups
    if not groups:  # nothing informative in any round: train on the last round rather than skip
        groups = [(p, completions[i * G : (i + 1) * G]) for i, p in enumerate(prompts)]
    problems = [p for p, grp in groups for _ in grp]
    completions = [c for _, grp in groups for c in grp]
    terms: dict[str, list[float]] = {}
    for c in completions:
        for k, v in c.rewards.items():
            terms.setdefault(k, []).append(v)
    info = {"sampling/rounds": rounds, "sampling/dropped_groups": dropped, "sampling/groups": len(groups),
            "sampling/generated": generated,
            "time/generate": t_gen, "time/score": t_score,
            "throughput/gen_tokens_per_s": gen_tokens / max(t_gen, 1e-9),
            # language mixing, when the problems carry a language (or one is configured)
            **language_metrics(problems, [c.text for c in completions], cfg.reward.languages, cfg.reward.language)}
    return Collected(problems, completions, torch.tensor([c.reward for c in completions], dtype=torch.float32),
                     torch.arange(len(groups)).repeat_interleave(G), terms, info)

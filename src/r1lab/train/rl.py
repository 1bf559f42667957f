"""Reinforcement learning from verifiable rewards.

The loop reads like the algorithm box of the papers:

    for each step:
        prompts      <- next prompts_per_step problems
        completions  <- engine.generate(prompts, group_size samples each)      (sample)
        rewards      <- verifier + weighted reward terms                          (score)
        advantages   <- ADVANTAGES[algo.advantage](rewards, mask, groups)         (estimate)
        for epoch, mini-batch:  loss <- POLICY_LOSSES[algo.policy_loss] + KL      (update)
        log everything

The loop never branches on an algorithm's name; every piece comes from a registry.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from statistics import mean
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from r1lab.algos import aggregate, get_advantage, get_kl_estimator, get_policy_loss
from r1lab.config import RunConfig
from r1lab.records import Completion, Problem
from r1lab.rewards import compute_rewards
from r1lab.rollout.base import SamplingParams
from r1lab.runs import MetricsWriter
from r1lab.train.common import (
    grad_norm_clip,
    make_optimizer,
    pad_sequences,
    scatter_response_values,
    token_logprobs,
    warmup_constant,
)


class PromptSampler:
    """Epochs over the training problems in a seeded random order, without replacement."""

    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise ValueError("RL needs at least one training problem")
        self.problems = problems
        self.rng = random.Random(seed)
        self.epoch = 0
        self._order: list[int] = []

    def next(self, k: int) -> list[Problem]:
        out = []
        while len(out) < k:
            if not self._order:
                self._order = list(range(len(self.problems)))
                self.rng.shuffle(self._order)
                self.epoch += 1
            out.append(self.problems[self._order.pop()])
        return out


@dataclass
class RolloutBatch:
    """One step's data in the trainer's layout; every tensor is [B, L-1] unless noted."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor
    advantages: torch.Tensor
    engine_logprobs: torch.Tensor
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    plan: list[list[list[torch.Tensor]]] | None = None  # epochs -> mini-batches -> micro-batch rows

    def rows(self, idx: torch.Tensor) -> "RolloutBatch":
        """Select rows and trim the padding columns they do not need."""
        L = int(self.attention_mask[idx].sum(-1).max())
        pick = lambda t, w: None if t is None else t[idx, :w]  # noqa: E731
        return RolloutBatch(
            pick(self.input_ids, L), pick(self.attention_mask, L), pick(self.response_mask, L - 1),
            pick(self.advantages, L - 1), pick(self.engine_logprobs, L - 1),
            pick(self.old_logprobs, L - 1), pick(self.ref_logprobs, L - 1),
        )


def _micro_batches(idx: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _update_plan(B: int, epochs: int, mini_batches: int, micro: int, gen: torch.Generator) -> list[list[list[torch.Tensor]]]:
    """For each epoch, its mini-batches (one optimizer step each), each split into micro-batches of
    row indices. Drawn once per step so the old-policy forward can use the exact same micro-batches
    as the first update: identical inputs, identical kernels, a ratio of exactly 1."""
    plan = []
    for _ in range(epochs):
        perm = torch.randperm(B, generator=gen)
        plan.append([_micro_batches(mb, micro) for mb in torch.tensor_split(perm, mini_batches) if len(mb)])
    return plan


@torch.no_grad()
def _forward_logprobs(model, batch: RolloutBatch, temperature: float, parts: list[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros_like(batch.response_mask)
    for idx in parts:
        sub = batch.rows(idx)
        lp, _ = token_logprobs(model, sub.input_ids, sub.attention_mask, temperature)
        out[idx, : lp.shape[1]] = lp
    return out * batch.response_mask


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return float((x * mask).sum() / n) if n > 0 else 0.0


class RLTrainer:
    """Owns the policy, the optional frozen reference, the optimizer and the engine for one run."""

    def __init__(self, cfg: RunConfig, model, tokenizer, engine, metrics: MetricsWriter | None = None):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.engine = engine
        self.metrics = metrics
        self.params = SamplingParams(
            temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
            top_k=cfg.sampling.top_k, max_new_tokens=cfg.sampling.max_new_tokens,
        )
        algo = cfg.algo
        self.advantage_fn = get_advantage(algo.advantage)
        self.policy_loss_fn = get_policy_loss(algo.policy_loss)
        self.kl_fn = get_kl_estimator(algo.kl_estimator) if algo.kl_coef > 0 else None
        # no reference model at all when the KL coefficient is 0 (no wasted forward, no memory)
        self.ref_model = None
        if algo.kl_coef > 0:
            self.ref_model = copy.deepcopy(model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        self.optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
        self.scheduler = warmup_constant(self.optimizer, cfg.train.warmup_steps)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.step = 0

    # -- one step ---------------------------------------------------------------------------

    def rollout(self, prompts: list[Problem], seed: int) -> tuple[list[Problem], list[Completion]]:
        G = self.cfg.train.group_size
        completions = self.engine.generate(prompts, self.params, n=G, seed=seed)
        return [p for p in prompts for _ in range(G)], completions

    def make_batch(self, completions: list[Completion], rewards: torch.Tensor, group_index: torch.Tensor) -> RolloutBatch:
        algo, train = self.cfg.algo, self.cfg.train
        t = pad_sequences([c.prompt_ids for c in completions], [c.response_ids for c in completions], self.pad_id)
        mask = t["response_mask"]
        advantages = self.advantage_fn(rewards, mask, group_index, std_eps=algo.adv_std_eps)
        batch = RolloutBatch(
            t["input_ids"], t["attention_mask"], mask, advantages,
            scatter_response_values([c.logprobs for c in completions], mask), None, None,
        )
        T = self.params.logprob_temperature
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
        batch.plan = _update_plan(len(completions), train.ppo_epochs, train.mini_batches, train.micro_batch_size, gen)
        first_pass = [idx for mb in batch.plan[0] for idx in mb]
        # a separate "old policy" forward only when the policy changes before the last update uses
        # it; with one update per rollout the ratio is exactly 1 and the old log-probs are the
        # current ones, detached (PITFALLS: on-policy ratio is 1 on the first update)
        if train.ppo_epochs * train.mini_batches > 1:
            batch.old_logprobs = _forward_logprobs(self.model, batch, T, first_pass)
        if self.ref_model is not None:
            batch.ref_logprobs = _forward_logprobs(self.ref_model, batch, T, first_pass)
        return batch

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        algo, train = self.cfg.algo, self.cfg.train
        T = self.params.logprob_temperature
        norm_len = algo.loss_agg_norm or float(self.params.max_new_tokens)
        if batch.plan is None:
            gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
            batch.plan = _update_plan(batch.input_ids.shape[0], train.ppo_epochs, train.mini_batches, train.micro_batch_size, gen)
        sums: dict[str, float] = {}
        tokens_total = 0.0
        n_updates = 0
        self.model.train()
        for epoch in batch.plan:
            for micro_batches in epoch:
                mb = torch.cat(micro_batches)
                num_seqs = len(mb)
                num_tokens = int(batch.response_mask[mb].sum())
                self.optimizer.zero_grad(set_to_none=True)
                for idx in micro_batches:
                    sub = batch.rows(idx)
                    mask = sub.response_mask
                    logprobs, entropy = token_logprobs(self.model, sub.input_ids, sub.attention_mask, T, with_entropy=True)
                    old = sub.old_logprobs if sub.old_logprobs is not None else logprobs.detach()
                    per_token, stats = self.policy_loss_fn(
                        logprobs, old, sub.advantages,
                        clip_eps_low=algo.clip_eps_low, clip_eps_high=algo.clip_eps_high,
                    )
                    pg_loss = aggregate(per_token, mask, algo.loss_agg, num_seqs, num_tokens, norm_len)
                    loss = pg_loss
                    # KL and entropy use the same aggregation as the policy loss (verl#3986)
                    if self.kl_fn is not None:
                        kl = self.kl_fn(logprobs, sub.ref_logprobs)
                        loss = loss + algo.kl_coef * aggregate(kl, mask, algo.loss_agg, num_seqs, num_tokens, norm_len)
                        sums["kl"] = sums.get("kl", 0.0) + float((kl.detach() * mask).sum())
                    if algo.entropy_coef:
                        loss = loss - algo.entropy_coef * aggregate(entropy, mask, algo.loss_agg, num_seqs, num_tokens, norm_len)
                    loss.backward()
                    n_tok = float(mask.sum())
                    tokens_total += n_tok
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                    sums["pg_loss"] = sums.get("pg_loss", 0.0) + float(pg_loss.detach())
                    sums["entropy"] = sums.get("entropy", 0.0) + float((entropy.detach() * mask).sum())
                    for name, v in stats.items():
                        sums[name] = sums.get(name, 0.0) + float((v * mask).sum())
                    # how far the engine's sampling log-probs are from the trainer's (PITFALLS #6)
                    if sub.old_logprobs is None:
                        diff = (sub.engine_logprobs - logprobs.detach()).abs() * mask
                        sums["logprob_diff_max"] = max(sums.get("logprob_diff_max", 0.0), float(diff.max()))
                        sums["logprob_diff_sum"] = sums.get("logprob_diff_sum", 0.0) + float(diff.sum())
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm_clip(self.model, train.grad_clip)
                self.optimizer.step()
                n_updates += 1
        self.scheduler.step()
        out = {
            "loss/total": sums["loss"] / train.ppo_epochs,
            "loss/policy": sums["pg_loss"] / train.ppo_epochs,
            "policy/entropy": sums["entropy"] / max(tokens_total, 1),
            "policy/grad_norm": sums["grad_norm"] / n_updates,
            "policy/lr": self.scheduler.get_last_lr()[0],
        }
        for name in ("clip_frac", "clip_frac_high", "clip_frac_low", "ratio"):
            if name in sums:
                out[f"policy/{name}"] = sums[name] / max(tokens_total, 1)
        if "kl" in sums:
            out["policy/kl"] = sums["kl"] / max(tokens_total, 1)
        if "logprob_diff_sum" in sums:
            first_pass = float(batch.response_mask.sum())
            out["rollout/logprob_diff_mean"] = sums["logprob_diff_sum"] / max(first_pass, 1)
            out["rollout/logprob_diff_max"] = sums["logprob_diff_max"]
        return out

    def train_step(self, prompts: list[Problem]) -> tuple[dict[str, float], list[Completion]]:
        cfg = self.cfg
        t0 = time.time()
        problems, completions = self.rollout(prompts, seed=cfg.seed * 1_000_003 + self.step)
        t1 = time.time()
        terms = compute_rewards(
            problems, completions, cfg.reward.terms,
            timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers,
        )
        rewards = torch.tensor([c.reward for c in completions], dtype=torch.float32)
        group_index = torch.arange(len(prompts)).repeat_interleave(cfg.train.group_size)
        t2 = time.time()
        batch = self.make_batch(completions, rewards, group_index)
        t3 = time.time()
        stats = self.update(batch)
        t4 = time.time()
        self.step += 1

        lengths = [len(c.response_ids) for c in completions]
        correct = [bool(c.verdict and c.verdict.correct) for c in completions]
        grouped = rewards.view(len(prompts), cfg.train.group_size)
        zero_var = float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean())
        gen_tokens = sum(lengths)
        train_tokens = int(batch.attention_mask.sum()) * cfg.train.ppo_epochs
        m: dict[str, Any] = {
            "reward/total": float(rewards.mean()),
            **{f"reward/{k}": mean(v) for k, v in terms.items() if k != "total"},
            "accuracy": mean(correct),
            "response/length": mean(lengths),
            "response/length_correct": mean([l for l, ok in zip(lengths, correct) if ok]) if any(correct) else None,
            "response/length_wrong": mean([l for l, ok in zip(lengths, correct) if not ok]) if not all(correct) else None,
            "response/truncated": mean(c.truncated for c in completions),
            "response/unparsable": mean(bool(c.verdict and c.verdict.status == "unparsable") for c in completions),
            "batch/zero_variance_groups": zero_var,
            "adv/abs_mean": _masked_mean(batch.advantages.abs(), batch.response_mask),
            **stats,
            "time/generate": t1 - t0,
            "time/score": t2 - t1,
            "time/reference": t3 - t2,
            "time/train": t4 - t3,
            "time/step": t4 - t0,
            "throughput/gen_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
            "throughput/train_tokens_per_s": train_tokens / max(t4 - t3, 1e-9),
        }
        return m, completions


def train_rl(
    cfg: RunConfig,
    model,
    tokenizer,
    engine,
    train_problems: list[Problem],
    metrics: MetricsWriter | None = None,
    samples: MetricsWriter | None = None,
    on_eval: Callable[[int], dict[str, float]] | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run cfg.train.steps RL steps; returns the metrics of every step."""
    trainer = RLTrainer(cfg, model, tokenizer, engine, metrics)
    sampler = PromptSampler(train_problems, seed=cfg.seed)
    history = []
    warned = False
    bar = tqdm(range(cfg.train.steps), desc="rl", unit="step", disable=not show_progress, dynamic_ncols=True)
    for step in bar:
        m, completions = trainer.train_step(sampler.next(cfg.train.prompts_per_step))
        if on_eval and cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
            m.update(on_eval(step + 1))
        history.append(m)
        if metrics:
            metrics.write(step + 1, m)
        if samples:
            for c in completions[: cfg.train.samples_per_step]:
                samples.write(step + 1, {"problem_id": c.problem_id, "text": c.text, "reward": c.reward,
                                         "rewards": c.rewards, "verdict": c.verdict.status if c.verdict else None,
                                         "finish": c.finish_reason})
        if m["batch/zero_variance_groups"] > 0.9 and not warned:
            tqdm.write(f"warning: step {step + 1}: {m['batch/zero_variance_groups']:.0%} of groups have equal rewards "
                       "and carry no learning signal (tasks too easy or too hard for this model?)")
            warned = True
        bar.set_postfix(reward=f"{m['reward/total']:.3f}", acc=f"{m['accuracy']:.2f}", len=f"{m['response/length']:.0f}")
    return history

"""Reinforcement learning from verifiable rewards.

The loop reads like the algorithm box of the papers:

    for each step:
        prompts      <- sampler (curriculum stage, history resampling, easy pool)
        completions  <- engine.generate(prompts, group_size each)                 (sample)
        rewards      <- verifier + weighted reward terms                           (score)
                        [dynamic sampling: drop all-equal groups, sample again]
        advantages   <- ADVANTAGES[algo.advantage](rewards, mask, groups, ...)     (estimate)
        for epoch, mini-batch:  POLICY_LOSSES[algo.policy_loss] + KL + entropy      (update)
                                [+ critic value loss]
        log everything

The loop never branches on an algorithm's name: methods differ by registered functions and
config fields, so a published recipe is a YAML file, not a fork of this file.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from statistics import mean
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from r1lab.algos import aggregate, get_advantage, get_correction, get_kl_estimator, get_policy_loss
from r1lab.algos.advantages import gae, last_token_rewards
from r1lab.algos.losses import adaptive_entropy_coef, positive_nll, value_loss
from r1lab.config import RunConfig
from r1lab.models import model_device
from r1lab.records import Completion, Problem
from r1lab.rewards import compute_rewards
from r1lab.rollout.base import SamplingParams
from r1lab.runs import MetricsWriter
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.prefix import SharedPrefix
from r1lab.train.common import (
    EmbeddingGradInPlace,
    grad_norm_clip,
    make_optimizer,
    pad_sequences,
    scatter_response_values,
    token_logprobs,
    warmup_constant,
)


def scheduled(schedule: dict[int, int], step: int, default: int) -> int:
    """The value of a step -> value schedule at `step`: that of the largest key <= step."""
    keys = [k for k in schedule if k <= step]
    return schedule[max(keys)] if keys else default


class PromptSampler:
    """Epochs over the training problems in a seeded order, without replacement, with the
    schedule pieces of the replication studies:

    - curriculum (ORZ, Logic-RL): one pool per difficulty; `set_stage` switches pools;
    - history resampling (SRPO): at each epoch boundary, problems whose last group was solved by
      every sample are left out of the next epoch;
    - easy pool (MiMo): problems solved by every sample move to a pool that is drawn from with
      probability `easy_pool_prob` instead of being dropped for good.
    """

    def __init__(self, pools: dict[int, list[Problem]] | list[Problem], seed: int,
                 history_resampling: bool = False, easy_pool_prob: float = 0.0):
        self.pools = pools if isinstance(pools, dict) else {0: pools}
        if not any(self.pools.values()):
            raise ValueError("RL needs at least one training problem")
        self.stage = min(self.pools)
        self.rng = random.Random(seed)
        self.history_resampling = history_resampling
        self.easy_pool_prob = easy_pool_prob
        self.epoch = 0
        self.solved: set[str] = set()  # ids whose latest group was all correct
        self.easy: dict[str, Problem] = {}
        self._order: list[Problem] = []
        self.dropped_last_epoch = 0

    def set_stage(self, stage: int) -> None:
        if stage != self.stage:
            if stage not in self.pools:
                raise ValueError(f"no problems for curriculum stage {stage}")
            self.stage, self._order = stage, []

    def _new_epoch(self) -> None:
        pool = self.pools[self.stage]
        skip = self.solved if self.history_resampling else set()
        if self.easy_pool_prob > 0:
            skip = skip | set(self.easy)
        order = [p for p in pool if p.id not in skip]
        self.dropped_last_epoch = len(pool) - len(order)
        if not order:  # everything solved: start over rather than stall
            order = list(pool)
            self.solved.clear()
        self.rng.shuffle(order)
        self._order = order
        self.epoch += 1

    def next(self, k: int) -> list[Problem]:
        out = []
        while len(out) < k:
            if self.easy and self.rng.random() < self.easy_pool_prob:
                out.append(self.easy[self.rng.choice(sorted(self.easy))])
                continue
            if not self._order:
                self._new_epoch()
            out.append(self._order.pop())
        return out

    def record(self, problem: Problem, all_correct: bool) -> None:
        if all_correct:
            self.solved.add(problem.id)
            if self.easy_pool_prob > 0:
                self.easy[problem.id] = problem
        else:
            self.solved.discard(problem.id)
            self.easy.pop(problem.id, None)


@dataclass
class RolloutBatch:
    """One step's data in the trainer's layout; every tensor is [B, L-1] unless noted."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # which positions are response tokens
    loss_mask: torch.Tensor  # response_mask minus what carries no loss (overlong filtering)
    advantages: torch.Tensor
    engine_logprobs: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None  # critic targets
    correct: torch.Tensor | None = None  # [B] bool
    plan: list[list[list[torch.Tensor]]] | None = field(default=None, repr=False)

    _ROWS = ("response_mask", "loss_mask", "advantages", "engine_logprobs", "old_logprobs", "ref_logprobs",
             "old_values", "returns")

    def rows(self, idx: torch.Tensor) -> "RolloutBatch":
        """Select rows and trim the padding columns they do not need."""
        L = int(self.attention_mask[idx].sum(-1).max())
        trimmed = {name: None if getattr(self, name) is None else getattr(self, name)[idx, : L - 1] for name in self._ROWS}
        return RolloutBatch(self.input_ids[idx, :L], self.attention_mask[idx, :L],
                            correct=None if self.correct is None else self.correct[idx], **trimmed)


def _micro_batches(idx: torch.Tensor, size: int, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Split one mini-batch into micro-batches of `size` rows; with `lengths`, rows of similar length
    go together (length bucketing), so each micro-batch is trimmed to little padding. The gradient
    is a sum over micro-batches and does not change."""
    if lengths is not None:
        idx = idx[torch.sort(lengths[idx], stable=True).indices]
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _update_plan(B: int, epochs: int, mini_batches: int, micro: int, gen: torch.Generator,
                 lengths: torch.Tensor | None = None) -> list[list[list[torch.Tensor]]]:
    """For each epoch, its mini-batches (one optimizer step each), each split into length-bucketed
    micro-batches of row indices. Drawn once per step so the old-policy forward can use the exact
    same micro-batches as the first update: identical inputs, identical kernels, a ratio of exactly 1."""
    plan = []
    for _ in range(epochs):
        perm = torch.randperm(B, generator=gen)
        plan.append([_micro_batches(mb, micro, lengths) for mb in torch.tensor_split(perm, mini_batches) if len(mb)])
    return plan


def _first_response_col(response_mask: torch.Tensor) -> int:
    """The first log-prob column any row needs: the trainer's LM head skips the prompt before it."""
    cols = response_mask.any(0).nonzero()
    return int(cols[0]) if len(cols) else 0


@torch.no_grad()
def _forward_rows(fn: Callable[..., torch.Tensor], batch: RolloutBatch, mini_batches: list[list[torch.Tensor]],
                  prefix_for: Callable[[torch.Tensor], SharedPrefix | None] | None = None) -> torch.Tensor:
    """fn(rows, idx, prefix) over each micro-batch of `mini_batches` (no grad), scattered back into a
    [B, L-1] tensor. `prefix_for(mini-batch rows)` gives the shared prompt forwards, built per
    mini-batch exactly as the update builds them, so both passes compute the same numbers."""
    out = torch.zeros_like(batch.response_mask)
    for micro_batches in mini_batches:
        prefix = prefix_for(torch.cat(micro_batches)) if prefix_for else None
        for idx in micro_batches:
            v = fn(batch.rows(idx), idx, prefix)
            out[idx, : v.shape[1]] = v
    return out * batch.response_mask


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return float((x * mask).sum() / n) if n > 0 else 0.0


@dataclass
class Collected:
    problems: list[Problem]  # one per completion
    completions: list[Completion]
    rewards: torch.Tensor  # [B]
    group_index: torch.Tensor  # [B]
    terms: dict[str, list[float]]
    info: dict[str, float]


def group_signal(rewards: torch.Tensor, correct: list[bool], group_size: int) -> tuple[float, float]:
    """(fraction of groups whose total rewards are all equal, fraction all right or all wrong).

    The first is the groups with zero advantage and no gradient. The second is what dynamic sampling
    drops (DAPO filters on accuracy); with a format or length term in the reward such a group can still
    carry signal, so the two differ and both are logged."""
    flat = rewards.view(-1, group_size)
    grouped = torch.tensor(correct, dtype=torch.float32).view(-1, group_size)
    equal = lambda g: float((g.max(1).values == g.min(1).values).float().mean())  # noqa: E731
    return equal(flat), equal(grouped)


class RLTrainer:
    """Owns the policy, the optional reference and critic, the optimizers and the engine."""

    def __init__(self, cfg: RunConfig, model, tokenizer, engine, metrics: MetricsWriter | None = None):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.engine = engine
        self.metrics = metrics
        use_cpu_training_attention(model)  # before the reference and critic copies are made
        algo = cfg.algo
        self.advantage_fn = get_advantage(algo.advantage)
        self.policy_loss_fn = get_policy_loss(algo.policy_loss)
        self.kl_fn = get_kl_estimator(algo.kl_estimator) if algo.kl_coef > 0 else None
        self.correction_fn = get_correction(algo.correction) if algo.tis_cap > 0 else None
        if algo.advantage == "gae" and not algo.critic:
            from r1lab.errors import ConfigError

            raise ConfigError("algo.advantage=gae needs a value model: set algo.critic=true")
        # no reference model at all when the KL coefficient is 0 (no wasted forward, no memory)
        self.ref_model = None
        if algo.kl_coef > 0:
            self.ref_model = copy.deepcopy(model).eval()
            self.ref_model.requires_grad_(False)
        self.critic = self.critic_optimizer = None
        if algo.critic:
            from r1lab.train.critic import ValueModel

            self.critic = ValueModel(model)
            self.critic_optimizer = make_optimizer(self.critic, algo.critic_lr, cfg.train.weight_decay)
        self.optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
        self.scheduler = warmup_constant(self.optimizer, cfg.train.warmup_steps)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.entropy_coef = algo.entropy_coef
        self.step = 0
        if cfg.train.bf16:
            from r1lab.models import warn_if_emulated_bf16

            warn_if_emulated_bf16("train.bf16")

    def autocast(self):
        """bf16 compute for the trainer's forwards (train.bf16); parameters, gradients and the
        optimizer state stay float32 (the master weights), log-softmax runs in float32."""
        return torch.autocast(model_device(self.model).type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16)

    def logprobs(self, model, b: RolloutBatch, T: float, with_entropy: bool = False, entropy_grad: bool = True,
                 prefix: SharedPrefix | None = None, idx: torch.Tensor | None = None):
        """Log-probs (and entropy) of rows `b`; with `prefix`, the rows `idx` of the batch it was
        built on run only their responses on top of their prompts' shared K/V."""
        with self.autocast(), trainer_attention():
            if prefix is not None:
                return prefix.logprobs(idx, T, with_entropy=with_entropy, entropy_grad=entropy_grad)
            return token_logprobs(model, b.input_ids, b.attention_mask, T, with_entropy=with_entropy,
                                  start=_first_response_col(b.response_mask), entropy_grad=entropy_grad)

    def shared_prefix(self, model, batch: RolloutBatch, rows: torch.Tensor) -> SharedPrefix | None:
        """Each distinct prompt among `rows` run once through `model` (train.shared_prefix), or None."""
        if not self.cfg.train.shared_prefix:
            return None
        with self.autocast(), trainer_attention():
            return SharedPrefix.build(model, batch.input_ids, batch.attention_mask, batch.response_mask, rows)

    @property
    def params(self) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              max_new_tokens=scheduled(self.cfg.train.max_new_tokens_schedule, self.step, s.max_new_tokens))

    # -- sample and score ----------------------------------------------------------------------

    def rollout(self, prompts: list[Problem], seed: int) -> tuple[list[Problem], list[Completion]]:
        G = self.cfg.train.group_size
        completions = self.engine.generate(prompts, self.params, n=G, seed=seed)
        return [p for p in prompts for _ in range(G)], completions

    def collect(self, sampler: PromptSampler, seed_step: int | None = None) -> Collected:
        """Generate and score prompts_per_step groups. Under dynamic sampling (DAPO), groups whose
        outcomes (verdicts, not the shaped reward) are all equal are dropped and new prompts are
        sampled, up to max_sampling_rounds; GPG's variant keeps them but samples again until
        min_valid_fraction of the groups carry signal. The sampling seeds follow `seed_step`
        (default: the current step)."""
        cfg, train = self.cfg, self.cfg.train
        P, G = train.prompts_per_step, train.group_size
        keep_zero_var = train.min_valid_fraction > 0
        valid_groups: list[tuple] = []
        flat_groups: list[tuple] = []
        rounds = dropped = gen_tokens = generated = 0
        t_gen = t_score = 0.0
        while True:
            prompts = sampler.next(P if not train.dynamic_sampling else max(1, P - len(valid_groups)))
            t0 = time.time()
            step = self.step if seed_step is None else seed_step
            # modulo 2**62: a negative seed_step still gives a seed every engine accepts
            problems, completions = self.rollout(prompts, seed=(cfg.seed * 1_000_003 + step * 101 + rounds) % 2**62)
            t1 = time.time()
            compute_rewards(problems, completions, cfg.reward.terms,
                            timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers,
                            settings={"max_new_tokens": self.params.max_new_tokens, **cfg.reward.settings})
            t_gen, t_score = t_gen + t1 - t0, t_score + time.time() - t1
            gen_tokens += sum(len(c.response_ids) for c in completions)
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
                "throughput/gen_tokens_per_s": gen_tokens / max(t_gen, 1e-9)}
        return Collected(problems, completions, torch.tensor([c.reward for c in completions], dtype=torch.float32),
                         torch.arange(len(groups)).repeat_interleave(G), terms, info)

    # -- estimate --------------------------------------------------------------------------------

    def make_batch(self, completions: list[Completion], rewards: torch.Tensor, group_index: torch.Tensor) -> RolloutBatch:
        algo, train = self.cfg.algo, self.cfg.train
        t = pad_sequences([c.prompt_ids for c in completions], [c.response_ids for c in completions], self.pad_id)
        mask = t["response_mask"]
        loss_mask = mask
        if algo.overlong_filter:  # DAPO: a truncated response is no evidence either way
            keep = torch.tensor([not c.truncated for c in completions], dtype=mask.dtype)
            loss_mask = mask * keep.unsqueeze(-1)
        batch = RolloutBatch(
            t["input_ids"], t["attention_mask"], mask, loss_mask, torch.zeros_like(mask),
            scatter_response_values([c.logprobs for c in completions], mask),
            correct=torch.tensor([bool(c.verdict and c.verdict.correct) for c in completions]),
        )
        T = self.params.logprob_temperature
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
        batch.plan = _update_plan(len(completions), train.ppo_epochs, train.mini_batches, train.micro_batch_size, gen,
                                  lengths=batch.attention_mask.sum(-1))
        first_pass = batch.plan[0]
        # a separate "old policy" forward only when the policy changes before the last update uses
        # it; with one update per rollout the old log-probs are the current ones, detached, and the
        # ratio is exactly 1. GPG's loss has no ratio at all.
        if train.ppo_epochs * train.mini_batches > 1 and algo.policy_loss != "gpg":
            batch.old_logprobs = _forward_rows(lambda b, idx, pre: self.logprobs(self.model, b, T, prefix=pre, idx=idx)[0],
                                               batch, first_pass, lambda rows: self.shared_prefix(self.model, batch, rows))
        if self.ref_model is not None:
            batch.ref_logprobs = _forward_rows(lambda b, idx, pre: self.logprobs(self.ref_model, b, T, prefix=pre, idx=idx)[0],
                                               batch, first_pass, lambda rows: self.shared_prefix(self.ref_model, batch, rows))
        token_penalty = None
        if self.kl_fn is not None and algo.kl_in_reward:  # PPO / REINFORCE++: r_t -= beta * KL_t
            token_penalty = algo.kl_coef * self.kl_fn(batch.engine_logprobs, batch.ref_logprobs) * mask
        if self.critic is not None:
            batch.old_values = _forward_rows(lambda b, idx, pre: self.critic(b.input_ids, b.attention_mask), batch, first_pass)
            token_rewards = last_token_rewards(rewards, mask)
            if token_penalty is not None:
                token_rewards = token_rewards - token_penalty
            # VC-PPO: the critic's targets use their own lambda (1.0: unbiased Monte-Carlo-like)
            _, batch.returns = gae(token_rewards, batch.old_values, mask, algo.gamma, algo.lam_critic)
        batch.advantages = self.advantage_fn(
            rewards, mask, group_index, std_eps=algo.adv_std_eps, token_penalty=token_penalty, gamma=algo.gamma,
            values=batch.old_values, lam_actor=algo.lam_actor, length_adaptive_alpha=algo.length_adaptive_alpha,
        )
        return batch

    # -- update ----------------------------------------------------------------------------------

    def update(self, batch: RolloutBatch, policy: bool = True) -> dict[str, float]:
        """PPO-style epochs over the batch. `policy=False` trains only the critic (value pretraining)."""
        algo, train = self.cfg.algo, self.cfg.train
        T = self.params.logprob_temperature
        norm_len = algo.loss_agg_norm or float(self.params.max_new_tokens)
        if batch.plan is None:
            gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
            batch.plan = _update_plan(batch.input_ids.shape[0], train.ppo_epochs, train.mini_batches, train.micro_batch_size, gen,
                                      lengths=batch.attention_mask.sum(-1))
        entropy_on = self.entropy_coef > 0 and (not algo.entropy_control or self._last_entropy < algo.entropy_target)
        sums: dict[str, float] = {}
        add = lambda k, v: sums.__setitem__(k, sums.get(k, 0.0) + float(v))  # noqa: E731
        tokens_total = 0.0
        n_updates = 0
        self.model.train()
        for epoch in batch.plan:
            for micro_batches in epoch:
                mb = torch.cat(micro_batches)
                num_seqs = len(mb)
                num_tokens = int(batch.loss_mask[mb].sum())
                if policy:
                    self.optimizer.zero_grad(set_to_none=True)
                if self.critic is not None:
                    self.critic_optimizer.zero_grad(set_to_none=True)
                # one autocast context per optimizer step: each weight is cast to bf16 once for all
                # its micro-batches (the cache lives until the outermost context exits), not once each
                with self.autocast(), EmbeddingGradInPlace(self.model, enabled=policy):
                    # each prompt of the mini-batch once, its K/V shared by its rows' micro-batches
                    prefix = self.shared_prefix(self.model, batch, mb) if policy else None
                    for idx in micro_batches:
                        sub = batch.rows(idx)
                        mask = sub.loss_mask
                        agg = lambda x: aggregate(x, mask, algo.loss_agg, num_seqs, num_tokens, norm_len)  # noqa: E731
                        if self.critic is not None:
                            values = self.critic(sub.input_ids, sub.attention_mask)
                            vl = aggregate(value_loss(values, sub.old_values, sub.returns, algo.value_clip),
                                           sub.response_mask, "token-mean", num_seqs, int(batch.response_mask[mb].sum()))
                            vl.backward()
                            add("value_loss", vl.detach())
                            add("value_sq_err", ((values.detach() - sub.returns) ** 2 * sub.response_mask).sum())
                        if not policy:
                            tokens_total += float(sub.response_mask.sum())
                            continue
                        logprobs, entropy = self.logprobs(self.model, sub, T, with_entropy=True, entropy_grad=entropy_on,
                                                          prefix=prefix, idx=idx)
                        old = sub.old_logprobs if sub.old_logprobs is not None else logprobs.detach()
                        per_token, stats = self.policy_loss_fn(
                            logprobs, old, sub.advantages, clip_eps_low=algo.clip_eps_low,
                            clip_eps_high=algo.clip_eps_high, dual_clip_c=algo.dual_clip_c, response_mask=mask,
                        )
                        if self.correction_fn is not None:  # TIS: the tokens came from the engine, not pi_old
                            w = self.correction_fn(old, sub.engine_logprobs, algo.tis_cap, sub.response_mask)
                            per_token = per_token * w
                            stats = {**stats, "tis_weight": w, "tis_capped": (w >= algo.tis_cap).float()}
                        pg_loss = agg(per_token)
                        loss = pg_loss
                        # KL and entropy use the same aggregation as the policy loss (verl#3986)
                        if self.kl_fn is not None:
                            kl = self.kl_fn(logprobs, sub.ref_logprobs)
                            if not algo.kl_in_reward:
                                loss = loss + algo.kl_coef * agg(kl)
                            add("kl", (kl.detach() * mask).sum())
                        if entropy_on:
                            loss = loss - self.entropy_coef * agg(entropy)
                        if algo.pos_nll_coef and sub.correct is not None and bool(sub.correct.any()):
                            nll = agg(positive_nll(logprobs, mask, sub.correct))
                            loss = loss + algo.pos_nll_coef * nll
                            add("pos_nll", nll.detach())
                        loss.backward()
                        tokens_total += float(mask.sum())
                        add("loss", loss.detach())
                        add("pg_loss", pg_loss.detach())
                        add("entropy", (entropy.detach() * mask).sum())
                        for name, v in stats.items():
                            add(name, (v * mask).sum())
                        # how far the engine's sampling log-probs are from the trainer's (PITFALLS #6)
                        if sub.old_logprobs is None:
                            diff = (sub.engine_logprobs - logprobs.detach()).abs() * sub.response_mask
                            sums["logprob_diff_max"] = max(sums.get("logprob_diff_max", 0.0), float(diff.max()))
                            add("logprob_diff_sum", diff.sum())
                if prefix is not None:  # the prompts' share of the gradient, once for all micro-batches
                    prefix.backward()
                if policy:
                    add("grad_norm", grad_norm_clip(self.model, train.grad_clip))
                    self.optimizer.step()
                if self.critic is not None:
                    add("critic_grad_norm", grad_norm_clip(self.critic, train.grad_clip))
                    self.critic_optimizer.step()
                n_updates += 1
        out: dict[str, float] = {}
        tokens = max(tokens_total, 1.0)
        if self.critic is not None:
            out["critic/value_loss"] = sums["value_loss"] / train.ppo_epochs
            out["critic/value_mse"] = sums["value_sq_err"] / tokens
            out["critic/grad_norm"] = sums["critic_grad_norm"] / n_updates
        if not policy:
            return out
        self.scheduler.step()
        self._last_entropy = sums["entropy"] / tokens
        out.update({
            "loss/total": sums["loss"] / train.ppo_epochs,
            "loss/policy": sums["pg_loss"] / train.ppo_epochs,
            "policy/entropy": self._last_entropy,
            "policy/entropy_coef": self.entropy_coef if entropy_on else 0.0,
            "policy/grad_norm": sums["grad_norm"] / n_updates,
            "policy/lr": self.scheduler.get_last_lr()[0],
        })
        for name in ("clip_frac", "clip_frac_high", "clip_frac_low", "ratio", "tis_weight", "tis_capped"):
            if name in sums:
                out[f"policy/{name}"] = sums[name] / tokens
        if "kl" in sums:
            out["policy/kl"] = sums["kl"] / tokens
        if "pos_nll" in sums:
            out["loss/pos_nll"] = sums["pos_nll"] / train.ppo_epochs
        # engine vs trainer log-probs of the sampled tokens, every step (PITFALLS #6, Yao et al. 2025)
        if "logprob_diff_sum" in sums:
            out["rollout/logprob_diff_mean"] = sums["logprob_diff_sum"] / max(float(batch.response_mask.sum()), 1)
            out["rollout/logprob_diff_max"] = sums["logprob_diff_max"]
        elif batch.old_logprobs is not None:
            diff = (batch.engine_logprobs - batch.old_logprobs).abs() * batch.response_mask
            out["rollout/logprob_diff_mean"] = float(diff.sum()) / max(float(batch.response_mask.sum()), 1)
            out["rollout/logprob_diff_max"] = float(diff.max())
        if algo.entropy_control:  # Skywork-OR1: adapt the coefficient to the measured entropy
            self.entropy_coef = adaptive_entropy_coef(self.entropy_coef, self._last_entropy, algo.entropy_target,
                                                      algo.entropy_delta, algo.entropy_max_coef)
        return out

    _last_entropy = float("inf")

    # -- one step --------------------------------------------------------------------------------

    def train_step(self, sampler: PromptSampler) -> tuple[dict[str, float], list[Completion]]:
        cfg = self.cfg
        if cfg.train.curriculum:
            sampler.set_stage(scheduled(cfg.train.curriculum, self.step, min(sampler.pools)))
        max_new_tokens = self.params.max_new_tokens  # this step's context limit
        t0 = time.time()
        col = self.collect(sampler)
        t1 = time.time()
        batch = self.make_batch(col.completions, col.rewards, col.group_index)
        t2 = time.time()
        stats = self.update(batch)
        t3 = time.time()
        self.step += 1
        completions, rewards = col.completions, col.rewards
        lengths = [len(c.response_ids) for c in completions]
        correct = [bool(c.verdict and c.verdict.correct) for c in completions]
        G = cfg.train.group_size
        zero_variance, same_correctness = group_signal(rewards, correct, G)
        m: dict[str, Any] = {
            "reward/total": float(rewards.mean()),
            **{f"reward/{k}": mean(v) for k, v in col.terms.items()},
            "accuracy": mean(correct),
            "response/length": mean(lengths),
            "response/length_correct": mean([l for l, ok in zip(lengths, correct) if ok]) if any(correct) else None,
            "response/length_wrong": mean([l for l, ok in zip(lengths, correct) if not ok]) if not all(correct) else None,
            "response/truncated": mean(c.truncated for c in completions),
            "response/unparsable": mean(bool(c.verdict and c.verdict.status == "unparsable") for c in completions),
            "batch/zero_variance_groups": zero_variance,
            "batch/same_correctness_groups": same_correctness,
            "adv/abs_mean": _masked_mean(batch.advantages.abs(), batch.response_mask),
            "adv/abs_max": float((batch.advantages.abs() * batch.response_mask).max()),
            "adv/mean": _masked_mean(batch.advantages, batch.response_mask),
            "sampling/max_new_tokens": max_new_tokens,
            "data/epoch": sampler.epoch,
            "data/stage": sampler.stage,
            "data/dropped_solved": sampler.dropped_last_epoch,
            "data/solved": len(sampler.solved),
            "data/easy_pool": len(sampler.easy),
            **col.info,
            **stats,
            "time/reference": t2 - t1,  # old-policy, reference and critic forwards
            "time/train": t3 - t2,
            "time/step": t3 - t0,
            "throughput/train_tokens_per_s": int(batch.attention_mask.sum()) * cfg.train.ppo_epochs / max(t3 - t2, 1e-9),
        }
        return m, completions

    def pretrain_critic(self, sampler: PromptSampler) -> list[dict[str, float]]:
        """VC-PPO value pretraining: regress the critic on returns of the fixed starting policy."""
        history = []
        n = self.cfg.algo.value_pretrain_steps
        for i in range(n):
            # steps -n .. -1 (as logged): each batch sampled with its own seeds, none of them an RL step's
            col = self.collect(sampler, seed_step=i - n)
            batch = self.make_batch(col.completions, col.rewards, col.group_index)
            history.append(self.update(batch, policy=False))
            if self.metrics:
                self.metrics.write(-(self.cfg.algo.value_pretrain_steps - i), {"phase": "value_pretrain", **history[-1]})
        return history


def train_rl(
    cfg: RunConfig,
    model,
    tokenizer,
    engine,
    train_problems: list[Problem] | dict[int, list[Problem]],
    metrics: MetricsWriter | None = None,
    samples: MetricsWriter | None = None,
    on_eval: Callable[[int], dict[str, float]] | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run cfg.train.steps RL steps; returns the metrics of every step. `train_problems` may be a
    dict difficulty -> problems for a curriculum (cfg.train.curriculum)."""
    trainer = RLTrainer(cfg, model, tokenizer, engine, metrics)
    sampler = PromptSampler(train_problems, seed=cfg.seed, history_resampling=cfg.train.history_resampling,
                            easy_pool_prob=cfg.train.easy_pool_prob)
    if cfg.algo.critic and cfg.algo.value_pretrain_steps:
        trainer.pretrain_critic(sampler)
    history = []
    warned = False
    bar = tqdm(range(cfg.train.steps), desc="rl", unit="step", disable=not show_progress, dynamic_ncols=True)
    for step in bar:
        m, completions = trainer.train_step(sampler)
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
    trainer.history = history
    return history

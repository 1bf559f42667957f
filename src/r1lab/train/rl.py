"""Reinforcement learning from verifiable rewards: the controller.

One step, as the papers' algorithm box has it (`RLTrainer.train_step`):

    prompts      <- sampler (curriculum stage, history resampling, easy pool)
    completions  <- engine.generate(prompts, group_size each)                        (sample)
    rewards      <- verifiers + weighted reward terms                                 (score)
                    [dynamic sampling: drop groups with one outcome, sample again]
    advantages   <- the registered estimator, with the critic's values if it takes them (estimate)
    policy, critic <- epochs of mini-batch updates: registered policy loss + KL + entropy (update)
    engine       <- the new policy weights, versioned                                 (sync)
    log everything

The controller talks to two interfaces only: an `Engine` (rollout/base.py) that samples, and a
`PolicyWorker` (train/policy.py) that holds the models and updates them. Methods differ by
registered functions and their settings (train/methods.py), never by a branch on a method's name.

With cluster.off_policy_steps=K >= 1 a producer thread samples and scores the batches of the coming
steps while the trainer trains, K steps ahead at most: the batch of step j comes from the weights
after step j - K (train/async_buffer.py: the producer waits for them; nothing is dropped). After each
update the trainer publishes the new weights there and goes on; the producer loads them before its
next batch, or, with cluster.partial_rollouts, at the next token boundary of the generation in flight
(each token then records the version that sampled it, and its log-prob is that version's). Each
sample carries the policy version it came from; `staleness` (the trainer's version minus the oldest
sample's) and its histogram per step are logged. An engine that samples the trainer's own model gets
a private copy of it (rollout/snapshot.py) so the update cannot change the weights under the sampler.
Where the wall time goes, per thread, is written to timeline.jsonl (train/timeline.py).
"""

from __future__ import annotations

import copy
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from r1lab.algos.advantages import gae, last_token_rewards
from r1lab.algos.credit import char_spans_to_tokens, span_credit_advantage, token_char_ends
from r1lab.config import RunConfig
from r1lab.errors import ConfigError
from r1lab.health import HealthMonitor
from r1lab.records import Completion, Problem
from r1lab.reward_registry import get_span_credit
from r1lab.rollout import build_engine
from r1lab.rollout.base import Engine, LiveModelEngine, SamplingParams
from r1lab.runs import MetricsWriter
from r1lab.train.async_buffer import Closed, RolloutBuffer
from r1lab.train.batch import RolloutBatch, rollout_batch, update_plan
from r1lab.train.checkpoint import save_state
from r1lab.train.collect import Collected, collect
from r1lab.train.episodes import EpisodeRollout, check_episode_engine, is_episodic, response_budget
from r1lab.train.methods import bind_method
from r1lab.train.policy import LocalPolicyWorker, PolicyWorker
from r1lab.train.prm import ImplicitPRM
from r1lab.train.sampler import PromptSampler, scheduled
from r1lab.train.step_metrics import batch_metrics, behaviour_logprob_gap, hack_metrics, sample_metrics, sampler_metrics
from r1lab.train.timeline import Timeline

PRODUCER = "r1lab-producer"  # the producer thread's name


class RLTrainer:
    """The RL loop over an engine and a policy worker."""

    def __init__(self, cfg: RunConfig, model, tokenizer, engine: Engine, policy: PolicyWorker | None = None):
        # the config comes checked and resolved (stages.check_run_config): the trainer decides nothing
        # about it again, it only refuses a combination it cannot train correctly
        if cfg.cluster.off_policy_steps > 0 and not cfg.algo.correction:
            raise ConfigError(f"cluster.off_policy_steps={cfg.cluster.off_policy_steps} needs an off-policy correction "
                              "(algo.correction); stages.check_run_config sets tis when none is chosen")
        check_episode_engine(cfg, engine)
        self.cfg = cfg
        self.method = bind_method(cfg.algo)
        self._owned: list[Any] = []  # workers this trainer started, closed by close()
        if cfg.cluster.rollout_workers > 0 and not _is_rollout_group(engine):
            raise ConfigError("cluster.rollout_workers > 0: the engine must be the Ray rollout group "
                              "(r1lab.train.rl.rl_engine builds it)")
        from r1lab.rollout.snapshot import SnapshotEngine

        if cfg.cluster.off_policy_steps > 0 and isinstance(engine, LiveModelEngine):
            # the background sampler must not see the update change the weights under it
            engine = SnapshotEngine(model, lambda m: build_engine(m, tokenizer, cfg.rollout))
            self._owned.append(engine)
        if cfg.cluster.partial_rollouts:
            from r1lab.rollout.fast import FastEngine

            if not (isinstance(engine, SnapshotEngine) and isinstance(engine.engine, FastEngine)) or is_episodic(cfg):
                raise ConfigError(f"cluster.partial_rollouts: the engine is {type(getattr(engine, 'engine', engine)).__name__}"
                                  f"{' with multi-turn episodes' if is_episodic(cfg) else ''}; partial rollouts need the "
                                  "fast engine in the controller's process, one-turn rollouts, cluster.off_policy_steps >= 1")
        self.engine = engine
        self.snapshot = isinstance(engine, SnapshotEngine)  # the producer samples a private copy of the model
        self.score = None  # compute_rewards in this process
        if cfg.cluster.reward_workers > 0:
            from r1lab.cluster.reward_group import RayRewardGroup

            self.score = RayRewardGroup(cfg)
            self._owned.append(self.score)
        self.buffer: RolloutBuffer | None = None  # off-policy: where the producer leaves its batches
        self._producer: threading.Thread | None = None
        # the producer holds this while it loads weights or samples: an engine shared with eval
        # (not a private snapshot) is not used by both at once
        self._engine_lock = threading.Lock()
        self.timeline = Timeline()
        self._span_step = threading.local()  # the step each thread is sampling for, for the timeline
        if policy is None and cfg.cluster.trainer_workers > 0:
            from r1lab.train.distributed import PolicyWorkerGroup

            policy = PolicyWorkerGroup(cfg, model, self.method)
        self.policy = policy if policy is not None else LocalPolicyWorker(cfg, model, self.method)
        # PRIME: an implicit process reward model, copied from the starting policy
        self.prm = ImplicitPRM(cfg, model) if self.method.needs_prm else None
        self.prm_stats: dict[str, float] = {}
        self.credit_stats: dict[str, float] = {}
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.step = 0

    @property
    def params(self) -> SamplingParams:
        return self.params_at(self.step)

    def params_at(self, step: int) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              max_new_tokens=scheduled(self.cfg.train.max_new_tokens_schedule, step, s.max_new_tokens))

    # -- sample and score --------------------------------------------------------------------------

    def rollout(self, prompts: list[Problem], seed: int, params: SamplingParams | None = None,
                episodes: EpisodeRollout | None = None) -> list[Completion]:
        """group_size completions per prompt from the engine (or episodes, each one Completion),
        each stamped with the policy version."""
        version = self.engine.policy_version
        who = "producer" if threading.current_thread().name == PRODUCER else "trainer"
        with self.timeline.span(who, "generate", getattr(self._span_step, "step", self.step)):
            if episodes is not None:
                completions = episodes.rollout(prompts, seed)
            else:
                completions = self.engine.generate(prompts, params or self.params, n=self.cfg.train.group_size, seed=seed)
        for c in completions:
            c.policy_version = version
        return completions

    def collect(self, sampler: PromptSampler, seed_step: int | None = None, params_step: int | None = None) -> Collected:
        """One step's scored groups, sampled with the seeds of `seed_step` (default: this step) and the
        sampling settings of `params_step` (default: this step)."""
        step = self.step if seed_step is None else seed_step
        params = self.params_at(self.step if params_step is None else params_step)
        # modulo 2**62: a negative seed_step still gives a seed every engine accepts
        seed = (self.cfg.seed * 1_000_003 + step * 101) % 2**62
        if not is_episodic(self.cfg):
            return collect(self.cfg, sampler, params, lambda prompts, seed: self.rollout(prompts, seed, params),
                           seed=seed, score=self.score)
        episodes = EpisodeRollout(self.cfg, self.engine, params, self.score)
        col = collect(self.cfg, sampler, params, lambda prompts, seed: self.rollout(prompts, seed, params, episodes),
                      seed=seed, score=episodes.score)
        col.info.update(episodes.metrics(col.completions))
        return col

    def _collect_step(self, sampler: PromptSampler, step: int) -> Collected:
        """Step `step`'s batch: its curriculum stage, seeds and sampling settings."""
        if self.cfg.train.curriculum:
            sampler.set_stage(scheduled(self.cfg.train.curriculum, step, min(sampler.pools)))
        self._span_step.step = step
        return self.collect(sampler, seed_step=step, params_step=step)

    # -- the producer (off_policy_steps >= 1) ------------------------------------------------------

    def _start_producer(self, sampler: PromptSampler) -> None:
        c = self.cfg.cluster
        self.buffer = RolloutBuffer(c.off_policy_steps, self.step, self.policy.version,
                                    self.cfg.train.ppo_epochs * self.cfg.train.mini_batches, c.timeout_s)
        self.buffer.publish(self.policy.version, None)  # the engine holds these weights already
        if c.partial_rollouts:
            def on_swap(version: int, t0: float, t1: float) -> None:
                self.timeline.add("producer", "sync", getattr(self._span_step, "step", -1), t0, t1)

            self.engine.interrupt_with(lambda: self.buffer.newer(self.engine.policy_version), on_swap)
        self._producer = threading.Thread(target=self._produce, args=(sampler, self.step), name=PRODUCER, daemon=True)
        self._producer.start()

    def _produce(self, sampler: PromptSampler, first: int) -> None:
        """Sample and score the batches of steps first .. train.steps - 1 in order, each from the
        weights the buffer allows (exactly K steps old, or the newest with partial rollouts)."""
        buffer, partial = self.buffer, self.cfg.cluster.partial_rollouts
        try:
            for j in range(first, self.cfg.train.steps):
                buffer.begin(j, copy.deepcopy(sampler.state_dict()))
                with self.timeline.span("producer", "wait", j):
                    version, weights = buffer.weights_for(j, freshest=partial)
                with self._engine_lock:
                    if version != self.engine.policy_version:
                        with self.timeline.span("producer", "sync", j):
                            if self.snapshot:
                                self.engine.load_params(weights, version)
                            else:
                                self.engine.load_weights(iter(weights), version)
                    col = self._collect_step(sampler, j)
                    gap = self._behaviour_gap(col.completions, j)
                # the sampler's metrics and the engine's cluster/* counters as this batch left them (the
                # trainer reads them later, when the producer may have gone on)
                cluster = {k: v for k, v in self.engine.stats.items() if k.startswith("cluster/")}
                buffer.put(j, (col, {**sampler_metrics(sampler), **cluster, **gap}),
                           min(_oldest_version(c) for c in col.completions))
        except Closed:
            return
        except BaseException as e:  # noqa: BLE001 -- handed to the trainer, which raises it
            buffer.fail(e)

    def _behaviour_gap(self, completions: list[Completion], step: int) -> dict[str, float]:
        """The engine/trainer log-prob gap of the first health.logprob_gap_samples samples, scored by
        the producer's private copy of the policy while it still holds the weights that sampled them
        (the last version loaded: with partial rollouts, the tokens after the last swap)."""
        n = self.cfg.health.logprob_gap_samples if self.cfg.health.enabled else 0
        if not self.snapshot or n == 0:
            return {}
        with self.timeline.span("producer", "check", step):
            return behaviour_logprob_gap(self.engine.model, completions[:n], self.engine.policy_version, self.pad_id,
                                         self.params_at(step).logprob_temperature, bf16=self.cfg.train.bf16)

    def _publish(self) -> None:
        """The new weights to the producer: a copy the update cannot change (the live model's
        parameters for a snapshot engine, else the engine weights, adapters merged)."""
        weights = self.policy.engine_weights()  # a trainer group loads the controller's copy here
        if self.snapshot:
            published = self.engine.copy_live()
        else:
            published = [(n, t.detach().clone()) for n, t in weights]
        self.buffer.publish(self.policy.version, published)

    def _stop_producer(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
        if self._producer is not None:
            self._producer.join(timeout=self.cfg.cluster.timeout_s)
            self._producer = None

    def sampler_state(self, sampler: PromptSampler) -> dict:
        """The prompt sampler's state to checkpoint after this step: off-policy, the state before
        the producer drew the next step's batch (a resumed run draws the same prompts again)."""
        if self.buffer is None or self.step >= self.cfg.train.steps:
            return sampler.state_dict()
        return self.buffer.sampler_state(self.step)

    def engine_quiet(self):
        """A context in which the producer does not use the engine (eval sharing it)."""
        return self._engine_lock if self.buffer is not None and not self.snapshot else nullcontext()

    # -- estimate ----------------------------------------------------------------------------------

    def make_batch(self, completions: list[Completion], rewards: torch.Tensor, group_index: torch.Tensor,
                   problems: list[Problem] | None = None) -> RolloutBatch:
        """The completions as a padded batch with its update plan, the old-policy / reference /
        value passes its method needs, and its advantages (plus the span credit of
        reward.token_credit, which reads each completion's `problems` entry)."""
        algo, train, method = self.cfg.algo, self.cfg.train, self.method
        params = self.params
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
        lengths = torch.tensor([len(c.prompt_ids) + len(c.response_ids) for c in completions])
        plan = update_plan(len(completions), train.ppo_epochs, train.mini_batches, train.micro_batch_size, gen, lengths)
        batch = rollout_batch(completions, self.pad_id, overlong_filter=algo.overlong_filter,
                              temperature=params.logprob_temperature,
                              max_new_tokens=response_budget(self.cfg, params.max_new_tokens), plan=plan)
        # a separate old-policy pass only when the policy changes before its last update uses it; with
        # one update per rollout the old log-probs are the current ones, detached, and the ratio is 1
        if train.ppo_epochs * train.mini_batches > 1 and method.needs_old_logprobs:
            batch.old_logprobs = self.policy.logprobs(batch, "policy")
        if self.policy.has_reference:
            batch.ref_logprobs = self.policy.logprobs(batch, "reference")
        context: dict[str, Any] = {}
        mask = batch.response_mask
        if method.kl is not None and algo.kl_in_reward:  # PPO / REINFORCE++: r_t -= beta * KL_t
            context["token_penalty"] = algo.kl_coef * method.kl(batch.engine_logprobs, batch.ref_logprobs) * mask
        if self.policy.has_critic:
            batch.old_values = self.policy.values(batch)
            context["values"] = batch.old_values
            token_rewards = last_token_rewards(rewards, mask)
            if "token_penalty" in context:
                token_rewards = token_rewards - context["token_penalty"]
            # VC-PPO: the critic's targets use their own lambda (1.0: unbiased Monte-Carlo-like)
            _, batch.returns = gae(token_rewards, batch.old_values, mask, algo.gamma, algo.lam_critic)
        if self.prm is not None:  # PRIME: the PRM's update on the outcomes and its per-token rewards
            context["process_rewards"], self.prm_stats = self.prm.score_and_update(batch, batch.correct.float())
        context["gamma"] = algo.gamma
        batch.advantages = method.advantage(rewards, mask, group_index,
                                            **{k: v for k, v in context.items() if k in method.advantage_context})
        if self.cfg.reward.token_credit:
            batch.advantages = batch.advantages + self._span_credit(completions, problems, group_index, mask)
        return batch

    def _span_credit(self, completions: list[Completion], problems: list[Problem] | None, group_index: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """reward.token_credit: each term's claims, mapped onto the response tokens, as advantages
        (algos/credit.py); their metrics in self.credit_stats."""
        if problems is None or len(problems) != len(completions):
            raise ValueError("reward.token_credit needs the problem of every completion (make_batch(..., problems=))")
        ends = [token_char_ends(self.tokenizer, c.response_ids, c.text) for c in completions]
        total = torch.zeros(mask.shape, dtype=torch.float32)
        self.credit_stats = {"credit/unaligned": float(sum(e is None for e in ends))}
        for name, coef in self.cfg.reward.token_credit.items():
            fn = get_span_credit(name)
            spans = [char_spans_to_tokens(fn(p, c.text), e) if e is not None else []
                     for p, c, e in zip(problems, completions, ends)]
            # right padding: response token j of row i sits at column len(prompt) - 1 + j of the mask
            credit = span_credit_advantage(spans, group_index, mask, [len(c.prompt_ids) - 1 for c in completions])
            values = [v for row in spans for *_, v in row]
            self.credit_stats[f"credit/{name}/claims"] = len(values) / len(completions)
            self.credit_stats[f"credit/{name}/value"] = sum(values) / len(values) if values else 0.0
            self.credit_stats[f"credit/{name}/abs"] = float(credit.abs().sum() / mask.sum().clamp(min=1))
            total += coef * credit
        return total

    # -- update ------------------------------------------------------------------------------------

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        stats = self.policy.update_critic(batch) if self.policy.has_critic else {}
        stats.update(self.policy.update_policy(batch))
        with self.timeline.span("trainer", "sync", self.step):
            if self.buffer is None:
                self.engine.load_weights(self.policy.engine_weights(), self.policy.version)
            elif self.step + 1 < self.cfg.train.steps:
                self._publish()
            else:  # the last step: the producer is done; the engine gets the final weights (eval uses them)
                self._stop_producer()
                self.engine.load_weights(self.policy.engine_weights(), self.policy.version)
        return stats

    # -- one step ----------------------------------------------------------------------------------

    def train_step(self, sampler: PromptSampler) -> tuple[dict[str, Any], list[Completion]]:
        """One step. Off-policy (cluster.off_policy_steps >= 1), the batch comes from the producer,
        which samples the coming steps' batches while this one trains."""
        cfg = self.cfg
        t0 = time.time()
        version = self.policy.version
        off_policy: dict[str, float] = {}
        if cfg.cluster.off_policy_steps > 0:
            if self._producer is None:
                self._start_producer(sampler)
            with self.timeline.span("trainer", "wait", self.step):
                (col, sampled), waited = self.buffer.take(self.step, version)      # sampled ahead
            off_policy = {"time/sample_wait": waited, **self._staleness_metrics(col.completions, version)}
        else:
            col = self._collect_step(sampler, self.step)                        # sample, score
            sampled = sampler_metrics(sampler)
        t1 = time.time()
        staleness = [version - _oldest_version(c) for c in col.completions]
        with self.timeline.span("trainer", "train", self.step):
            batch = self.make_batch(col.completions, col.rewards, col.group_index, col.problems)  # estimate
            t2 = time.time()
            stats = self.update(batch)                                              # update, sync
        t3 = time.time()
        if cfg.cluster.off_policy_steps > 0 and max(staleness) > 0:
            # the trainer's log-probs are of a newer version than the engine's: their gap is the policy's
            # drift since sampling plus any mismatch, logged apart; the health check reads the producer's
            # measurement under the sampling weights (`sampled`)
            for k in ("mean", "max"):
                if f"rollout/logprob_diff_{k}" in stats:
                    off_policy[f"rollout/offpolicy_diff_{k}"] = stats.pop(f"rollout/logprob_diff_{k}")
        self.step += 1
        m: dict[str, Any] = {
            **sample_metrics(col, cfg.train.group_size),
            **hack_metrics(col, cfg.reward.terms),
            **batch_metrics(batch),
            **sampled,
            **col.info,
            **stats,
            **self.prm_stats,
            **self.credit_stats,
            "staleness": max(staleness),  # policy versions between the trainer and the oldest sample
            "staleness/mean": sum(staleness) / len(staleness),
            **off_policy,
            "time/collect": t1 - t0,  # the controller's wait for this step's batch (0 when prefetched)
            **({k: v for k, v in self.engine.stats.items() if k.startswith("cluster/")} if self.buffer is None else {}),
            **({k: v for k, v in self.score.stats.items()} if self.score is not None else {}),
            "time/reference": t2 - t1,  # old-policy, reference and critic forwards
            "time/train": t3 - t2,
            "time/step": t3 - t0,
            "throughput/train_tokens_per_s": int(batch.attention_mask.sum()) * cfg.train.ppo_epochs / max(t3 - t2, 1e-9),
        }
        return m, col.completions

    def _staleness_metrics(self, completions: list[Completion], version: int) -> dict[str, float]:
        """staleness/hist/k: the share of samples whose oldest token is k steps behind the trainer
        (k = 0..K); partial rollouts add the share of samples with tokens of several versions and the
        mean staleness over tokens (in policy versions, as `staleness`)."""
        per_step = self.cfg.train.ppo_epochs * self.cfg.train.mini_batches
        K, n = self.cfg.cluster.off_policy_steps, len(completions)
        steps_behind = [(version - _oldest_version(c)) // per_step for c in completions]
        m: dict[str, float] = {f"staleness/hist/{k}": sum(s == k for s in steps_behind) / n for k in range(K + 1)}
        if self.cfg.cluster.partial_rollouts:
            tokens = [version - v for c in completions for v in (c.token_versions or [c.policy_version] * len(c.response_ids))]
            m["staleness/tokens_mean"] = sum(tokens) / max(len(tokens), 1)
            m["partial/mixed_samples"] = sum(len(set(c.token_versions or ())) > 1 for c in completions) / n
        return m

    def close(self) -> None:
        """Stop the producer and the workers this trainer started."""
        self._stop_producer()
        self.timeline.close()
        for w in self._owned:
            w.close()
        self._owned = []

    def pretrain_critic(self, sampler: PromptSampler, metrics: MetricsWriter | None = None) -> list[dict[str, float]]:
        """VC-PPO value pretraining: regress the critic on returns of the fixed starting policy."""
        history = []
        steps = self.cfg.algo.value_pretrain_steps
        for i in range(steps):
            # steps -n .. -1 (as logged): each batch sampled with its own seeds, none of them an RL step's
            col = self.collect(sampler, seed_step=i - steps)
            history.append(self.policy.update_critic(self.make_batch(col.completions, col.rewards, col.group_index,
                                                                          col.problems)))
            if metrics:
                metrics.write(-(steps - i), {"phase": "value_pretrain", **history[-1]})
        return history


def train_rl(
    cfg: RunConfig,
    model,
    tokenizer,
    engine: Engine,
    train_problems: list[Problem] | dict[int, list[Problem]],
    metrics: MetricsWriter | None = None,
    samples: MetricsWriter | None = None,
    on_eval: Callable[[int], dict[str, float]] | None = None,
    show_progress: bool = True,
    health: HealthMonitor | None = None,
    run_path: Path | None = None,
    resume: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the RL steps up to cfg.train.steps; returns the metrics of every step run. `train_problems`
    may be a dict difficulty -> problems for a curriculum (cfg.train.curriculum). `health` checks
    every step (default: a monitor of cfg.health that only prints); it raises TrainingDivergedError
    on NaN/Inf, before any checkpoint of that step. With `run_path`, a resumable checkpoint is written
    every train.save_every steps and at the end, and a method with an implicit PRM saves it in
    `run_path/prm/` (ImplicitPRM.save); `resume` (train/checkpoint.load_latest) continues from one."""
    health = health if health is not None else HealthMonitor(cfg.health)
    trainer = RLTrainer(cfg, model, tokenizer, engine)
    try:
        return _train(trainer, model, tokenizer, train_problems, metrics, samples, on_eval, show_progress, health,
                      run_path, resume)
    finally:
        trainer.close()


def _train(trainer: RLTrainer, model, tokenizer, train_problems, metrics, samples, on_eval, show_progress, health, run_path,
           resume) -> list[dict[str, Any]]:
    cfg, engine = trainer.cfg, trainer.engine
    sampler = PromptSampler(train_problems, seed=cfg.seed, history_resampling=cfg.train.history_resampling,
                            easy_pool_prob=cfg.train.easy_pool_prob)
    if resume is not None:
        trainer.policy.load_state_dict(resume["policy"])
        sampler.load_state_dict(resume["sampler"])
        trainer.step = resume["step"]
        if trainer.prm is not None:
            trainer.prm.load_state_dict(resume["prm"])
        if "health" in resume:
            health.load_state_dict(resume["health"])
        engine.load_weights(trainer.policy.engine_weights(), trainer.policy.version)
    elif trainer.policy.has_critic and cfg.algo.value_pretrain_steps:
        trainer.pretrain_critic(sampler, metrics)
    save_every = cfg.train.save_every if run_path is not None else 0
    if run_path is not None:
        trainer.timeline = Timeline(Path(run_path) / "timeline.jsonl", append=resume is not None)
    history = []
    bar = tqdm(range(trainer.step, cfg.train.steps), desc="rl", unit="step", disable=not show_progress,
               dynamic_ncols=True, initial=trainer.step, total=cfg.train.steps)
    for step in bar:
        m, completions = trainer.train_step(sampler)
        if on_eval and cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
            with trainer.engine_quiet():
                m.update(on_eval(step + 1))
        history.append(m)
        if metrics:
            metrics.write(step + 1, m)
        if samples:
            for c in completions[: cfg.train.samples_per_step]:
                record = {"problem_id": c.problem_id, "text": c.text, "reward": c.reward, "rewards": c.rewards,
                          "verdict": c.verdict.status if c.verdict else None, "finish": c.finish_reason}
                if c.transcript is not None:  # an episode: the model's turns and the observations, marked
                    record["transcript"] = [{"who": who, "text": text} for who, text in c.transcript]
                samples.write(step + 1, record)
        health.observe(step + 1, m, [c.text for c in completions])
        if save_every and ((step + 1) % save_every == 0 or step + 1 == cfg.train.steps):
            save_state(run_path, step + 1, {"sampler": trainer.sampler_state(sampler), "health": health.state_dict(),
                                            **({"prm": trainer.prm.state_dict()} if trainer.prm is not None else {})},
                       cfg.train.keep_checkpoints, policy=trainer.policy)
        bar.set_postfix(reward=f"{m['reward/total']:.3f}", acc=f"{m['accuracy']:.2f}", len=f"{m['response/length']:.0f}")
    if run_path is not None and trainer.prm is not None:  # PRIME: the PRM, loadable as eval's step scorer
        start = cfg.init_from or cfg.model.path
        trainer.prm.save(Path(run_path) / "prm", tokenizer, start if Path(start).is_dir() else None)
    return history


def _oldest_version(c: Completion) -> int:
    """The oldest policy version among a sample's tokens (partial rollouts mix versions)."""
    return min(c.token_versions) if c.token_versions else c.policy_version


def rl_engine(cfg: RunConfig, model, tokenizer) -> Engine:
    """The engine an RL run samples with, chosen here only: Ray rollout actors when
    cluster.rollout_workers > 0, else the rollout config's engine in this process."""
    if cfg.cluster.rollout_workers > 0:
        from r1lab.cluster.rollout_group import RayRolloutGroup

        return RayRolloutGroup(cfg, model, tokenizer)
    return build_engine(model, tokenizer, cfg.rollout)


def _is_rollout_group(engine: Engine) -> bool:
    from r1lab.cluster.rollout_group import RayRolloutGroup

    return isinstance(engine, RayRolloutGroup)

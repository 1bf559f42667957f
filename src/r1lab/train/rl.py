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

With cluster.off_policy_steps=1 the sampling and scoring of step t+1 runs in a background thread,
from the weights the policy had before step t's update, while step t trains; the weights are synced
once both are done. Each sample carries the policy version it came from; `staleness` (the trainer's
version minus the oldest sample's) is 0 at the first step and 1 after. An engine that samples the
trainer's own model gets a private copy of it (rollout/snapshot.py) so the update cannot change the
weights under the sampler.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from r1lab.algos.advantages import gae, last_token_rewards
from r1lab.config import RunConfig
from r1lab.errors import ConfigError
from r1lab.health import HealthMonitor
from r1lab.records import Completion, Problem
from r1lab.rollout import build_engine
from r1lab.rollout.base import Engine, LiveModelEngine, SamplingParams
from r1lab.runs import MetricsWriter
from r1lab.train.batch import RolloutBatch, rollout_batch, update_plan
from r1lab.train.checkpoint import save_state
from r1lab.train.collect import Collected, collect
from r1lab.train.methods import bind_method
from r1lab.train.policy import LocalPolicyWorker, PolicyWorker
from r1lab.train.prm import ImplicitPRM
from r1lab.train.sampler import PromptSampler, scheduled
from r1lab.train.step_metrics import batch_metrics, sample_metrics, sampler_metrics


class RLTrainer:
    """The RL loop over an engine and a policy worker."""

    def __init__(self, cfg: RunConfig, model, tokenizer, engine: Engine, policy: PolicyWorker | None = None):
        # the config comes checked and resolved (stages.check_run_config): the trainer decides nothing
        # about it again, it only refuses a combination it cannot train correctly
        if cfg.cluster.off_policy_steps > 0 and not cfg.algo.correction:
            raise ConfigError(f"cluster.off_policy_steps={cfg.cluster.off_policy_steps} needs an off-policy correction "
                              "(algo.correction); stages.check_run_config sets tis when none is chosen")
        self.cfg = cfg
        self.method = bind_method(cfg.algo)
        self._owned: list[Any] = []  # workers this trainer started, closed by close()
        if cfg.cluster.rollout_workers > 0 and not _is_rollout_group(engine):
            raise ConfigError("cluster.rollout_workers > 0: the engine must be the Ray rollout group "
                              "(r1lab.train.rl.rl_engine builds it)")
        if cfg.cluster.off_policy_steps > 0 and isinstance(engine, LiveModelEngine):
            from r1lab.rollout.snapshot import SnapshotEngine

            # the background sampler must not see the update change the weights under it
            engine = SnapshotEngine(model, lambda m: build_engine(m, tokenizer, cfg.rollout))
            self._owned.append(engine)
        self.engine = engine
        self.score = None  # compute_rewards in this process
        if cfg.cluster.reward_workers > 0:
            from r1lab.cluster.reward_group import RayRewardGroup

            self.score = RayRewardGroup(cfg)
            self._owned.append(self.score)
        self._background = ThreadPoolExecutor(1, thread_name_prefix="r1lab-sample") if cfg.cluster.off_policy_steps else None
        self._sampling: Future | None = None  # the next step's collection, running in the background
        self._next: Collected | None = None  # ... and its result, once the update has waited for it
        if policy is None and cfg.cluster.trainer_workers > 0:
            from r1lab.train.distributed import PolicyWorkerGroup

            policy = PolicyWorkerGroup(cfg, model, self.method)
        self.policy = policy if policy is not None else LocalPolicyWorker(cfg, model, self.method)
        # PRIME: an implicit process reward model, copied from the starting policy
        self.prm = ImplicitPRM(cfg, model) if self.method.needs_prm else None
        self.prm_stats: dict[str, float] = {}
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

    def rollout(self, prompts: list[Problem], seed: int, params: SamplingParams | None = None) -> list[Completion]:
        """group_size completions per prompt from the engine, each stamped with the policy version."""
        version = self.engine.policy_version
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
        return collect(self.cfg, sampler, params, lambda prompts, seed: self.rollout(prompts, seed, params),
                       seed=(self.cfg.seed * 1_000_003 + step * 101) % 2**62, score=self.score)

    def _collect_step(self, sampler: PromptSampler, step: int) -> Collected:
        """Step `step`'s batch: its curriculum stage, seeds and sampling settings."""
        if self.cfg.train.curriculum:
            sampler.set_stage(scheduled(self.cfg.train.curriculum, step, min(sampler.pools)))
        return self.collect(sampler, seed_step=step, params_step=step)

    # -- estimate ----------------------------------------------------------------------------------

    def make_batch(self, completions: list[Completion], rewards: torch.Tensor, group_index: torch.Tensor) -> RolloutBatch:
        """The completions as a padded batch with its update plan, the old-policy / reference /
        value passes its method needs, and its advantages."""
        algo, train, method = self.cfg.algo, self.cfg.train, self.method
        params = self.params
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
        lengths = torch.tensor([len(c.prompt_ids) + len(c.response_ids) for c in completions])
        plan = update_plan(len(completions), train.ppo_epochs, train.mini_batches, train.micro_batch_size, gen, lengths)
        batch = rollout_batch(completions, self.pad_id, overlong_filter=algo.overlong_filter,
                              temperature=params.logprob_temperature, max_new_tokens=params.max_new_tokens, plan=plan)
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
        return batch

    # -- update ------------------------------------------------------------------------------------

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        stats = self.policy.update_critic(batch) if self.policy.has_critic else {}
        stats.update(self.policy.update_policy(batch))
        if self._sampling is not None:  # the next batch samples the old weights: let it finish first
            t0 = time.time()
            self._next, self._sampling = self._sampling.result(), None
            stats["time/sample_wait"] = stats.get("time/sample_wait", 0.0) + time.time() - t0
        self.engine.load_weights(self.policy.engine_weights(), self.policy.version)
        return stats

    # -- one step ----------------------------------------------------------------------------------

    def train_step(self, sampler: PromptSampler) -> tuple[dict[str, Any], list[Completion]]:
        """One step. Off-policy (cluster.off_policy_steps=1), the next step's batch is sampled in the
        background while this one trains, unless this is the run's last step (train.steps)."""
        cfg = self.cfg
        t0 = time.time()
        if self._next is not None:  # sampled in the background during the previous step
            col, self._next = self._next, None
        else:
            col = self._collect_step(sampler, self.step)                        # sample, score
        t1 = time.time()
        sampled = sampler_metrics(sampler)
        if self._background is not None and self.step + 1 < cfg.train.steps:
            self._sampling = self._background.submit(self._collect_step, sampler, self.step + 1)
        version = self.policy.version
        staleness = [version - c.policy_version for c in col.completions]
        batch = self.make_batch(col.completions, col.rewards, col.group_index)  # estimate
        t2 = time.time()
        stats = self.update(batch)                                              # update, sync
        t3 = time.time()
        self.step += 1
        m: dict[str, Any] = {
            **sample_metrics(col, cfg.train.group_size),
            **batch_metrics(batch),
            **sampled,
            **col.info,
            **stats,
            **self.prm_stats,
            "staleness": max(staleness),  # policy versions between the trainer and the oldest sample
            "staleness/mean": sum(staleness) / len(staleness),
            "time/collect": t1 - t0,  # the controller's wait for this step's batch (0 when prefetched)
            **{k: v for k, v in self.engine.stats.items() if k.startswith("cluster/")},
            **({k: v for k, v in self.score.stats.items()} if self.score is not None else {}),
            "time/reference": t2 - t1,  # old-policy, reference and critic forwards
            "time/train": t3 - t2,
            "time/step": t3 - t0,
            "throughput/train_tokens_per_s": int(batch.attention_mask.sum()) * cfg.train.ppo_epochs / max(t3 - t2, 1e-9),
        }
        return m, col.completions

    def close(self) -> None:
        """Stop the background sampler and the workers this trainer started."""
        if self._background is not None:
            if self._sampling is not None:
                self._sampling.cancel()
            self._background.shutdown(wait=True)
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
            history.append(self.policy.update_critic(self.make_batch(col.completions, col.rewards, col.group_index)))
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
    history = []
    bar = tqdm(range(trainer.step, cfg.train.steps), desc="rl", unit="step", disable=not show_progress,
               dynamic_ncols=True, initial=trainer.step, total=cfg.train.steps)
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
        health.observe(step + 1, m, [c.text for c in completions])
        if save_every and ((step + 1) % save_every == 0 or step + 1 == cfg.train.steps):
            save_state(run_path, step + 1, {"sampler": sampler.state_dict(), "health": health.state_dict(),
                                            **({"prm": trainer.prm.state_dict()} if trainer.prm is not None else {})},
                       cfg.train.keep_checkpoints, policy=trainer.policy)
        bar.set_postfix(reward=f"{m['reward/total']:.3f}", acc=f"{m['accuracy']:.2f}", len=f"{m['response/length']:.0f}")
    if run_path is not None and trainer.prm is not None:  # PRIME: the PRM, loadable as eval's step scorer
        start = cfg.init_from or cfg.model.path
        trainer.prm.save(Path(run_path) / "prm", tokenizer, start if Path(start).is_dir() else None)
    return history


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

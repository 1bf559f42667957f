"""Verifiers and reward terms as a group of Ray actors: `RayRewardGroup(cfg)` is called like
`compute_rewards` and gives its results, each actor scoring a contiguous share of the batch.

Shares are whole groups of group_size completions (a reward term may compare the samples of one
prompt). Each actor runs `compute_rewards` with its own verifier worker pool (verify/pool.py);
the controller writes the verdicts, the terms and the totals back into its completions. An actor
that dies or stays silent past cluster.timeout_s is replaced and its share scored again, up to
cluster.max_retries times per call; each replacement is logged and counted (`stats`)."""

from __future__ import annotations

from typing import Sequence

from r1lab.cluster.runtime import shares
from r1lab.cluster.workers import RayWorkers
from r1lab.config import RunConfig
from r1lab.records import Completion, Problem, Verdict



class RewardWorker:
    """The body of one reward actor."""

    def score(self, problems: list[Problem], completions: list[Completion], terms: dict[str, float], timeout: float,
              workers: int, settings: dict | None) -> list[tuple[Verdict | None, dict[str, float], float]]:
        from r1lab.rewards import compute_rewards

        compute_rewards(problems, completions, terms, timeout=timeout, workers=workers, settings=settings)
        return [(c.verdict, dict(c.rewards), c.reward) for c in completions]



class RayRewardGroup:
    """cluster.reward_workers actors scoring shares of each batch (see the module's docstring)."""

    def __init__(self, cfg: RunConfig):
        c = cfg.cluster
        self.size, self.max_retries = c.reward_workers, c.max_retries
        if self.size < 1:
            raise ValueError("RayRewardGroup needs cluster.reward_workers >= 1")
        self.unit = max(1, cfg.train.group_size)
        self.workers = RayWorkers(RewardWorker, "reward worker", self.size, c, resources=c.reward_resources)
        self.workers.start([()] * self.size)
        self.stats: dict[str, float] = {"cluster/reward_retries": 0}

    @property
    def actors(self) -> list:
        return self.workers.actors

    def __call__(self, problems: Sequence[Problem], completions: Sequence[Completion], terms: dict[str, float],
                 timeout: float = 5.0, workers: int = 2, settings: dict | None = None) -> dict[str, list[float]]:
        problems, completions = list(problems), list(completions)
        if len(problems) != len(completions):
            raise ValueError(f"reward workers: {len(problems)} problems but {len(completions)} completions")
        unit = self.unit if len(completions) % self.unit == 0 else 1
        parts = shares(len(completions), self.size, unit)

        def submit(k: int):
            a, b = parts[k]
            return self.workers.submit(k, RewardWorker.score, problems[a:b], completions[a:b], terms, timeout, workers,
                                       settings)

        answers = self.workers.results_retrying([submit(k) for k in range(len(parts))],
                                                lambda k: f"scoring completions {parts[k][0]}..{parts[k][1] - 1}",
                                                submit, self.max_retries, self._replaced)
        scored = [x for share in answers for x in share]
        out: dict[str, list[float]] = {name: [] for name in terms}
        for c, (verdict, rewards, total) in zip(completions, scored):
            c.verdict = verdict
            c.rewards.update(rewards)
            c.reward = total
            for name in terms:
                out[name].append(rewards[name])
        out["total"] = [c.reward for c in completions]
        return out

    def _replaced(self, k: int) -> None:
        self.stats["cluster/reward_retries"] += 1

    def close(self) -> None:
        self.workers.close()


__all__ = ["RayRewardGroup", "RewardWorker"]

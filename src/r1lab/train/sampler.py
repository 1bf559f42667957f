"""Which prompts each RL step trains on: epochs over the training problems, curriculum stages,
history resampling and the easy pool, and step -> value schedules."""

from __future__ import annotations

import random

from r1lab.records import Problem


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

    def state_dict(self) -> dict:
        """Where the epochs stand, problems named by id: enough to continue the same order."""
        return {"stage": self.stage, "epoch": self.epoch, "rng": self.rng.getstate(), "solved": sorted(self.solved),
                "easy": sorted(self.easy), "order": [p.id for p in self._order], "dropped_last_epoch": self.dropped_last_epoch}

    def load_state_dict(self, state: dict) -> None:
        by_id = {p.id: p for pool in self.pools.values() for p in pool}
        missing = [i for i in state["order"] + state["easy"] if i not in by_id]
        if missing:
            raise ValueError(f"the saved prompt order names problems this run does not have (e.g. {missing[0]!r})")
        self.stage, self.epoch, self.dropped_last_epoch = state["stage"], state["epoch"], state["dropped_last_epoch"]
        self.rng.setstate(state["rng"])
        self.solved = set(state["solved"])
        self.easy = {i: by_id[i] for i in state["easy"]}
        self._order = [by_id[i] for i in state["order"]]

    def record(self, problem: Problem, all_correct: bool) -> None:
        if all_correct:
            self.solved.add(problem.id)
            if self.easy_pool_prob > 0:
                self.easy[problem.id] = problem
        else:
            self.solved.discard(problem.id)
            self.easy.pop(problem.id, None)

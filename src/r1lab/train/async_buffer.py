"""The meeting point of an asynchronous RL run (cluster.off_policy_steps K >= 1): the trainer
publishes each new policy version here, a rollout producer takes the weights it may sample from and
puts the scored batch of each step, the trainer takes the batch of its step.

Bounded staleness is enforced by making the producer wait, never by dropping samples: the batch of
step j may start only once the version of step j - K exists (the trainer takes it at the version of
step j, so no sample in it is more than K steps old); a batch in the buffer is never thrown away, so no generation is
wasted and every step trains on the prompts it drew. Without partial rollouts the producer samples
batch j from exactly the version of step max(j - K, first): a run is the same whatever the timing. With partial
rollouts it starts from the newest version published and takes newer ones at token boundaries
(`newer`), so the tokens are fresher and which version each token has depends on the timing.
`take` checks the bound once more and refuses a batch that breaks it (a bug, not a condition).

The producer also leaves here the prompt sampler's state before it drew each step's batch: the
checkpoint of step s saves that state, so a resumed run draws the same prompts again for steps
s, s+1, ... (from the checkpoint's weights: the batches in the buffer are sampled again, not saved).
"""

from __future__ import annotations

import threading
import time
from typing import Any


class Closed(Exception):
    """The buffer was closed while a producer or the trainer waited on it."""


class RolloutBuffer:
    def __init__(self, max_staleness: int, first_step: int = 0, first_version: int = 0, versions_per_step: int = 1,
                 timeout_s: float = 600.0):
        if max_staleness < 1 or versions_per_step < 1:
            raise ValueError(f"max_staleness and versions_per_step must be >= 1, got {max_staleness}, {versions_per_step}")
        self.K = max_staleness  # in trainer steps
        # where the producer started (0, or a resumed run's step and version); a step makes
        # `versions_per_step` policy versions (optimizer steps: ppo_epochs x mini_batches)
        self.first_step, self.first, self.per_step = first_step, first_version, versions_per_step
        self.timeout_s = timeout_s
        self._cv = threading.Condition()
        self._weights: dict[int, Any] = {}  # version -> what the producer loads (published, not yet superseded)
        self._latest = -1
        self._batches: dict[int, tuple[Any, int]] = {}  # step -> (batch, oldest version in it)
        self._sampler_states: dict[int, Any] = {}
        self._error: BaseException | None = None
        self._closed = False

    # -- the trainer's side ------------------------------------------------------------------------

    def publish(self, version: int, weights: Any) -> None:
        """Version `version`'s weights (the trainer's copy: it must not change afterwards)."""
        with self._cv:
            self._weights[version] = weights
            self._latest = max(self._latest, version)
            self._cv.notify_all()

    def take(self, step: int, version: int) -> tuple[Any, float]:
        """The batch of `step` for a trainer at `version`, waiting for the producer; returns it and
        the seconds waited. Raises the producer's error if it failed."""
        t0 = time.time()
        with self._cv:
            self._wait(lambda: step in self._batches or self._error is not None, f"the batch of step {step}")
            if step not in self._batches:
                raise self._error  # type: ignore[misc]
            batch, oldest = self._batches.pop(step)
            self._sampler_states = {s: v for s, v in self._sampler_states.items() if s > step}
        if version - oldest > self.K * self.per_step:
            raise RuntimeError(f"the batch of step {step} holds samples of policy version {oldest}, "
                               f"{version - oldest} versions behind the trainer's {version} "
                               f"(bound {self.K} steps of {self.per_step})")
        return batch, time.time() - t0

    def sampler_state(self, step: int) -> Any:
        """The prompt sampler's state before the batch of `step` was drawn (waits for the producer
        to reach it)."""
        with self._cv:
            self._wait(lambda: step in self._sampler_states or self._error is not None,
                       f"the producer to reach step {step}")
            if step not in self._sampler_states:
                raise self._error  # type: ignore[misc]
            return self._sampler_states[step]

    # -- the producer's side -----------------------------------------------------------------------

    def begin(self, step: int, sampler_state: Any) -> None:
        with self._cv:
            self._sampler_states[step] = sampler_state
            self._cv.notify_all()

    def need(self, step: int) -> int:
        """The oldest version the batch of `step` may come from: that of K steps before it."""
        return self.first + max(0, step - self.first_step - self.K) * self.per_step

    def weights_for(self, step: int, freshest: bool) -> tuple[int, Any]:
        """(version, weights) to sample the batch of `step` from, waiting until `need(step)`
        exists: exactly that version, or with `freshest` the newest published. Versions older than
        the one returned are forgotten."""
        need = self.need(step)
        with self._cv:
            self._wait(lambda: self._latest >= need, f"policy version {need}")
            version = self._latest if freshest else need
            weights = self._weights[version]
            self._weights = {v: w for v, w in self._weights.items() if v >= version}
            return version, weights

    def newer(self, than: int) -> tuple[int, Any] | None:
        """The newest published (version, weights) if newer than `than`, else None; never waits."""
        with self._cv:
            if self._latest <= than:
                return None
            version = self._latest
            weights = self._weights[version]
            self._weights = {v: w for v, w in self._weights.items() if v >= version}
            return version, weights

    def put(self, step: int, batch: Any, oldest_version: int) -> None:
        with self._cv:
            self._batches[step] = (batch, oldest_version)
            self._cv.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cv:
            self._error = error
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _wait(self, ready, what: str) -> None:
        deadline = time.time() + self.timeout_s
        while not ready():
            if self._closed:
                raise Closed(what)
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"asynchronous rollouts: waited {self.timeout_s:g} s for {what} "
                                   "(cluster.timeout_s)")
            self._cv.wait(min(left, 1.0))


__all__ = ["Closed", "RolloutBuffer"]

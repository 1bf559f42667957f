"""An engine over a private copy of the policy, for sampling in a background thread while the
trainer changes the policy in place (cluster.off_policy_steps >= 1 with an engine in the controller)."""

from __future__ import annotations

import copy
import time
from typing import Callable, Iterable

import torch

from r1lab.records import Completion, Problem
from r1lab.rollout.base import Engine, SamplingParams


class SnapshotEngine(Engine):
    """`make(copy)` builds the engine that samples the copy; `load_weights` copies the live model's
    current parameters into it (the live model is the policy the trainer updates, or the
    controller's copy a trainer group loads before handing out its weights), so samples come from
    the weights of the version loaded, whatever the trainer does meanwhile."""

    def __init__(self, model: torch.nn.Module, make: Callable[[torch.nn.Module], Engine]):
        self.live = model
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.engine = make(self.model)
        self.policy_version = self.engine.policy_version
        self.tokenizer, self.batch_size, self.stop_ids = self.engine.tokenizer, self.engine.batch_size, self.engine.stop_ids
        self.continues_ids = self.engine.continues_ids

    @property
    def stats(self):
        return self.engine.stats

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.load_params(list(self.live.parameters()), version)

    def copy_live(self) -> list[torch.Tensor]:
        """The live model's parameters, copied: what `load_params` takes, safe to hand to another
        thread while the trainer goes on changing the live model."""
        with torch.no_grad():
            return [p.detach().clone() for p in self.live.parameters()]

    def load_params(self, params: list[torch.Tensor], version: int) -> None:
        """Sample from now on with `params` (the live model's parameters in its order) as `version`."""
        with torch.no_grad():
            for dst, src in zip(self.model.parameters(), params, strict=True):
                dst.copy_(src)
        self.engine.load_weights(((n, p.detach()) for n, p in self.model.named_parameters()), version)
        self.policy_version = version

    def interrupt_with(self, newer: Callable[[], tuple[int, list[torch.Tensor]] | None] | None,
                       on_swap: Callable[[int, float, float], None] | None = None) -> None:
        """Partial rollouts (the fast engine only): at every token boundary `newer()` gives the
        parameters of a newer version (as `copy_live` made them) or None; given one, generation in
        flight loads it and continues (`on_swap(version, t0, t1)` is told how long the load took).
        None turns this off."""
        def interrupt() -> int | None:
            got = newer()
            if got is None:
                return None
            t0 = time.time()
            self.load_params(got[1], got[0])
            if on_swap is not None:
                on_swap(got[0], t0, time.time())
            return got[0]

        self.engine.interrupt = interrupt if newer is not None else None

    def generate(self, problems: list[Problem], params: SamplingParams, n: int = 1, seed: int | None = None,
                 on_batch=None, first_sample: int = 0) -> list[Completion]:
        return self.engine.generate(problems, params, n=n, seed=seed, on_batch=on_batch, first_sample=first_sample)

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None,
                     on_batch=None, first_sample: int = 0) -> list[Completion]:
        return self.engine.generate_ids(prompts, params, seed=seed, on_batch=on_batch, first_sample=first_sample)

    def session(self):
        return self.engine.session()

    def close(self) -> None:
        self.engine.close()


__all__ = ["SnapshotEngine"]

"""A rollout engine as a group of Ray actors, behind the `Engine` interface.

Each actor builds its own copy of the policy (the model's class and config, then the weights) and a
rollout engine over it (`make_engine`: the fast engine on a CPU, vLLM where installed and chosen).
`load_weights(weights, version)` puts the weights into Ray's object store once and hands every
actor the same reference; each actor copies them into its model and records the version. A
`generate` call is split into contiguous shares of problems, one per actor; each share names the
policy version it must be sampled with (an actor holding another version refuses it) and the
number of its first sample, so each sample draws exactly the random numbers it would draw in one
engine (`FastEngine.generate`'s first_sample): the completions, concatenated in order, are those
of a single engine given the whole call. `generate_ids` (one turn of multi-turn episodes) is split
the same way, by prompt rows with their sample numbers: the episodes run in the controller (the
environment's tools there, each call in its own sandbox process) and only the model's turns go to
the actors, so the episode code is the one every engine runs and greedy episodes equal one engine's.

An actor that dies or does not answer within cluster.timeout_s is killed, replaced by a fresh one
loaded with the current weights, and its share run again, up to cluster.max_retries times per call;
each replacement is logged and counted (`stats`)."""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from r1lab.cluster.runtime import ensure_ray, shares
from r1lab.cluster.workers import RayWorkers
from r1lab.config import RunConfig
from r1lab.records import Completion, Problem
from r1lab.rollout.base import Engine, SamplingParams



class RolloutWorker:
    """The body of one rollout actor: a copy of the policy and an engine over it."""

    def __init__(self, spec: tuple):
        from r1lab.rollout import make_engine

        model_class, model_config, dtype, tokenizer, engine, engine_kwargs = spec
        torch.manual_seed(0)  # the weights are overwritten by load_weights; the draw just needs to be cheap and fixed
        model = model_class(model_config).to(dtype)
        if torch.cuda.is_available():  # an actor that Ray gave a GPU
            model = model.to("cuda")
        self.model = model.eval()
        self.params = dict(self.model.named_parameters())
        self.engine = make_engine(self.model, tokenizer, engine, **engine_kwargs)
        self.version: int | None = None

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> float:
        """Copy `weights` into the model; returns the seconds it took."""
        t0 = time.perf_counter()
        missing = sorted(set(self.params) - set(weights))
        unknown = sorted(set(weights) - set(self.params))
        if missing or unknown:
            raise ValueError(f"rollout worker: weights do not match the model (missing {missing[:3]}, unknown {unknown[:3]})")
        with torch.no_grad():
            for name, t in weights.items():
                self.params[name].copy_(t)
        self.engine.load_weights(((n, p.detach()) for n, p in self.model.named_parameters()), version)
        self.version = version
        return time.perf_counter() - t0

    def generate(self, problems: list[Problem], params: SamplingParams, n: int, seed: int, first_sample: int,
                 version: int) -> tuple[list[Completion], float]:
        """The share's completions and the seconds the engine took for them."""
        if version != self.version:
            raise RuntimeError(f"rollout worker holds policy version {self.version}, asked to sample with version {version}")
        t0 = time.perf_counter()
        out = self.engine.generate(problems, params, n=n, seed=seed, first_sample=first_sample)
        for c in out:
            c.policy_version = version
        return out, time.perf_counter() - t0

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, seed: int, first_sample: int,
                     version: int) -> tuple[list[Completion], float]:
        """The share's continuations of token-id prompts and the seconds the engine took for them."""
        if version != self.version:
            raise RuntimeError(f"rollout worker holds policy version {self.version}, asked to sample with version {version}")
        t0 = time.perf_counter()
        out = self.engine.generate_ids(prompts, params, seed=seed, first_sample=first_sample)
        for c in out:
            c.policy_version = version
        return out, time.perf_counter() - t0

    def version_held(self) -> int | None:
        return self.version

    def close(self) -> None:
        self.engine.close()


class RayRolloutGroup(Engine):
    """cluster.rollout_workers actors sampling shares of each call (see the module's docstring)."""

    def __init__(self, cfg: RunConfig, model, tokenizer, engine: str | None = None, batch_size: int | None = None):
        import ray

        from r1lab.models import merged_weights
        from r1lab.rollout import engine_options

        c = cfg.cluster
        self.tokenizer = tokenizer  # episodes render observations with it in the controller
        self.continues_ids = True  # every engine an actor builds (fast, hf, vllm) continues token ids
        self.size, self.max_retries = c.rollout_workers, c.max_retries
        if self.size < 1:
            raise ValueError("RayRolloutGroup needs cluster.rollout_workers >= 1")
        ensure_ray(c)  # before asking the cluster whether it has GPUs
        gpus = 0.0
        if ray.cluster_resources().get("GPU", 0) > 0:
            gpus = 1.0 if c.placement == "split" else 0.5
        self.workers = RayWorkers(RolloutWorker, "rollout worker", self.size, c, gpus=gpus,
                                  resources=c.rollout_resources)
        dtype = next(model.parameters()).dtype
        kwargs = {"batch_size": batch_size or cfg.rollout.batch_size, **engine_options(cfg.rollout)}
        spec = ray.put((type(model), model.config, dtype, tokenizer, engine or cfg.rollout.engine, kwargs))
        self.stats: dict[str, float] = {"cluster/rollout_retries": 0, "cluster/weights_put_s": 0.0}
        self.policy_version = 0
        self._weights_ref = None
        self.workers.start([(spec,)] * self.size)
        self.load_weights(merged_weights(model), 0)
        # every actor holding the weights before the first call
        self.workers.results(self.workers.broadcast(RolloutWorker.version_held), "loading the weights")

    @property
    def actors(self) -> list:
        return self.workers.actors

    @property
    def timeout_s(self) -> float:
        return self.workers.timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        self.workers.timeout_s = seconds

    # -- the Engine interface --------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Ship `weights` once through the object store; every actor loads that one copy. The
        actors apply it in call order: a generate submitted after this samples the new version."""
        import ray

        t0 = time.perf_counter()
        self._weights_ref = ray.put({n: t.detach().to("cpu").contiguous() for n, t in weights})
        self.stats["cluster/weights_put_s"] = time.perf_counter() - t0
        self.workers.broadcast(RolloutWorker.load_weights, self._weights_ref, version)
        self.policy_version = version

    def generate(self, problems: list[Problem], params: SamplingParams, n: int = 1, seed: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[Completion]:
        if not problems:
            return []
        seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, ()))
        version = self.policy_version
        parts = shares(len(problems), self.size)

        def submit(k: int):
            a, b = parts[k]
            return self.workers.submit(k, RolloutWorker.generate, problems[a:b], params, n, seed, a * n, version)

        t0 = time.perf_counter()
        answers = self.workers.results_retrying(
            [submit(k) for k in range(len(parts))],
            lambda k: f"sampling problems {parts[k][0]}..{parts[k][1] - 1} with policy version {version}",
            submit, self.max_retries, self._replaced)
        out = [c for share, _ in answers for c in share]
        slowest = max(secs for _, secs in answers)
        # the call's wall time = the slowest actor's sampling + the rest (shipping prompts and
        # completions, scheduling, waiting behind a weights load)
        self.stats["cluster/generate_s"] = time.perf_counter() - t0
        self.stats["cluster/generate_actor_s"] = slowest
        if on_batch:
            on_batch(len(out))
        return out

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None,
                     on_batch: Callable[[int], None] | None = None, first_sample: int = 0) -> list[Completion]:
        """Contiguous shares of the prompt rows, one per actor, each with the number of its first
        sample: the completions, in order, are those of one engine given the whole call."""
        if not prompts:
            return []
        seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, ()))
        version = self.policy_version
        parts = shares(len(prompts), self.size)

        def submit(k: int):
            a, b = parts[k]
            return self.workers.submit(k, RolloutWorker.generate_ids, prompts[a:b], params, seed, first_sample + a,
                                       version)

        t0 = time.perf_counter()
        answers = self.workers.results_retrying(
            [submit(k) for k in range(len(parts))],
            lambda k: f"continuing prompts {parts[k][0]}..{parts[k][1] - 1} with policy version {version}",
            submit, self.max_retries, self._replaced)
        out = [c for share, _ in answers for c in share]
        for i, c in enumerate(out):  # problem_id is the row's index in the whole call, as one engine numbers it
            c.problem_id = str(i)
        self.stats["cluster/generate_s"] = time.perf_counter() - t0
        self.stats["cluster/generate_actor_s"] = max(secs for _, secs in answers)
        if on_batch:
            on_batch(len(out))
        return out

    def _replaced(self, k: int) -> None:
        self.stats["cluster/rollout_retries"] += 1
        self.workers.submit(k, RolloutWorker.load_weights, self._weights_ref, self.policy_version)  # it holds none

    def close(self) -> None:
        self.workers.close()


__all__ = ["RayRolloutGroup", "RolloutWorker"]

"""Starting or joining Ray, and waits on actors that never hang: every `ray.get` has a timeout and
its error names what it waited for."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from r1lab.config import ClusterConfig

log = logging.getLogger("r1lab.cluster")


def ray_actors(cluster: ClusterConfig) -> int:
    """The Ray actors a run asks for, one CPU each: rollout and reward workers, and the trainer's
    workers with `launcher: ray`."""
    trainer = cluster.trainer_workers if cluster.launcher == "ray" else 0
    return cluster.rollout_workers + cluster.reward_workers + trainer


def ensure_ray(cluster: ClusterConfig) -> None:
    """Connect to the cluster at cluster.ray_address, or, when it is empty, start a local one with
    one CPU for every actor of the run (`ray_actors`; no dashboard, workers' output not copied to
    this terminal). The first role to start calls it for all: its `cluster` must count every role.
    A Ray already started in this process (a test's shared cluster, a user's own ray.init) is used
    as it is.

    The sizing is what the trainer group's gloo rendezvous needs: an actor that finds no free CPU
    stays pending, and the group's other workers wait for it until cluster.timeout_s."""
    import ray

    if ray.is_initialized():
        return
    actors = ray_actors(cluster)
    env = {"env_vars": {k: os.environ[k] for k in ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}}
    if cluster.ray_address:
        log.warning("cluster: joining the Ray cluster at %s", cluster.ray_address)
        ray.init(address=cluster.ray_address, runtime_env=env, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=max(1, actors), include_dashboard=False, log_to_driver=False, runtime_env=env,
                 logging_level=logging.WARNING)


def get(ref: Any, timeout_s: float, what: str) -> Any:
    """ray.get(ref) within timeout_s; a TimeoutError naming `what` otherwise."""
    import ray
    from ray.exceptions import GetTimeoutError

    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        raise TimeoutError(f"{what}: no answer within cluster.timeout_s={timeout_s:g} s") from None


def worker_lost(error: BaseException) -> bool:
    """Whether `error` means the actor is gone or silent (replace it and retry), rather than a
    failure of the call itself (raise it)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(error, (RayActorError, ActorDiedError, ActorUnavailableError, TimeoutError))


def get_retrying(ref: Any, timeout_s: float, what: str, max_retries: int, replace: Callable[[str], None],
                 resubmit: Callable[[], Any]) -> Any:
    """get(ref, ...); when the actor behind it is lost (worker_lost), `replace(why)` puts a new actor
    in its place and `resubmit()` runs the call again on it, at most `max_retries` times."""
    tries = 0
    while True:
        try:
            return get(ref, timeout_s, what)
        except Exception as e:  # noqa: BLE001 - sorted by worker_lost below
            if not worker_lost(e) or tries >= max_retries:
                raise
            tries += 1
            replace(f"{what}: {type(e).__name__}; retry {tries} of cluster.max_retries={max_retries}")
            ref = resubmit()


def shares(n: int, parts: int, unit: int = 1) -> list[tuple[int, int]]:
    """[start, end) ranges that split n items, in whole units of `unit` items, into at most `parts`
    contiguous shares as even as the units allow (empty shares left out)."""
    units = -(-n // unit)
    k = max(1, min(parts, units))
    bounds = [min(n, (units * i // k) * unit) for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


__all__ = ["ensure_ray", "get", "ray_actors", "shares", "worker_lost"]


class ActorGroup:
    """What the actor groups share: a lost actor is replaced in place by `_new_actor()` (counted in
    stats[retry_metric]) and its call run again, up to max_retries times; close() kills them all.
    Subclasses set actors, stats, timeout_s and max_retries."""

    retry_metric = ""
    actors: list
    stats: dict[str, float]
    timeout_s: float
    max_retries: int

    def _new_actor(self):
        raise NotImplementedError

    def _result(self, k: int, ref: Any, resubmit: Callable[[], Any], what: str) -> Any:
        """The result of actor k's call `ref`; a lost actor is replaced and `resubmit()` runs the call again."""
        return get_retrying(ref, self.timeout_s, what, self.max_retries, lambda why: self._replace(k, why), resubmit)

    def _replace(self, k: int, why: str) -> None:
        import ray

        log.warning("cluster: replacing %s", why)
        ray.kill(self.actors[k], no_restart=True)
        self.actors[k] = self._new_actor()
        self.stats[self.retry_metric] += 1

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

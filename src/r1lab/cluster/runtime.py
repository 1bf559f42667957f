"""The run's one Ray start-up, used by every role that runs on Ray (trainer shards, rollout and
reward actors), and how a call is split into shares."""

from __future__ import annotations

import logging
import os

from r1lab.config import ClusterConfig

log = logging.getLogger("r1lab.cluster")


def ray_actors(cluster: ClusterConfig) -> int:
    """The Ray actors a run asks for, one CPU each: rollout and reward workers, and the trainer's
    workers with `launcher: ray`."""
    trainer = cluster.trainer_workers if cluster.launcher == "ray" else 0
    return cluster.rollout_workers + cluster.reward_workers + trainer


def custom_resources(cluster: ClusterConfig) -> dict[str, float]:
    """What the run's Ray actors ask for together of each custom resource (cluster.*_resources):
    a local cluster offers exactly that, so a recipe written for labelled nodes runs on one machine."""
    trainer = cluster.trainer_workers if cluster.launcher == "ray" else 0
    total: dict[str, float] = {}
    for count, asks in ((trainer, cluster.trainer_resources), (cluster.rollout_workers, cluster.rollout_resources),
                        (cluster.reward_workers, cluster.reward_resources)):
        for name, amount in asks.items():
            total[name] = total.get(name, 0.0) + count * amount
    return total


def ensure_ray(cluster: ClusterConfig) -> None:
    """Connect to the cluster at cluster.ray_address, or, when it is empty, start a local one with
    one CPU for every actor of the run (`ray_actors`) and the custom resources they ask for
    (`custom_resources`; no dashboard, workers' output not copied to
    this terminal). The first role to start calls it for all: its `cluster` must count every role.
    A Ray already started in this process (a test's shared cluster, a user's own ray.init) is used
    as it is.

    The sizing is what the trainer group's gloo rendezvous needs: an actor that finds no free CPU
    stays pending, and the group's other workers wait for it until cluster.timeout_s."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {k: os.environ[k] for k in ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}}
    if cluster.ray_address:
        log.warning("cluster: joining the Ray cluster at %s", cluster.ray_address)
        ray.init(address=cluster.ray_address, runtime_env=env, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=max(1, ray_actors(cluster)), resources=custom_resources(cluster) or None,
                 include_dashboard=False, log_to_driver=False, runtime_env=env, logging_level=logging.WARNING)


def shares(n: int, parts: int, unit: int = 1) -> list[tuple[int, int]]:
    """[start, end) ranges that split n items, in whole units of `unit` items, into at most `parts`
    contiguous shares as even as the units allow (empty shares left out)."""
    units = -(-n // unit)
    k = max(1, min(parts, units))
    bounds = [min(n, (units * i // k) * unit) for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


__all__ = ["custom_resources", "ensure_ray", "ray_actors", "shares"]

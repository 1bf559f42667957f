"""The roles beyond the controller's process, each a worker group (workers.py: processes of this
machine or Ray actors, typed calls, bounded waits): rollout actors behind the `Engine` interface
(rollout_group.py), reward actors behind `compute_rewards` (reward_group.py), the trainer's shards
(train/distributed.py); the run's one Ray start-up (runtime.py); and the one check of the cluster
settings.

Ray is an optional extra (`pip install 'r1lab[ray]'`); nothing here imports it until a Ray worker is
asked for."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

from r1lab.config import RunConfig
from r1lab.errors import ConfigError

PLACEMENTS = ("colocated", "split")
BACKENDS = ("gloo", "nccl")
LAUNCHERS = ("local", "ray")
log = logging.getLogger("r1lab.cluster")


def uses_ray(cfg: RunConfig) -> bool:
    return cfg.cluster.rollout_workers > 0 or cfg.cluster.reward_workers > 0


def check_cluster(cfg: RunConfig) -> None:
    """The cluster settings together (trainer group, rollout and reward workers, Ray; each one's
    range is its domain, checked when it is read), each error one line naming the field."""
    c = cfg.cluster
    if c.ray_address and not (uses_ray(cfg) or c.launcher == "ray"):
        raise ConfigError(f"cluster.ray_address={c.ray_address!r}: nothing runs on Ray; set cluster.rollout_workers, "
                          "cluster.reward_workers or cluster.launcher: ray")
    if c.launcher == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("cluster.launcher=ray needs Ray: pip install 'r1lab[ray]'")
    for role, on_ray in (("trainer", c.launcher == "ray" and c.trainer_workers > 0), ("rollout", c.rollout_workers > 0),
                         ("reward", c.reward_workers > 0)):
        asks = getattr(c, f"{role}_resources")
        if asks and not on_ray:
            needs = "cluster.launcher: ray and cluster.trainer_workers > 0" if role == "trainer" else f"cluster.{role}_workers > 0"
            raise ConfigError(f"cluster.{role}_resources={asks}: no {role} worker runs on Ray (needs {needs})")
        if builtin := sorted(set(asks) & {"CPU", "GPU", "memory", "object_store_memory"}):
            raise ConfigError(f"cluster.{role}_resources: {builtin[0]!r} is Ray's own resource, which r1lab sets "
                              "(custom resources only, e.g. {trainer_node: 1})")
    if c.partial_rollouts and c.off_policy_steps < 1:
        raise ConfigError("cluster.partial_rollouts needs cluster.off_policy_steps >= 1 (a synchronous run has no "
                          "weights arriving mid-generation)")
    if c.partial_rollouts and (c.rollout_workers > 0 or cfg.rollout.engine != "fast"):
        where = f"cluster.rollout_workers={c.rollout_workers}" if c.rollout_workers > 0 else f"rollout.engine={cfg.rollout.engine}"
        raise ConfigError(f"cluster.partial_rollouts: {where}; partial rollouts run in the fast engine in the "
                          "controller's process only (rollout.engine: fast, cluster.rollout_workers: 0)")
    if uses_ray(cfg) and importlib.util.find_spec("ray") is None:
        field = "rollout_workers" if c.rollout_workers > 0 else "reward_workers"
        raise ConfigError(f"cluster.{field}={getattr(c, field)}: Ray is not installed (pip install 'r1lab[ray]')")


def with_off_policy_correction(cfg: RunConfig) -> RunConfig:
    """cfg with the off-policy correction on when samples come from an older policy
    (off_policy_steps >= 1) and the user chose none: truncated importance sampling ("tis", cap 2)
    against the behaviour policy's log-probs, which the engine reports. Says so in the log."""
    k = cfg.cluster.off_policy_steps
    if k < 1:
        return cfg
    old = "one policy version old" if k == 1 else f"up to {k} policy versions old"
    if cfg.algo.correction:
        log.warning("cluster.off_policy_steps=%d: samples are %s; correcting with algo.correction=%s",
                    k, old, cfg.algo.correction)
        return cfg
    log.warning("cluster.off_policy_steps=%d: samples are %s; algo.correction=tis "
                "(truncated importance weights min(pi_old / pi_behaviour, 2)) is on by default", k, old)
    return dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, correction="tis"))


__all__ = ["BACKENDS", "LAUNCHERS", "PLACEMENTS", "check_cluster", "uses_ray", "with_off_policy_correction"]

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
    """Every cluster setting (trainer group, rollout and reward workers, Ray, asynchrony), each
    error one line naming the field."""
    c = cfg.cluster
    if c.trainer_workers < 0:
        raise ConfigError(f"cluster.trainer_workers={c.trainer_workers}: expected 0 (local) or a number of processes")
    if c.backend not in BACKENDS:
        raise ConfigError(f"cluster.backend={c.backend!r}: expected one of {', '.join(BACKENDS)}")
    if c.launcher not in LAUNCHERS:
        raise ConfigError(f"cluster.launcher={c.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    for name in ("rollout_workers", "reward_workers"):
        if getattr(c, name) < 0:
            raise ConfigError(f"cluster.{name}={getattr(c, name)}: expected 0 (in the controller) or a number of Ray actors")
    if c.placement not in PLACEMENTS:
        raise ConfigError(f"cluster.placement={c.placement!r}: expected one of {', '.join(PLACEMENTS)}")
    if c.off_policy_steps not in (0, 1):
        raise ConfigError(f"cluster.off_policy_steps={c.off_policy_steps}: expected 0 (synchronous) or 1 (the next "
                          "batch sampled while this one trains); more steps off-policy are not implemented")
    if c.max_retries < 0:
        raise ConfigError(f"cluster.max_retries={c.max_retries}: expected 0 or more retries of a failed worker call")
    if c.timeout_s <= 0:
        raise ConfigError(f"cluster.timeout_s={c.timeout_s}: expected a positive number of seconds")
    if c.ray_address and not (uses_ray(cfg) or c.launcher == "ray"):
        raise ConfigError(f"cluster.ray_address={c.ray_address!r}: nothing runs on Ray; set cluster.rollout_workers, "
                          "cluster.reward_workers or cluster.launcher: ray")
    if c.launcher == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("cluster.launcher=ray needs Ray: pip install 'r1lab[ray]'")
    if uses_ray(cfg) and importlib.util.find_spec("ray") is None:
        field = "rollout_workers" if c.rollout_workers > 0 else "reward_workers"
        raise ConfigError(f"cluster.{field}={getattr(c, field)}: Ray is not installed (pip install 'r1lab[ray]')")


check_workers = check_cluster  # the name callers outside cluster/ know it by


def with_off_policy_correction(cfg: RunConfig) -> RunConfig:
    """cfg with the off-policy correction on when samples come from an older policy
    (off_policy_steps 1) and the user chose none: truncated importance sampling ("tis", cap 2)
    against the behaviour policy's log-probs, which the engine reports. Says so in the log."""
    if cfg.cluster.off_policy_steps < 1:
        return cfg
    if cfg.algo.correction:
        log.warning("cluster.off_policy_steps=%d: samples are one policy version old; correcting with "
                    "algo.correction=%s", cfg.cluster.off_policy_steps, cfg.algo.correction)
        return cfg
    log.warning("cluster.off_policy_steps=%d: samples are one policy version old; algo.correction=tis "
                "(truncated importance weights min(pi_old / pi_behaviour, 2)) is on by default", cfg.cluster.off_policy_steps)
    return dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, correction="tis"))


__all__ = ["BACKENDS", "LAUNCHERS", "PLACEMENTS", "check_cluster", "check_workers", "uses_ray", "with_off_policy_correction"]

"""Resumable checkpoints of an RL or SFT run: everything the next step depends on, so that a run
stopped after step k and resumed computes what the uninterrupted run computes (docs/pitfalls.md,
"Resume that does not resume").

A checkpoint holds the step, the policy worker's state (policy weights, optimizer, scheduler, critic
and its optimizer, the adaptive entropy coefficient, the weights version), the implicit PRM and its
optimizer when the method has one (PRIME), the prompt sampler's position and random stream, what the
health monitor measured on each step's samples, and the process's Python and torch random streams.
The reference model is not saved: it is the starting model, rebuilt from the run's config. The
engine's random stream is seeded per step.

One process: one file, `checkpoints/state/step-NNNNNN.pt`. A sharded trainer group
(cluster.trainer_workers > 0): a directory `checkpoints/state/step-NNNNNN/` with `model/`, where each
worker writes its own shards of the models and optimizers (torch.distributed.checkpoint), and
`state.pt`, the controller's part (the rest, as in the file). Both are written under a temporary
name and renamed when complete, so a run killed while saving leaves its previous checkpoint.

An SFT run keeps its checkpoints apart (`checkpoints/sft-state/`, the `folder` argument below), so
that the demo's SFT and RL stages, which share one run directory, each resume from their own; what
an SFT checkpoint holds is listed in train/sft.py, what a CPT one (`checkpoints/cpt-state/`) holds
in train/cpt.py.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from r1lab.config import flatten
from r1lab.errors import ConfigError

STATE_DIR = "state"
SFT_STATE_DIR = "sft-state"
CPT_STATE_DIR = "cpt-state"
_WRITTEN_BY = {STATE_DIR: "train.save_every", SFT_STATE_DIR: "sft.save_every", CPT_STATE_DIR: "cpt.save_every"}  # the setting that writes each folder
_NAME = re.compile(r"step-(\d{6})(\.pt)?")
SHARDS, CONTROLLER = "model", "state.pt"  # a sharded checkpoint's worker shards and controller state

# settings that may change across a resume; any other change is refused
RESUMABLE_CHANGES = ("resume", "train.steps", "train.save_every", "train.keep_checkpoints", "train.eval_every",
                     "train.samples_per_step", "eval.at_start", "tracking")
# an SFT run: the step count fixes its learning-rate schedule, so only where checkpoints go may change
SFT_RESUMABLE_CHANGES = ("resume", "sft.save_every", "sft.keep_checkpoints", "tracking")
CPT_RESUMABLE_CHANGES = ("resume", "cpt.save_every", "cpt.keep_checkpoints", "tracking")


def state_dir(run_path: Path, folder: str = STATE_DIR) -> Path:
    return Path(run_path) / "checkpoints" / folder


def save_state(run_path: Path, step: int, state: dict[str, Any], keep: int, folder: str = STATE_DIR,
               policy: Any = None) -> Path:
    """Write `state` (and the state of `policy`, a policy worker) as the checkpoint of `step`,
    atomically: written under a temporary name, renamed when complete. A worker group (one with
    `sharded`) makes the checkpoint a directory: each worker writes its own shards into
    `model/`, the rest goes to `state.pt`. Keeps the newest `keep` checkpoints."""
    where = state_dir(run_path, folder)
    where.mkdir(parents=True, exist_ok=True)
    sharded = policy is not None and policy.sharded
    path = where / (f"step-{step:06d}" if sharded else f"step-{step:06d}.pt")
    tmp = where / f".{path.name}.tmp"
    remove_checkpoint(tmp)  # left by a run killed while writing it
    state = {**state, "step": step}
    if sharded:
        tmp.mkdir()
        state["policy"] = policy.save_shards(tmp / SHARDS)
        target = tmp / CONTROLLER
    else:
        if policy is not None:
            state["policy"] = policy.state_dict()
        target = tmp
    torch.save({**state, "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()}, target)
    if sharded:
        remove_checkpoint(path)  # a directory of the same step from an earlier attempt (a file is replaced)
    os.replace(tmp, path)
    for old in checkpoints(run_path, folder)[:-max(keep, 1)]:
        remove_checkpoint(old)
    return path


def remove_checkpoint(path: Path) -> None:
    """Delete one checkpoint (or its temporary): a file, or the directory of a sharded one."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def checkpoints(run_path: Path, folder: str = STATE_DIR) -> list[Path]:
    """The run's resumable checkpoints in `folder`, oldest first."""
    where = state_dir(run_path, folder)
    return sorted(p for p in where.glob("step-*") if _NAME.fullmatch(p.name)) if where.is_dir() else []


def load_latest(run_path: Path, folder: str = STATE_DIR) -> dict[str, Any]:
    """The newest checkpoint's state, the process's random streams restored from it. Of a sharded
    checkpoint, state["policy"]["shards"] is the folder the workers read their shards from."""
    found = checkpoints(run_path, folder)
    if not found:
        raise ConfigError(f"resume: {run_path} has no resumable checkpoint ({state_dir(run_path, folder)}/step-*); "
                          f"{_WRITTEN_BY.get(folder, 'train.save_every')} > 0 writes them")
    sharded = found[-1].is_dir()
    state = torch.load(found[-1] / CONTROLLER if sharded else found[-1], map_location="cpu", weights_only=False)
    if sharded:
        state["policy"]["shards"] = str((found[-1] / SHARDS).resolve())
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state


def resume_hint(run_path: Path) -> str:
    """Where a stopped run can continue from, in words."""
    found = checkpoints(run_path)
    if not found:
        return "no resumable checkpoint was written yet (train.save_every)"
    return f"last resumable checkpoint: {found[-1]} (continue with resume={run_path})"


def load_sharded_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load the policy weights of a sharded checkpoint (a step-NNNNNN directory) into `model`, a
    full model of the run's architecture, in this one process: no worker group needed (e.g. to
    save an intermediate checkpoint as a Hugging Face directory)."""
    import torch.distributed.checkpoint as dcp

    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():  # one process on purpose, not a missing process group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": weights}, checkpoint_id=str(Path(checkpoint) / SHARDS), no_dist=True)
    model.load_state_dict(weights)


def check_resume_config(saved: Any, new: Any, allowed: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """A resumed run must be the same run (two RunConfigs): refuse any changed setting but those that
    may change across a resume (`allowed`, dotted names or section prefixes)."""
    flat_saved, flat_new = flatten(saved), flatten(new)
    for key in flat_new:
        if any(key == k or key.startswith(k + ".") for k in allowed):
            continue
        if key == "cluster.trainer_workers" and flat_saved.get(key) != flat_new[key]:
            if flat_saved.get(key, 0) > 0 and flat_new[key] > 0:
                continue  # a group's shards load into any number of workers
            raise ConfigError(f"resume: cluster.trainer_workers differs from the run's ({flat_saved.get(key)!r} -> "
                              f"{flat_new[key]!r}); a worker group's checkpoint resumes with a group (any number "
                              "of workers), a one-process checkpoint in one process")
        if flat_saved.get(key) != flat_new[key]:
            raise ConfigError(f"resume: {key} differs from the run's ({flat_saved.get(key)!r} -> {flat_new[key]!r}); "
                              f"only {', '.join(k for k in allowed if k != 'resume')} may change across a resume")

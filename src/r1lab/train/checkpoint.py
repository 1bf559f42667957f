"""Resumable checkpoints of an RL or SFT run: everything the next step depends on, so that a run
stopped after step k and resumed computes what the uninterrupted run computes (docs/pitfalls.md,
"Resume that does not resume").

A checkpoint (`checkpoints/state/step-NNNNNN.pt`, written to a temporary name and renamed) holds the
step, the policy worker's state (policy weights, optimizer, scheduler, critic and its optimizer, the
adaptive entropy coefficient, the weights version), the implicit PRM and its optimizer when the
method has one (PRIME), the prompt sampler's position and random stream, what the health monitor
measured on each step's samples, and the process's Python and torch random streams. The reference
model is not saved: it is the starting model, rebuilt from the run's config. The engine's random
stream is seeded per step.

An SFT run keeps its checkpoints apart (`checkpoints/sft-state/`, the `folder` argument below), so
that the demo's SFT and RL stages, which share one run directory, each resume from their own; what
an SFT checkpoint holds is listed in train/sft.py.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from pathlib import Path
from typing import Any

import torch

from r1lab.errors import ConfigError

STATE_DIR = "state"
SFT_STATE_DIR = "sft-state"
_WRITTEN_BY = {STATE_DIR: "train.save_every", SFT_STATE_DIR: "sft.save_every"}  # the setting that writes each folder
_NAME = re.compile(r"step-(\d{6})\.pt")

# settings that may change across a resume; any other change is refused
RESUMABLE_CHANGES = ("resume", "train.steps", "train.save_every", "train.keep_checkpoints", "train.eval_every",
                     "train.samples_per_step", "eval.at_start", "tracking")
# an SFT run: the step count fixes its learning-rate schedule, so only where checkpoints go may change
SFT_RESUMABLE_CHANGES = ("resume", "sft.save_every", "sft.keep_checkpoints", "tracking")


def state_dir(run_path: Path, folder: str = STATE_DIR) -> Path:
    return Path(run_path) / "checkpoints" / folder


def save_state(run_path: Path, step: int, state: dict[str, Any], keep: int, folder: str = STATE_DIR) -> Path:
    """Write `state` as the checkpoint of `step`, atomically; keep the newest `keep` checkpoints."""
    where = state_dir(run_path, folder)
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"step-{step:06d}.pt"
    tmp = where / f".{path.name}.tmp"
    torch.save({**state, "step": step, "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)
    for old in sorted(checkpoints(run_path, folder))[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return path


def checkpoints(run_path: Path, folder: str = STATE_DIR) -> list[Path]:
    where = state_dir(run_path, folder)
    return sorted(p for p in where.glob("step-*.pt") if _NAME.fullmatch(p.name)) if where.is_dir() else []


def load_latest(run_path: Path, folder: str = STATE_DIR) -> dict[str, Any]:
    """The newest checkpoint's state, the process's random streams restored from it."""
    found = checkpoints(run_path, folder)
    if not found:
        raise ConfigError(f"resume: {run_path} has no resumable checkpoint ({state_dir(run_path, folder)}/step-*.pt); "
                          f"{_WRITTEN_BY.get(folder, 'train.save_every')} > 0 writes them")
    state = torch.load(found[-1], map_location="cpu", weights_only=False)
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state


def check_resume_config(saved: Any, new: Any, allowed: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """A resumed run must be the same run (two RunConfigs): refuse any changed setting but those that
    may change across a resume (`allowed`, dotted names or section prefixes)."""
    flat_saved, flat_new = _flatten(saved), _flatten(new)
    for key in flat_new:
        if any(key == k or key.startswith(k + ".") for k in allowed):
            continue
        if flat_saved.get(key) != flat_new[key]:
            raise ConfigError(f"resume: {key} differs from the run's ({flat_saved.get(key)!r} -> {flat_new[key]!r}); "
                              f"only {', '.join(k for k in allowed if k != 'resume')} may change across a resume")


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted setting name -> value, through the nested config sections."""
    if not dataclasses.is_dataclass(cfg):
        return {prefix: cfg}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        out.update(_flatten(getattr(cfg, f.name), f"{prefix}.{f.name}" if prefix else f.name))
    return out

"""A run directory: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, plots/, report.md."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from r1lab.config import RunConfig, save_config
from r1lab.records import write_text_atomic


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        for sub in ("checkpoints", "plots"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, cfg: RunConfig, name: str | None = None) -> "RunDir":
        run = cls(Path(cfg.out_dir) / (name or cfg.name))
        save_config(cfg, run.path / "config.yaml")
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint(self, tag: str) -> Path:
        return self.path / "checkpoints" / tag


class MetricsWriter:
    """Appends one JSON line per step and flushes, so a crashed run keeps what it measured. A
    `tracker` (r1lab.tracking) gets the same numbers, and is closed with the writer."""

    def __init__(self, path: str | Path, append: bool = False, tracker: Any = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a" if append else "w", encoding="utf-8")
        self._t0 = time.time()
        self.tracker = tracker

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time() - self._t0, 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.tracker is not None:
            self.tracker.log(step, metrics)

    def close(self, failed: bool = False) -> None:
        self._f.close()
        if self.tracker is not None:
            self.tracker.close(failed=failed)
            self.tracker = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the rows of `path` up to `step` (a run resumed from that step's checkpoint writes the
    later ones again), dropping a last line cut off mid-write; rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= step:
            keep.append(line + "\n")
    write_text_atomic(path, "".join(keep))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

"""Where an RL run's wall time goes: one line per span of work (generate, train, sync, check, wait),
with the thread that did it, written to `timeline.jsonl` in the run directory.

Each line: {"who": "trainer" | "producer", "what": ..., "step": s, "t0": ..., "t1": ...}, t0 / t1 in
seconds since the run's start (time.time). `r1lab.plots.plot_timeline` draws it as bars per thread."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class Timeline:
    def __init__(self, path: str | Path | None = None, append: bool = False):
        self.start = time.time()
        self.spans: list[dict] = []
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # a run directory the caller has not made yet
            self._file = open(path, "a" if append else "w", encoding="utf-8")

    @contextmanager
    def span(self, who: str, what: str, step: int) -> Iterator[None]:
        t0 = time.time()
        try:
            yield
        finally:
            self.add(who, what, step, t0, time.time())

    def add(self, who: str, what: str, step: int, t0: float, t1: float) -> None:
        rec = {"who": who, "what": what, "step": step, "t0": round(t0 - self.start, 6), "t1": round(t1 - self.start, 6)}
        with self._lock:
            self.spans.append(rec)
            if self._file is not None:
                self._file.write(json.dumps(rec) + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_timeline(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


__all__ = ["Timeline", "read_timeline"]

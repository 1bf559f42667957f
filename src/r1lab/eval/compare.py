"""`r1lab eval --compare RUN_A RUN_B ...`: several eval runs side by side in one markdown table.

Each run directory holds `eval/summary.json` (written by `r1lab eval`); the table has one column per
run and, per benchmark, one row per metric: the samples per problem n, avg@n (accuracy), pass@n,
maj@n and the mean response length. A benchmark a run did not evaluate shows "-".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from r1lab.errors import DataError

METRICS = [("n", "n"), ("problems", "problems"), ("avg@n", "avg"), ("pass@n", "pass"), ("maj@n", "maj"),
           ("mean length", "len_mean")]


def summary_file(run: str | Path) -> Path:
    """A run's summary.json: RUN/eval/summary.json, or RUN/summary.json when given the eval directory."""
    run = Path(run)
    for cand in (run / "eval" / "summary.json", run / "summary.json"):
        if cand.is_file():
            return cand
    if not run.is_dir():
        raise DataError(f"--compare: no such run directory: {run}")
    raise DataError(f"--compare: {run} has no eval/summary.json (not an r1lab eval run, or one that did not finish)")


def load_summary(run: str | Path) -> dict[str, dict[str, Any]]:
    path = summary_file(run)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise DataError(f"--compare: {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise DataError(f"--compare: {path} is not a summary mapping")
    return {k: v for k, v in data.items() if not k.startswith("_") and isinstance(v, dict) and "n" in v}


def _cell(s: dict[str, Any] | None, key: str) -> str:
    if s is None:
        return "-"
    n = int(s["n"])
    if key in ("n", "problems"):
        return f"{int(s.get(key) or 0)}"
    v = s.get("len_mean") if key == "len_mean" else s.get(f"{key}@{n}")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.0f}" if key == "len_mean" else f"{100 * v:.1f}"


def compare_table(runs: list[str | Path]) -> str:
    """The markdown table; run columns are named by the directory's name (made unique if needed)."""
    if len(runs) < 1:
        raise DataError("--compare needs at least one run directory")
    summaries = [load_summary(r) for r in runs]
    labels: list[str] = []
    for r in runs:
        name = Path(r).resolve().name
        if Path(r).resolve().name == "eval":
            name = Path(r).resolve().parent.name
        while name in labels:
            name += "'"
        labels.append(name)
    benches = list(dict.fromkeys(b for s in summaries for b in s))
    lines = ["| benchmark | metric | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for b in benches:
        for title, key in METRICS:
            lines.append(f"| {b} | {title} | " + " | ".join(_cell(s.get(b), key) for s in summaries) + " |")
    note = ("avg@n = accuracy (mean fraction of correct samples), pass@n unbiased, maj@n majority vote, "
            "all in %; mean length in tokens per sample.")
    return "\n".join(lines) + "\n\n" + note


__all__ = ["compare_table", "load_summary", "summary_file"]

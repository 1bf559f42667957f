"""report.md and the end-of-run table: what each stage gained on held-out problems."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _fmt(v: Any, pct: bool) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.1f}"


def stage_table(stages: dict[str, dict[str, float]], n: int, ks: list[int]) -> str:
    """A markdown table, one row per stage. Accuracies in percent, lengths in tokens."""
    cols = [(f"avg@{n}", True)] + [(f"pass@{k}", True) for k in ks if k <= n and k != 1] + [
        (f"maj@{n}", True), ("len_correct", False), ("len_wrong", False), ("truncated", True), ("seconds", False)]
    header = "| stage | " + " | ".join(c for c, _ in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    lines = [header, sep]
    for name, s in stages.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(c), pct) for c, pct in cols) + " |")
    return "\n".join(lines)


def write_report(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    path = Path(path)
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(body), encoding="utf-8")
    tmp.replace(path)
    return path

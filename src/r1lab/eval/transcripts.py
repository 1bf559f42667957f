"""What an eval of episodes reports beyond accuracy: the episode table (turns, tool calls, tool
errors, time in the environment, finish reasons), the flat samples.jsonl of whole transcripts, and
a few transcripts written out in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1lab.records import write_jsonl


def has_episodes(rows: list[dict[str, Any]]) -> bool:
    return any("turns" in s for r in rows for s in r["samples"])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def episode_table(results: dict[str, tuple[int, dict[str, float]]]) -> str:
    """Markdown, one row per evaluation `results[label] = (n, summary)`: accuracy, pass@n, then per
    episode the turns, tool calls, tool errors and seconds in the environment, and the share of
    each finish reason (in %)."""
    reasons = sorted({k.split("/", 1)[1] for _, s in results.values() for k in s if k.startswith("finish/")})
    head = ["eval", "problems", "n", "avg@n", "pass@n", "turns", "tool calls", "tool errors", "env s"]
    lines = ["| " + " | ".join(head + [f"finish {r}" for r in reasons]) + " |",
             "|---|" + "---:|" * (len(head) - 1 + len(reasons))]
    for label, (n, s) in results.items():
        cells = [label, f"{s.get('problems', 0):.0f}", str(n), _pct(s.get(f"avg@{n}")), _pct(s.get(f"pass@{n}")),
                 _num(s.get("turns")), _num(s.get("tool_calls")), _num(s.get("tool_errors")), _num(s.get("env_seconds"))]
        cells += [_pct(s.get(f"finish/{r}", 0.0 if "turns" in s else None)) for r in reasons]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per sample: the problem, the verdict, the episode's counts and its whole transcript."""
    keep = ("correct", "status", "extracted", "finish", "turns", "tool_calls", "tool_errors", "length", "env_tokens",
            "env_seconds", "transcript")
    return [{"id": r["id"], "sample": i, "answer": r["answer"], **{k: s.get(k) for k in keep if k in s}}
            for r in rows for i, s in enumerate(r["samples"])]


def write_samples(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """samples.jsonl: every sample's record (sample_records), written whole or not at all."""
    write_jsonl(path, sample_records(rows))
    return Path(path)


def transcripts_markdown(rows: list[dict[str, Any]], limit: int = 2) -> str:
    """The first correct and the first wrong episodes (up to `limit` in all), each whole: every model
    turn and every observation, marked by who wrote it."""
    picked: list[tuple[dict, dict]] = []
    for want in (True, False):
        hit = next(((r, s) for r in rows for s in r["samples"] if bool(s.get("correct")) == want and "transcript" in s),
                   None)
        if hit is not None and len(picked) < limit:
            picked.append(hit)
    parts = []
    for r, s in picked:
        head = (f"**{r['id']}** ({'correct' if s.get('correct') else s.get('status', 'wrong')}; gold {r['answer']!r}; "
                f"{s['turns']} turns, {s['tool_calls']} tool calls, {s['tool_errors']} tool errors, finish {s['finish']})")
        body = "\n".join(f"[{seg['by']}]\n{seg['text']}" for seg in s["transcript"])
        fence = "````" if "```" in body else "```"
        parts.append(f"{head}\n\n{fence}\n{body}\n{fence}")
    return "\n\n".join(parts)

"""Vendored math benchmarks (see data/PROVENANCE.md): name -> file, prompt, default protocol.

Each benchmark is one JSONL file shipped as package data, so evaluation works offline and the
numbers are reproducible from the exact bytes listed in PROVENANCE.md. The default protocol
follows common practice for reasoning models: the small-answer-space contests (AIME, AMC) are
scored with 16 samples at temperature 0.6 / top_p 0.95 (avg@16 is far less noisy than one
sample on 30-40 problems); MATH500 and GSM8K, with hundreds of problems, greedily with one.
"""

from __future__ import annotations

import importlib.resources
import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import mean
from typing import Any

from r1lab.errors import DataError
from r1lab.records import Problem

PROMPT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
# The R1 format r1lab's SFT data and recipes train (recipes/real/): reasoning in <think>, answer in <answer>.
R1_PROMPT_TEMPLATE = ("{problem}\nThink step by step inside <think> </think>, then give only the final answer "
                      "inside <answer> </answer>.")
PROMPTS = {"boxed": PROMPT_TEMPLATE, "r1": R1_PROMPT_TEMPLATE}


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    rows: int  # expected row count: a truncated file is an error, not a smaller benchmark
    n: int  # default samples per problem
    temperature: float  # 0 = greedy
    top_p: float
    breakdown: tuple[str, ...] = ()  # metadata keys the summary is also grouped by


BENCHMARKS: dict[str, Benchmark] = {
    "math500": Benchmark("math500", "math500.jsonl", 500, n=1, temperature=0.0, top_p=1.0, breakdown=("level", "subject")),
    "gsm8k": Benchmark("gsm8k", "gsm8k_test.jsonl", 1319, n=1, temperature=0.0, top_p=1.0),
    "aime24": Benchmark("aime24", "aime24.jsonl", 30, n=16, temperature=0.6, top_p=0.95),
    "aime25": Benchmark("aime25", "aime25.jsonl", 30, n=16, temperature=0.6, top_p=0.95),
    "amc23": Benchmark("amc23", "amc23.jsonl", 40, n=16, temperature=0.6, top_p=0.95),
}


def known_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(known_benchmarks())}")
    return BENCHMARKS[name]


def parse_names(spec: str) -> list[Benchmark]:
    """"math500,gsm8k" -> their entries, in order, each once; any unknown name is an error."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise DataError(f"no benchmark named; known: {', '.join(known_benchmarks())}")
    return [get_benchmark(n) for n in dict.fromkeys(names)]


def data_path(name: str):
    """The vendored file (a Traversable inside the installed package)."""
    return importlib.resources.files(__name__).joinpath("data", get_benchmark(name).file)


def load_rows(name: str) -> list[dict[str, Any]]:
    import json

    bench = get_benchmark(name)
    text = data_path(name).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if len(rows) != bench.rows:
        raise DataError(f"benchmark {name}: {len(rows)} rows, expected {bench.rows} (damaged install?)")
    return rows


def prompt_template(prompt: str) -> str:
    if prompt not in PROMPTS:
        raise DataError(f"unknown prompt {prompt!r}; known: {', '.join(PROMPTS)}")
    return PROMPTS[prompt]


def load_benchmark(name: str, limit: int | None = None, prompt: str = "boxed") -> list[Problem]:
    """Problems (task "math") with the benchmark's prompt (`prompt`: "boxed", the usual
    instruction, or "r1", the <think>/<answer> format of r1lab's training data); metadata keeps
    every other source field (MATH500's level, subject and unique_id; the reference solution)."""
    template = prompt_template(prompt)
    rows = load_rows(name)[: limit if limit and limit > 0 else None]
    out = []
    for row in rows:
        meta = {k: v for k, v in row.items() if k not in ("id", "problem", "answer", "source")}
        out.append(Problem(id=str(row["id"]), prompt=template.format(problem=row["problem"]),
                           answer=str(row["answer"]), task="math", source=name, metadata=meta))
    return out


def breakdown(rows: list[dict[str, Any]], problems: list[Problem], key: str) -> dict[str, dict[str, float]]:
    """Per value of metadata[key]: problem count and mean accuracy (avg over samples) of eval rows."""
    by_id = {p.id: p for p in problems}
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups[str(by_id[r["id"]].metadata.get(key))].append(r["avg"])
    return {g: {"problems": len(v), "accuracy": mean(v)} for g, v in sorted(groups.items())}


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def summary_table(results: dict[str, tuple[int, dict[str, float]]]) -> str:
    """Markdown, one row per benchmark: `results[name] = (n, summary)` from eval.run.summarise.
    avg@n is the accuracy (mean fraction of correct samples); pass@k is shown for the largest k
    evaluated; maj@n is the majority vote over all n; lengths are mean tokens per sample."""
    lines = ["| benchmark | problems | n | avg@n | pass@n | maj@n | len mean | len correct | len wrong | truncated |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (n, s) in results.items():
        lines.append(f"| {name} | {s['problems']:.0f} | {n} | {_pct(s.get(f'avg@{n}'))} | {_pct(s.get(f'pass@{n}'))} | "
                     f"{_pct(s.get(f'maj@{n}'))} | {_num(s.get('len_mean'))} | {_num(s.get('len_correct'))} | "
                     f"{_num(s.get('len_wrong'))} | {_pct(s.get('truncated'))} |")
    return "\n".join(lines)


def breakdown_table(title: str, groups: dict[str, dict[str, float]]) -> str:
    lines = [f"| {title} | problems | accuracy |", "|---|---:|---:|"]
    lines += [f"| {g} | {v['problems']} | {_pct(v['accuracy'])} |" for g, v in groups.items()]
    return "\n".join(lines)


def protocol(bench: Benchmark, n: int | None = None, temperature: float | None = None) -> tuple[int, float, float]:
    """(n, temperature, top_p) for a run: the benchmark's default, with the caller's overrides.
    Asking a greedy benchmark for n > 1 samples without a temperature samples at 0.6 / 0.95 instead:
    n identical greedy samples would measure nothing that n = 1 does not."""
    n = n or bench.n
    if temperature is not None:
        return n, temperature, bench.top_p if temperature > 0 else 1.0
    if bench.temperature == 0 and n > 1:
        return n, 0.6, 0.95
    return n, bench.temperature, bench.top_p


def write_summary_json(path, results: dict[str, tuple[int, dict[str, float]]], meta: dict | None = None) -> None:
    """`{benchmark: {n, avg@n, pass@k..., lengths...}, "_meta": {...}}`, what `r1lab eval --compare` reads."""
    import json
    import os
    from pathlib import Path

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    data = {k: {"n": n, **{key: clean(v) for key, v in s.items()}} for k, (n, s) in results.items()}
    if meta:
        data["_meta"] = meta
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["BENCHMARKS", "Benchmark", "PROMPTS", "PROMPT_TEMPLATE", "R1_PROMPT_TEMPLATE", "prompt_template",
           "write_summary_json", "breakdown", "breakdown_table", "data_path",
           "get_benchmark",
           "known_benchmarks", "load_benchmark", "load_rows", "parse_names", "protocol", "summary_table"]

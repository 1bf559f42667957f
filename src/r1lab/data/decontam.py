"""Decontamination: drop (or tag) training rows that overlap a benchmark, and report every hit.

A hit is an exact match of the normalised text, or a shared word n-gram (Light-R1 used 32-grams,
open-r1 8-grams; n is a setting). Texts are normalised and tokenised exactly as dedup does, so
whitespace, case, `$` and LaTeX spacing never hide a match. Numbers are kept: a benchmark item
rewritten with new numbers still hits through its number-free n-grams when it is long enough, but
a short one can slip through (BENCHMARKS.md measures this).

The benchmark side is small (hundreds to thousands of items) and is held in memory as a dict from
n-gram to its first benchmark item; the training side streams.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from r1lab.data.dedup import prompt_of, text_key, tokens
from r1lab.data.io import BadRow, read_rows
from r1lab.errors import ConfigError, DataError
from r1lab.records import Problem

TEXT_FIELDS = ("prompt", "problem", "question")


@dataclass
class DecontamSettings:
    benchmarks: list[str] = field(default_factory=list)  # benchmark files (JSONL/Parquet/CSV/HF dir)
    ngram: int = 8  # word n-gram size (Light-R1: 32, open-r1: 8)
    exact: bool = True  # also match whole normalised texts (the only test for texts shorter than ngram)
    min_overlap: int = 1  # distinct shared n-grams needed for an n-gram hit
    action: str = "drop"  # drop | tag (keep the row, list its hits in metadata["contamination"])
    text_field: str = ""  # benchmark column holding the problem ("" = the first of prompt, problem, question)


@dataclass
class Hit:
    id: str  # the training row
    benchmark: str  # benchmark file
    benchmark_id: str
    kind: str  # exact | ngram
    ngram: str  # the first shared n-gram (the normalised text for exact hits)
    overlap: int  # distinct shared n-grams (1 for exact hits)


class BenchmarkIndex:
    def __init__(self, n: int) -> None:
        self.n = n
        self.items: list[tuple[str, str]] = []  # (file, id)
        self.exact: dict[bytes, int] = {}
        self.grams: dict[str, int] = {}

    def add(self, file: str, item_id: str, text: str) -> None:
        k = len(self.items)
        self.items.append((file, item_id))
        toks = tokens(text)
        self.exact.setdefault(text_key(toks), k)
        for i in range(len(toks) - self.n + 1):
            self.grams.setdefault(" ".join(toks[i : i + self.n]), k)

    @classmethod
    def from_files(cls, paths: list[str], n: int, text_field: str = "") -> "BenchmarkIndex":
        index = cls(n)
        for p in paths:
            path = Path(p)
            for row_no, raw in read_rows(path):
                if isinstance(raw, BadRow):
                    raise DataError(f"{path}:{row_no}: {raw.message}")
                if not isinstance(raw, dict):
                    raise DataError(f"{path}:{row_no}: expected an object with named fields")
                names = [text_field] if text_field else [f for f in TEXT_FIELDS if f in raw]
                text = raw.get(names[0]) if names else None
                if isinstance(text, list):  # chat messages
                    text = prompt_of(Problem("", text, "0"))
                if not isinstance(text, str) or not text.strip():
                    wanted = text_field or " or ".join(TEXT_FIELDS)
                    raise DataError(f"{path}:{row_no}: benchmark row has no text in {wanted}")
                index.add(str(path), str(raw.get("id") or f"{path.stem}-{row_no}"), text)
        return index

    def match(self, row_id: str, text: str, exact: bool = True, min_overlap: int = 1) -> list[Hit]:
        """Every benchmark item this text hits: the exact match, or items sharing >= min_overlap n-grams."""
        toks = tokens(text)
        if exact:
            k = self.exact.get(text_key(toks))
            if k is not None:
                return [Hit(row_id, *self.items[k], "exact", " ".join(toks), 1)]
        if len(toks) < self.n:
            return []
        shared: dict[int, list[Any]] = {}  # item -> [count, first n-gram]
        for g in {" ".join(toks[i : i + self.n]) for i in range(len(toks) - self.n + 1)}:
            k = self.grams.get(g)
            if k is not None:
                entry = shared.setdefault(k, [0, g])
                entry[0] += 1
        return [Hit(row_id, *self.items[k], "ngram", g, c) for k, (c, g) in sorted(shared.items()) if c >= min_overlap]


def check_settings(s: DecontamSettings) -> None:
    if not s.benchmarks:
        raise ConfigError("decontaminate: no benchmark files (benchmarks: [math500.jsonl, ...])")
    if s.ngram < 1 or s.min_overlap < 1:
        raise ConfigError("decontaminate.ngram and decontaminate.min_overlap must be >= 1")
    if s.action not in ("drop", "tag"):
        raise ConfigError(f"decontaminate.action must be drop or tag, got {s.action!r}")


def decontaminate(
    rows: Iterable[Problem],
    s: DecontamSettings,
    drop: Callable[[str, str, str], None],
    on_hit: Callable[[dict[str, Any]], None] = lambda hit: None,
    index: BenchmarkIndex | None = None,
) -> Iterator[Problem]:
    """The rows that hit no benchmark (action drop) or all rows with hits listed (action tag).
    `on_hit` receives every hit; `drop(id, "contaminated", "file:benchmark_id")` every dropped row."""
    check_settings(s)
    index = index or BenchmarkIndex.from_files(s.benchmarks, s.ngram, s.text_field)
    for p in rows:
        hits = index.match(p.id, prompt_of(p), s.exact, s.min_overlap)
        for h in hits:
            on_hit(asdict(h))
        if not hits:
            yield p
        elif s.action == "tag":
            p.metadata["contamination"] = [{"benchmark": h.benchmark, "benchmark_id": h.benchmark_id, "kind": h.kind} for h in hits]
            yield p
        else:
            drop(p.id, "contaminated", f"{hits[0].benchmark}:{hits[0].benchmark_id}")

"""Decontamination: drop (or tag) training rows that contain a benchmark item, and report every hit.

A training row hits a benchmark item when

- its normalised text equals the item's (`exact`), or
- it contains a large enough share of the item's word n-grams (`ngram`): at least `min_coverage`
  of the item's distinct n-grams occur in the row. The share is measured on the benchmark item, so
  an item wrapped in instructions or embedded in a longer text still scores 1.0, while a row that
  merely shares a stock phrase with an item ("your answer as a decimal to the nearest ...") scores
  a few percent. N-grams that occur in `common_items` or more benchmark items are boilerplate of
  the benchmark itself and count for nothing (on either side of the share);
- or, for an item shorter than n tokens, the row contains the item's whole token sequence
  (`contained`), when the item has at least `min_tokens` tokens.

Normalisation (`decontam_tokens`) makes spelling differences vanish before anything is compared:
case, whitespace, `$`, braces and LaTeX spacing (as in dedup), and also LaTeX respellings that
mean the same (`\\le`/`\\leq`, `\\cdot`/`\\times`, `\\frac{a}{b}`/`a/b`, `x^{2}`/`x^2`, `\\dots`/`\\ldots`,
`\\mbox`/`\\text`, `\\(`/`$`, unicode `≤ × π √ ° −`), typographic quotes and digit grouping
(`1,000` = `1{,}000` = `1000`). Numbers are kept unless `mask_numbers`. Kept, a copy with one number
changed is still caught when most of its n-grams survive, one with every number changed mostly is
not; masked, both are caught, and so are more training problems that share a template with a
benchmark item without being a copy of it (BENCHMARKS.md measures both).

Images: the text of a row with images is checked like any other (a benchmark question pasted
under a picture is still the question); its images are not compared, since the benchmarks
(vendored or given as files) are text. Two image problems that share a template text are kept
apart by dedup's pixel hash, not here.

The benchmark side (hundreds to thousands of items) is held in memory: a dict from n-gram to the
items that contain it. The training side streams.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from r1lab.data.dedup import mask, prompt_of, text_key, tokens
from r1lab.data.io import BadRow, read_rows
from r1lab.domains import check_fields, setting
from r1lab.errors import ConfigError, DataError
from r1lab.records import Problem

TEXT_FIELDS = ("prompt", "problem", "question")


@dataclass
class DecontamSettings:
    benchmarks: list[str] = setting([], path="exists")  # benchmark files (JSONL/Parquet/CSV/HF dir); at least one
    ngram: int = setting(8, ge=1)  # word n-gram size
    min_coverage: float = setting(0.7, gt=0, le=1)  # share of a benchmark item's n-grams a row must contain to hit it
    min_overlap: int = setting(1, ge=1)  # and at least this many distinct shared n-grams
    common_items: int = setting(3, ge=2, off=0)  # n-grams found in this many benchmark items are boilerplate and ignored (0 = keep all)
    min_tokens: int = setting(3, ge=1)  # an item shorter than ngram hits a row that contains it whole when it has this many tokens
    exact: bool = True  # also match whole normalised texts
    mask_numbers: bool = False  # compare with every number replaced by one symbol (catches new-number rewrites)
    action: str = setting("drop", choices=("drop", "tag"))  # drop | tag (keep the row, list its hits in metadata["contamination"])
    text_field: str = ""  # benchmark column holding the problem ("" = the first of prompt, problem, question)

    def cross_check(self, where: str) -> None:
        if not self.benchmarks:
            raise ConfigError(f"{where}: no benchmark files (benchmarks: [math500.jsonl, ...])")


@dataclass
class Hit:
    id: str  # the training row
    benchmark: str  # benchmark file
    benchmark_id: str
    kind: str  # exact | ngram | contained
    ngram: str  # the first shared n-gram (the normalised text for exact and contained hits)
    overlap: int  # distinct shared n-grams (1 for exact and contained hits)
    coverage: float  # share of the benchmark item's n-grams found in the row (1.0 for exact and contained hits)


# ---------------------------------------------------------------------------------------------
# normalisation

_UNICODE = {"≤": r" \leq ", "≥": r" \geq ", "≠": r" \neq ", "×": r" \times ", "·": r" \cdot ", "÷": r" \div ",
            "π": r" \pi ", "√": r" \sqrt ", "°": r" \circ ", "∞": r" \infty ", "−": "-", "–": "-", "—": "-",
            "’": "'", "‘": "'", "“": '"', "”": '"', "\u00a0": " ", "…": " ... "}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
# commands with the same meaning, spelled differently; the value is the one spelling kept
_ALIASES = {"le": "leq", "ge": "geq", "ne": "neq", "leqslant": "leq", "geqslant": "geq", "times": "cdot",
            "ldots": "dots", "cdots": "dots", "dotsm": "dots", "dotsb": "dots", "dotsc": "dots", "lvert": "|", "rvert": "|",
            "mbox": "text", "textrm": "text", "hbox": "text", "bold": "mathbf", "boldsymbol": "mathbf", "bf": "mathbf",
            "dbinom": "binom", "tbinom": "binom", "neg": "lnot", "to": "rightarrow", "gets": "leftarrow"}
_ALIAS_RE = re.compile(r"\\(" + "|".join(sorted(_ALIASES, key=len, reverse=True)) + r")(?![A-Za-z])")
# a fraction is its two parts: \frac{a}{b}, {a \over b} and a/b all read "a b"
_FRACTION = re.compile(r"\\(?:[dtc]?frac|over)(?![a-z])|/")
_SCRIPT = re.compile(r"([\^_])\s*\{\s*(\\?\w+)\s*\}")  # x^{2} -> x^2
_GROUPED = re.compile(r"(?<=\d)(?:\{,\}|,)(?=\d{3}(?!\d))")  # 1,000 and 1{,}000 -> 1000
_LISTED = re.compile(r"(?<=\d),(?=\d)")  # (0,3) -> 0 , 3
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")


def canonical(text: str) -> str:
    """The text, lower-cased, with equivalent spellings made equal: unicode math, LaTeX aliases, fractions as their
    two parts (`\\frac{a}{b}` = `a/b` = "a b"), `x^{2}` as `x^2`, `^\\circ` as a degree sign, digit-group
    commas removed."""
    text = text.lower()
    if not text.isascii():
        text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], text)
    text = _ALIAS_RE.sub(lambda m: "\\" + _ALIASES[m.group(1)] if _ALIASES[m.group(1)] != "|" else "|", text)
    text = _SCRIPT.sub(r"\1\2", _DEGREE.sub(r" \\circ ", text))
    text = _FRACTION.sub(" ", text)
    return _LISTED.sub(" , ", _GROUPED.sub("", text))


def decontam_tokens(text: str, mask_numbers: bool = False) -> list[str]:
    """Normalised tokens for decontamination: dedup's tokens of the canonical text."""
    toks = tokens(canonical(text))
    return mask(toks) if mask_numbers else toks


# ---------------------------------------------------------------------------------------------
# the benchmark index


class BenchmarkIndex:
    def __init__(self, n: int, common_items: int = 3, min_tokens: int = 3, mask_numbers: bool = False) -> None:
        self.n, self.common_items, self.min_tokens, self.mask_numbers = n, common_items, min_tokens, mask_numbers
        self.items: list[tuple[str, str]] = []  # (file, id)
        self.exact: dict[bytes, int] = {}
        self.grams: dict[str, list[int]] = {}  # n-gram -> the items holding it, each once
        self.size: list[int] = []  # distinct non-boilerplate n-grams per item
        self.short: dict[str, list[tuple[tuple[str, ...], int]]] = {}  # first token -> (tokens, item) of short items
        self._sized = False

    def add(self, file: str, item_id: str, text: str) -> None:
        k = len(self.items)
        self.items.append((file, item_id))
        toks = decontam_tokens(text, self.mask_numbers)
        self.exact.setdefault(text_key(toks), k)
        if len(toks) < self.n:
            if len(toks) >= self.min_tokens:
                self.short.setdefault(toks[0], []).append((tuple(toks), k))
        for g in {" ".join(toks[i : i + self.n]) for i in range(len(toks) - self.n + 1)}:
            self.grams.setdefault(g, []).append(k)
        self._sized = False

    def _boilerplate(self, g: str) -> bool:
        return 0 < self.common_items <= len(self.grams[g])

    def _size(self) -> None:
        """Count each item's non-boilerplate n-grams (the denominator of its coverage)."""
        size = [0] * len(self.items)
        for g, ks in self.grams.items():
            if not self._boilerplate(g):
                for k in ks:
                    size[k] += 1
        self.size, self._sized = size, True

    def boilerplate(self) -> list[tuple[str, int]]:
        """The n-grams ignored as boilerplate, with how many items hold each, most common first."""
        return sorted(((g, len(ks)) for g, ks in self.grams.items() if self._boilerplate(g)), key=lambda x: (-x[1], x[0]))

    @classmethod
    def from_settings(cls, s: DecontamSettings) -> "BenchmarkIndex":
        return cls.from_files(s.benchmarks, s.ngram, s.text_field, s.common_items, s.min_tokens, s.mask_numbers)

    @classmethod
    def from_files(cls, paths: list[str], n: int, text_field: str = "", common_items: int = 3, min_tokens: int = 3,
                   mask_numbers: bool = False) -> "BenchmarkIndex":
        index = cls(n, common_items, min_tokens, mask_numbers)
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

    def match(self, row_id: str, text: str, exact: bool = True, min_overlap: int = 1, min_coverage: float = 0.7) -> list[Hit]:
        """Every benchmark item this text hits (see the module docstring), best coverage first."""
        if not self._sized:
            self._size()
        toks = decontam_tokens(text, self.mask_numbers)
        if exact:
            k = self.exact.get(text_key(toks))
            if k is not None:
                return [Hit(row_id, *self.items[k], "exact", " ".join(toks), 1, 1.0)]
        hits: list[Hit] = []
        shared: dict[int, list[Any]] = {}  # item -> [count, first shared n-gram in the row's order]
        for g in dict.fromkeys(" ".join(toks[i : i + self.n]) for i in range(len(toks) - self.n + 1)):
            ks = self.grams.get(g)
            if ks is None or self._boilerplate(g):
                continue
            for k in ks:
                entry = shared.setdefault(k, [0, g])
                entry[0] += 1
        for k, (c, g) in shared.items():
            cover = c / self.size[k]
            if c >= min_overlap and cover >= min_coverage:
                hits.append(Hit(row_id, *self.items[k], "ngram", g, c, round(cover, 4)))
        if self.short:
            found: set[int] = set()
            for i, t in enumerate(toks):
                for item, k in self.short.get(t, ()):
                    if k not in found and tuple(toks[i : i + len(item)]) == item:
                        found.add(k)
                        hits.append(Hit(row_id, *self.items[k], "contained", " ".join(item), 1, 1.0))
        hits.sort(key=lambda h: (-h.coverage, -h.overlap, h.benchmark, h.benchmark_id))
        return hits


def decontaminate(
    rows: Iterable[Problem],
    s: DecontamSettings,
    drop: Callable[[str, str, str], None],
    on_hit: Callable[[dict[str, Any]], None] = lambda hit: None,
    index: BenchmarkIndex | None = None,
) -> Iterator[Problem]:
    """The rows that hit no benchmark (action drop) or all rows with hits listed (action tag).
    `on_hit` receives every hit; `drop(id, "contaminated", "file:benchmark_id")` every dropped row."""
    check_fields(s, "decontaminate")
    index = index or BenchmarkIndex.from_settings(s)
    for p in rows:
        hits = index.match(p.id, prompt_of(p), s.exact, s.min_overlap, s.min_coverage)
        for h in hits:
            on_hit(asdict(h))
        if not hits:
            yield p
        elif s.action == "tag":
            p.metadata["contamination"] = [{"benchmark": h.benchmark, "benchmark_id": h.benchmark_id, "kind": h.kind,
                                            "coverage": h.coverage} for h in hits]
            yield p
        else:
            drop(p.id, "contaminated", f"{hits[0].benchmark}:{hits[0].benchmark_id}")


__all__ = ["BenchmarkIndex", "DecontamSettings", "Hit", "canonical", "decontam_tokens", "decontaminate"]

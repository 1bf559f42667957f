"""Inspect datasets: token-length histograms, counts per source, and a cross-dataset overlap matrix.

The length plot is the survey's view of a reasoning dataset (how long its prompts or traces are);
the overlap matrix answers "which dataset contains items of which" before mixing them, using the
same normalised exact match and word n-grams as decontamination. Lengths and n-gram hashes are
kept in memory (a few ints per row; the n-gram sets grow with text volume, so use overlap_ngram: 0
for exact-only overlap on very large inputs).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from r1lab.data.dedup import prompt_of, text_key, tokens
from r1lab.domains import setting
from r1lab.errors import ModelError
from r1lab.records import Problem


@dataclass
class InspectSettings:
    tokenizer: str = setting("", path="dir")  # tokenizer (or model) directory for token counts; "" = count words
    field: str = setting("prompt", nonempty=True)  # prompt, or a metadata key holding a trace (a text or a list of texts)
    overlap_ngram: int = setting(8, ge=0)  # word n-gram size for the overlap matrix; 0 = exact matches only
    bins: int = setting(50, ge=1)
    group_by: str = setting("source", nonempty=True)  # in a pipeline: rows are split into datasets by this field (or metadata key)


class _Lengths:
    def __init__(self, tokenizer: str) -> None:
        self.tok = None
        if tokenizer:
            from transformers import AutoTokenizer

            try:
                self.tok = AutoTokenizer.from_pretrained(tokenizer)
            except Exception as e:
                raise ModelError(f"cannot load a tokenizer from {tokenizer}: {str(e).splitlines()[0]}") from None
        self.unit = f"tokens ({Path(tokenizer).name})" if tokenizer else "words"

    def __call__(self, texts: list[str]) -> list[int]:
        if self.tok is None:
            return [len(t.split()) for t in texts]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]


class Inspector:
    """Feed rows with `add(dataset, problem)`, then `finish(out_dir)` writes the plots and JSON."""

    def __init__(self, s: InspectSettings) -> None:
        self.s = s
        self.lengths = _Lengths(s.tokenizer)
        self.rows: Counter[str] = Counter()
        self.sources: dict[str, Counter[str]] = {}
        self.lens: dict[str, list[int]] = {}
        self.items: dict[str, list[tuple[bytes, frozenset[int]]]] = {}
        self._pending: dict[str, list[str]] = {}

    def _texts(self, p: Problem) -> list[str]:
        if self.s.field == "prompt":
            return [prompt_of(p)]
        value = p.metadata.get(self.s.field)
        return [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]

    def add(self, name: str, p: Problem) -> None:
        self.rows[name] += 1
        self.sources.setdefault(name, Counter())[p.source or "(none)"] += 1
        pending = self._pending.setdefault(name, [])
        pending.extend(self._texts(p))
        if len(pending) >= 512:
            self._flush(name)
        toks = tokens(prompt_of(p))
        n = self.s.overlap_ngram
        grams = frozenset(hash(" ".join(toks[i : i + n])) for i in range(len(toks) - n + 1)) if n > 0 else frozenset()
        self.items.setdefault(name, []).append((text_key(toks), grams))

    def _flush(self, name: str) -> None:
        self.lens.setdefault(name, []).extend(self.lengths(self._pending.get(name, [])))
        self._pending[name] = []

    def overlap(self) -> dict[str, dict[str, int]]:
        """overlap[a][b]: rows of a whose text is in b (exact) or shares an n-gram with a row of b."""
        exact = {name: {k for k, _ in items} for name, items in self.items.items()}
        grams = {name: frozenset().union(*(g for _, g in items)) for name, items in self.items.items()}
        return {a: {b: (len(ia) if a == b else sum(1 for k, g in ia if k in exact[b] or not g.isdisjoint(grams[b])))
                    for b in self.items} for a, ia in self.items.items()}

    def finish(self, out_dir: str | Path) -> dict[str, Any]:
        for name in list(self._pending):
            self._flush(name)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"length_unit": self.lengths.unit, "field": self.s.field, "datasets": {}}
        for name in self.rows:
            arr = np.asarray(self.lens.get(name) or [0])
            summary["datasets"][name] = {
                "rows": self.rows[name],
                "sources": dict(self.sources[name].most_common()),
                "length": {"mean": round(float(arr.mean()), 1), "min": int(arr.min()), "p50": int(np.percentile(arr, 50)),
                           "p90": int(np.percentile(arr, 90)), "p99": int(np.percentile(arr, 99)), "max": int(arr.max())},
            }
        summary["overlap"] = self.overlap()
        summary["overlap_rule"] = f"exact normalised text or a shared {self.s.overlap_ngram}-gram" if self.s.overlap_ngram else "exact normalised text"
        summary["plots"] = [str(self._plot_lengths(out / "lengths.png")), str(self._plot_overlap(out / "overlap.png", summary["overlap"]))]
        _atomic_text(out / "inspect.json", json.dumps(summary, indent=2, ensure_ascii=False))
        return summary

    def _plot_lengths(self, path: Path) -> Path:
        from r1lab.plots import plt

        fig, ax = plt.subplots(figsize=(7, 4))
        top = max((max(v) for v in self.lens.values() if v), default=1)
        bins = np.linspace(0, max(top, 1), self.s.bins + 1)
        for name, lens in self.lens.items():
            ax.hist(lens, bins=bins, histtype="step", linewidth=1.5, label=f"{name} (n={len(lens)})")
        ax.set_xlabel(f"length of {self.s.field} ({self.lengths.unit})")
        ax.set_ylabel("rows")
        ax.legend(fontsize=8)
        ax.set_title("length distribution per dataset")
        return _save(fig, path)

    def _plot_overlap(self, path: Path, overlap: dict[str, dict[str, int]]) -> Path:
        from r1lab.plots import plt

        names = list(overlap)
        frac = np.array([[overlap[a][b] / max(self.rows[a], 1) for b in names] for a in names])
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 1.0 * len(names) + 2))
        ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                ax.text(j, i, f"{overlap[a][b]}\n{100 * frac[i, j]:.1f}%", ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("... found in this dataset")
        ax.set_ylabel("rows of this dataset ...")
        ax.set_title("cross-dataset overlap")
        return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    from r1lab.plots import plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def group_of(p: Problem, key: str) -> str:
    value = getattr(p, key, None) if key in ("source", "task") else p.metadata.get(key)
    return str(value) if value not in (None, "") else "(none)"


def inspect_datasets(datasets: dict[str, Iterable[Problem]], s: InspectSettings, out_dir: str | Path) -> dict[str, Any]:
    """Lengths, sources and overlap of named datasets; writes lengths.png, overlap.png, inspect.json."""
    ins = Inspector(s)
    for name, rows in datasets.items():
        for p in rows:
            ins.add(name, p)
    return ins.finish(out_dir)

"""Decontamination at its defaults on real training rows with benchmark items planted, per kind of edit.

Clean rows: 400 GSM8K train problems (data/gsm8k) and 400 MATH train problems (data/math), all real.
References: the five vendored benchmarks. 25 items are planted per kind (r1lab.data.planted).

The bounds, and why (measured over seeds 0-7 of this corpus, and in BENCHMARKS.md over 2,000-row
corpora and all 14,973 training rows):
- exact, whitespace and case, LaTeX respelled, wrapped in instructions: recall >= 24/25 each; every
  seed caught 25/25, and these edits leave at least 0.7 of an item's normalised 8-grams intact.
- precision >= 0.95 over those four kinds (at most 5 clean rows flagged against 100 planted): seeds
  flagged 0-1. The clean rows that can be flagged are MATH train problems that are MATH500 items
  with a word or number changed, which the corpus counts as clean.
- numbers changed is reported apart: one number changed is caught mostly (seeds: 17-23 of 25; bound
  >= 15), every number changed is mostly not (2-5 of 25; bound <= 8), because new numbers break most
  n-grams of a short problem. `mask_numbers=true` catches both kinds (25/25), at the cost of flagging
  more clean template siblings (seeds: 3-8; bound <= 10).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from r1lab.benchmarks import R1_PROMPT_TEMPLATE, data_path, known_benchmarks
from r1lab.data.decontam import BenchmarkIndex, DecontamSettings, canonical, decontam_tokens, decontaminate
from r1lab.data.planted import KINDS, build_corpus, score
from r1lab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MAIN_KINDS = ("exact", "whitespace_case", "latex", "wrapped")


@pytest.fixture(scope="module")
def corpus():
    suffix = R1_PROMPT_TEMPLATE.format(problem="")
    gsm = [json.loads(line) for line in (ROOT / "data/gsm8k/train_r1.jsonl").open(encoding="utf-8")]
    gsm = [(r["id"], r["prompt"].removesuffix(suffix)) for r in gsm]
    math = [(r["id"], r["problem"]) for r in map(json.loads, (ROOT / "data/math/train_sample.jsonl").open(encoding="utf-8"))]
    files = [str(data_path(name)) for name in known_benchmarks()]
    bench = [(r["id"], r["problem"]) for f in files for r in map(json.loads, Path(f).open(encoding="utf-8"))]
    rng = random.Random(0)
    clean = rng.sample(gsm, 400) + rng.sample(math, 400)
    return files, build_corpus(clean, bench, 25, seed=0)


def _score(files, rows, **cfg):
    s = DecontamSettings(benchmarks=files, **cfg)
    index = BenchmarkIndex.from_settings(s)
    return score(rows, lambda r: index.match(r.id, r.text, s.exact, s.min_overlap, s.min_coverage))


def test_defaults_catch_every_planted_kind_and_spare_the_clean_rows(corpus):
    files, rows = corpus
    assert sum(r.kind == "clean" for r in rows) == 800 and all(sum(r.kind == k for r in rows) == 25 for k in KINDS)
    res = _score(files, rows)
    for kind in MAIN_KINDS:
        assert res["per_kind"][kind]["caught"] >= 24, (kind, res["per_kind"][kind])
    assert res["recall"] >= 0.96 and res["precision"] >= 0.95, res
    assert res["per_kind"]["numbers_one"]["caught"] >= 15
    assert res["per_kind"]["numbers_all"]["caught"] <= 8


def test_mask_numbers_catches_new_number_rewrites_at_a_precision_cost(corpus):
    files, rows = corpus
    res = _score(files, rows, mask_numbers=True)
    assert res["per_kind"]["numbers_one"]["caught"] == 25 and res["per_kind"]["numbers_all"]["caught"] == 25
    assert all(res["per_kind"][k]["caught"] >= 24 for k in MAIN_KINDS)
    assert res["false_positives"] <= 10


def test_one_shared_ngram_is_not_enough(corpus):
    """The rule of one shared 8-gram flags a tenth of real training rows (stock phrases, shared setups)."""
    files, rows = corpus
    res = _score(files, rows, min_coverage=1e-9, common_items=0)
    assert res["recall"] == 1.0 and res["false_positives"] >= 40 and res["precision"] < 0.75


@pytest.mark.parametrize("a, b", [
    (r"If $x \le 3$ and $y \ge 2$, find $x \cdot y$.", r"If \(x \leq 3\) and \(y \geqslant 2\), find $x \times y$."),
    (r"Compute $\frac{1}{2} + \dfrac{3}{4}$.", "Compute 1/2 + 3/4."),
    (r"Find $x^{2}$ for $x = 1{,}000$.", "FIND  x^2\nfor x = 1,000."),
    (r"An angle of $30^\circ$ and $\pi$.", "An angle of 30° and π."),
    (r"The list $1, 2, \ldots, 10$ and $\mbox{dogs}$.", r"The list $1, 2, \dots, 10$ and $\text{dogs}$."),
    ("Natalia’s clips cost $5 — a “deal”.", "Natalia's clips cost $5 - a \"deal\"."),
])
def test_canonical_spellings_compare_equal(a, b):
    assert decontam_tokens(a) == decontam_tokens(b)


def test_canonical_keeps_what_differs():
    assert decontam_tokens("Find x + 12") != decontam_tokens("Find x + 13")
    assert decontam_tokens("Find x + 12", mask_numbers=True) == decontam_tokens("Find x + 13", mask_numbers=True)
    assert canonical("1,000 and (0,3)").split() == ["1000", "and", "(0", ",", "3)"]


def test_short_items_hit_only_when_contained_whole(tmp_path):
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"id": "s1", "problem": r"Evaluate $\lceil\sqrt{20}\rceil^2$."}) + "\n"
                     + json.dumps({"id": "s2", "problem": r"Simplify $\sqrt{242}$."}) + "\n", encoding="utf-8")
    index = BenchmarkIndex.from_files([str(bench)], 8)  # s1 has 7 tokens, s2 three: both shorter than 8
    hits = index.match("r", r"Question: evaluate \(\lceil \sqrt{20} \rceil^{2}\). Show your steps.")
    assert [(h.benchmark_id, h.kind, h.coverage) for h in hits] == [("s1", "contained", 1.0)]
    assert index.match("r", r"Evaluate $\lceil\sqrt{21}\rceil^2$ please.") == []
    assert [h.benchmark_id for h in index.match("r", r"First simplify \(\sqrt{242}\). Then square it.")] == ["s2"]
    assert BenchmarkIndex.from_files([str(bench)], 8, min_tokens=4).match("r", r"First simplify \(\sqrt{242}\). Then square it.") == []


def test_boilerplate_ngrams_shared_by_many_items_count_for_nothing(tmp_path):
    stock = "Express your answer as a decimal to the nearest tenth."
    items = [f"Item {w} asks about {w} things in a {w} way. {stock}" for w in ("red", "green", "blue")]
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps({"id": f"i{k}", "problem": t}) + "\n" for k, t in enumerate(items)), encoding="utf-8")
    index = BenchmarkIndex.from_files([str(bench)], 5)
    assert ("a decimal to the nearest", 3) in index.boilerplate()
    row = "A train goes 12 miles in 20 minutes. How fast is it? " + stock
    assert index.match("r", row, min_coverage=0.01) == []  # only boilerplate is shared
    assert BenchmarkIndex.from_files([str(bench)], 5, common_items=0).match("r", row, min_coverage=0.01) != []
    assert [h.coverage for h in index.match("r", items[1])] == [1.0]  # exact copy
    assert [h.coverage for h in index.match("r", "Note: " + items[1])] == [1.0]  # denominators exclude boilerplate


@pytest.mark.parametrize("bad, message", [
    ({"min_coverage": 0.0}, r"min_coverage=0.0: expected a number in \(0, 1\]"),
    ({"min_coverage": 1.5}, r"min_coverage=1.5: expected a number in \(0, 1\]"),
    ({"common_items": 1}, r"common_items=1: expected 0 \(off\) or an integer >= 2"),
    ({"min_tokens": 0}, "min_tokens=0: expected an integer >= 1"),
])
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        list(decontaminate([], DecontamSettings(benchmarks=["b.jsonl"], **bad), lambda *a: None))

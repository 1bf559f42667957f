"""Dedup and decontamination on planted cases: which edits count as duplicates, what is reported."""

import pytest

from r1lab.data.decontam import BenchmarkIndex, DecontamSettings, decontam_tokens, decontaminate
from r1lab.data.dedup import DedupSettings, dedup, prompt_of, tokens
from r1lab.records import Problem

BASE = ("A train leaves the station at 3 pm travelling at 60 km/h. A second train leaves the same station "
        "at 5 pm travelling at 90 km/h in the same direction. At what time does the second train catch up?")
LATEX = r"Find all real $x$ such that $\frac{x^2 - 4}{x + 2} = 7$ and $x \neq -2$, then give the sum of the solutions."
OTHER = "How many positive divisors does 3600 have that are perfect squares but not perfect cubes?"


def _dedup(texts, **kw):
    drops = []
    rows = [Problem(id=f"r{i}", prompt=t, answer="1") for i, t in enumerate(texts)]
    kept = list(dedup(rows, DedupSettings(**kw), lambda *a: drops.append(a)))
    return kept, drops


def test_normalisation_ignores_case_space_dollars_braces_and_latex_spacing():
    a = tokens(r"Find $\left( x^{2} \right)$ if \dfrac{1}{2}\,x = 3.")
    b = tokens(r"find (x^2)  if \frac12 x=3")
    assert a[:6] == b[:6] == ["find", "x", "^", "2", "if", "\\frac"]
    assert tokens("costs 1,000 or 2.5 dollars", mask_numbers=True) == ["costs", "#", "or", "#", "dollars"]


def test_planted_duplicates_of_each_kind_are_absorbed_by_their_first_row():
    variants = {
        "whitespace": BASE.replace(" ", "   ").replace("km/h.", "km/h .\n"),
        "case_punct": BASE.upper().replace("?", "??"),
        "numbers": BASE.replace("60", "55").replace("90", "80"),
        "paraphrase": "Question: " + BASE.replace("leaves the station", "departs from the station"),
        "latex": LATEX.replace("$x$", r"$\,x\,$").replace(r"\frac{x^2 - 4}{x + 2}", r"\dfrac{x^{2}-4}{x+2}"),
    }
    kept, drops = _dedup([BASE, LATEX, OTHER, *variants.values()])
    assert [p.id for p in kept] == ["r0", "r1", "r2"]
    assert {d[0]: d[2] for d in drops} == {"r3": "r0", "r4": "r0", "r5": "r0", "r6": "r0", "r7": "r1"}
    assert {d[1] for d in drops} == {"exact_duplicate", "near_duplicate"}
    assert sorted(kept[0].metadata["absorbed"]) == ["r3", "r4", "r5", "r6"] and kept[1].metadata["absorbed"] == ["r7"]
    assert "absorbed" not in kept[2].metadata


def test_number_changes_are_kept_apart_when_numbers_are_not_masked():
    short = ["Compute 17 * 23 + 4.", "Compute 18 * 29 + 1.", "Compute 17 * 23 + 4."]
    kept, drops = _dedup(short, mask_numbers=False)
    assert [p.id for p in kept] == ["r0", "r1"] and drops == [("r2", "exact_duplicate", "r0")]
    kept, _ = _dedup(short)  # default: numbers masked, so all three are one problem
    assert [p.id for p in kept] == ["r0"]


def test_exact_only_and_minhash_only():
    texts = [BASE, BASE.replace("60", "61"), "  " + BASE]
    assert [p.id for p in _dedup(texts, minhash=False)[0]] == ["r0", "r1"]
    kept, drops = _dedup(texts, exact=False)
    assert [p.id for p in kept] == ["r0"] and {d[1] for d in drops} == {"near_duplicate"}


def test_bad_dedup_settings():
    from r1lab.errors import ConfigError, ModelError

    with pytest.raises(ConfigError):
        _dedup([BASE], threshold=1.5)
    with pytest.raises(ModelError):
        _dedup([BASE], embedding_model="/nonexistent/model")


def test_embedding_dedup_runs_on_a_local_model_dir(tmp_path):
    """A tiny random BERT: its similarities mean nothing, but identical texts embed identically, so the
    code path (load, mean pooling, search, absorb) is exercised. Quality is measured in BENCHMARKS.md."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(" ".join([BASE, OTHER]).lower().replace("?", " ").split()))
    (tmp_path / "vocab.txt").write_text("\n".join(words), encoding="utf-8")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "emb")
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(tmp_path / "emb")
    kept, drops = _dedup([BASE, OTHER, BASE], exact=False, minhash=False, embedding_model=str(tmp_path / "emb"), embedding_threshold=0.999)
    assert [p.id for p in kept] == ["r0", "r1"] and drops == [("r2", "embedding_duplicate", "r0")]
    assert kept[0].metadata["absorbed"] == ["r2"]


def _bench(tmp_path):
    import json

    path = tmp_path / "bench.jsonl"
    rows = [{"id": "b1", "problem": BASE, "answer": "7 pm"}, {"id": "b2", "problem": "What is 2+2?", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_decontamination_reports_every_hit_with_the_matching_ngram(tmp_path):
    bench = _bench(tmp_path)
    rows = [
        Problem("t1", "Solve this. " + BASE[40:] + " Show your work.", "x"),  # an embedded fragment: n-gram hit
        Problem("t2", "what is 2 + 2 ?", "4"),  # shorter than n: exact normalised match
        Problem("t3", OTHER, "1"),
        Problem("t4", "What is 2+3?", "5"),  # short and different: no hit
    ]
    hits, drops = [], []
    kept = list(decontaminate(rows, DecontamSettings(benchmarks=[str(bench)]), lambda *a: drops.append(a), hits.append))
    assert [p.id for p in kept] == ["t3", "t4"]
    assert [(h["id"], h["benchmark_id"], h["kind"]) for h in hits] == [("t1", "b1", "ngram"), ("t2", "b2", "exact")]
    assert len(hits[0]["ngram"].split()) == 8 and hits[0]["ngram"] in " ".join(decontam_tokens(BASE))
    assert hits[0]["benchmark"] == str(bench) and hits[0]["overlap"] > 10 and 0.7 <= hits[0]["coverage"] < 1
    assert drops[0] == ("t1", "contaminated", f"{bench}:b1")


def test_decontamination_ngram_size_coverage_min_overlap_and_tag_mode(tmp_path):
    bench = _bench(tmp_path)
    fragment = Problem("t1", "Consider: " + " ".join(BASE.split()[:12]), "x")  # its first 12 words: 6 of its 34 8-grams
    index = BenchmarkIndex.from_files([str(bench)], 8)
    assert index.match("t1", prompt_of(fragment)) == []  # 6/34 of the item is not a copy of it
    hits = index.match("t1", prompt_of(fragment), min_coverage=0.15)
    assert [(h.kind, h.overlap, h.coverage) for h in hits] == [("ngram", 6, round(6 / 34, 4))]
    assert index.match("t1", prompt_of(fragment), min_coverage=0.15, min_overlap=7) == []
    assert BenchmarkIndex.from_files([str(bench)], 32).match("t1", prompt_of(fragment), min_coverage=0.01) == []
    s = DecontamSettings(benchmarks=[str(bench)], action="tag", min_coverage=0.15)
    kept = list(decontaminate([fragment], s, lambda *a: None))
    assert kept[0].metadata["contamination"] == [{"benchmark": str(bench), "benchmark_id": "b1", "kind": "ngram", "coverage": round(6 / 34, 4)}]


def test_benchmark_file_without_text_is_an_error(tmp_path):
    from r1lab.errors import DataError

    (tmp_path / "b.jsonl").write_text('{"id": 1, "answer": "2"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b.jsonl:1: benchmark row has no text"):
        BenchmarkIndex.from_files([str(tmp_path / "b.jsonl")], 8)

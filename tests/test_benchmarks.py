"""The vendored benchmarks: exact files, registry, loading into Problems, and scoring of real
problems with their own reference solutions (and with another problem's, which must fail)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

from r1lab.benchmarks import (BENCHMARKS, PROMPT_TEMPLATE, breakdown, get_benchmark, load_benchmark, parse_names,
                              protocol, summary_table)
from r1lab.cli import main
from r1lab.errors import DataError
from r1lab.verify import verify_batch
from r1lab.verify.math import extract_answer

ROOT = Path(__file__).resolve().parents[1]
SHA256 = {  # from data/PROVENANCE.md (and the shared data README)
    "math500": "f3ca12a513db7593e0c59e00ad3a1147b1307bc2746e1b09375c15ccca1cee98",
    "gsm8k": "7a3a6d08d86825077096fa3f9f739c953cd9b00ff8b4046cca382c412898d69f",
    "aime24": "a51c6433c70186eb05fafe069708766f1797fbabb830f5329f50be4b65cc7272",
    "aime25": "e5d805362ac19bf667ce55b37f2c3a8601cf48022e13ff29d7787b4aa6ac63dd",
    "amc23": "841acd61b12288324a16f5f3e32fa13b179a18ac61569027d446fbd5cd868461",
}


def _score_references():
    spec = importlib.util.spec_from_file_location("score_references", ROOT / "benchmarks" / "score_references.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("score_references", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", list(SHA256))
def test_vendored_files_are_the_recorded_bytes(name):
    from r1lab.benchmarks import data_path

    data = data_path(name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256[name]
    assert SHA256[name] in data_path(name).parent.joinpath("PROVENANCE.md").read_text()
    assert len(load_benchmark(name)) == BENCHMARKS[name].rows


def test_loading_keeps_answers_prompt_and_metadata():
    p = load_benchmark("math500", limit=1)[0]
    assert p.id == "test/precalculus/807.json" and p.task == "math" and p.source == "math500"
    assert p.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert p.metadata["level"] == 2 and p.metadata["subject"] == "Precalculus"
    assert p.prompt.startswith("Convert the point $(0,3)$")
    assert p.prompt.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.")
    aime = load_benchmark("aime24")
    assert len(aime) == 30 and all(len(p.answer) == 3 for p in aime)  # "073": three digits, as in the source
    assert [p.answer for p in load_benchmark("gsm8k", limit=2)] == ["18", "3"]
    assert PROMPT_TEMPLATE.format(problem="X") == "X\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_protocols():
    assert protocol(get_benchmark("aime24")) == (16, 0.6, 0.95)
    assert protocol(get_benchmark("math500")) == (1, 0.0, 1.0)
    assert protocol(get_benchmark("gsm8k"), n=4) == (4, 0.6, 0.95)  # n greedy copies would be identical
    assert protocol(get_benchmark("gsm8k"), n=4, temperature=0.0) == (4, 0.0, 1.0)
    assert [b.name for b in parse_names("gsm8k, math500,gsm8k")] == ["gsm8k", "math500"]


def test_unknown_benchmark_is_one_line_exit_2(capsys, tmp_path):
    with pytest.raises(DataError, match=r"^unknown benchmark 'gsm9k'; known: math500, gsm8k, aime24, aime25, amc23$"):
        parse_names("math500,gsm9k")
    # fails before the model is even looked up
    assert main(["eval", str(tmp_path / "no-model"), "--benchmarks", "gsm9k"]) == 2
    assert capsys.readouterr().err.strip() == ("r1lab: error: unknown benchmark 'gsm9k'; "
                                               "known: math500, gsm8k, aime24, aime25, amc23")


def test_gsm8k_final_answer_line_is_extracted():
    assert extract_answer("She pays 2 * 600 = 1200.\n#### 1,200") == ("1200", "hash")
    assert extract_answer("#### 5\n#### 7\n") == ("7", "hash")
    assert extract_answer("\\boxed{3}\n#### 7") == ("3", "boxed")  # a box still wins
    assert extract_answer("value #### 7 inline") == (None, "none")  # only a line of its own
    assert extract_answer("so $d = \\boxed{\\textbf{(073)}}.$") == ("073", "boxed")


def test_reference_solutions_score_correct_and_shuffled_ones_do_not():
    """Real problems from each benchmark with solutions, through the worker pool like training."""
    refs = _score_references()
    problems = load_benchmark("math500", 12) + load_benchmark("gsm8k", 12) + load_benchmark("aime24", 12)
    problems = [p for p in problems if p.id != "aime24-60"]  # its solution states no final answer (see below)
    texts = [refs.reference_text(p) for p in problems]
    assert texts[12].endswith("\n#### 18")
    verdicts = verify_batch(problems, texts, timeout=10.0, workers=2)
    assert [(p.id, v.status) for p, v in zip(problems, verdicts) if not v.correct] == []
    others = refs.shuffled(problems)
    assert all(o is not p for o, p in zip(others, problems))
    control = verify_batch(others, texts, timeout=10.0, workers=2)
    false = [(p.id, o.id) for p, o, v in zip(problems, others, control) if v.correct and o.answer != p.answer]
    assert false == []


def test_aime24_60_reference_framebox_is_extracted():
    """This AoPS reference ends "$180 + 24 = 204$. -sepehr2010" with no box; its first solution states
    the answer as \\framebox{204}, which counts as a box. No last-number rule is involved: that would
    credit any response that merely ends with the right number somewhere."""
    p = next(p for p in load_benchmark("aime24") if p.id == "aime24-60")
    assert p.answer == "204" and extract_answer(p.metadata["solution"], phrases=True) == ("204", "boxed")
    assert extract_answer("so t = 24. $180 + 24 = 204$. -sepehr2010", phrases=True) == (None, "none")
    assert _score_references().KNOWN_DATA_MISSES == {}


def test_breakdown_and_summary_table():
    problems = load_benchmark("math500", 3)
    rows = [{"id": p.id, "avg": a} for p, a in zip(problems, [1.0, 0.0, 0.5])]
    levels = breakdown(rows, problems, "level")
    assert sum(v["problems"] for v in levels.values()) == 3
    assert levels == {str(k): v for k, v in levels.items()}
    subjects = breakdown(rows, problems, "subject")
    assert subjects["Precalculus"]["accuracy"] == pytest.approx(
        sum(r["avg"] for r, p in zip(rows, problems) if p.metadata["subject"] == "Precalculus")
        / sum(p.metadata["subject"] == "Precalculus" for p in problems))
    table = summary_table({"math500": (2, {"problems": 3, "avg@2": 0.5, "pass@2": 0.75, "maj@2": 0.5,
                                           "len_correct": 10.0, "len_wrong": float("nan"), "truncated": 0.0})})
    assert table.splitlines()[2] == "| math500 | 3 | 2 | 50.0 | 75.0 | 50.0 | - | 10 | - | 0.0 |"

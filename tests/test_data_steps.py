"""verify, reject-sample (policies, pass rates), filter windows and inspect outputs."""

import pytest

from r1lab.data.filter import FilterSettings, difficulty_filter
from r1lab.data.inspect import InspectSettings, inspect_datasets
from r1lab.data.reject import RejectSettings, reject_sample, select
from r1lab.data.verify_traces import VerifySettings, verify_traces
from r1lab.errors import DataError
from r1lab.records import Completion, Problem, Verdict


def _c(text, n_tokens, logprob=-1.0, finish="stop"):
    return Completion("p", [1], list(range(n_tokens)), text, [logprob] * n_tokens, finish)


def _trace_rows():
    return [
        Problem("a", "1+1?", "2", metadata={"response": "<think>1+1</think><answer>2</answer>"}),
        Problem("b", "2+2?", "4", metadata={"response": "so the answer is \\boxed{5}"}),
        Problem("c", "3+3?", "6"),
        Problem("d", "4+4?", "8", metadata={"response": ["\\boxed{9}", "<answer>8</answer>", "\\boxed{8}"]}),
    ]


def test_verify_traces_drops_wrong_and_missing_and_cuts_lists():
    drops = []
    kept = list(verify_traces(_trace_rows(), VerifySettings(workers=0), lambda *a: drops.append(a)))
    assert [p.id for p in kept] == ["a", "d"]
    assert kept[1].metadata["response"] == ["<answer>8</answer>", "\\boxed{8}"]
    assert [(d[0], d[1]) for d in drops] == [("b", "trace_wrong"), ("c", "no_trace")]
    tagged = list(verify_traces(_trace_rows(), VerifySettings(workers=0, action="tag"), lambda *a: None))
    assert [p.metadata["trace_verdicts"] for p in tagged] == [["correct"], ["wrong"], [], ["wrong", "correct", "correct"]]


def test_selection_policies_are_pure_functions_of_completions_and_verdicts():
    comps = [_c("long right", 30, -0.5), _c("short right", 10, -2.0), _c("wrong", 5), _c("cut off", 3, -0.1, "length")]
    verdicts = [Verdict("correct"), Verdict("correct"), Verdict("wrong"), Verdict("correct")]
    assert select("all-correct", comps, verdicts) == [0, 1]  # the truncated one never counts
    assert select("shortest-correct", comps, verdicts) == [1]
    assert select("best-of", comps, verdicts) == [0]  # highest mean log-prob
    assert select("best-of", comps, [Verdict("wrong")] * 4) == []


class FakeEngine:
    """Answers problem i with the canned texts; stands in for HFEngine."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, problems, params, n=1, seed=None):
        return [_c(self.texts[p.id][j], 5 + j) for p in problems for j in range(n)]


def test_reject_sample_records_pass_rates_and_keeps_verified_responses():
    rows = [Problem("p1", "1+1?", "2"), Problem("p2", "2+2?", "4")]
    engine = FakeEngine({"p1": ["<answer>2</answer>", "<answer>3</answer>", "<answer>2</answer>", "x"],
                         "p2": ["<answer>5</answer>"] * 4})
    drops = []
    s = RejectSettings(k=4, workers=0, policy="shortest-correct")
    kept = list(reject_sample(rows, s, lambda *a: drops.append(a), engine=engine))
    assert [p.id for p in kept] == ["p1"]
    assert kept[0].metadata["responses"] == ["<answer>2</answer>"]
    assert kept[0].metadata["pass_rate"] == 0.5 and kept[0].metadata["n_correct"] == 2
    assert drops[0][:2] == ("p2", "no_verified_sample") and rows[1].metadata["pass_rate"] == 0.0


def test_reject_sample_with_a_real_tiny_model(tmp_path, tiny):
    from r1lab.models import save_model

    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    rows = [Problem("p1", "Compute 7 + 3.", "10"), Problem("p2", "Compute 2 * 4.", "8")]
    s = RejectSettings(model=str(tmp_path / "m"), k=3, max_new_tokens=8, workers=0, keep_unsolved=True)
    kept = list(reject_sample(rows, s, lambda *a: None))
    assert [p.id for p in kept] == ["p1", "p2"]
    for p in kept:  # a random model: the rate is whatever it is, but it is recorded for k samples
        assert p.metadata["n_samples"] == 3 and 0.0 <= p.metadata["pass_rate"] <= 1.0
        assert isinstance(p.metadata["responses"], list)


def test_filter_windows_light_r1_and_skywork():
    rows = [Problem(f"p{c}", "q", "1", metadata={"pass_rate": c / 16}) for c in range(17)]
    drops = []
    kept = list(difficulty_filter(rows, FilterSettings(min_pass=1 / 16, max_pass=15 / 16), lambda *a: drops.append(a)))
    assert [p.id for p in kept] == [f"p{c}" for c in range(1, 16)]  # Skywork-OR1: 1..15 of 16
    assert [(d[0], d[1]) for d in drops] == [("p0", "too_hard"), ("p16", "too_easy")]
    kept = list(difficulty_filter(rows, FilterSettings(max_pass=0.5, max_exclusive=True), lambda *a: None))
    assert [p.id for p in kept] == [f"p{c}" for c in range(8)]  # Light-R1: below alpha
    with pytest.raises(DataError, match="no metadata\\['pass_rate'\\]"):
        list(difficulty_filter([Problem("x", "q", "1")], FilterSettings(), lambda *a: None))


def test_filter_computes_missing_pass_rates_with_a_model():
    engine = FakeEngine({"p1": ["<answer>1</answer>"] * 4, "p2": ["<answer>1</answer>", "no"] * 2})
    rows = [Problem("p1", "q", "1"), Problem("p2", "q", "1")]
    kept = list(difficulty_filter(rows, FilterSettings(k=4, workers=0, max_pass=0.75), lambda *a: None, engine=engine))
    assert [(p.id, p.metadata["pass_rate"]) for p in kept] == [("p2", 0.5)]


def test_inspect_writes_plots_counts_and_overlap(tmp_path):
    a = [Problem(f"a{i}", f"Find the value of x when {i} x plus seven equals ninety one today and tomorrow", "1", source="s1") for i in range(5)]
    b = [Problem("b0", a[0].prompt, "1", source="s2"), Problem("b1", "Something else entirely different here", "1", source="s2")]
    summary = inspect_datasets({"A": a, "B": b}, InspectSettings(), tmp_path / "ins")
    assert summary["datasets"]["A"]["rows"] == 5 and summary["datasets"]["B"]["sources"] == {"s2": 2}
    assert summary["overlap"]["B"] == {"A": 1, "B": 2}  # b0 is a0; b1 is in no dataset but its own
    assert summary["overlap"]["A"]["B"] == 5  # every A row shares the 8-gram "x plus seven ... and tomorrow" with b0
    for f in ("lengths.png", "overlap.png", "inspect.json"):
        assert (tmp_path / "ins" / f).stat().st_size > 0

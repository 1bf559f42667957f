"""`select` (LIMO / s1 selection): quality filters, difficulty preference, cluster coverage, exact N,
determinism, MinHash clusters, pass rates from a model, and the step through the CLI with its manifest."""

import json
from collections import Counter

import pytest

from r1lab.data.subset import SelectSettings, round_robin, select_examples, Candidate
from r1lab.errors import ConfigError, DataError
from r1lab.records import Completion, Problem


def trace(steps=2, answer="1"):
    return "<think>" + "\n".join(f"step {i} of the work" for i in range(steps)) + f"</think>\n<answer>{answer}</answer>"


# subject -> pass rates of its rows (row ids are subject + index); every row has a good trace
SUBJECTS = {"algebra": [0.9, 0.1, 0.5, 0.3, 0.7, 0.0], "geometry": [0.6, 0.2, 0.8], "counting": [0.4, 0.05], "number": [0.95]}


def corpus():
    rows = [Problem(f"{s}{i}", f"Problem {s} {i}: find the value.", "1", metadata={"subject": s, "pass_rate": r, "response": trace()})
            for s, rates in SUBJECTS.items() for i, r in enumerate(rates)]
    bad = [
        Problem("none", "q", "1", metadata={"subject": "algebra", "pass_rate": 0.0}),  # no trace
        Problem("plain", "q", "1", metadata={"subject": "algebra", "pass_rate": 0.0, "response": "the answer is 1"}),
        Problem("long", "q", "1", metadata={"subject": "algebra", "pass_rate": 0.0, "response": trace(steps=60)}),
        Problem("wrong", "q", "1", metadata={"subject": "algebra", "pass_rate": 0.0, "response": trace(),
                                             "trace_verdicts": ["wrong"]}),
        Problem("mixed", "q", "1", metadata={"subject": "geometry", "pass_rate": 0.0,
                                             "response": ["no format", trace(), trace(steps=60)]}),
    ]
    return rows + bad


def run(rows, **kw):
    drops, picked, notes = [], [], {}
    settings = SelectSettings(**{"cluster_by": "subject", "max_trace_words": 100, "workers": 0, **kw})
    kept = list(select_examples(rows, settings, lambda *a: drops.append(a), on_selected=picked.append, notes=notes))
    return kept, drops, picked, notes


def test_quality_filters_drop_with_reasons_and_cut_trace_lists():
    kept, drops, _, notes = run(corpus(), n=100)
    reasons = {d[0]: d[1] for d in drops}
    assert reasons == {"none": "no_trace", "plain": "trace_malformed", "long": "trace_too_long", "wrong": "trace_unverified"}
    mixed = next(p for p in kept if p.id == "mixed")
    assert mixed.metadata["response"] == [trace()]  # the malformed and the over-long traces are gone
    assert notes["candidates"] == 13 and notes["selected"] == 13 and notes["short_of_n"] == 87


def test_exact_n_covers_every_cluster_and_balances_counts():
    for n in (4, 5, 6, 9):
        kept, drops, picked, notes = run(corpus(), n=n)
        assert len(kept) == n and len(picked) == n
        counts = Counter(p.metadata["subject"] for p in kept)
        assert set(counts) == set(SUBJECTS)  # n >= 4 clusters: every cluster is represented
        size = {s: len(SUBJECTS[s]) + (s == "geometry") for s in SUBJECTS}  # geometry also holds "mixed"
        open_ = [counts[s] for s in SUBJECTS if counts[s] < size[s]]  # clusters not exhausted
        assert max(open_) - min(open_) <= 1 and all(counts[s] <= max(open_) for s in SUBJECTS)
        assert notes["clusters"] == 4 and notes["clusters_covered"] == 4
        assert sum(d[1] == "not_selected" for d in drops) == 13 - n
    kept, *_ = run(corpus(), n=2)
    assert sorted(p.id for p in kept) == ["algebra5", "mixed"]  # the two hardest cluster heads (both 0.0; counting1 0.05)


def test_difficulty_preference_within_each_cluster():
    kept, _, picked, notes = run(corpus(), n=8)
    by = {s: sorted(p.metadata["pass_rate"] for p in kept if p.metadata["subject"] == s) for s in SUBJECTS}
    # rounds: 4 heads (0.0, 0.0, 0.05, 0.95); then algebra 0.1, geometry 0.2, counting 0.4 (number is
    # exhausted); the eighth is the better third-round head: algebra 0.3 over geometry 0.6
    assert by["algebra"] == [0.0, 0.1, 0.3] and by["geometry"] == [0.0, 0.2]
    assert by["counting"] == [0.05, 0.4] and by["number"] == [0.95]
    assert [r["rank"] for r in picked] == list(range(8)) and picked[0]["pass_rate"] == 0.0
    assert notes["mean_pass_rate_selected"] < notes["mean_pass_rate_candidates"]
    # selection records: on each kept row, and in rank order through on_selected
    assert {p.id: p.metadata["selection"]["rank"] for p in kept} == {r["id"]: r["rank"] for r in picked}
    # output keeps input order
    order = [p.id for p in corpus()]
    assert [p.id for p in kept] == sorted((p.id for p in kept), key=order.index)


def test_max_pass_drops_easy_rows_and_length_weight_prefers_long_traces():
    kept, drops, *_ = run(corpus(), n=100, max_pass=0.5)
    assert all(p.metadata["pass_rate"] <= 0.5 for p in kept)
    assert {d[0] for d in drops if d[1] == "too_easy"} == {"algebra0", "algebra4", "geometry0", "geometry2", "number0"}
    rows = [Problem(f"r{i}", f"q{i}", "1", metadata={"subject": "a", "response": trace(steps=i + 1)}) for i in range(5)]
    kept, *_ = run(rows, n=2, difficulty_weight=0.0, length_weight=1.0)
    assert [p.id for p in kept] == ["r3", "r4"]


def test_deterministic_and_seeded():
    ids = lambda **kw: [p.id for p in run(corpus(), **kw)[0]]  # noqa: E731
    assert ids(n=7) == ids(n=7)
    # no weights: a random subset spread over the clusters, fixed by the seed
    a, b = ids(n=6, difficulty_weight=0.0, seed=0), ids(n=6, difficulty_weight=0.0, seed=1)
    assert a == ids(n=6, difficulty_weight=0.0, seed=0) and a != b
    for x in (a, b):
        assert {i.rstrip("0123456789") for i in x} - {"mixed"} <= set(SUBJECTS)


def test_round_robin_by_hand():
    c = lambda i, cl, s: Candidate(i, f"x{i}", cl, None, 0, score=s, tie=0.0)  # noqa: E731
    cands = [c(0, "A", 0.9), c(1, "A", 0.8), c(2, "A", 0.7), c(3, "B", 0.5), c(4, "C", 0.95), c(5, "C", 0.1)]
    # round 0: heads C(0.95) A(0.9) B(0.5); round 1: A(0.8) C(0.1); round 2: A(0.7)
    assert [(x.index, r) for x, r in round_robin(cands, 6)] == [(4, 0), (0, 0), (3, 0), (1, 1), (5, 1), (2, 2)]
    assert [x.index for x, _ in round_robin(cands, 2)] == [4, 0]


def test_minhash_clusters_templated_prompts():
    templates = ["A train leaves the station at {} km per hour and travels for {} hours; how far does it go?",
                 "Find the sum of all positive divisors of {} that are smaller than {} and odd.",
                 "How many ways can {} people sit around a round table with {} chairs left empty?"]
    rows = [Problem(f"t{t}-{i}", tpl.format(i + 2, i + 5), "1", metadata={"response": trace(), "pass_rate": i / 10})
            for t, tpl in enumerate(templates) for i in range(4)]
    kept, _, picked, notes = run(rows, n=3, cluster_by="minhash")
    assert notes["clusters"] == 3 and sorted(p.id for p in kept) == ["t0-0", "t1-0", "t2-0"]
    assert {r["cluster"] for r in picked} == {"t0-0", "t1-0", "t2-0"}  # a cluster is named by its first row


class FakeEngine:
    def __init__(self, texts):
        self.texts = texts

    def generate(self, problems, params, n=1, seed=None):
        return [Completion(p.id, [1], [1], self.texts[p.id][j], [0.0], "stop") for p in problems for j in range(n)]


def test_pass_rates_missing_are_an_error_or_sampled_with_a_model():
    rows = [Problem("p1", "q", "1", metadata={"response": trace()}), Problem("p2", "q", "1", metadata={"response": trace()})]
    with pytest.raises(DataError, match="no metadata\\['pass_rate'\\]"):
        run([Problem(**p.to_dict()) for p in rows], n=1)
    kept, *_ = run([Problem(**p.to_dict()) for p in rows], n=1, difficulty_weight=0.0)  # no difficulty: no rates needed
    assert len(kept) == 1
    engine = FakeEngine({"p1": ["<answer>1</answer>"] * 4, "p2": ["<answer>1</answer>", "<answer>2</answer>"] * 2})
    kept = list(select_examples(rows, SelectSettings(n=1, k=4, workers=0, cluster_by="task"), lambda *a: None, engine=engine))
    assert [(p.id, p.metadata["pass_rate"]) for p in kept] == [("p2", 0.5)]


def test_settings_are_checked():
    for kw in ({"n": 0}, {"trace_format": "xml"}, {"max_pass": 1.5}, {"length_weight": -1},
               {"min_trace_words": 10, "max_trace_words": 5}):
        with pytest.raises(ConfigError):
            run(corpus(), **kw)


def test_select_step_through_the_cli_writes_manifest_and_report(tmp_path, capsys):
    from r1lab.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in corpus()), encoding="utf-8")
    out = tmp_path / "sel.jsonl"
    assert main(["data", "select", str(src), "-o", str(out), "n=5", "cluster_by=subject", "max_trace_words=100", "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all("selection" in r["metadata"] for r in rows)
    manifest = json.loads((tmp_path / "sel.manifest.json").read_text())
    step = manifest["steps"][-1]
    assert step["step"] == "select" and step["rows_in"] == 17 and step["rows_out"] == 5
    assert step["dropped"]["not_selected"] == 8 and step["notes"]["clusters_covered"] == 4
    report = [json.loads(line) for line in open(step["reports"][0])]
    assert [r["rank"] for r in report] == list(range(5)) and {r["id"] for r in report} == {r["id"] for r in rows}
    assert main(["data", "select", str(src), "-o", str(out), "n=0"]) == 2  # bad setting: one line, exit 2
    assert "select.n=0: expected an integer >= 1" in capsys.readouterr().err

"""Preference pairs from verdicts: the pairing policies on a fixed set, the data step and its
manifest, and the pairs-file reader on good and bad rows."""

import json
import random

import pytest

from r1lab.cli import main
from r1lab.data.pairs import PairSettings, load_pairs, make_pairs, pick_pairs
from r1lab.errors import ConfigError, DataError
from r1lab.records import Completion, Problem, Verdict


def _c(text, n_tokens, logprob=-1.0, finish="stop"):
    return Completion("p", [1], list(range(n_tokens)), text, [logprob] * n_tokens, finish)


# index: text, tokens, mean log-prob, finish; verdict
COMPS = [_c("right, long", 30, -0.5), _c("right, short", 10, -2.0), _c("wrong, short", 5, -1.0),
         _c("right but cut off", 3, -0.1, "length"), _c("wrong, confident", 20, -0.2), _c("verifier timed out", 7, -0.05),
         _c("unparsable, cut off", 12, -3.0, "length")]
VERDICTS = [Verdict("correct"), Verdict("correct"), Verdict("wrong"), Verdict("correct"), Verdict("wrong"),
            Verdict("timeout"), Verdict("unparsable")]


def test_shortest_correct_against_most_confident_wrong():
    assert pick_pairs(COMPS, VERDICTS, "shortest", "confident", 1) == [(1, 4)]
    # second pair: the next correct one (0) against the next most confident wrong one (2, mean -1.0)
    assert pick_pairs(COMPS, VERDICTS, "shortest", "confident", 2) == [(1, 4), (0, 2)]


def test_confident_chosen_and_longest_rejected():
    assert pick_pairs(COMPS, VERDICTS, "confident", "longest", 3) == [(0, 4), (1, 6)]  # only two usable correct ones


def test_truncated_correct_is_never_chosen_and_undecided_is_never_rejected():
    for chosen in ("shortest", "random", "confident"):
        for rejected in ("confident", "random", "longest"):
            for seed in range(5):
                pairs = pick_pairs(COMPS, VERDICTS, chosen, rejected, 10, random.Random(seed))
                assert {c for c, _ in pairs} <= {0, 1} and {r for _, r in pairs} <= {2, 4, 6}
                assert len(pairs) == 2 and len({c for c, _ in pairs}) == 2 and len({r for _, r in pairs}) == 2


def test_a_text_sampled_twice_counts_once():
    comps = [_c("a", 4), _c("a", 4), _c("b", 6), _c("x", 3), _c("x", 3), _c("y", 5)]
    verdicts = [Verdict("correct")] * 3 + [Verdict("wrong")] * 3
    assert pick_pairs(comps, verdicts, "shortest", "longest", 5) == [(0, 5), (2, 3)]


def test_random_policies_are_seeded():
    draws = {tuple(pick_pairs(COMPS, VERDICTS, "random", "random", 1, random.Random(s))) for s in range(40)}
    assert len(draws) > 1  # the draw varies with the seed ...
    again = pick_pairs(COMPS, VERDICTS, "random", "random", 1, random.Random(7))
    assert again == pick_pairs(COMPS, VERDICTS, "random", "random", 1, random.Random(7))  # ... and only with it


def test_nothing_to_pair_without_both_outcomes():
    right = [Verdict("correct")] * 3
    assert pick_pairs(COMPS[:3], right, "shortest", "confident") == []
    assert pick_pairs(COMPS[:3], [Verdict("wrong")] * 3, "shortest", "confident") == []
    assert pick_pairs(COMPS[:3], VERDICTS[:3], "shortest", "confident", 0) == []


def test_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown chosen policy 'longest'"):
        pick_pairs(COMPS, VERDICTS, "longest", "confident")
    with pytest.raises(ConfigError, match="unknown rejected policy 'shortest'"):
        pick_pairs(COMPS, VERDICTS, "shortest", "shortest")


class FakeEngine:
    """Answers each problem with canned texts (token counts 5, 6, ...); stands in for HFEngine."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, problems, params, n=1, seed=None):
        return [_c(self.texts[p.id][j], 5 + j) for p in problems for j in range(n)]


def test_make_pairs_pairs_mixed_problems_and_drops_the_rest_with_reasons():
    rows = [Problem("p1", "1+1?", "2", metadata={"response": "trace"}), Problem("p2", "2+2?", "4"),
            Problem("p3", "3+3?", "6")]
    engine = FakeEngine({"p1": ["<answer>3</answer>", "<answer>2</answer>", "<answer>2</answer>", "no answer",
                                "<answer> 2 </answer>"],
                         "p2": ["<answer>5</answer>"] * 5, "p3": ["<answer>6</answer>"] * 5})
    drops = []
    out = list(make_pairs(rows, PairSettings(k=5, workers=0, pairs_per_problem=2), lambda *a: drops.append(a), engine=engine))
    assert [p.id for p in out] == ["p1#pair0", "p1#pair1"]
    first = out[0].metadata
    # shortest correct (index 1, 6 tokens; its repeat at index 2 does not count) vs the first of the
    # equally confident wrong ones (index 0); then the next correct one (index 4) vs the next wrong one
    assert (first["chosen"], first["rejected"]) == ("<answer>2</answer>", "<answer>3</answer>")
    assert (out[1].metadata["chosen"], out[1].metadata["rejected"]) == ("<answer> 2 </answer>", "no answer")
    assert out[1].metadata["rejected_status"] == "unparsable"
    assert first["problem_id"] == "p1" and first["pass_rate"] == 0.6 and "response" not in first
    assert out[0].prompt == "1+1?" and out[0].answer == "2"
    assert [(d[0], d[1]) for d in drops] == [("p2", "no_correct_sample"), ("p3", "no_wrong_sample")]


def test_pairs_file_reader_takes_both_layouts(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"},
            {"id": "x", "prompt": [{"role": "user", "content": "q2"}], "answer": "1",
             "metadata": {"chosen": "c", "rejected": "d"}}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_pairs(path)
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [("pair1", "a", "b"), ("x", "c", "d")]
    assert pairs[1].prompt == [{"role": "user", "content": "q2"}]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "chosen": "a"}, ":1: 'rejected' must be a non-empty string"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, ":1: 'chosen' must be a non-empty string"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, ":1: 'prompt' must be a non-empty string"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, ":1: 'chosen' must be a non-empty string"),
    ([1, 2], ":1: expected a JSON object"),
])
def test_pairs_file_reader_names_the_bad_row(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_pairs_file_reader_rejects_an_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no pairs in file"):
        load_pairs(tmp_path / "empty.jsonl")


def test_data_pairs_command_writes_pairs_and_a_manifest(tmp_path, tiny):
    from r1lab.models import save_model

    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    src = tmp_path / "problems.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"Compute {i} + 1.", "answer": str(i + 1)})
                             for i in range(3)) + "\n")
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(src), "-o", str(out), "--model", str(tmp_path / "m"), "--quiet",
                 "k=3", "max_new_tokens=6", "workers=0", "chosen=random"]) == 0
    manifest = json.loads((tmp_path / "pairs.manifest.json").read_text())
    step = manifest["steps"][1]
    assert manifest["status"] == "ok" and step["step"] == "pairs" and step["rows_in"] == 3
    assert step["settings"]["chosen"] == "random" and step["settings"]["k"] == 3
    # a random-weight model: whatever it solved, every problem is either paired or dropped with a reason
    paired = {json.loads(l)["metadata"]["problem_id"] for l in out.read_text().splitlines()}
    dropped = {d if isinstance(d, str) else d[0] for ids in step["drops"].values() for d in ids}
    assert paired | dropped == {"p0", "p1", "p2"} and not paired & dropped
    assert main(["data", "pairs", str(src), "-o", str(out), "--model", str(tmp_path / "m"), "rejected=worst"]) == 2

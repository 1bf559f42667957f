"""reasoning-gym as a task source: rg:<dataset> generated offline from a seed, held-out problems
disjoint from training ones, scored by the dataset's own score_answer through the registered
verifier and the rg_score term, on hostile answers too; a bad name is one line listing close ones;
`r1lab data import rg:...` writes problems that score the same after the JSON round trip."""

import json

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (extra gym)")

from r1lab.cli import main  # noqa: E402
from r1lab.config import load_config  # noqa: E402
from r1lab.errors import ConfigError  # noqa: E402
from r1lab.records import Problem, load_problems  # noqa: E402
from r1lab.reward_registry import get_reward  # noqa: E402
from r1lab.tasks import generate_splits, get_task, teacher_dataset  # noqa: E402
from r1lab.verify import verify_batch  # noqa: E402


@pytest.fixture(scope="module")
def splits():
    return generate_splits(["rg:leg_counting", "rg:basic_arithmetic"], 24, 12, 2, 1234)


def test_problems_come_from_a_seed_and_held_out_ones_are_disjoint(splits):
    train, held = splits
    again = generate_splits(["rg:leg_counting", "rg:basic_arithmetic"], 24, 12, 2, 1234)
    assert [p.to_dict() for p in train + held] == [p.to_dict() for p in again[0] + again[1]]
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in held})  # by content
    assert {p.metadata["rg_seed"] for p in train}.isdisjoint({p.metadata["rg_seed"] for p in held})  # by seed
    assert {p.metadata["family"] for p in held} == {"rg:leg_counting", "rg:basic_arithmetic"}
    assert all(p.task == "reasoning_gym" and p.source.startswith("reasoning_gym/") for p in train)
    # the held-out split's first problems do not depend on how many are asked for
    assert [p.prompt for p in generate_splits(["rg:leg_counting"], 0, 3, 2, 1234)[1]] == \
        [p.prompt for p in held if p.metadata["family"] == "rg:leg_counting"][:3]


def test_gold_answers_and_teacher_traces_score_correct(splits):
    train, held = splits
    verdicts = verify_batch(train + held, [f"<answer>{p.answer}</answer>" for p in train + held], workers=0)
    assert all(v.correct for v in verdicts)
    pairs = teacher_dataset(train[:4])
    assert all(v.correct for v in verify_batch([p for p, _ in pairs], [t for _, t in pairs], workers=0))


def _legs(splits):
    return next(p for p in splits[1] if p.metadata["rg_dataset"] == "leg_counting")


@pytest.mark.parametrize("response, status", [
    ("", "unparsable"),
    ("no tags, just {gold}", "unparsable"),
    ("<answer></answer>", "wrong"),
    ("<answer>   </answer>", "wrong"),
    ("<answer>" + "9" * 5000 + "</answer>", "unparsable"),  # huge: not handed to the scorer
    ("<answer>{gold} {gold} 7 12</answer>", "wrong"),  # the answer among many
    ("<answer>['{gold}']</answer>", "wrong"),  # a list
    ("<answer>{{\"legs\": {gold}}}</answer>", "wrong"),  # an object
    ("<answer>{gold}.5</answer>", "wrong"),
    ("<answer>7</answer> then <answer>{gold}</answer>", "correct"),  # the last answer counts
    ("<answer>{gold}</answer><answer>", "correct"),  # a dangling open tag after it
    ("<answer><answer>{gold}</answer>", "correct"),
])
def test_hostile_answers(splits, response, status):
    p = _legs(splits)
    v = verify_batch([p], [response.format(gold=p.answer)], workers=0)[0]
    assert v.status == status, (response, v)


def test_wrong_types_and_foreign_problems_are_verdicts_not_crashes(splits):
    from r1lab.verify import get_verifier

    check = get_verifier("reasoning_gym")
    p = _legs(splits)
    assert check(None, p).status in ("unparsable", "error") and check(42, p).status in ("unparsable", "error")
    foreign = Problem("x", "2+2?", "4", task="reasoning_gym", metadata={"rg_dataset": "no_such"})
    assert check("<answer>4</answer>", foreign).status == "error"


def test_rg_score_is_the_datasets_own_score_with_partial_credit(splits):
    p = next(q for q in splits[1] if q.metadata["rg_dataset"] == "basic_arithmetic")
    texts = [f"<answer>{p.answer}</answer>", "", f"<answer>{p.answer} {p.answer}</answer>", "<answer>x</answer>"]
    scores = get_reward("rg_score")([p] * 4, texts, [None] * 4)
    assert scores[0] == 1.0 and scores[1] == 0.0 and 0.0 < scores[2] < 1.0 and scores[3] < 1.0
    assert get_reward("rg_score")([Problem("m", "1+1?", "2", task="math")], ["<answer>2</answer>"], [None]) == [0.0]


def test_bad_names_are_one_line_with_close_names(capsys, tmp_path):
    with pytest.raises(ConfigError, match=r"data.tasks\[0\]='rg:leg_countng': unknown reasoning-gym dataset "
                                          r"'leg_countng'; close: rg:leg_counting"):
        load_config(None, ["data.tasks=[rg:leg_countng]"])
    with pytest.raises(ConfigError, match="rg:graph_color.*does not score 1.0"):
        generate_splits(["rg:graph_color"], 2, 2, 2, 1)  # no single reference answer
    with pytest.raises(ConfigError, match="known: .*rg:<name>"):
        get_task("leg_counting")
    assert load_config(None, ["data.tasks=[rg:leg_counting, arithmetic]"]).data.tasks == ["rg:leg_counting", "arithmetic"]
    out = tmp_path / "x.jsonl"
    assert main(["data", "import", "rg:leg_countng", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "close: rg:leg_counting" in err and not out.exists()


def test_data_import_writes_problems_that_still_score_after_json(tmp_path, capsys):
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    assert main(["data", "import", "rg:basic_arithmetic", "-o", str(train), "size=20", "eval_size=10", "--quiet"]) == 0
    assert main(["data", "import", "rg:basic_arithmetic", "-o", str(held), "size=10", "held_out=true", "--quiet"]) == 0
    tr, he = list(load_problems(train)), list(load_problems(held))
    assert len(tr) == 20 and len(he) == 10 and {p.prompt for p in tr}.isdisjoint({p.prompt for p in he})
    # what data.tasks generates with the same seed: the same held-out problems
    assert [p.prompt for p in he] == [p.prompt for p in generate_splits(["rg:basic_arithmetic"], 0, 10, 2, 1234)[1]]
    verdicts = verify_batch(he, [f"<answer>{p.answer}</answer>" for p in he], workers=0)
    assert all(v.correct for v in verdicts)
    assert json.loads(train.read_text().splitlines()[0])["metadata"]["rg_dataset"] == "basic_arithmetic"


def test_eval_scores_the_held_out_split_of_an_rg_source(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "m"), "--data", "rg:leg_counting", "--limit", "3", "--n", "1",
                 "--max-new-tokens", "4", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "eval" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in generate_splits(["rg:leg_counting"], 0, 3, 2, 1234)[1]]
    assert "rg:leg_counting (held-out split)" in (out / "eval" / "summary.md").read_text()

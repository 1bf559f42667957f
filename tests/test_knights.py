"""Knights and Knaves: unique-solution generation, teacher traces, the verifier and the Logic-RL reward."""

from __future__ import annotations

import random

import pytest

from r1lab.records import Problem, Verdict
from r1lab.rewards import get_reward, is_logic_rl_format
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.knights import check_knights, parse_roles, say, solve, truth
from r1lab.verify import verify_batch

GOLD = "Ann is a knight, Bob is a knave, Cal is a knight"


def P(answer: str = GOLD) -> Problem:
    return Problem("k1", "puzzle", answer, task="knights")


def test_solver_on_a_hand_made_puzzle():
    # Ann: "Bob is a knave."  Bob: "Ann and I are the same kind."  -> Ann knight, Bob knave
    statements = [("is", 1, False), ("same", 0, 1)]
    assert solve(statements) == [(True, False)]
    assert truth(("or", ("is", 0, True), ("is", 1, True)), (False, False)) is False
    assert say(("same", 0, 1), ["Ann", "Bob"], 1) == "Ann and I are the same kind"
    assert say(("is", 1, False), ["Ann", "Bob"], 1) == "I am a knave"
    assert len(solve([("is", 0, True)])) == 2  # "I am a knight": not unique


@pytest.mark.parametrize("people", [2, 3, 5, 8])
def test_generated_puzzles_have_one_solution_and_a_correct_trace(people):
    family = get_task("knights")
    rng = random.Random(people)
    for _ in range(10):
        p = family.generate(rng, people)
        assert len(p.metadata["people"]) == people
        statements = [_tuplify(s) for s in p.metadata["statements"]]
        assert len(solve(statements, limit=3)) == 1
        trace = family.teacher_trace(p)
        assert check_knights(trace, p).correct and is_logic_rl_format(trace)
        assert len(trace) < 120 * people  # short enough for a tiny model


def _tuplify(x):
    return tuple(_tuplify(y) for y in x) if isinstance(x, list) else x


def test_splits_and_difficulty_one():
    train, ev = generate_splits(["knights"], 20, 5, 3, seed=0)
    assert {p.task for p in train + ev} == {"knights"} and len({p.prompt for p in train + ev}) == 25
    assert len(get_task("knights").generate(random.Random(0), 1).metadata["people"]) == 2


@pytest.mark.parametrize(
    "answer, status",
    [
        (GOLD, "correct"),
        ("cal IS A KNIGHT; ann is a knight\nbob is a knave.", "correct"),  # any order, case, separator
        ("Ann: knight, Bob: knave, Cal: knight", "correct"),
        ("Ann is a knight, Bob is a knight, Cal is a knight", "wrong"),
        ("Ann is a knight, Bob is a knave", "unparsable"),  # Cal missing
        ("Ann is a knight, Bob is a knave, Cal is a knight, Ann is a knave", "unparsable"),  # duplicated
        ("Ann is a knight, Bob is a knave, Cal is a knight, Zed is a knave", "unparsable"),  # unknown person
        ("Ann is not a knight, Bob is a knave, Cal is a knight", "unparsable"),
        ("", "unparsable"),
    ],
)
def test_verifier(answer, status):
    assert check_knights(f"<think>hmm</think>\n<answer>{answer}</answer>", P()).status == status


def test_verifier_hostile_inputs():
    assert check_knights("no tags " * 10_000, P()).status == "unparsable"
    assert check_knights("<answer>" + "Ann is a knight " * 50_000 + "</answer>", P()).status == "unparsable"
    assert check_knights(f"<answer>{GOLD}</answer>", P("nonsense")).status == "error"
    assert parse_roles("Ann knight Bob knave", ["Ann", "Bob"]) == {"Ann": True, "Bob": False}


def test_verifier_in_workers():
    v = verify_batch([P(), P()], [f"<answer>{GOLD}</answer>", "<answer>Ann</answer>"], workers=1, timeout=10)
    assert [x.status for x in v] == ["correct", "unparsable"]


def test_logic_rl_reward():
    good = f"<think>t</think>\n<answer>{GOLD}</answer>"
    texts = [good, good, good, f"<answer>{GOLD}</answer>", good + "</answer>", f"<answer>{GOLD}</answer><think>t</think>"]
    verdicts = [Verdict("correct"), Verdict("wrong"), Verdict("unparsable"), Verdict("correct"), Verdict("correct"), Verdict("correct")]
    assert get_reward("logic_rl")([P()] * 6, texts, verdicts, None) == [3.0, -0.5, -1.0, -3.0, -3.0, -3.0]

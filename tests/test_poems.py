"""Constrained writing: the form checks (CMU dictionary syllables and rhymes, acrostic, line count) and
degenerate poems that must satisfy nothing."""

from __future__ import annotations

import pytest

from r1lab.records import Problem
from r1lab.rewards import get_reward
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.poems import check_poem, rhyme, syllables

TERMS = ("poem_lines", "poem_acrostic", "poem_syllables", "poem_rhyme")


def P(syl=6, scheme="AABB") -> Problem:
    return Problem("p1", "Write a poem of 4 lines. Acrostic: MOON.", "a poem", task="poem",
                   metadata={"acrostic": "MOON", "syllables": syl, "rhyme": scheme})


GOOD = "My boat is on the sea\nOver the hill a tree\nOld roads we walk in rain\nNow by the river lane"


def answer(body: str) -> str:
    return f"<think>form</think>\n<answer>{body}</answer>"


def scores(body: str, problem: Problem | None = None) -> tuple[float, ...]:
    p, t = problem or P(), answer(body)
    return tuple(get_reward(name)([p], [t], [None])[0] for name in TERMS)


def test_dictionary_helpers():
    assert syllables("river") == 2 and syllables("xqzt") is None
    assert rhyme("sea", "tree") and not rhyme("sea", "sea") and not rhyme("sea", "rain")


def test_a_good_poem_meets_every_constraint():
    assert scores(GOOD) == (1.0, 1.0, 1.0, 1.0)
    assert check_poem(answer(GOOD), P()).correct


def test_each_term_scores_its_own_constraint():
    assert scores(GOOD.replace("Old roads", "Cold roads")) == (1.0, 0.75, 1.0, 1.0)  # acrostic letter 3 wrong
    assert scores(GOOD.replace("a tree", "a green tree")) == (1.0, 1.0, 0.75, 1.0)  # one line 7 syllables
    assert scores(GOOD.replace("river lane", "river wall")) == (1.0, 1.0, 1.0, 0.5)  # one pair no longer rhymes
    three = "\n".join(GOOD.splitlines()[:3])
    assert scores(three)[0] == 0.0 and not check_poem(answer(three), P()).correct
    # constraints the problem does not ask for score like met ones
    assert scores("My boat is here\nOver the hill\nOld roads we walk\nNow we go home", P(None, None)) == (1, 1, 1, 1)


DEGENERATE = {
    "repeated lines": "My boat is on the sea\nMy boat is on the sea\nMy boat is on the sea\nMy boat is on the sea",
    "one-word lines": "Moon\nOver\nOld\nNight",
    "two-word lines": "My sea\nOver tree\nOld rain\nNow lane",
    "non-words": "Mxq blorp zint vee\nOqq flarn tree zzq\nOwp glorb rain qqq\nNzz florp lane zzv",
    "a word repeated in a line": "My sea sea sea sea sea\nOver tree tree tree tree\nOld rain rain rain rain\nNow lane lane lane lane",
    "rhyme by repeating the end word": "My boat is on the sea\nOver the hill a sea\nOld roads we walk in rain\nNow by the river rain",
    "empty answer": "",
    "tags only": "<think></think>",
}


@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_degenerate_poems_satisfy_nothing(name):
    got = scores(DEGENERATE[name])
    if name == "rhyme by repeating the end word":  # well formed, but a word does not rhyme with itself
        assert got[3] == 0.0 and not check_poem(answer(DEGENERATE[name]), P()).correct
    else:
        assert got == (0.0, 0.0, 0.0, 0.0)
        assert not check_poem(answer(DEGENERATE[name]), P()).correct


def test_no_answer_tags_scores_zero():
    assert tuple(get_reward(n)([P()], [GOOD], [None])[0] for n in TERMS) == (0.0, 0.0, 0.0, 0.0)
    assert check_poem(GOOD, P()).status == "unparsable"


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_teacher_poems_meet_their_constraints(difficulty):
    family = get_task("poem")
    train, _ = generate_splits(["poem"], 60, 10, difficulty, seed=0)
    assert all(check_poem(family.teacher_trace(p), p).correct for p in train)

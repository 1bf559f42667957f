"""Code repair: generated bugs the tests catch, teacher traces, and both reward terms on hostile patches."""

from __future__ import annotations

import random

import pytest

from r1lab.records import Problem
from r1lab.rewards import get_reward
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.code_repair import apply_unified_diff, candidate_source, check_repair, patch_diff

BUGGY = "def sum_pos(xs):\n    t = 0\n    for x in xs:\n        if x > 1:\n            t += x\n    return t"
FIXED = BUGGY.replace("x > 1", "x > 0")
TESTS = ["assert sum_pos([1, 2]) == 3", "assert sum_pos([-1, 1]) == 1", "assert sum_pos([]) == 0"]


def P() -> Problem:
    return Problem("r1", f"Fix the bug.\n{BUGGY}", FIXED, task="code_repair",
                   tests=[{"type": "assert", "code": c} for c in TESTS],
                   metadata={"buggy": BUGGY, "function": "sum_pos", "time_limit": 2.0})


def answer(body: str) -> str:
    return f"<think>fix</think>\n<answer>\n{body}\n</answer>"


def rewards(text: str) -> tuple[float, float]:
    p = P()
    v = check_repair(text, p)
    return get_reward("repair_tests")([p], [text], [v])[0], get_reward("repair_similarity")([p], [text], [v])[0]


def test_generated_bugs_are_caught_and_traces_fix_them():
    family = get_task("code_repair")
    train, _ = generate_splits(["code_repair"], 40, 8, 1, seed=3)
    for p in train[:6]:
        assert p.metadata["buggy"] != p.answer and len(p.tests) == 5
        assert check_repair(answer(p.metadata["buggy"]), p).status == "wrong"  # the tests catch the bug
        trace = family.teacher_trace(p)
        assert check_repair(trace, p).correct
        assert get_reward("repair_similarity")([p], [trace], [None])[0] == 1.0
    assert len({family.dedupe_key(p) for p in train}) == 40


DIFF = "@@ -4 +4 @@\n-        if x > 1:\n+        if x > 0:"


@pytest.mark.parametrize("text, expected", [
    (answer(FIXED), (1.0, 1.0)),
    (answer(f"```python\n{FIXED}\n```"), (1.0, 1.0)),
    (answer(DIFF), (1.0, 1.0)),  # a unified diff against the buggy function
    (answer(BUGGY), (0.0, 0.0)),  # no change: an empty patch
    ("no tags at all", (0.0, -1.0)),
    (answer("@@ -1 +1 @@\n-this line is not there\n+x"), (0.0, -1.0)),  # a diff that does not apply
    (answer("def other(xs):\n    return 0"), (0.0, -1.0)),  # the wrong function
])
def test_rewards_on_honest_and_broken_answers(text, expected):
    assert rewards(text) == expected


def test_similarity_pays_closeness_to_the_oracle_and_tests_pay_behaviour():
    tests, sim = rewards(answer(BUGGY.replace("x > 1", "x < 1")))  # a wrong edit of the right line
    assert tests == 0.0 and 0.0 < sim < 1.0
    tests, sim = rewards(answer(BUGGY.replace("x > 1", "x >= 1")))  # equivalent on integers, not the oracle's text
    assert tests == 1.0 and 0.0 < sim < 1.0


HOSTILE = {
    "edits the tests": "@@ -1 +1 @@\n-assert sum_pos([1, 2]) == 3\n+assert True",
    "function plus rebound tests": FIXED + "\nassert True",
    "redefines the test's comparison": FIXED.replace("return t", "return t") + "\nAssertionError = None",
    "reads the oracle": "def sum_pos(xs):\n    return len(open('/work/runs/x/data/train.jsonl').read())",
    "imports sys to exit": "def sum_pos(xs):\n    import sys\n    sys.exit(0)",
    "raises SystemExit": "def sum_pos(xs):\n    raise SystemExit(0)",
    "always-equal object": "def sum_pos(xs):\n    return type('A', (), {'__eq__': lambda s, o: True})()",
    "digs in globals": "def sum_pos(xs):\n    return globals()['__builtins__']",
    "dunder attribute": "def sum_pos(xs):\n    return xs.__class__.__eq__",
    "swallows the failure": "def sum_pos(xs):\n    try:\n        return 1 / 0\n    except Exception:\n        return 0",
    "eval of a string": "def sum_pos(xs):\n    return eval('sum(x for x in xs if x > 0)')",
    "decorated": "@staticmethod\ndef sum_pos(xs):\n    return 0",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_patches_earn_nothing(name):
    assert rewards(answer(HOSTILE[name])) == (0.0, -1.0)


def test_diff_application_is_strict():
    assert apply_unified_diff(BUGGY, DIFF) == FIXED
    with pytest.raises(ValueError):
        apply_unified_diff("a\nb\na", "@@ -1 +1 @@\n-a\n+c")  # ambiguous place
    assert patch_diff(BUGGY, BUGGY) == ""
    with pytest.raises(ValueError):
        candidate_source("x" * 5000, P())


def test_difficulty_two_draws_the_longer_templates_too():
    rng = random.Random(0)
    names = {get_task("code_repair").generate(rng, 2).metadata["function"] for _ in range(80)}
    assert names & {"is_sorted", "ascending", "in_order", "dot", "inner", "dot_product", "last_index", "rfind", "find_last"}

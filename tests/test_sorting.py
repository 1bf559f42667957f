"""Algorithm discovery (sorting by counted comparisons): honest sorts ranked by cost, hostile ones paid nothing."""

from __future__ import annotations

import pytest

from r1lab.records import Problem
from r1lab.rewards import get_reward
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.sorting import TEACHER, check_sorting, insertion_comparisons


def P() -> Problem:
    return Problem("s1", "Write sort(xs, less) returning xs in ascending order. Example: [3, 1, 2] -> [1, 2, 3]", "",
                   task="sorting", metadata={"function": "sort"})


def answer(body: str) -> str:
    return f"<think>sort</think>\n<answer>\n{body}\n</answer>"


def rewards(code: str) -> tuple[float, float]:
    p, text = P(), answer(code)
    v = check_sorting(text, p)
    return get_reward("sort_correct")([p], [text], [v])[0], get_reward("sort_speed")([p], [text], [v])[0]


def test_the_four_teacher_sorts_are_correct_and_ranked_by_cost():
    speeds = {why.split(",")[0]: rewards(src.replace("{f}", "sort")) for why, src in TEACHER.items()}
    assert all(correct == 1.0 for correct, _ in speeds.values())
    s = {k: v[1] for k, v in speeds.items()}
    assert s["insertion sort"] == 1.0  # the reference itself
    assert s["selection sort"] < 1.0 < s["merge sort"] < s["binary insertion"] < 3.0


def test_generated_problems_and_traces():
    family = get_task("sorting")
    train, held = generate_splits(["sorting"], 30, 6, 1, seed=0)
    p = train[0]
    assert check_sorting(family.teacher_trace(p), p).correct
    assert len({family.teacher_trace(q).split("</think>")[0] for q in train}) > 1  # the teacher mixes algorithms
    assert insertion_comparisons([0, 1, 2]) == 2 and insertion_comparisons([2, 1, 0]) == 3


HOSTILE = {
    "returns the input": "def sort(xs, less):\n    return xs",
    "compares the items directly": "def sort(xs, less):\n    return sorted(xs)",
    "orders by identity": "def sort(xs, less):\n    return sorted(xs, key=id)",
    "orders by hash": "def sort(xs, less):\n    return sorted(xs, key=hash)",
    "orders by the printed address": "def sort(xs, less):\n    return sorted(xs, key=str)",
    "hard-codes the visible example": "def sort(xs, less):\n    return [xs[1], xs[2], xs[0]]",
    "resets the counter in the closure": "def sort(xs, less):\n    less.__closure__[0].cell_contents[0] = -10**6\n    return xs",
    "reads the caller's frame": "def sort(xs, less):\n    import sys\n    return sys._getframe(1).f_locals['want']",
    "reads a file": "def sort(xs, less):\n    return open('/etc/passwd').read()",
    "exits early": "def sort(xs, less):\n    raise SystemExit(0)",
    "never returns": "def sort(xs, less):\n    while True:\n        pass",
    "swaps the comparator by a global": "def sort(xs, less):\n    global less2\n    return xs",
    "a second definition": "def sort(xs, less):\n    return xs\nsort = sorted",
    "items compared through getattr": "def sort(xs, less):\n    return sorted(xs, key=lambda a: getattr(a, 'r'))",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_earn_nothing(name):
    assert rewards(HOSTILE[name]) == (0.0, 0.0)


def test_a_function_attribute_on_less_changes_nothing():
    # a program may do odd but harmless things; its comparisons are still all counted
    selection = TEACHER["selection sort, about n*n/2 comparisons"].replace("{f}", "sort")
    honest = rewards(selection)
    odd = rewards(selection.replace("    for i in range(len(xs)):", "    less.calls = 0\n    for i in range(len(xs)):"))
    assert odd == honest and honest[1] < 1.0


def test_no_answer_is_unparsable():
    v = check_sorting("no tags", P())
    assert v.status == "unparsable" and get_reward("sort_speed")([P()], ["no tags"], [v]) == [0.0]

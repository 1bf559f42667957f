"""The `visual_readings` reward term on hand-written (often hostile) responses, with expected values
computed by hand from the scenes of helpers_visual.py."""

from __future__ import annotations

import pytest

from r1lab.records import Problem
from r1lab.reward_registry import get_reward
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.visual import readings_score

from helpers_visual import BAR, BAR_TEACHER, COUNT, COUNT_TEACHER, DIGITS, MATH


def term(problem: Problem, text: str) -> float:
    return get_reward("visual_readings")([problem], [text], [None])[0]


def test_teacher_traces_read_everything_right():
    assert term(BAR, BAR_TEACHER) == 1.0
    assert term(COUNT, COUNT_TEACHER) == 1.0
    assert term(DIGITS, "<think>The digits are 3, 0, 9.\n3 + 0 + 9 = 12</think>\n<answer>12</answer>") == 1.0


@pytest.mark.parametrize("text", ["", "   ", "<answer>4</answer>", "asdf bar bar is is 1,,2 row has 1 has", "<think></think>"])
def test_no_readings_pay_nothing(text):
    for p in (BAR, COUNT, DIGITS):
        assert term(p, text) == 0.0


def test_bar_partly_right():
    # the items are bars 1-2 (up to the asked one): bar 1 wrong (4), bar 2 right; bars 3-4 are not items
    assert term(BAR, "bar 1 is 4, bar 2 is 4, bar 3 is 2, bar 4 is 3. So bar 2 is 4.") == 0.5
    # only the asked bar, read right: 1 of 2
    assert term(BAR, "So bar 2 is 4.<answer>4</answer>") == 0.5
    # bars past the asked one, right or wrong, change nothing
    assert term(BAR, "bar 1 is 5, bar 2 is 4, bar 3 is 5, bar 4 is 3.") == 1.0
    assert term(BAR, "bar 1 is 5, bar 2 is 4, bar 3 is 1, bar 4 is 1.") == 1.0


def test_right_readings_wrong_answer_still_paid():
    # the term pays the readings, not the answer (accuracy pays that)
    assert term(BAR, BAR_TEACHER.replace("<answer>4</answer>", "<answer>5</answer>")) == 1.0
    assert term(COUNT, COUNT_TEACHER.replace("<answer>3</answer>", "<answer>7</answer>")) == 1.0


def test_guessing_several_values_pays_nothing_for_that_item():
    # bar 2 claimed as 3 and as 4: a guess, no credit; bar 1 right: 1 of 2
    hedge = "bar 1 is 5, bar 2 is 3, bar 2 is 4."
    assert term(BAR, hedge) == 0.5
    assert term(COUNT, COUNT_TEACHER + " row 3 has 2.") == 0.75  # row 3 claimed as 1 and as 2
    # every height 1..5 for every bar: each bar has five claims, none paid
    spray = ", ".join(f"bar {k} is {h}" for k in range(1, 5) for h in range(1, 6))
    assert term(BAR, spray) == 0.0
    assert term(COUNT, ", ".join(f"row {r} has {n}" for r in range(1, 5) for n in range(5))) == 0.0


def test_repeating_the_same_reading_pays_no_more():
    assert term(BAR, "bar 2 is 4. " * 20) == 0.5
    assert term(BAR, BAR_TEACHER + " bar 2 is 4" * 5) == 1.0
    assert term(COUNT, COUNT_TEACHER * 2) == 1.0  # the same counts twice: one reading each


def test_bars_the_chart_does_not_have_are_ignored():
    assert term(BAR, BAR_TEACHER.replace("bar 2 is 4.\n", "bar 2 is 4, bar 5 is 1, bar 6 is 2.\n")) == 1.0
    assert term(BAR, "bar 5 is 5, bar 6 is 4, bar 0 is 5") == 0.0
    assert term(COUNT, COUNT_TEACHER.replace("row 4 has 0.", "row 4 has 0, row 5 has 3, row 0 has 2.")) == 1.0


def test_count_rows_by_name():
    assert term(COUNT, "row 1 has 2, row 2 has 0, row 3 has 0, row 4 has 0.") == 0.75  # row 3 wrong
    # the right counts, shifted by a row: no row matches
    assert term(COUNT, "row 1 has 0, row 2 has 2, row 3 has 0, row 4 has 1.") == 0.0
    assert term(COUNT, "row 1 has 2, row 2 has 1, row 3 has 0, row 4 has 0.") == 0.5  # rows 2 and 3 swapped
    assert term(COUNT, "row 1 has 2, row 2 has 0.") == 0.5  # rows 3 and 4 missing
    assert term(COUNT, "row 4 has 0, row 3 has 1, row 2 has 0, row 1 has 2.") == 1.0  # named: any order


def test_two_row_lists_that_disagree_are_a_guess():
    # every row claimed twice, rows 2 and 4 with the same count both times: only those are paid
    assert term(COUNT, COUNT_TEACHER + "row 1 has 1, row 2 has 0, row 3 has 2, row 4 has 0.") == 0.5


def test_readings_in_the_wrong_format_pay_nothing():
    assert term(COUNT, "Rows: 2, 0, 1, 0.") == 0.0  # an unnamed list (the trace of rounds 3-5)
    assert term(COUNT, "row 1: 2, row 2: 0, row 3: 1, row 4: 0") == 0.0
    assert term(COUNT, "Row counts are 2, 0, 1, 0.") == 0.0
    assert term(COUNT, "arrow 1 has 2, narrow 3 has 1") == 0.0
    assert term(COUNT, "row 1 has 22") == 0.0  # 22 is not 2
    assert term(BAR, "heights 5, 4, 5, 3.") == 0.0  # the unnamed list of rounds 1-3
    assert term(BAR, "bar 1: 5, bar 2: 4, bar 3: 5, bar 4: 3") == 0.0
    assert term(BAR, "bar two is 4") == 0.0
    assert term(BAR, "bar 1 is 55, bar 2 is 44") == 0.0  # 55 is not 5
    assert term(BAR, "crowbar 2 is 4") == 0.0


def test_other_familys_readings_pay_nothing():
    # a count list on a bar chart and a bar list on a count problem read nothing of that picture
    assert term(BAR, COUNT_TEACHER) == 0.0
    assert term(COUNT, BAR_TEACHER) == 0.0
    assert term(DIGITS, COUNT_TEACHER) == 0.0


def test_non_visual_problems_get_zero():
    assert term(MATH, BAR_TEACHER) == 0.0
    assert term(MATH, COUNT_TEACHER) == 0.0
    assert readings_score(Problem(id="x", prompt="p", answer="1", task="math"), BAR_TEACHER) == 0.0


def test_never_above_one_on_generated_problems_and_one_for_their_teacher():
    problems, _ = generate_splits(["bar_value", "count_shapes", "digit_sum"], 30, 0, 2, seed=5)
    for p in problems:
        fam = get_task(p.metadata["family"])
        teacher = fam.teacher_trace(p)
        assert term(p, teacher) == 1.0
        assert 0.0 <= term(p, teacher * 3 + " bar 1 is 1 row 1 has 9.") <= 1.0

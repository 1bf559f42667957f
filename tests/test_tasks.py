"""Generated task families: teacher traces are correct and well-formed, splits are disjoint and
deterministic, and the countdown checker survives hostile answers. LENGTHS holds their typical
character lengths (what fits a small model's context), kept true by test_typical_lengths.
"""

from __future__ import annotations

import ast
import operator
import random
import re
import statistics
from fractions import Fraction

import pytest

from r1lab.errors import ConfigError
from r1lab.records import Problem
from r1lab.tasks import TASKS, generate_splits, get_task
from r1lab.tasks.base import extract_answer, normalise_text, teacher_dataset
from r1lab.tasks.countdown import check_countdown, solve

FORMAT = re.compile(r"^<think>.*</think>\n<answer>.*</answer>$", re.DOTALL)
STEP = re.compile(r"^(-?\d+) ([-+*/]) (\d+) = (-?\d+)$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def independent_eval(text: str) -> Fraction:
    """A separate, minimal safe evaluator: only int literals and + - * / nodes."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        raise AssertionError(f"unexpected node {ast.dump(node)} in {text!r}")

    return walk(ast.parse(text, mode="eval").body)


def sample(name: str, difficulty: int, n: int = 500, seed: int = 0) -> list[Problem]:
    rng = random.Random(f"{name}/{difficulty}/{seed}")
    return [get_task(name).generate(rng, difficulty) for _ in range(n)]


# --- teacher traces ----------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_arithmetic_traces_are_correct(difficulty: int) -> None:
    fam = get_task("arithmetic")
    assert fam.task == "math"
    negative = 0
    for p in sample("arithmetic", difficulty):
        trace = fam.teacher_trace(p)
        assert FORMAT.match(trace), trace
        expr = re.fullmatch(r"Compute (.+)\.", p.prompt).group(1)
        assert expr.count("(") == difficulty - 1
        value = independent_eval(expr)
        assert value.denominator == 1 and str(value.numerator) == p.answer
        assert extract_answer(trace) == p.answer
        steps = trace[len("<think>") : trace.index("</think>")].split("\n")
        assert len(steps) == difficulty
        for line in steps:
            a, op, b, c = STEP.match(line).groups()
            assert _OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult}[op]](int(a), int(b)) == int(c)
            assert -20 <= int(c) <= 200
            negative += int(c) < 0
    assert negative < 0.1 * 500 * difficulty  # negative intermediates stay rare


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_countdown_traces_are_correct(difficulty: int) -> None:
    fam = get_task("countdown")
    assert fam.task == "countdown"
    for p in sample("countdown", difficulty):
        trace = fam.teacher_trace(p)
        assert FORMAT.match(trace), trace
        verdict = check_countdown(trace, p)
        assert verdict.correct, (p.prompt, trace, verdict)
        numbers = p.metadata["numbers"]
        assert len(numbers) == difficulty + 1 and all(1 <= n <= 15 for n in numbers)
        assert p.prompt == f"Use {', '.join(map(str, numbers))} to make {p.answer}."
        assert 1 <= int(p.answer) <= 100
        steps = trace[len("<think>") : trace.index("</think>")].split("\n")
        assert len(steps) == difficulty
        for line in steps:
            a, op, b, c = STEP.match(line).groups()
            assert independent_eval(f"{a} {op} {b}") == int(c)


def test_traces_survive_a_jsonl_round_trip_and_missing_metadata() -> None:
    """Problems loaded from a file (or written by hand) still get a correct teacher trace."""
    for name in TASKS:
        for p in sample(name, 3, n=50):
            p.id = "p1"
            q = Problem.from_dict(p.to_dict())
            assert get_task(name).teacher_trace(q) == get_task(name).teacher_trace(p)
    bare = Problem(id="x", prompt="Use 3, 5, 7 to make 22.", answer="22", task="countdown")
    assert check_countdown(get_task("countdown").teacher_trace(bare), bare).correct
    with pytest.raises(ValueError):
        get_task("countdown").teacher_trace(Problem(id="y", prompt="Use 1, 1 to make 97.", answer="97"))
    assert solve([1, 1], 97) is None
    assert independent_eval(solve([2, 3, 4, 5], 100)) == 100


# family -> difficulty -> (mean prompt, mean trace, longest trace) in characters, over 300 problems
# (60 for multihop_qa, whose teacher runs the BM25 searches its traces show: ~7 ms a trace)
LENGTHS = {
    "code_repair": {1: (170, 152, 192), 2: (180, 162, 252), 3: (182, 164, 247), 4: (179, 164, 252)},
    "sorting": {1: (163, 307, 366), 2: (171, 313, 366), 3: (179, 312, 366), 4: (187, 316, 366)},
    "poem": {1: (55, 157, 232), 2: (77, 173, 258), 3: (90, 186, 276), 4: (89, 186, 269)},
    "translation": {1: (31, 46, 56), 2: (46, 59, 67), 3: (58, 69, 82), 4: (65, 79, 93)},
    "arithmetic": {1: (14, 44, 45), 2: (20, 55, 59), 3: (26, 67, 73), 4: (32, 79, 87)},
    "countdown": {1: (20, 49, 52), 2: (24, 66, 72), 3: (27, 83, 90), 4: (31, 100, 110)},
    "knights": {1: (163, 157, 172), 2: (163, 157, 172), 3: (204, 222, 248), 4: (243, 286, 322)},
    "multiply": {2: (16, 68, 83), 3: (18, 75, 89), 4: (20, 78, 95)},
    "multiply_python": {2: (16, 75, 95), 3: (18, 79, 101), 4: (20, 84, 107)},
    "multihop_qa": {1: (52, 298, 343), 2: (49, 284, 337), 3: (50, 304, 346), 4: (50, 285, 346)},
    # the multilingual families (tasks/multilingual.py)
    "arithmetic_de": {1: (59, 96, 104), 2: (77, 126, 143), 3: (96, 157, 178), 4: (114, 186, 212)},
    "arithmetic_en": {1: (50, 91, 97), 2: (64, 116, 129), 3: (79, 143, 158), 4: (92, 168, 188)},
    "arithmetic_es": {1: (56, 83, 92), 2: (70, 109, 129), 3: (85, 135, 162), 4: (100, 162, 187)},
    "arithmetic_fr": {1: (59, 88, 95), 2: (76, 117, 130), 3: (93, 145, 160), 4: (110, 175, 191)},
    "arithmetic_ja": {1: (25, 62, 63), 2: (32, 81, 84), 3: (39, 99, 105), 4: (46, 118, 126)},
    "arithmetic_ru": {1: (65, 81, 85), 2: (82, 109, 119), 3: (99, 137, 149), 4: (115, 165, 181)},
    "arithmetic_zh": {1: (15, 59, 60), 2: (19, 74, 78), 3: (23, 90, 96), 4: (27, 106, 114)},
    "countdown_de": {1: (62, 82, 85), 2: (66, 99, 105), 3: (69, 116, 123), 4: (73, 133, 145)},
    "countdown_en": {1: (53, 82, 86), 2: (57, 99, 105), 3: (60, 116, 123), 4: (64, 133, 145)},
    "countdown_es": {1: (69, 73, 77), 2: (73, 90, 96), 3: (76, 107, 116), 4: (80, 124, 136)},
    "countdown_fr": {1: (69, 76, 80), 2: (73, 93, 99), 3: (76, 110, 117), 4: (80, 127, 139)},
    "countdown_ja": {1: (28, 60, 64), 2: (31, 77, 83), 3: (33, 94, 101), 4: (36, 111, 123)},
    "countdown_ru": {1: (67, 69, 72), 2: (71, 86, 92), 3: (74, 103, 112), 4: (78, 120, 132)},
    "countdown_zh": {1: (20, 60, 63), 2: (23, 77, 83), 3: (25, 94, 103), 4: (28, 111, 121)},
    "bar_value": {1: (42, 99, 116), 2: (42, 98, 116), 3: (42, 104, 128), 4: (42, 104, 128)},
    "count_shapes": {1: (36, 136, 136), 2: (37, 137, 138), 3: (37, 137, 138), 4: (37, 137, 138)},
    "digit_sum": {1: (45, 73, 73), 2: (45, 73, 73), 3: (45, 80, 80), 4: (45, 80, 80)},
}


def test_typical_lengths() -> None:
    measured = {}
    for name in sorted(TASKS):
        measured[name] = {}
        for d in range(get_task(name).min_difficulty, 5):  # multiply starts at 2: one-digit factors are no task
            ps = sample(name, d, n=60 if name == "multihop_qa" else 300)
            traces = [get_task(name).teacher_trace(p) for p in ps]
            measured[name][d] = (round(statistics.mean(len(p.prompt) for p in ps)),
                                 round(statistics.mean(map(len, traces))), max(map(len, traces)))
    assert measured == LENGTHS


# --- registry and splits -----------------------------------------------------------------------


def test_registry() -> None:
    assert {"arithmetic", "countdown"} <= set(TASKS)
    with pytest.raises(ConfigError, match="arithmetic.*countdown"):
        get_task("sudoku")
    with pytest.raises(ConfigError, match="difficulty"):
        generate_splits(["arithmetic"], 10, 10, 0, seed=1)
    with pytest.raises(ConfigError, match="empty"):
        generate_splits([], 10, 10, 2, seed=1)


def test_splits_are_deterministic_disjoint_and_mixed() -> None:
    tasks = ["arithmetic", "countdown"]
    train, eval_ = generate_splits(tasks, 1000, 200, 2, seed=7)
    again = generate_splits(tasks, 1000, 200, 2, seed=7)
    assert [p.to_dict() for p in train] == [p.to_dict() for p in again[0]]
    assert [p.to_dict() for p in eval_] == [p.to_dict() for p in again[1]]
    other = generate_splits(tasks, 1000, 200, 2, seed=8)
    assert [p.prompt for p in train] != [p.prompt for p in other[0]]

    assert len(train) == 1000 and len(eval_) == 200
    for split in (train, eval_):
        assert [p.metadata["family"] for p in split[:4]] == tasks * 2  # round-robin
        assert all(p.metadata["difficulty"] == 2 for p in split)
        assert all(p.task == get_task(p.metadata["family"]).task for p in split)
        assert all(re.fullmatch(rf"{p.metadata['family']}-\d{{6}}", p.id) for p in split)
    assert len({p.id for p in train + eval_}) == 1200

    prompts = [normalise_text(p.prompt) for p in train + eval_]
    assert len(set(prompts)) == len(prompts)
    keys = [get_task(p.metadata["family"]).dedupe_key(p) for p in train + eval_]
    assert len(set(keys)) == len(keys)  # also catches countdown numbers given in another order

    # The eval split does not depend on how much training data is asked for.
    train_small, eval_same = generate_splits(tasks, 10, 200, 2, seed=7)
    assert [p.to_dict() for p in eval_same] == [p.to_dict() for p in eval_]
    assert [p.prompt for p in train_small] == [p.prompt for p in train[:10]]


def test_countdown_key_ignores_number_order() -> None:
    fam = get_task("countdown")
    a = Problem(id="a", prompt="Use 3, 5, 7 to make 22.", answer="22", metadata={"numbers": [3, 5, 7]})
    b = Problem(id="b", prompt="Use 7, 3, 5 to make 22.", answer="22", metadata={"numbers": [7, 3, 5]})
    assert fam.dedupe_key(a) == fam.dedupe_key(b)


def test_small_problem_space_is_an_error() -> None:
    with pytest.raises(ConfigError, match="too small"):
        generate_splits(["arithmetic"], 100_000, 100, 1, seed=0)
    with pytest.raises(ConfigError, match="too small"):
        generate_splits(["countdown"], 1000, 0, 1, seed=0)
    train, eval_ = generate_splits(["arithmetic"], 150, 50, 1, seed=0)  # 200 of the 243 there are
    assert len({p.prompt for p in train + eval_}) == 200


def test_teacher_dataset() -> None:
    train, _ = generate_splits(["arithmetic", "countdown"], 20, 0, 2, seed=3)
    pairs = teacher_dataset(train)
    assert [p for p, _ in pairs] == train
    assert all(FORMAT.match(r) for _, r in pairs)


# --- countdown checker -------------------------------------------------------------------------

P = Problem(id="c", prompt="Use 3, 5, 7 to make 22.", answer="22", task="countdown", metadata={"numbers": [3, 5, 7]})


def ans(expr: str) -> str:
    return f"<think>3 * 5 = 15\n15 + 7 = 22</think>\n<answer>{expr}</answer>"


@pytest.mark.parametrize(
    "expr",
    ["3 * 5 + 7", "3*5+7", " ( 3 * 5 ) + 7 ", "7 + 5 * 3", "((3 * 5) + 7)", "(((((3)))) * 5) + (7)", "3 * 5\n+ 7"],
)
def test_checker_accepts_spacing_and_parentheses(expr: str) -> None:
    v = check_countdown(ans(expr), P)
    assert v.status == "correct", v


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "2**100",
        "3 ** 5 + 7",
        "3 // 5 + 7",
        "3 % 5 + 7",
        "1.5",
        "3.0 * 5 + 7",
        "1e3",
        "-3 * 5 + 7",
        "7 - -3 * 5",
        "3 * 5 + +7",
        "abs(3) * 5 + 7",
        "x",
        "'22'",
        "lambda: 22",
        "[3, 5, 7]",
        "3, 5, 7",
        "3 5 7",
        "3 * 5 + 7 = 22",
        "0x3 * 5 + 7",
        "1_0",
        "03 * 5 + 7",
        "99999999999999999999",
        "",
        "twenty-two",
        "3 * (5 + 7",
        "1+" * 5000 + "1",
        "(" * 40 + "3 * 5 + 7" + ")" * 40,
        "(" * 5000 + "1" + ")" * 5000,
    ],
)
def test_checker_rejects_non_expressions(expr: str) -> None:
    v = check_countdown(ans(expr), P)
    assert v.status == "unparsable", (expr[:50], v)
    assert v.reason


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("3 * 5 + 7 + 3 - 3", "uses numbers"),  # reused
        ("15 + 7", "uses numbers"),  # missing a number
        ("3 * 5 + 7 + 0", "uses numbers"),  # extra number
        ("3 * 5 + 7 * 1", "uses numbers"),
        ("22", "uses numbers"),
        ("3 + 5 + 7", "evaluates to 15"),
        ("3 / 5 + 7", "evaluates to 38/5"),
    ],
)
def test_checker_wrong_answers(expr: str, reason: str) -> None:
    v = check_countdown(ans(expr), P)
    assert v.status == "wrong" and reason in v.reason, v


def test_checker_division() -> None:
    zero = Problem(id="z", prompt="Use 5, 5, 2 to make 1.", answer="1", task="countdown", metadata={"numbers": [5, 5, 2]})
    v = check_countdown(ans("2 / (5 - 5)"), zero)
    assert v.status == "wrong" and "zero" in v.reason
    assert check_countdown(ans("5 / 5 * 2 - 1 + 1"), zero).status == "wrong"  # extra numbers
    assert check_countdown(ans("(5 + 5) / (2 * 5)"), zero).status == "wrong"
    exact = Problem(id="e", prompt="Use 1, 3, 6 to make 2.", answer="2", task="countdown", metadata={"numbers": [1, 3, 6]})
    assert check_countdown(ans("1 / 3 * 6"), exact).correct  # a fractional intermediate is fine: exact


@pytest.mark.parametrize(
    "text, status",
    [
        ("", "unparsable"),
        ("3 * 5 + 7", "unparsable"),  # no tags
        ("<answer></answer>", "unparsable"),
        ("<answer>   </answer>", "unparsable"),
        ("<answer>3 * 5 + 7", "unparsable"),
        ("3 * 5 + 7</answer>", "unparsable"),
        ("<answer><answer>1</answer>", "wrong"),
        ("<answer>3 + 5 + 7</answer> then <answer>3 * 5 + 7</answer>", "correct"),  # the last one counts
        ("<answer>3 * 5 + 7</answer> then <answer>3 + 5 + 7</answer>", "wrong"),
        ("<answer>3 * 5 + 7</answer><answer>", "correct"),
        ("\x00\uffff<answer>\u0663 * 5 + 7</answer>", "unparsable"),  # non-ASCII digits
        ("garbage " * 2000, "unparsable"),
    ],
)
def test_checker_tags_and_garbage(text: str, status: str) -> None:
    assert check_countdown(text, P).status == status


def test_checker_never_raises_on_odd_inputs() -> None:
    assert check_countdown(None, P).status == "unparsable"  # type: ignore[arg-type]
    assert check_countdown(b"<answer>3*5+7</answer>", P).status == "unparsable"  # type: ignore[arg-type]
    nothing = Problem(id="n", prompt="hello", answer="22", task="countdown")
    assert check_countdown(ans("3 * 5 + 7"), nothing).status == "error"
    no_target = Problem(id="t", prompt="hello", answer="many", task="countdown", metadata={"numbers": [3, 5, 7]})
    assert check_countdown(ans("3 * 5 + 7"), no_target).status == "error"


def test_checker_reads_numbers_from_the_prompt_when_metadata_lacks_them() -> None:
    for prompt in ("Use 3, 5, 7 to make 22.", [{"role": "user", "content": "Use 7,5,3 to make 22."}]):
        for metadata in ({}, {"numbers": "3 5 7"}, {"numbers": ["3", "5", "7"]}):
            p = Problem(id="m", prompt=prompt, answer="22", task="countdown", metadata=metadata)
            assert check_countdown(ans("3 * 5 + 7"), p).correct
            assert check_countdown(ans("3 * 5 + 7 + 3"), p).status == "wrong"

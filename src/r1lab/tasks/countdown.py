"""Countdown: `Use 3, 5, 7 to make 22.` — reach the target using every given number exactly once.

Difficulty d gives d + 1 numbers in 1..15. A problem is made by combining random pairs of the
numbers with + - * (and / when exact) until one value is left, so every problem is solvable by
construction; that value is the target (1..100, so texts stay short). Intermediates stay positive
integers. The checker reads the expression in the last <answer> tag with `ast` — never eval —
and scores it exactly with Fractions.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from r1lab.records import Problem, Verdict, prompt_text
from r1lab.tasks.base import (
    TaskFamily,
    apply_op,
    evaluate,
    evaluate_steps,
    expression_literals,
    extract_answer,
    format_number,
    format_trace,
    parse_expression,
    register_task,
)
from r1lab.verify.registry import register_verifier

NUMBER_MAX = 15
TARGET_MAX = 100
INTERMEDIATE_MAX = 200
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # precedence of a bare number

_PROMPT = re.compile(r"use\s+(\d+(?:\s*,\s*\d+)*)\s+to\s+make\s+(\d+)", re.IGNORECASE)

# A pool entry while building or solving: (value, expression text, precedence of its top operator).
_Item = tuple[Fraction, str, int]


def _combine(a: _Item, op: str, b: _Item) -> _Item:
    """`a op b` with only the parentheses the value needs."""
    p = _PRECEDENCE[op]
    left = a[1] if a[2] >= p else f"({a[1]})"
    keep_right = b[2] > p or (b[2] == p and op in "+*")
    right = b[1] if keep_right else f"({b[1]})"
    return apply_op(op, a[0], b[0]), f"{left} {op} {right}", p


def _moves(a: _Item, b: _Item, cap: int) -> list[tuple[_Item, str, _Item]]:
    """The (left, op, right) combinations of two positive integers whose result is a positive integer <= cap."""
    hi, lo = (a, b) if a[0] >= b[0] else (b, a)
    out = []
    if a[0] + b[0] <= cap:
        out.append((a, "+", b))
    if lo[0] < hi[0] <= cap + lo[0]:
        out.append((hi, "-", lo))
    if a[0] * b[0] <= cap:
        out.append((a, "*", b))
    if lo[0] > 1 and hi[0] % lo[0] == 0 and hi[0] <= cap * lo[0]:
        out.append((hi, "/", lo))
    return out


def _build(rng: random.Random, numbers: list[int]) -> _Item | None:
    """Combine random pairs until one value is left; None when a dead end is hit (caller retries)."""
    pool: list[_Item] = [(Fraction(n), str(n), _ATOM) for n in numbers]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        cap = TARGET_MAX if len(pool) == 2 else INTERMEDIATE_MAX
        moves = _moves(pool[i], pool[j], cap)
        if not moves:
            return None
        merged = _combine(*rng.choice(moves))
        pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [merged]
    return pool[0]


def solve(numbers: list[int], target: int) -> str | None:
    """An expression using each number once that makes `target` (positive integer steps), or None.

    Depth-first over pairs to combine, remembering value-multisets already known to fail; used
    only when a problem arrives without its construction (e.g. loaded from a file).
    """
    failed: set[tuple[Fraction, ...]] = set()

    def search(pool: list[_Item]) -> str | None:
        if len(pool) == 1:
            return pool[0][1] if pool[0][0] == target else None
        key = tuple(sorted(x[0] for x in pool))
        if key in failed:
            return None
        for i in range(len(pool)):
            for j in range(i + 1, len(pool)):
                rest = [x for k, x in enumerate(pool) if k not in (i, j)]
                for move in _moves(pool[i], pool[j], 10**9):
                    found = search(rest + [_combine(*move)])
                    if found is not None:
                        return found
        failed.add(key)
        return None

    return search([(Fraction(n), str(n), _ATOM) for n in numbers])


def numbers_and_target(problem: Problem) -> tuple[list[int], int]:
    """metadata["numbers"] and the answer; either falls back to the prompt. ValueError if neither works."""
    m = _PROMPT.search(prompt_text(problem.prompt))
    numbers = problem.metadata.get("numbers")
    if not (
        isinstance(numbers, list)
        and numbers
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)
    ):
        if m is None:
            raise ValueError("the given numbers are in neither metadata['numbers'] nor the prompt")
        numbers = [int(x) for x in m.group(1).split(",")]
    try:
        target = int(str(problem.answer).strip())
    except ValueError:
        if m is None:
            raise ValueError(f"the target is in neither the answer ({problem.answer!r}) nor the prompt") from None
        target = int(m.group(2))
    return list(numbers), target


@register_task("countdown")
class Countdown(TaskFamily):
    task = "countdown"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        for _ in range(10_000):
            numbers = [rng.randint(1, NUMBER_MAX) for _ in range(difficulty + 1)]
            built = _build(rng, numbers)
            if built is not None and 1 <= built[0] <= TARGET_MAX:
                break
        else:
            raise RuntimeError(f"countdown: no problem with target <= {TARGET_MAX} at difficulty {difficulty}")
        target = int(built[0])
        rng.shuffle(numbers)
        return Problem(
            id="",
            prompt=f"Use {', '.join(map(str, numbers))} to make {target}.",
            answer=str(target),
            task=self.task,
            metadata={"numbers": numbers, "solution": built[1]},
        )

    def dedupe_key(self, problem: Problem) -> str:
        """The numbers in any order make the same problem."""
        numbers, target = numbers_and_target(problem)
        return f"countdown {sorted(numbers)} -> {target}"

    def teacher_trace(self, problem: Problem) -> str:
        """The solution worked innermost-left first, then the expression itself as the answer."""
        numbers, target = numbers_and_target(problem)
        solution = problem.metadata.get("solution")
        if not (isinstance(solution, str) and _check(format_trace([], solution), problem).correct):
            solution = solve(numbers, target)
            if solution is None:
                raise ValueError(f"problem {problem.id!r}: no way to make {target} from {numbers}")
        value, steps = evaluate_steps(parse_expression(solution, max_chars=10_000))
        assert value == target
        return format_trace(steps, solution)


@register_verifier("countdown")
def check_countdown(response_text: str, problem: Problem) -> Verdict:
    """Correct iff the last <answer> is an expression of + - * / and parentheses over exactly the
    given numbers (each once) whose exact value is the target. Never raises."""
    try:
        return _check(response_text, problem)
    except Exception as e:  # a checker bug must score as an error, not crash the reward workers
        return Verdict("error", f"countdown checker failed: {type(e).__name__}: {e}")


def _check(response_text: str, problem: Problem) -> Verdict:
    try:
        numbers, target = numbers_and_target(problem)
    except ValueError as e:
        return Verdict("error", f"bad countdown problem: {e}")
    if not isinstance(response_text, str):
        return Verdict("unparsable", f"response is {type(response_text).__name__}, not text")
    answer = extract_answer(response_text)
    if answer is None:
        return Verdict("unparsable", "no <answer>...</answer> in the response")
    shown = answer if len(answer) <= 200 else answer[:200] + "..."
    try:
        node = parse_expression(answer)
    except ValueError as e:
        return Verdict("unparsable", str(e), extracted=shown)
    used = expression_literals(node)
    if Counter(used) != Counter(numbers):
        return Verdict("wrong", f"uses numbers {sorted(used)} not {sorted(numbers)}", extracted=shown)
    try:
        value = evaluate(node)
    except ZeroDivisionError:
        return Verdict("wrong", "division by zero", extracted=shown)
    if value != target:
        return Verdict("wrong", f"evaluates to {format_number(value)}, not {target}", extracted=shown)
    return Verdict("correct", extracted=shown)

"""Multi-step arithmetic: `Compute ((7 + 3) * 4) - 5.`, scored by the "math" verifier.

Difficulty d is the number of operations. The expression is a left-to-right chain with explicit
parentheses, so there is exactly one order to work in and the teacher trace is one line per
operation. Operands are 1..9 and every intermediate stays within [-20, 200], negative ones rare,
so the numbers a tiny model has to write stay short.
"""

from __future__ import annotations

import random
import re

from r1lab.records import Problem, prompt_text
from r1lab.tasks.base import (
    TaskFamily,
    evaluate_steps,
    format_number,
    format_trace,
    parse_expression,
    register_task,
)

OPERAND_MAX = 9
VALUE_MIN, VALUE_MAX = -20, 200
NEGATIVE_KEEP = 0.1  # chance of keeping a step whose result is negative

_PROMPT = re.compile(r"^\s*Compute\s+(.+?)\.?\s*$", re.DOTALL)


@register_task("arithmetic")
class Arithmetic(TaskFamily):
    task = "math"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        value = rng.randint(1, OPERAND_MAX)
        expr = str(value)
        for step in range(difficulty):
            value, op, b = self._step(rng, value)
            expr = f"{expr} {op} {b}"
            if step < difficulty - 1:
                expr = f"({expr})"
        return Problem(id="", prompt=f"Compute {expr}.", answer=str(value), task=self.task)

    @staticmethod
    def _step(rng: random.Random, value: int) -> tuple[int, str, int]:
        """One operation whose result stays in range; negative results are kept only rarely."""
        for _ in range(1000):
            op = rng.choice("+-*")
            b = rng.randint(1, OPERAND_MAX)
            result = value + b if op == "+" else value - b if op == "-" else value * b
            if not VALUE_MIN <= result <= VALUE_MAX:
                continue
            if result < 0 and rng.random() >= NEGATIVE_KEEP:
                continue
            return result, op, b
        # Unreachable in practice: from any value in range, + or - by some operand stays in range.
        raise RuntimeError(f"no arithmetic step from {value} stays within [{VALUE_MIN}, {VALUE_MAX}]")

    def teacher_trace(self, problem: Problem) -> str:
        """Work the prompt's expression innermost first, one `a op b = c` line per operation."""
        m = _PROMPT.match(prompt_text(problem.prompt))
        if not m:
            raise ValueError(f"problem {problem.id!r}: prompt is not 'Compute <expression>.'")
        value, steps = evaluate_steps(parse_expression(m.group(1), max_chars=4000, max_depth=200))
        return format_trace(steps, format_number(value))

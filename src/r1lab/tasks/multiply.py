"""Long multiplication, `Compute 347 * 829.`, scored by the "math" verifier: a task where a tool is the
only reliable way to be right. Difficulty d is the number of digits of each factor (d >= 2), chosen so
that the product has 2d digits; a tiny model cannot multiply two d-digit numbers in its head, but it can copy them into a calculator call
and copy the result into its answer.

The teacher writes one of two traces, chosen when the problem is generated (metadata["teacher"]),
so an SFT start holds both habits and RL has something to choose between:

- "tool": `<think>\\n<calc>347 * 829</calc>\\n<output>\\n287663\\n</output>\\n</think>\\n<answer>287663</answer>`,
  exactly the text of an episode of the tool environment in the tags format (the model's turn
  ends at `</calc>`, the environment appends the `<output>` block, the model writes the rest);
- "direct": `<think>\\n347 * 829 = 287663\\n</think>\\n<answer>287663</answer>`, the product written
  from memory (right in the teacher's trace; the student only imitates its shape).

Its problems allow the calculator and the Python tool (`tools`), nothing else.

"multiply_python" is the same family (the same problems for a seed) whose "tool" teacher runs
Python instead: `<think>\\n<python>print(347 * 829)</python>\\n<output>\\n287663\\n\\n</output>\\n</think>...`
(the python tool's output is what the program printed, its newline included): for a model that
knows Python better than a calculator tag.
"""

from __future__ import annotations

import math
import random
import re

from r1lab.records import Problem, prompt_text
from r1lab.tasks.base import TaskFamily, register_task

TOOL_SHARE = 0.5  # the share of problems whose teacher trace calls the calculator
_PROMPT = re.compile(r"^\s*Compute\s+(\d+)\s*\*\s*(\d+)\s*\.?\s*$")


@register_task("multiply")
class Multiply(TaskFamily):
    task = "math"
    min_difficulty = 2
    tools = ("calculator", "python")

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        # factors from ceil(sqrt(10^(2d-1))): every product has exactly 2d digits, so the answer
        # sits at the same place in every trace (a tiny model copies by position)
        lo, hi = math.isqrt(10 ** (2 * difficulty - 1) - 1) + 1, 10**difficulty - 1
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        teacher = "tool" if rng.random() < TOOL_SHARE else "direct"
        return Problem(id="", prompt=f"Compute {a} * {b}.", answer=str(a * b), task=self.task,
                       metadata={"teacher": teacher})

    def teacher_trace(self, problem: Problem) -> str:
        m = _PROMPT.match(prompt_text(problem.prompt))
        if not m:
            raise ValueError(f"problem {problem.id!r}: prompt is not 'Compute <a> * <b>.'")
        a, b = int(m.group(1)), int(m.group(2))
        if problem.metadata.get("teacher") == "direct":
            return f"<think>\n{a} * {b} = {a * b}\n</think>\n<answer>{a * b}</answer>"
        return f"<think>\n<calc>{a} * {b}</calc>\n<output>\n{a * b}\n</output>\n</think>\n<answer>{a * b}</answer>"


@register_task("multiply_python")
class MultiplyPython(Multiply):
    def teacher_trace(self, problem: Problem) -> str:
        trace = super().teacher_trace(problem)
        if problem.metadata.get("teacher") == "direct":
            return trace
        a, b = _PROMPT.match(prompt_text(problem.prompt)).groups()  # type: ignore[union-attr]  # checked above
        return trace.replace(f"<calc>{a} * {b}</calc>\n<output>\n{problem.answer}\n</output>",
                             f"<python>print({a} * {b})</python>\n<output>\n{problem.answer}\n\n</output>")

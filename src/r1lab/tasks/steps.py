"""Code-augmented reasoning steps (the step format of rStar-Math's search, at the demo's scale).

A solution is `<think>` + steps + the answer step. A code step is one line of thought, then a fenced
Python block whose last printed line is the step's result; the sandbox runs the block (after the
blocks of the steps before it, so names carry over) and the result is appended as a `>>> ` line:

    <think>multiply
    ```python
    print(3 * 5)
    ```
    >>> 15
    add
    ```python
    print(15 + 7)
    ```
    >>> 22
    </think>
    <answer>22</answer>

The model writes the thought and the code; the `>>> ` line comes from the sandbox, never from the
model, during search. A policy sampled without a sandbox writes it itself, which the verifier does
not read (it reads only the answer). The answer step is `</think>\\n<answer>...</answer>` in the
task's own answer format, so the task's verifier scores the whole solution unchanged.
"""

from __future__ import annotations

import ast
import operator
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from r1lab.records import Problem, prompt_text
from r1lab.tasks.base import BIN_OPS, parse_expression
from r1lab.verify.sandbox import run_python

THINK_OPEN = "<think>"
CODE_OPEN = "```python\n"
STEP_END = "\n```\n"  # a code step ends here: the engine's stop string
ANSWER_CLOSE = "</answer>"  # the answer step ends here: the other stop string
STOP_STRINGS = (STEP_END, ANSWER_CLOSE)
OUTPUT_PREFIX = ">>> "
MAX_THOUGHT_CHARS = 200
MAX_CODE_CHARS = 1000
MAX_RESULT_CHARS = 64  # a result line longer than this is not a step's result: the step is dropped

_CODE_STEP = re.compile(r"\A(?P<thought>[^\n`]*)\n```python\n(?P<code>.*?)\n```\n\Z", re.DOTALL)
_ANSWER_STEP = re.compile(r"\A[ \t\n]{0,4}</think>\n<answer>(?P<answer>[^<]*)</answer>\Z")
_WORDS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}


@dataclass(frozen=True)
class Step:
    """One parsed step: a code step (thought, code) or the answer step (answer)."""

    kind: str  # "code" | "answer"
    thought: str = ""
    code: str = ""
    answer: str = ""


def parse_step(text: str) -> Step | None:
    """The step `text` holds exactly (one code step ending in STEP_END, or one answer step), or
    None for anything else: prose without code, a second fence, an overlong thought or block, a
    step cut off at the token limit. Never raises."""
    if not isinstance(text, str):
        return None
    m = _ANSWER_STEP.match(text)
    if m:
        return Step("answer", answer=m.group("answer").strip())
    m = _CODE_STEP.match(text)
    if m is None:
        return None
    thought, code = m.group("thought").strip(), m.group("code")
    if len(thought) > MAX_THOUGHT_CHARS or len(code) > MAX_CODE_CHARS or "```" in code or not code.strip():
        return None
    return Step("code", thought=thought, code=code)


def code_step(thought: str, code: str) -> str:
    """The text of a code step as the model writes it (without its result line)."""
    return f"{thought}\n{CODE_OPEN}{code}{STEP_END}"


def result_line(result: str) -> str:
    return f"{OUTPUT_PREFIX}{result}\n"


def answer_step(answer: str) -> str:
    return f"</think>\n<answer>{answer}{ANSWER_CLOSE}"


# --- running a step's code ----------------------------------------------------------------------


@dataclass(frozen=True)
class StepRun:
    """What running a code step gave: ok with its result, or why it was dropped."""

    ok: bool
    result: str = ""  # the step's result: the last line its own code printed
    stdout: str = ""  # everything the program (earlier steps and this one) printed
    reason: str = ""


def step_result(program_stdout: str, before: str) -> StepRun:
    """The result of a step from its program's output and the output of the steps before it: the
    last non-empty line the step itself printed, or a failure when it printed none or one too long."""
    own = program_stdout[len(before):] if program_stdout.startswith(before) else program_stdout
    lines = [line.strip() for line in own.splitlines() if line.strip()]
    if not lines:
        return StepRun(False, stdout=program_stdout, reason="the step printed no result")
    if len(lines[-1]) > MAX_RESULT_CHARS:
        return StepRun(False, stdout=program_stdout, reason=f"result longer than {MAX_RESULT_CHARS} characters")
    return StepRun(True, lines[-1], program_stdout)


class StepRunner:
    """Runs step programs in the sandbox (one process each, several at once), remembering results by
    program text: siblings and revisited prefixes that repeat a program do not run it again."""

    def __init__(self, timeout: float = 2.0, memory_mb: int = 256, max_output: int = 10_000, workers: int = 2):
        self.timeout, self.memory_mb, self.max_output = timeout, memory_mb, max_output
        self.workers = max(1, workers)
        self._cache: dict[str, tuple[str, str, str]] = {}  # program -> (status, stdout, reason)
        self.runs = 0

    def forget(self) -> None:
        """Empty the cache: what follows runs as it would in a fresh process."""
        self._cache.clear()

    def _run(self, program: str) -> tuple[str, str, str]:
        r = run_python(program, timeout=self.timeout, memory_mb=self.memory_mb, max_output=self.max_output)
        return r.status, r.stdout, r.reason

    def run(self, jobs: list[tuple[str, str]]) -> list[StepRun]:
        """One StepRun per (program, stdout of the steps before), in order. A program that fails,
        times out, floods its output or prints no result gives ok=False."""
        todo = sorted({prog for prog, _ in jobs if prog not in self._cache})
        if todo:
            with ThreadPoolExecutor(min(self.workers, len(todo))) as pool:
                for prog, res in zip(todo, pool.map(self._run, todo)):
                    self._cache[prog] = res
            self.runs += len(todo)
        out = []
        for prog, before in jobs:
            status, stdout, reason = self._cache[prog]
            if status != "ok":
                out.append(StepRun(False, stdout=stdout, reason=f"{status}: {reason}"))
            else:
                out.append(step_result(stdout, before))
        return out


# --- teacher traces in the step format ------------------------------------------------------------


_PY_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _expression_steps(node: ast.expr, full_expressions: bool) -> list[tuple[str, str, str]]:
    """(thought, code, result) per operation of a parsed expression, innermost-left first. The
    thought names the operation (the numbers are in the code, once: a tiny model copies less). The code
    prints the operation on the results found so far, or (full_expressions) the whole sub-expression
    in the problem's own numbers, whose last one is then the answer's expression. Results are what
    Python prints for that code (a true division gives a float)."""
    steps: list[tuple[str, str, str]] = []

    def walk(n: ast.expr) -> tuple[int | float, str]:
        if isinstance(n, ast.Constant):
            return n.value, str(n.value)
        assert isinstance(n, ast.BinOp)
        a, _ = walk(n.left)
        b, _ = walk(n.right)
        op = BIN_OPS[type(n.op)]
        value = _PY_OPS[op](a, b)
        expr = ast.unparse(n)
        steps.append((_WORDS[op], f"print({expr if full_expressions else f'{a} {op} {b}'})", str(value)))
        return value, expr

    walk(node)
    return steps


def step_trace(problem: Problem) -> str:
    """A correct solution of an arithmetic or Countdown problem in the step format: one code step per
    operation, then the answer (the value for arithmetic, the expression for Countdown). ValueError
    for other families or a problem whose own trace cannot be built."""
    family = str(problem.metadata.get("family", ""))
    if family == "arithmetic":
        m = re.match(r"^\s*Compute\s+(.+?)\.?\s*$", prompt_text(problem.prompt), re.DOTALL)
        if not m:
            raise ValueError(f"problem {problem.id!r}: prompt is not 'Compute <expression>.'")
        node = parse_expression(m.group(1), max_chars=4000, max_depth=200)
        steps = _expression_steps(node, full_expressions=False)
        answer = steps[-1][2] if steps else ast.unparse(node)
    elif family == "countdown":
        from r1lab.tasks.countdown import numbers_and_target, solve

        numbers, target = numbers_and_target(problem)
        solution = problem.metadata.get("solution")
        if not isinstance(solution, str):
            solution = solve(numbers, target)
            if solution is None:
                raise ValueError(f"problem {problem.id!r}: no way to make {target} from {numbers}")
        node = parse_expression(solution, max_chars=10_000)
        steps = _expression_steps(node, full_expressions=True)
        answer = ast.unparse(parse_expression(solution, max_chars=10_000))
    else:
        raise ValueError(f"problem {problem.id!r}: no step-format teacher for family {family!r} "
                         "(arithmetic and countdown have one)")
    body = "".join(code_step(t, c) + result_line(r) for t, c, r in steps)
    return THINK_OPEN + body + answer_step(answer)


def split_steps(solution: str) -> list[str]:
    """The step texts of a solution in the step format (code steps with their result lines, then the
    answer step), so that "".join(split_steps(s)) == s without its leading `<think>`."""
    text = solution[len(THINK_OPEN):] if solution.startswith(THINK_OPEN) else solution
    parts, pos = [], 0
    pattern = re.compile(re.escape(STEP_END) + re.escape(OUTPUT_PREFIX) + r"[^\n]*\n")
    for m in pattern.finditer(text):
        parts.append(text[pos:m.end()])
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts

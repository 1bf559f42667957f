"""Code problems: extract the program from a response and run the problem's tests in the sandbox.

`problem.tests` is a list of dicts, each one of
- `{"type": "stdio", "input": "...", "output": "..."}`: the program reads `input` on stdin; its
  stdout must equal `output` up to whitespace (per line: runs of blanks collapsed, ends
  stripped; trailing empty lines ignored). The parent compares, so a program cannot fake it.
- `{"type": "assert", "code": "assert f(2) == 4"}`: run after the program in its namespace.
  Every operand of a comparison and every bare asserted value must be built of builtin data
  types (int, str, list, dict, ...), checked by the harness: an object whose `__eq__` always
  returns True (the classic reward hack) fails instead of passing.
Optional per test: `"timeout"` (seconds). Problem metadata: `time_limit` (default per-test
timeout), `memory_mb`, `early_stop` (stop at the first failing test), `budget_s` (total seconds
for all tests; the rest are "not run" and fail, so one response cannot outlive the verifier
pool's per-item timeout: keep `budget_s` below the `timeout` given to verify_batch).

The verdict's reason starts with one letter per test, `tests PFP.`: P passed, F failed, `.` not
run. Reward terms read per-test outcomes from it with `code_test_outcomes` (verdicts cross process
boundaries as status, reason and extracted text only).
"""

from __future__ import annotations

import ast
import re
import time
from dataclasses import dataclass
from typing import Any

from r1lab.records import Problem, Verdict
from r1lab.verify.registry import register_verifier
from r1lab.verify.sandbox import SandboxResult, run_python

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_BUDGET_S = 4.0  # under verify_batch's default 5 s per item
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OUTCOMES = re.compile(r"^tests ([PF.]*)(?::|$)")


@dataclass
class CaseResult:
    index: int
    kind: str  # "stdio" | "assert"
    passed: bool
    status: str  # the sandbox status, "wrong_output", "not_run" or "bad_test"
    reason: str = ""
    seconds: float = 0.0


def extract_program(text: str) -> str | None:
    """The last ```python (or bare ```) fenced block; else the `<answer>` content (its own fence
    unwrapped). None when neither holds any code."""
    if not isinstance(text, str):
        return None
    blocks = _FENCE.findall(text)
    if blocks and blocks[-1].strip():
        return blocks[-1]
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        content = text[start + len("<answer>") : end]
        inner = _FENCE.findall(content)
        content = inner[-1] if inner else content
        return content if content.strip() else None
    return None


def normalise_output(text: str) -> list[str]:
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(actual: str, expected: str) -> bool:
    return normalise_output(actual) == normalise_output(expected)


class _Guard(ast.NodeTransformer):
    """Wrap what an assert compares or tests in `__r1lab_plain__(...)` (see the module docstring)."""

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.test = self._guard(node.test)
        return node

    def _guard(self, e: ast.expr) -> ast.expr:
        if isinstance(e, ast.BoolOp):
            e.values = [self._guard(v) for v in e.values]
            return e
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            e.operand = self._guard(e.operand)
            return e
        if isinstance(e, ast.Compare):
            e.left = self._wrap(e.left)
            e.comparators = [self._wrap(c) for c in e.comparators]
            return e
        return self._wrap(e)

    @staticmethod
    def _wrap(e: ast.expr) -> ast.expr:
        return ast.Call(func=ast.Name("__r1lab_plain__", ast.Load()), args=[e], keywords=[])


def guard_asserts(code: str) -> str:
    """The test code with every assert's values checked to be plain data. SyntaxError propagates."""
    tree = _Guard().visit(ast.parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


def _describe(r: SandboxResult) -> str:
    tail = r.stderr.strip().splitlines()[-1:] if r.status == "runtime_error" and not r.reason else []
    return (r.reason or r.status) + (f" ({tail[0][:200]})" if tail else "")


def run_tests(
    program: str,
    tests: list[dict[str, Any]],
    *,
    time_limit: float = DEFAULT_TIME_LIMIT_S,
    memory_mb: int = 512,
    early_stop: bool = False,
    budget_s: float | None = None,
) -> list[CaseResult]:
    """One fresh sandbox per test (no state leaks between tests); a result for every test, in order."""
    results: list[CaseResult] = []
    t0 = time.monotonic()
    stop = False
    for i, test in enumerate(tests):
        kind = str(test.get("type", "stdio")) if isinstance(test, dict) else "?"
        left = None if budget_s is None else budget_s - (time.monotonic() - t0)
        if stop or (left is not None and left <= 0.1):
            why = "earlier test failed (early stop)" if stop else "time budget for this response used up"
            results.append(CaseResult(i, kind, False, "not_run", why))
            continue
        limit = float(test.get("timeout", time_limit)) if isinstance(test, dict) else time_limit
        if left is not None:
            limit = min(limit, max(0.1, left - 0.6))
        results.append(_run_one(i, kind, program, test, limit, memory_mb))
        stop = early_stop and not results[-1].passed
    return results


def _run_one(i: int, kind: str, program: str, test: Any, limit: float, memory_mb: int) -> CaseResult:
    if kind == "stdio" and isinstance(test.get("output"), str):
        r = run_python(program, str(test.get("input") or ""), timeout=limit, memory_mb=memory_mb)
        if not r.ok:
            return CaseResult(i, kind, False, r.status, _describe(r), r.wall_time)
        if not outputs_match(r.stdout, test["output"]):
            got = " | ".join(normalise_output(r.stdout))[:120]
            want = " | ".join(normalise_output(test["output"]))[:120]
            return CaseResult(i, kind, False, "wrong_output", f"expected {want!r}, got {got!r}", r.wall_time)
        return CaseResult(i, kind, True, "ok", "", r.wall_time)
    if kind == "assert" and isinstance(test.get("code"), str):
        try:
            after = guard_asserts(test["code"])
        except SyntaxError as e:
            return CaseResult(i, kind, False, "bad_test", f"test code does not parse: {e.msg}")
        r = run_python(program, str(test.get("input") or ""), timeout=limit, memory_mb=memory_mb, after=after)
        return CaseResult(i, kind, r.ok, r.status, "" if r.ok else _describe(r), r.wall_time)
    return CaseResult(i, kind, False, "bad_test", "a test needs type 'stdio' with 'output', or type 'assert' with 'code'")


def outcome_string(results: list[CaseResult]) -> str:
    return "".join("P" if r.passed else "." if r.status == "not_run" else "F" for r in results)


def code_test_outcomes(verdict: Verdict | None) -> list[bool | None] | None:
    """Per-test outcomes a code verdict carries (True passed, False failed, None not run); None if it has none."""
    if verdict is None:
        return None
    m = _OUTCOMES.match(verdict.reason or "")
    if m is None:
        return None
    return [True if c == "P" else None if c == "." else False for c in m.group(1)]


@register_verifier("code")
def verify_code(response: str, problem: Problem) -> Verdict:
    """Correct iff every test passes. unparsable: no program in the response; error: no usable tests."""
    tests = problem.tests
    if not isinstance(tests, list) or not tests or not all(isinstance(t, dict) for t in tests):
        return Verdict("error", f"problem {problem.id!r} has no tests (a non-empty list of dicts)")
    program = extract_program(response)
    if program is None:
        return Verdict("unparsable", "no ```python block and no <answer> with code in the response")
    meta = problem.metadata or {}
    results = run_tests(
        program,
        tests,
        time_limit=float(meta.get("time_limit", DEFAULT_TIME_LIMIT_S)),
        memory_mb=int(meta.get("memory_mb", 512)),
        early_stop=bool(meta.get("early_stop", False)),
        budget_s=float(meta.get("budget_s", DEFAULT_BUDGET_S)),
    )
    if any(r.status == "bad_test" for r in results):
        bad = next(r for r in results if r.status == "bad_test")
        return Verdict("error", f"tests {outcome_string(results)}: test {bad.index} is unusable: {bad.reason}")
    passed = sum(r.passed for r in results)
    summary = f"tests {outcome_string(results)}: {passed}/{len(results)} passed"
    first = next((r for r in results if not r.passed), None)
    if first is not None:
        summary += f"; first failure: test {first.index} ({first.kind}) {first.status}: {first.reason}"
    shown = program if len(program) <= 2000 else program[:2000] + "..."
    return Verdict("correct" if first is None else "wrong", summary, extracted=shown)


__all__ = ["CaseResult", "extract_program", "guard_asserts", "outputs_match", "run_tests", "code_test_outcomes", "verify_code"]

"""Code repair (SWE-RL at toy scale): a small Python function with one planted bug; fix it.

A problem is a short function from a pool of templates (names varied), with one mutation of a
known kind planted: an operator (`+` for `-`), a comparison (`<` for `<=`), or an off-by-one
constant. The bug is kept only when the tests catch it. The prompt shows the buggy function and
two of its tests; the verifier runs all five (three hidden) in the sandbox. The original function
is the oracle (Problem.answer), the buggy one is metadata["buggy"].

The response's `<answer>` holds either the whole fixed function (fenced or not) or a unified
diff against the buggy one. Two reward terms, registered here:
- `repair_tests`: 1 when every test passes in the sandbox, else 0;
- `repair_similarity`: SWE-RL's reward (Wei et al. 2025, Eq. 1): the `difflib.SequenceMatcher`
  ratio between the model's patch and the oracle patch (both unified diffs from the buggy code),
  -1 when the answer is not a patch that applies to one function of the right name.
Hostile answers (imports, file access, introspection, `sys.exit`, rebinding what the tests call,
editing the tests) are refused before anything runs: no test reward, and -1 similarity.

Difficulty 1 draws from the shortest templates; 2 and above from all of them.
"""

from __future__ import annotations

import ast
import difflib
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from r1lab.records import Problem, Verdict
from r1lab.reward_registry import register_reward
from r1lab.tasks.base import TaskFamily, extract_answer, format_trace, register_task
from r1lab.tasks.restricted import parse_one_function
from r1lab.verify.registry import register_verifier

VISIBLE_TESTS = 2
TOTAL_TESTS = 5
MAX_ANSWER_CHARS = 4000
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")


def _ints(rng: random.Random, n: int, lo: int = -9, hi: int = 9) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


@dataclass(frozen=True)
class Template:
    names: tuple[str, ...]  # function names to draw from
    source: str  # {f}: function name; {xs}, {x}, {t}, {i}: names of the list, item, accumulator, index
    inputs: Callable[[random.Random], tuple]  # one argument tuple
    short: bool = True  # in the difficulty-1 pool


TEMPLATES = (
    Template(("sum_pos", "positive_total", "add_positive"),
             "def {f}({xs}):\n    {t} = 0\n    for {x} in {xs}:\n        if {x} > 0:\n            {t} += {x}\n    return {t}",
             lambda r: (_ints(r, r.randint(1, 5)),)),
    Template(("count_big", "count_at_least", "how_many"),
             "def {f}({xs}, k):\n    {t} = 0\n    for {x} in {xs}:\n        if {x} >= k:\n            {t} += 1\n    return {t}",
             lambda r: (_ints(r, r.randint(2, 5)), r.randint(-3, 3))),
    Template(("largest", "max_of", "biggest"),
             "def {f}({xs}):\n    {t} = {xs}[0]\n    for {x} in {xs}:\n        if {x} > {t}:\n            {t} = {x}\n    return {t}",
             lambda r: (_ints(r, r.randint(1, 5)),)),
    Template(("fact", "factorial", "product_to"),
             "def {f}(n):\n    {t} = 1\n    for {i} in range(2, n + 1):\n        {t} *= {i}\n    return {t}",
             lambda r: (r.randint(0, 7),)),
    Template(("tri", "sum_to", "triangle"), "def {f}(n):\n    return n * (n + 1) // 2", lambda r: (r.randint(0, 20),)),
    Template(("clamp", "bound", "limit"),
             "def {f}({x}, lo, hi):\n    if {x} < lo:\n        return lo\n    if {x} > hi:\n        return hi\n    return {x}",
             lambda r: (r.randint(-9, 9), r.randint(-5, 0), r.randint(1, 5))),
    Template(("gap", "abs_diff", "distance"), "def {f}(a, b):\n    if a > b:\n        return a - b\n    return b - a",
             lambda r: (r.randint(-9, 9), r.randint(-9, 9))),
    Template(("power", "pow_int", "raise_to"),
             "def {f}(b, e):\n    {t} = 1\n    for {i} in range(e):\n        {t} *= b\n    return {t}",
             lambda r: (r.randint(-3, 4), r.randint(0, 4))),
    Template(("count_even", "evens", "num_even"),
             "def {f}({xs}):\n    {t} = 0\n    for {x} in {xs}:\n        if {x} % 2 == 0:\n            {t} += 1\n    return {t}",
             lambda r: (_ints(r, r.randint(1, 5)),)),
    Template(("is_sorted", "ascending", "in_order"),
             "def {f}({xs}):\n    for {i} in range(len({xs}) - 1):\n        if {xs}[{i}] > {xs}[{i} + 1]:\n"
             "            return False\n    return True", lambda r: (sorted(_ints(r, 4)) if r.random() < 0.5 else _ints(r, 4),), False),
    Template(("dot", "inner", "dot_product"),
             "def {f}(a, b):\n    {t} = 0\n    for {i} in range(len(a)):\n        {t} += a[{i}] * b[{i}]\n    return {t}",
             lambda r: (lambda n: (_ints(r, n), _ints(r, n)))(r.randint(1, 4)), False),
    Template(("last_index", "rfind", "find_last"),
             "def {f}({xs}, v):\n    for {i} in range(len({xs}) - 1, -1, -1):\n        if {xs}[{i}] == v:\n"
             "            return {i}\n    return -1", lambda r: (_ints(r, 4, 0, 3), r.randint(0, 4)), False),
)
LIST_NAMES = ("xs", "nums", "vals", "items")
ITEM_NAMES = ("x", "v", "y", "e")
TOTAL_NAMES = ("t", "s", "acc", "total")
INDEX_NAMES = ("i", "j", "k2")

# the mutations a planted bug is drawn from, by kind
_OP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}
_CMP_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}


def _mutation_sites(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    sites: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _OP_SWAPS:
            sites.append(("operator", node))
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP_SWAPS:
            sites.append(("comparison", node))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append(("off_by_one", node))
    return sites


def _mutate(source: str, rng: random.Random) -> tuple[str, str]:
    """(buggy source, bug kind): one mutation at a random site."""
    tree = ast.parse(source)
    kind, node = rng.choice(_mutation_sites(tree))
    if kind == "operator":
        node.op = _OP_SWAPS[type(node.op)]()  # type: ignore[attr-defined]
    elif kind == "comparison":
        node.ops = [_CMP_SWAPS[type(node.ops[0])]()]  # type: ignore[attr-defined]
    else:
        node.value += rng.choice((-1, 1))  # type: ignore[attr-defined]
    return ast.unparse(tree), kind


def _call(source: str, name: str, args: tuple) -> Any:
    """Our own generated function (never model output) called in-process."""
    ns: dict[str, Any] = {}
    exec(compile(source, "<template>", "exec"), ns)
    try:
        return ns[name](*[list(a) if isinstance(a, list) else a for a in args])
    except Exception as e:  # a bug that raises counts as caught
        return e


def _call_text(name: str, args: tuple) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


def patch_diff(before: str, after: str) -> str:
    """The unified diff (no file headers, no context) between two sources: what a patch changes."""
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return "\n".join(line for line in lines if not line.startswith(("---", "+++")))


def apply_unified_diff(source: str, diff: str) -> str:
    """Apply the hunks of `diff` to `source`. Each hunk's old lines (context and '-') must occur
    exactly once in the source; ValueError otherwise. Line numbers in the headers are not trusted."""
    lines = source.splitlines()
    hunks: list[list[str]] = []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")) and not hunks:
            continue
        if _HUNK.match(line):
            hunks.append([])
        elif hunks and line[:1] in (" ", "-", "+"):
            hunks[-1].append(line)
        elif hunks and not line.strip():
            hunks[-1].append(" ")
        else:
            raise ValueError("not a unified diff")
    if not hunks:
        raise ValueError("the diff has no hunks")
    for hunk in hunks:
        old = [h[1:] for h in hunk if h[0] in " -"]
        new = [h[1:] for h in hunk if h[0] in " +"]
        if not old:
            raise ValueError("a hunk with no old lines cannot be placed")
        at = [i for i in range(len(lines) - len(old) + 1) if lines[i : i + len(old)] == old]
        if len(at) != 1:
            raise ValueError("a hunk does not apply to the function" if not at else "a hunk applies in several places")
        lines[at[0] : at[0] + len(old)] = new
    return "\n".join(lines)


def candidate_source(answer: str, problem: Problem) -> str:
    """The fixed function an answer proposes (the whole function, or a diff applied to the buggy
    one), normalised by `ast.unparse` and checked to be one plain function of the right name.
    ValueError with a reason when it is not."""
    meta = problem.metadata or {}
    buggy, name = meta.get("buggy"), meta.get("function")
    if not isinstance(buggy, str) or not isinstance(name, str):
        raise ValueError("the problem lacks metadata['buggy'] / ['function']")
    if len(answer) > MAX_ANSWER_CHARS:
        raise ValueError(f"answer longer than {MAX_ANSWER_CHARS} characters")
    blocks = _FENCE.findall(answer)
    text = blocks[-1] if blocks else answer
    stripped = text.strip("\n")
    if stripped.lstrip().startswith(("@@", "--- ")):
        text = apply_unified_diff(buggy, stripped)
    return ast.unparse(parse_one_function(text, name))


def _tests_code(problem: Problem) -> str:
    return "\n".join(str(t["code"]) for t in problem.tests or [])


@register_task("code_repair")
class CodeRepair(TaskFamily):
    task = "code_repair"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        pool = [t for t in TEMPLATES if t.short or difficulty >= 2]
        for _ in range(200):
            t = rng.choice(pool)
            name = rng.choice(t.names)
            names = {"f": name, "xs": rng.choice(LIST_NAMES), "x": rng.choice(ITEM_NAMES), "t": rng.choice(TOTAL_NAMES),
                     "i": rng.choice(INDEX_NAMES)}
            original = ast.unparse(ast.parse(t.source.format(**names)))
            buggy, kind = _mutate(original, rng)
            if buggy == original:
                continue
            inputs = [t.inputs(rng) for _ in range(40)]
            caught = [a for a in inputs if _call(buggy, name, a) != _call(original, name, a)]
            if not caught or any(isinstance(_call(original, name, a), Exception) for a in inputs):
                continue
            # a visible test and (when two inputs catch it) a hidden one catch the bug
            unique = list({repr(a): a for a in inputs}.values())
            first, last = caught[0], caught[-1]
            others = [a for a in unique if a != first and a != last]
            visible = [first, others[0]]
            hidden = ([last] if last != first else []) + others[1:]
            hidden = hidden[: TOTAL_TESTS - VISIBLE_TESTS]
            rng.shuffle(hidden)
            tests = [{"type": "assert", "code": f"assert {_call_text(name, a)} == {_call(original, name, a)!r}"}
                     for a in visible + hidden]
            shown = "\n".join(t["code"] for t in tests[:VISIBLE_TESTS])
            prompt = f"Fix the bug.\n{buggy}\nTests:\n{shown}"
            return Problem(id="", prompt=prompt, answer=original, task=self.task, tests=tests,
                           metadata={"buggy": buggy, "function": name, "bug_kind": kind, "time_limit": 2.0})
        raise RuntimeError("code_repair: no template gave a bug its tests catch")  # pragma: no cover

    def dedupe_key(self, problem: Problem) -> str:
        return str((problem.metadata or {}).get("buggy", problem.prompt))

    def teacher_trace(self, problem: Problem) -> str:
        """The changed line, old then new, and the whole fixed function."""
        buggy = str((problem.metadata or {}).get("buggy", ""))
        old = [ln.strip() for ln in buggy.splitlines() if ln not in problem.answer.splitlines()]
        new = [ln.strip() for ln in problem.answer.splitlines() if ln not in buggy.splitlines()]
        return format_trace([f"{' / '.join(old)} -> {' / '.join(new)}"], "\n" + problem.answer + "\n")


@register_verifier("code_repair")
def check_repair(response: str, problem: Problem) -> Verdict:
    """Correct iff the proposed function is plain (see restricted.py) and passes every test in the sandbox."""
    from r1lab.verify.code import guard_asserts
    from r1lab.verify.sandbox import run_python

    answer = extract_answer(response) if isinstance(response, str) else None
    if answer is None:
        return Verdict("unparsable", "no <answer>...</answer> in the response")
    try:
        source = candidate_source(answer, problem)
    except ValueError as e:
        return Verdict("unparsable", f"not a usable patch: {e}")
    r = run_python(source, timeout=float((problem.metadata or {}).get("time_limit", 2.0)), memory_mb=256,
                   after=guard_asserts(_tests_code(problem)))
    if not r.ok:
        return Verdict("wrong", f"tests failed: {r.reason or r.status}"[:300], source)
    return Verdict("correct", extracted=source)


@register_reward("repair_tests")
def repair_tests(problems, texts, verdicts, completions=None) -> list[float]:
    """1.0 when the repaired function passes every test in the sandbox, else 0.0."""
    return [1.0 if v.correct else 0.0 for v in verdicts]


def repair_similarity_of(text: str, problem: Problem) -> float:
    """SWE-RL's patch similarity in [0, 1]; -1.0 when the answer is not a usable patch."""
    answer = extract_answer(text) if isinstance(text, str) else None
    if answer is None:
        return -1.0
    try:
        source = candidate_source(answer, problem)
    except ValueError:
        return -1.0
    buggy = str(problem.metadata["buggy"])
    return difflib.SequenceMatcher(None, patch_diff(buggy, source), patch_diff(buggy, problem.answer),
                                   autojunk=False).ratio()


@register_reward("repair_similarity")
def repair_similarity(problems, texts, verdicts, completions=None) -> list[float]:
    """SWE-RL: similarity of the model's patch to the oracle patch; -1 for an unparsable patch."""
    return [repair_similarity_of(t, p) for p, t in zip(problems, texts)]

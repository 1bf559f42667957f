"""Algorithm discovery at toy scale: write a comparison sort that needs few comparisons.

The model writes `NAME(xs, less)`: return the items of `xs` in ascending order, where `less(a, b)`
is the only way to compare two items. The cost of a program is how many times it calls `less`.

How it is checked (in the sandbox, after the model's function is loaded):
- the items are opaque objects created in a random order (so neither their ids nor anything else
  about them says where they belong); only `less` knows their ranks, and it counts its calls in a
  closure the function cannot reach (restricted.py refuses attribute names with `_`, `getattr`
  and the other introspection routes before anything runs);
- the hidden inputs (permutations of 8, 16 and 32 items) are written into the test code, which
  runs after the function is defined, so the function never sees them; the prompt's visible
  example is only an illustration;
- the counts come back on stdout behind a per-run random token the function cannot know or print
  (it may not use `print` or import anything); the result must hold exactly the input items, in
  order;
- the reference cost (a plain insertion sort on the same inputs) is computed in the parent, never
  in the sandbox.

Reward terms, registered here: `sort_correct` (1 when every hidden input comes back sorted) and
`sort_speed`: correct programs are paid reference comparisons / the program's comparisons, capped
at SPEED_CAP (no comparison sort beats log2(n!), so the cap is never the binding limit at these
sizes); wrong, hostile or unparsable programs get 0.

The teacher writes one of four sorts (selection, insertion, merge, binary insertion), chosen by
the problem, so SFT leaves a mixture of costs for RL to choose among.
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets

from r1lab.records import Problem, Verdict
from r1lab.reward_registry import register_reward
from r1lab.tasks.base import TaskFamily, extract_answer, format_trace, register_task
from r1lab.tasks.restricted import parse_one_function
from r1lab.verify.registry import register_verifier

HIDDEN_SIZES = (8, 16, 32)
SPEED_CAP = 3.0
NAMES = ("sort", "order", "arrange", "sort_items")
_COST = re.compile(r"^comparisons (\d+) reference (\d+)")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

TEACHER = {
    "selection sort, about n*n/2 comparisons": (
        "def {f}(xs, less):\n    for i in range(len(xs)):\n        m = i\n        for j in range(i + 1, len(xs)):\n"
        "            if less(xs[j], xs[m]):\n                m = j\n        xs[i], xs[m] = xs[m], xs[i]\n    return xs"),
    "insertion sort, about n*n/4 comparisons": (
        "def {f}(xs, less):\n    for i in range(1, len(xs)):\n        j = i\n        while j > 0 and less(xs[j], xs[j - 1]):\n"
        "            xs[j], xs[j - 1] = xs[j - 1], xs[j]\n            j -= 1\n    return xs"),
    "merge sort, about n*log2(n) comparisons": (
        "def {f}(xs, less):\n    if len(xs) < 2:\n        return xs\n    a = {f}(xs[:len(xs) // 2], less)\n"
        "    b = {f}(xs[len(xs) // 2:], less)\n    out = []\n    while a and b:\n"
        "        out.append(b.pop(0) if less(b[0], a[0]) else a.pop(0))\n    return out + a + b"),
    "binary insertion, about log2(n!) comparisons": (
        "def {f}(xs, less):\n    out = []\n    for x in xs:\n        lo, hi = 0, len(out)\n        while lo < hi:\n"
        "            mid = (lo + hi) // 2\n            if less(x, out[mid]):\n                hi = mid\n"
        "            else:\n                lo = mid + 1\n        out.insert(lo, x)\n    return out"),
}


def insertion_comparisons(ranks: list[int]) -> int:
    """What the reference (a plain insertion sort) pays on `ranks`."""
    xs, count = list(ranks), 0
    for i in range(1, len(xs)):
        j = i
        while j > 0:
            count += 1
            if not xs[j] < xs[j - 1]:
                break
            xs[j], xs[j - 1] = xs[j - 1], xs[j]
            j -= 1
    return count


def hidden_cases(problem: Problem) -> list[tuple[list[int], list[int]]]:
    """(ranks in input order, order in which the items are created) per hidden input; fixed per problem."""
    rng = random.Random(hashlib.sha256(f"r1lab/sorting/{problem.prompt}".encode()).hexdigest())
    cases = []
    for n in HIDDEN_SIZES:
        ranks = list(range(n))
        rng.shuffle(ranks)
        created = list(range(n))
        rng.shuffle(created)
        cases.append((ranks, created))
    return cases


# The test code: runs in the sandbox after the function is defined, in the same namespace.
_CHECK = '''
def _r1lab_check(fn, cases, token):
    import sys

    class Item:
        __slots__ = ()

    def comparator(rank, calls):
        def less(a, b):
            calls[0] += 1
            return rank[id(a)] < rank[id(b)]
        return less

    counts = []
    for ranks, created in cases:
        made = {{}}
        for i in created:
            made[i] = Item()
        items = [made[i] for i in range(len(ranks))]
        rank = {{id(it): r for it, r in zip(items, ranks)}}
        calls = [0]
        out = fn(list(items), comparator(rank, calls))
        want = sorted(items, key=lambda it: rank[id(it)])
        if type(out) is not list or len(out) != len(want) or any(a is not b for a, b in zip(out, want)):
            raise AssertionError("not the input items in ascending order")
        counts.append(calls[0])
    sys.stdout.write(token + " " + " ".join(str(c) for c in counts) + "\\n")

_r1lab_check({fn}, {cases!r}, {token!r})
'''


def function_of(answer: str, name: str) -> str:
    """The function the answer defines (fenced or not), checked plain; ValueError otherwise."""
    import ast

    blocks = _FENCE.findall(answer)
    return ast.unparse(parse_one_function(blocks[-1] if blocks else answer, name))


@register_task("sorting")
class Sorting(TaskFamily):
    task = "sorting"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        """Difficulty sets the length of the visible example (2 + difficulty items)."""
        self.check_difficulty(difficulty)
        name = rng.choice(NAMES)
        example = [rng.randint(0, 99) for _ in range(2 + difficulty)]
        prompt = (f"Write {name}(xs, less) returning xs in ascending order. Compare items only with less(a, b). "
                  f"Fewer calls to less score higher. Example: {example} -> {sorted(example)}")
        reference = TEACHER["insertion sort, about n*n/4 comparisons"].replace("{f}", name)  # never shown to the model
        return Problem(id="", prompt=prompt, answer=reference, task=self.task, metadata={"function": name})

    def teacher_trace(self, problem: Problem) -> str:
        """One of the four sorts, chosen by the prompt (so the SFT data mixes their costs)."""
        name = str((problem.metadata or {}).get("function", "sort"))
        pick = int(hashlib.sha256(str(problem.prompt).encode()).hexdigest(), 16) % len(TEACHER)
        why, source = list(TEACHER.items())[pick]
        return format_trace([why], "\n" + source.replace("{f}", name) + "\n")


@register_verifier("sorting")
def check_sorting(response: str, problem: Problem) -> Verdict:
    """Correct iff the function returns every hidden input's items in order; the reason carries
    `comparisons C reference R` (summed over the hidden inputs) for the speed reward."""
    from r1lab.verify.sandbox import run_python

    answer = extract_answer(response) if isinstance(response, str) else None
    if answer is None:
        return Verdict("unparsable", "no <answer>...</answer> in the response")
    name = str((problem.metadata or {}).get("function", "sort"))
    try:
        source = function_of(answer, name)
    except ValueError as e:
        return Verdict("unparsable", f"not a usable function: {e}")
    cases = hidden_cases(problem)
    token = secrets.token_hex(16)
    r = run_python(source, timeout=2.0, memory_mb=256, after=_CHECK.format(fn=name, cases=cases, token=token))
    counts = next((line.split()[1:] for line in reversed(r.stdout.splitlines()) if line.startswith(token + " ")), None)
    if not r.ok or counts is None or len(counts) != len(cases):
        return Verdict("wrong", f"hidden inputs failed: {r.reason or r.status}"[:300], source)
    reference = sum(insertion_comparisons(ranks) for ranks, _ in cases)
    return Verdict("correct", f"comparisons {sum(map(int, counts))} reference {reference}", source)


def sort_cost(verdict: Verdict | None) -> tuple[int, int] | None:
    """(comparisons, reference comparisons) of a correct sorting verdict, else None."""
    m = _COST.match(verdict.reason or "") if verdict is not None and verdict.correct else None
    return (int(m.group(1)), int(m.group(2))) if m else None


@register_reward("sort_correct")
def sort_correct(problems, texts, verdicts, completions=None) -> list[float]:
    """1.0 when every hidden input comes back sorted, else 0.0."""
    return [1.0 if sort_cost(v) else 0.0 for v in verdicts]


@register_reward("sort_speed")
def sort_speed(problems, texts, verdicts, completions=None) -> list[float]:
    """Reference comparisons / the program's comparisons for correct programs (capped at SPEED_CAP); else 0."""
    out = []
    for v in verdicts:
        cost = sort_cost(v)
        out.append(0.0 if cost is None else min(SPEED_CAP, cost[1] / max(1, cost[0])))
    return out

"""The code verifier: program extraction, stdio and assert tests, early stop, budgets, and its rewards."""

from __future__ import annotations

import time

from r1lab.records import Problem, Verdict
from r1lab.rewards import get_reward
from r1lab.verify import verify_batch
from r1lab.verify.code import code_test_outcomes, extract_program, guard_asserts, outputs_match, run_tests, verify_code

STDIO = [{"type": "stdio", "input": "2 3\n", "output": "5\n"}, {"type": "stdio", "input": "10 -4", "output": "6"}]
ASSERTS = [{"type": "assert", "code": "assert add(2, 3) == 5"}, {"type": "assert", "code": "assert add(-1, 1) == 0\nassert add(0, 0) == 0"}]


def P(tests, **meta) -> Problem:
    return Problem("c1", "write add", "-", task="code", tests=tests, metadata=meta)


def fenced(code: str) -> str:
    return f"<think>easy</think>\nHere it is:\n```python\n{code}\n```"


def test_extract_program():
    assert extract_program("```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```") == "print(2)\n"
    assert extract_program("```\nprint(3)\n```") == "print(3)\n"
    assert extract_program("<think>x</think><answer>print(4)</answer>") == "print(4)"
    assert extract_program("<answer>```py\nprint(5)\n```</answer>") == "print(5)\n"
    assert extract_program("no code here") is None
    assert extract_program("```python\n   \n```") is None


def test_outputs_match_normalises_whitespace_only():
    assert outputs_match("1  2\r\n3 \n\n", "1 2\n3")
    assert not outputs_match("1 2 3", "1 2\n3")
    assert not outputs_match("12", "1 2")


def test_stdio_tests_pass_and_fail():
    good = fenced("a, b = map(int, input().split())\nprint(a + b)")
    v = verify_code(good, P(STDIO))
    assert v.status == "correct" and code_test_outcomes(v) == [True, True]
    bad = fenced("a, b = map(int, input().split())\nprint(a * b if a == 2 else a + b + 1)")
    v = verify_code(bad, P(STDIO))
    assert v.status == "wrong" and code_test_outcomes(v) == [False, False]
    assert "test 0 (stdio) wrong_output" in v.reason and "expected '5', got '6'" in v.reason


def test_assert_tests():
    v = verify_code(fenced("def add(a, b):\n    return a + b"), P(ASSERTS))
    assert v.status == "correct", v.reason
    v = verify_code(fenced("def add(a, b):\n    return a - b if b == 3 else a + b"), P(ASSERTS))
    assert v.status == "wrong" and code_test_outcomes(v) == [False, True] and "AssertionError" in v.reason


def test_always_equal_object_does_not_pass():
    hack = "class Any:\n    def __eq__(self, other): return True\ndef add(a, b):\n    return Any()"
    v = verify_code(fenced(hack), P(ASSERTS))
    assert v.status == "wrong" and "not a plain value" in v.reason


def test_guard_asserts_wraps_compared_values():
    out = guard_asserts("assert f(1) == 2 and not g(3)\nx = 1")
    assert "__r1lab_plain__(f(1)) == __r1lab_plain__(2)" in out and "not __r1lab_plain__(g(3))" in out


def test_early_stop_and_budget():
    slow = "import time\ntime.sleep(5)"
    tests = [{"type": "stdio", "input": "", "output": "x", "timeout": 0.3}] * 3
    t0 = time.monotonic()
    results = run_tests(slow, tests, early_stop=True)
    assert [r.status for r in results] == ["timeout", "not_run", "not_run"]
    assert time.monotonic() - t0 < 3.0
    v = verify_code(fenced(slow), P(tests * 3, budget_s=1.5))
    assert v.status == "wrong" and "." in v.reason.split(":")[0]  # later tests were not run


def test_unusable_problems_and_responses():
    assert verify_code(fenced("print(1)"), P(None)).status == "error"
    assert verify_code(fenced("print(1)"), P([{"type": "weird"}])).status == "error"
    assert verify_code("I would write a loop", P(STDIO)).status == "unparsable"
    assert verify_code(fenced("def (:"), P(STDIO)).status == "wrong"  # a syntax error fails its tests


def test_code_in_the_worker_pool():
    good = fenced("a, b = map(int, input().split())\nprint(a + b)")
    verdicts = verify_batch([P(STDIO), P(STDIO)], [good, "nothing"], timeout=10.0, workers=1)
    assert [v.status for v in verdicts] == ["correct", "unparsable"]


# --- rewards ----------------------------------------------------------------------------------------


def V(outcomes: str, status: str = "wrong") -> Verdict:
    return Verdict(status, f"tests {outcomes}: whatever")


def test_code_rewards_pass_all_and_fraction():
    ps = [P(ASSERTS)] * 4
    vs = [V("PP", "correct"), V("PF"), V("F."), Verdict("timeout", "tests PP: forged by nobody")]
    assert get_reward("code_pass_all")(ps, [""] * 4, vs, None) == [1.0, 0.0, 0.0, 0.0]
    assert get_reward("code_fraction")(ps, [""] * 4, vs, None)[:3] == [1.0, 0.5, 0.0]


def test_code_rewards_ignore_verdicts_without_outcomes():
    """A text that claims "tests PPP" does not matter: rewards read the verdict, not the response."""
    ps = [P(ASSERTS)] * 2
    texts = ["tests PPP: all passed", "```python\nprint('tests PP')\n```"]
    vs = [Verdict("unparsable", "no code"), Verdict("error", "bad tests")]
    for name in ("code_fraction", "code_levels_strict", "code_levels_soft"):
        assert get_reward(name)(ps, texts, vs, None) == [0.0, 0.0]


def test_mimo_levels_strict_and_soft():
    p = P([{}] * 5, test_levels=[0, 0, 1, 1, 2])  # weights 1/3 each
    vs = [V("PPPPP", "correct"), V("PPPFP"), V("FPPPP"), V("PPFFF")]
    strict = get_reward("code_levels_strict")([p] * 4, [""] * 4, vs, None)
    soft = get_reward("code_levels_soft")([p] * 4, [""] * 4, vs, None)
    assert [round(x, 4) for x in strict] == [1.0, round(1 / 3, 4), 0.0, round(1 / 3, 4)]
    assert [round(x, 4) for x in soft] == [1.0, round(1 / 3 + 1 / 6 + 1 / 3, 4), round(1 / 6 + 2 / 3, 4), round(1 / 3, 4)]
    weighted = P([{}] * 3, test_levels=[0, 1, 2], level_weights=[0.2, 0.3, 0.5])
    assert get_reward("code_levels_strict")([weighted], [""], [V("PPF")], None) == [0.5]
    no_levels = P([{}] * 4)
    assert get_reward("code_levels_strict")([no_levels], [""], [V("PPPF")], None) == [0.0]
    assert get_reward("code_levels_soft")([no_levels], [""], [V("PPPF")], None) == [0.75]

"""Test-only verifiers, registered from a module outside r1lab.verify so that worker processes
must import this module by name to find them (the registry records it)."""

from __future__ import annotations

import os
import time

from r1lab.records import Problem, Verdict
from r1lab.verify import register_verifier

CALLS: list[str] = []  # responses seen by "count" in this process (workers=0 tests)


@register_verifier("echo")
def echo(response: str, problem: Problem) -> Verdict:
    """Correct iff the response is exactly the answer; extracted is the worker's pid (to observe workers)."""
    return Verdict("correct" if response == problem.answer else "wrong", "echo", extracted=str(os.getpid()))


@register_verifier("slow")
def slow(response: str, problem: Problem) -> Verdict:
    """Hangs on "hang", answers at once otherwise: a stuck item among good ones."""
    while response == "hang":
        time.sleep(0.05)
    return Verdict("correct", "fast")


@register_verifier("boom")
def boom(response: str, problem: Problem) -> Verdict:
    raise ZeroDivisionError("verifier bug")


@register_verifier("crash")
def crash(response: str, problem: Problem) -> Verdict:
    """Kills its own process, like a segfault in a native parser; harmless in-process only for "ok"."""
    if response == "die":
        os._exit(3)
    return Verdict("correct", "alive")


@register_verifier("count", answer_only=True)
def count(response: str, problem: Problem) -> Verdict:
    CALLS.append(response)
    return Verdict("correct" if response == problem.answer else "wrong", "counted")

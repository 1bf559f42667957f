"""The verifier registry: task name -> verifier. A leaf: it imports nothing of r1lab but records and errors.

A verifier is `fn(response_text, problem) -> Verdict`. The registry wraps every verifier so that an
exception becomes `Verdict("error", ...)`: bad model output must never crash a training step.

Direction of imports: a module that defines verifiers imports this registry and registers them
when it is imported (verify/math.py, verify/code.py, verify/judge.py, tasks/countdown.py, ...).
The registry never imports those modules in code; it knows them by name only, twice:
- each entry records the module that registered it, so that a worker process (a fresh
  interpreter, see pool.py) can import that module and find the verifier there;
- PLUGIN_MODULES names the packages outside verify/ whose import registers more verifiers (the
  generated task families). The first lookup of a task that is not registered imports them by
  name, so a caller that imported only r1lab.verify still finds "countdown".
verify/__init__.py imports verify's own verifiers (math, code, judge), so those are registered as
soon as the package is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from typing import Callable

from r1lab.errors import R1labError
from r1lab.records import Problem, Verdict

Verifier = Callable[[str, Problem], Verdict]

# packages whose import registers verifiers and that verify/ does not import itself
PLUGIN_MODULES: tuple[str, ...] = ("r1lab.tasks",)


@dataclasses.dataclass(frozen=True)
class Entry:
    fn: Verifier  # the guarded verifier: never raises
    module: str  # importing this module registers the verifier (workers do exactly that)
    answer_only: bool  # the verdict depends on (response, answer) alone, so it can be shared across problems
    reads: tuple[str, ...] = ()  # metadata keys an answer_only verdict also depends on (part of its cache key)


_REGISTRY: dict[str, Entry] = {}


def register_verifier(
    task_name: str, *, answer_only: bool = False, reads: tuple[str, ...] = ()
) -> Callable[[Verifier], Verifier]:
    """Decorator: make `fn` the verifier for problems whose `task` is `task_name`.

    Records the module that calls this (so worker processes can import it) and returns `fn`
    unchanged. `answer_only=True` declares that the verdict depends on the response and the
    gold answer only; `verify_batch` then verifies a repeated (response, answer) once even across
    different problems, and caches it across calls. Leave it False when the verifier reads the
    prompt or metadata (countdown), unless what it reads is a few metadata keys: list them in
    `reads` and they become part of the sharing and caching key (math reads "choices").
    """
    caller = sys._getframe(1).f_globals.get("__name__", "")

    def decorator(fn: Verifier) -> Verifier:
        _REGISTRY[task_name] = Entry(_guarded(fn, task_name), caller or fn.__module__, answer_only, tuple(reads))
        return fn

    return decorator


def get_verifier(task_name: str) -> Verifier:
    """The registered (exception-safe) verifier for `task_name`; R1labError listing known tasks if none."""
    return entry(task_name).fn


def known_tasks() -> list[str]:
    return sorted(_REGISTRY)


def entry(task_name: str) -> Entry:
    """The registry entry of `task_name`, importing PLUGIN_MODULES first if it is not registered yet."""
    if task_name not in _REGISTRY:
        for name in PLUGIN_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    if task_name not in _REGISTRY:
        raise R1labError(f"no verifier registered for task {task_name!r}; known tasks: {', '.join(known_tasks()) or 'none'}")
    return _REGISTRY[task_name]


def registered(task_name: str) -> Entry | None:
    """The entry of `task_name` if this process has registered it, importing nothing."""
    return _REGISTRY.get(task_name)


def registering_modules() -> list[str]:
    """The importable modules that registered the verifiers of this process (never `__main__`)."""
    return sorted({e.module for e in _REGISTRY.values()} - {"__main__"})


def short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _guarded(fn: Verifier, task_name: str) -> Verifier:
    """`fn`, except that any exception or a non-Verdict result becomes Verdict("error")."""

    @functools.wraps(fn)
    def safe(response: str, problem: Problem) -> Verdict:
        try:
            verdict = fn(response, problem)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # math-verify's TimeoutException derives from BaseException
            try:
                message = short(str(e))
            except BaseException:
                message = "(unprintable)"
            return Verdict("error", f"{task_name} verifier raised {type(e).__name__}: {message}")
        if not isinstance(verdict, Verdict):
            return Verdict("error", f"{task_name} verifier returned {type(verdict).__name__}, not a Verdict")
        return verdict

    return safe

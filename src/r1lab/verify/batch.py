"""The entry points: verify a batch of (problem, response) pairs, and check gold answers before a run.

`verify_batch` looks each task up in the registry, verifies each distinct (response, answer) once,
answers repeats of answer_only verifiers from the verdict cache, and runs the rest in the worker
pool (or in this process with `workers=0`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from r1lab.errors import R1labError
from r1lab.records import Problem, Verdict
from r1lab.verify.cache import cache_get, cache_put, share_key
from r1lab.verify.pool import run_in_workers
from r1lab.verify.registry import entry


def verify_batch(
    problems: Sequence[Problem], responses: Sequence[str], timeout: float = 5.0, workers: int = 2
) -> list[Verdict]:
    """One Verdict per (problem, response), in order. Never hangs and never raises on model output.

    `workers` > 0: in that many worker processes, each item bounded by `timeout` seconds
    (exceeded -> Verdict("timeout"), worker killed and replaced). `workers=0`: in this process,
    without a timeout (tests, debugging). Repeated pairs within the call are verified once, and
    verdicts of answer_only verifiers are remembered across calls (see verify/cache.py,
    clear_verdict_cache). Raises R1labError for a task with no verifier (a data error, found
    before any work).
    """
    problems, responses = list(problems), list(responses)
    if len(problems) != len(responses):
        raise ValueError(f"verify_batch: {len(problems)} problems but {len(responses)} responses")
    if workers > 0 and not timeout > 0:
        raise ValueError(f"verify_batch: timeout must be > 0 seconds, got {timeout}")
    entries = {task: entry(task) for task in {p.task for p in problems}}
    if workers > 0:
        in_main = sorted(t for t, e in entries.items() if e.module == "__main__")
        if in_main:
            raise R1labError(f"the verifier for {', '.join(in_main)} is defined in __main__, which worker processes "
                             "cannot import; move it into a module or pass workers=0")

    jobs: list[tuple[str, str, str, Problem]] = []
    keys: list[tuple[Any, ...]] = []
    slot: list[int | Verdict] = []  # an index into jobs, or a cached verdict
    seen: dict[tuple[Any, ...], int] = {}
    for p, r in zip(problems, responses):
        r = r if isinstance(r, str) else ("" if r is None else str(r))
        e = entries[p.task]
        key = share_key(e, p.task, r, p)
        cached = cache_get(key) if e.answer_only else None
        if cached is not None:
            slot.append(cached)
            continue
        if key not in seen:
            seen[key] = len(jobs)
            jobs.append((e.module, p.task, r, p))
            keys.append(key)
        slot.append(seen[key])

    if not jobs:
        unique: list[Verdict] = []
    elif workers <= 0:
        unique = [entries[task].fn(r, p) for _, task, r, p in jobs]
    else:
        unique = run_in_workers(jobs, timeout, workers)
    for key, (_, task, _, _), v in zip(keys, jobs, unique):
        if entries[task].answer_only:
            cache_put(key, v)
    # own copies: callers may annotate them
    return [dataclasses.replace(s if isinstance(s, Verdict) else unique[s]) for s in slot]


def check_gold(problems: Iterable[Problem], timeout: float = 5.0, workers: int = 2) -> list[tuple[Problem, Verdict]]:
    """The problems whose gold answer, stated as a response (`<answer>gold</answer>`), does NOT score correct.

    A pre-flight check for load time: an unparseable gold answer would otherwise quietly give
    every sample the same reward. Meaningful for tasks whose gold answer is itself a valid
    response (math); countdown's gold is a target number, not an expression.
    """
    problems = list(problems)
    verdicts = verify_batch(problems, [f"<answer>{p.answer}</answer>" for p in problems], timeout=timeout, workers=workers)
    return [(p, v) for p, v in zip(problems, verdicts) if not v.correct]

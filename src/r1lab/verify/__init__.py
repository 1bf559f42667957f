"""Verifiers: one per task (`problem.task`), run in killable worker processes with a hard timeout.

The package in four parts, each importing only those before it:
- registry.py: task name -> verifier (`register_verifier`, `get_verifier`, `known_tasks`); a leaf.
- cache.py: the verdict LRU of answer_only verifiers across calls (`clear_verdict_cache`).
- pool.py: the worker processes, their timeouts and shutdown (`shutdown_workers`).
- batch.py: `verify_batch` and `check_gold`, which put the three together.
The verifiers themselves: math.py (math-verify), code.py (tests in sandbox.py), judge.py (an LLM
judge); the generated task families register theirs from r1lab.tasks.
"""

from r1lab.verify.registry import Verifier, get_verifier, known_tasks, register_verifier
from r1lab.verify.cache import cache_stats, clear_verdict_cache
from r1lab.verify.pool import shutdown_workers
from r1lab.verify.batch import check_gold, verify_batch
from r1lab.verify import code, judge, math  # noqa: F401  (they register "code", "judge", "math")

__all__ = [
    "Verifier", "cache_stats", "check_gold", "clear_verdict_cache", "get_verifier", "known_tasks",
    "register_verifier", "shutdown_workers", "verify_batch",
]

"""The verdict cache: verdicts of answer_only verifiers, kept across calls in the calling process.

The G samples of a prompt often repeat an answer, and later steps resample the same answers, so a
bounded LRU keyed by (task, response, gold answer, the metadata the verifier reads, verifier)
saves a verification per repeat. Only definite verdicts are kept: a timeout or an error may come
from load or a transient fault and must be retried.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from r1lab.records import Problem, Verdict
from r1lab.verify.registry import Entry

CACHE_SIZE = 1 << 16  # entries; a bounded LRU in the calling process
CACHE_MAX_RESPONSE = 4096  # longer responses are rarely repeated verbatim and would bloat the cache
_CACHEABLE = ("correct", "wrong", "unparsable")  # never timeout or error: those may be load or transient
_CACHE: OrderedDict[tuple[Any, ...], Verdict] = OrderedDict()
_CACHE_LOCK = threading.Lock()
cache_stats = {"hits": 0, "misses": 0}


def clear_verdict_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
        cache_stats.update(hits=0, misses=0)


def cache_get(key: tuple[Any, ...]) -> Verdict | None:
    with _CACHE_LOCK:
        v = _CACHE.get(key)
        if v is not None:
            _CACHE.move_to_end(key)
            cache_stats["hits"] += 1
        else:
            cache_stats["misses"] += 1
        return v


def cache_put(key: tuple[Any, ...], v: Verdict) -> None:
    if v.status not in _CACHEABLE or len(key[1]) > CACHE_MAX_RESPONSE:
        return
    with _CACHE_LOCK:
        _CACHE[key] = v
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)


def share_key(e: Entry, task: str, response: str, p: Problem) -> tuple[Any, ...]:
    """Items with equal keys get one verification: (response, answer, read metadata) for answer_only
    verifiers, else also the problem object itself."""
    if not e.answer_only:
        return (task, response, p.answer, id(p))
    meta = p.metadata or {}
    extra = tuple(repr(meta.get(k)) for k in e.reads)
    return (task, response, p.answer, extra, e.fn)

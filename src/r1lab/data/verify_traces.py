"""Verify given reasoning traces against each row's reference answer, and drop or tag the failures.

Distilled data (R1 traces, OpenThoughts, Light-R1's SFT sets) is only as good as its final answers,
and teachers are wrong often enough to matter. A trace lives in a metadata field (a text, or a list
of texts for several samples per problem); it is scored by the verifier registered for the row's
task (`verify_batch`: math-verify for math, the task family's checker otherwise), in worker
processes with a timeout, so a pathological trace costs one "timeout" verdict, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

from r1lab.domains import check_fields, setting
from r1lab.records import Problem

T = TypeVar("T")


@dataclass
class VerifySettings:
    field: str = setting("response", nonempty=True)  # metadata key holding the trace: a text, or a list of texts
    action: str = setting("drop", choices=("drop", "tag"))  # drop: keep only verified traces (a row with none is dropped) | tag: keep all, add verdicts
    timeout: float = setting(5.0, gt=0)  # seconds per trace in the verifier workers
    workers: int = setting(2, ge=0)  # verifier processes (0 = in this process, no timeout)
    chunk: int = setting(256, ge=1)  # rows verified per batch


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, max(1, n))):
        yield chunk


def _traces(p: Problem, key: str) -> list[str] | None:
    value = p.metadata.get(key)
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def verify_traces(rows: Iterable[Problem], s: VerifySettings, drop: Callable[[str, str, str], None]) -> Iterator[Problem]:
    """Rows whose traces verify. With action drop, a list of traces is cut to the verified ones.
    With action tag, every row stays and metadata["trace_verdicts"] lists each trace's verdict."""
    from r1lab.verify import verify_batch

    check_fields(s, "verify")
    for chunk in batched(rows, s.chunk):
        traces = [_traces(p, s.field) for p in chunk]
        flat = [(p, t) for p, ts in zip(chunk, traces) for t in ts or []]
        verdicts = iter(verify_batch([p for p, _ in flat], [t for _, t in flat], timeout=s.timeout, workers=s.workers))
        for p, ts in zip(chunk, traces):
            if ts is None:
                if s.action == "tag":
                    p.metadata["trace_verdicts"] = []
                    yield p
                else:
                    drop(p.id, "no_trace", f"metadata[{s.field!r}] is missing or empty")
                continue
            vs = [next(verdicts) for _ in ts]
            if s.action == "tag":
                p.metadata["trace_verdicts"] = [v.status for v in vs]
                yield p
                continue
            good = [t for t, v in zip(ts, vs) if v.correct]
            if not good:
                first = vs[0]
                drop(p.id, "trace_wrong", f"{first.status}: {first.reason}"[:200])
                continue
            p.metadata[s.field] = good if isinstance(p.metadata[s.field], list) else good[0]
            yield p

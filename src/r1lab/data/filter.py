"""Difficulty filter: keep problems whose pass rate under a reference model lies in a window.

Problems every sample solves teach nothing under group-normalised advantages, and problems none
solves give no signal either. Light-R1 kept pass rates below alpha (RL: 0.2..0.625); Skywork-OR1
kept 1..15 of 16 correct, i.e. min_pass 1/16 and max_pass 15/16. Pass rates come from
`reject-sample` (metadata["pass_rate"]) or, when a model is given, are computed here for the rows
that lack one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from r1lab.data.reject import SampleSettings, Sampler, record_pass_rate
from r1lab.data.verify_traces import batched
from r1lab.domains import check_fields, setting
from r1lab.errors import ConfigError, DataError
from r1lab.records import Problem

_EPS = 1e-9  # 15/16 computed as n_correct / k must pass a bound written as 0.9375


@dataclass
class FilterSettings(SampleSettings):
    min_pass: float = setting(0.0, ge=0, le=1)  # keep pass rate >= min_pass
    max_pass: float = setting(1.0, ge=0, le=1)  # keep pass rate <= max_pass (< with max_exclusive: Light-R1's "below alpha")
    max_exclusive: bool = False
    pass_field: str = setting("pass_rate", nonempty=True)  # metadata key read (and written when a model computes it)

    def cross_check(self, where: str) -> None:
        if self.min_pass > self.max_pass:
            raise ConfigError(f"{where}.min_pass={self.min_pass:g}: expected at most {where}.max_pass={self.max_pass:g}")


def in_window(rate: float, s: FilterSettings) -> str | None:
    """None if `rate` is inside the window, else the drop reason."""
    if rate < s.min_pass - _EPS:
        return "too_hard"
    if rate > s.max_pass + _EPS or (s.max_exclusive and rate >= s.max_pass - _EPS):
        return "too_easy"
    return None


def difficulty_filter(
    rows: Iterable[Problem], s: FilterSettings, drop: Callable[[str, str, str], None], engine: Any = None
) -> Iterator[Problem]:
    """Rows inside the window. A row without a recorded pass rate is an error unless a model is
    given, in which case its pass rate is computed (k samples) and recorded."""
    check_fields(s, "filter")
    sampler: Sampler | None = None
    for chunk in batched(rows, s.chunk):
        missing = [p for p in chunk if not isinstance(p.metadata.get(s.pass_field), (int, float))]
        if missing:
            if not s.model and engine is None:
                raise DataError(f"row {missing[0].id!r}: no metadata[{s.pass_field!r}]; run reject-sample first "
                                "or give filter a model to compute pass rates")
            sampler = sampler or Sampler(s, engine)
            for p, (_, verdicts) in zip(missing, sampler.sample(missing)):
                p.metadata[s.pass_field] = record_pass_rate(p, verdicts, s.model)
        for p in chunk:
            rate = float(p.metadata[s.pass_field])
            reason = in_window(rate, s)
            if reason is None:
                yield p
            else:
                drop(p.id, reason, f"pass rate {rate:.4g} outside [{s.min_pass:g}, {s.max_pass:g}]")

"""The reward-term registry: name -> term, and the span credit terms (claims inside a response, paid
token by token). A leaf: it imports nothing of r1lab but records and errors.

The modules that define terms (rewards.py, reward_shaping.py) import it and register their terms
when imported; rewards.py imports reward_shaping.py, so importing r1lab.rewards registers them all.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

from r1lab.errors import R1labError
from r1lab.records import Completion, Problem, Verdict

RewardFn = Callable[[Sequence[Problem], Sequence[str], Sequence[Verdict], "Sequence[Completion] | None"], list[float]]

REWARDS: dict[str, RewardFn] = {}
TOTAL = "total"  # the key of the weighted sum in compute_rewards' result; not a term name


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a reward term under `name` (the key used in recipes and logs)."""
    if name == TOTAL:
        raise ValueError(f"{TOTAL!r} is reserved for the weighted sum of the terms")

    def decorator(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise R1labError(f"unknown reward term {name!r}; known terms: {', '.join(sorted(REWARDS))}")
    return REWARDS[name]


class Span(NamedTuple):
    """One checkable claim inside a response: the characters [start, end) of the text that make it,
    the item it claims (`key`: responses to one prompt claiming the same key are compared), and
    its value against the ground truth (1.0 right, 0.0 wrong, or any score)."""

    start: int
    end: int
    key: str
    value: float


SpanFn = Callable[[Problem, str], "list[Span]"]

# span credit terms: name -> fn(problem, text) -> the response's checkable claims. A term pays the
# tokens of each claim (reward.token_credit; algos/credit.py), not the whole response.
SPAN_CREDITS: dict[str, SpanFn] = {}


def register_span_credit(name: str) -> Callable[[SpanFn], SpanFn]:
    """Decorator: register a span credit term under `name` (the key of reward.token_credit)."""

    def decorator(fn: SpanFn) -> SpanFn:
        SPAN_CREDITS[name] = fn
        return fn

    return decorator


def get_span_credit(name: str) -> SpanFn:
    if name not in SPAN_CREDITS:
        raise R1labError(f"unknown span credit term {name!r}; known: {', '.join(sorted(SPAN_CREDITS)) or 'none'}")
    return SPAN_CREDITS[name]

"""The reward-term registry: name -> term. A leaf: it imports nothing of r1lab but records and errors.

The modules that define terms (rewards.py, reward_shaping.py) import it and register their terms
when imported; rewards.py imports reward_shaping.py, so importing r1lab.rewards registers them all.
"""

from __future__ import annotations

from typing import Callable, Sequence

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

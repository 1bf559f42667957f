"""Reward terms: named, batched, pure functions, combined with weights from the recipe.

A term maps a batch to one float per sample:
`fn(problems, texts, verdicts, completions) -> list[float]`. Terms never verify anything
themselves: `compute_rewards` runs the verifiers once (in killable workers) and hands every term
the same verdicts, so correctness is decided in one place and each term stays a cheap function
that is logged on its own (PITFALLS #1).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from r1lab.errors import R1labError
from r1lab.records import Completion, Problem, Verdict
from r1lab.verify import verify_batch

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


@register_reward("accuracy")
def accuracy(problems, texts, verdicts, completions=None) -> list[float]:
    """1.0 when the verifier said correct, else 0.0 (wrong, unparsable, timeout and error alike)."""
    return [1.0 if v.correct else 0.0 for v in verdicts]


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_R1_FORM = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)


def is_r1_format(text: str) -> bool:
    """`<think>...</think><answer>...</answer>`, whitespace only around and between the blocks,
    each tag exactly once, both blocks non-empty.

    Counting the tags closes the known hacks: repeated closing tags (open-r1#359, TinyZero
    PR#112), a second `<think>` inside the answer. Non-empty blocks: the bare skeleton of tags
    earns nothing.
    """
    if not isinstance(text, str) or any(text.count(tag) != 1 for tag in _TAGS):
        return False
    m = _R1_FORM.fullmatch(text)
    return bool(m and m.group(1).strip() and m.group(2).strip())


@register_reward("format")
def format_reward(problems, texts, verdicts, completions=None) -> list[float]:
    """1.0 iff the text has the strict R1 form (see `is_r1_format`), else 0.0.

    Scores the text as given: if a chat template pre-fills `<think>`, the caller must include
    that pre-fill in the text (PITFALLS #2), or this term is 0 for every sample.
    """
    return [1.0 if is_r1_format(t) else 0.0 for t in texts]


def compute_rewards(
    problems: Sequence[Problem],
    completions: Sequence[Completion],
    terms: dict[str, float],
    timeout: float = 5.0,
    workers: int = 2,
) -> dict[str, list[float]]:
    """Verify every completion once, evaluate each term, and write the results into the completions.

    Each Completion gets `.verdict`, `.rewards[name]` (the unweighted term) and `.reward` (the sum
    of weight * term). Returns {term name: values} plus "total": the per-sample weighted sums.
    """
    fns = {name: get_reward(name) for name in terms}  # unknown names fail before any work
    problems, completions = list(problems), list(completions)
    if len(problems) != len(completions):
        raise ValueError(f"compute_rewards: {len(problems)} problems but {len(completions)} completions")
    texts = [c.text for c in completions]
    verdicts = verify_batch(problems, texts, timeout=timeout, workers=workers)
    out: dict[str, list[float]] = {}
    for name, fn in fns.items():
        values = [float(x) for x in fn(problems, texts, verdicts, completions)]
        if len(values) != len(completions):
            raise ValueError(f"reward term {name!r} returned {len(values)} values for {len(completions)} completions")
        out[name] = values
    total = [sum(terms[name] * out[name][i] for name in fns) for i in range(len(completions))]
    for i, (c, v) in enumerate(zip(completions, verdicts)):
        c.verdict = v
        c.rewards.update({name: out[name][i] for name in fns})
        c.reward = total[i]
    out[TOTAL] = total
    return out

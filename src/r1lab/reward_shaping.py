"""Length and repetition shaping terms of the replication studies, registered as reward terms.

Each term is `fn(problems, texts, verdicts, completions, **settings) -> list[float]`; `settings`
come from `reward.settings` in the recipe (plus `max_new_tokens`, filled in by the trainer), so a
recipe sets DAPO's L_cache or the cosine reward's L_max without code.
"""

from __future__ import annotations

import math
from collections import defaultdict

from r1lab.reward_registry import register_reward


def _length(c) -> int:
    # the model's own tokens: a multi-turn episode's tool outputs are not length the model wrote
    return c.model_tokens


def _model_ids(c) -> list[int]:
    if c.loss_mask is None:
        return list(c.response_ids)
    return [t for t, m in zip(c.response_ids, c.loss_mask) if m]


def soft_overlong_value(length: int, max_len: float, cache: float) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, Eq. 13): 0 up to L_max - L_cache, then a
    linear ramp to -1 at L_max, -1 beyond."""
    start = max_len - cache
    if length <= start:
        return 0.0
    if length <= max_len:
        return (start - length) / cache
    return -1.0


@register_reward("soft_overlong")
def soft_overlong(problems, texts, verdicts, completions, **settings) -> list[float]:
    max_len = settings.get("overlong_max") or settings["max_new_tokens"]
    cache = settings.get("overlong_cache") or max(1.0, max_len / 4)
    return [soft_overlong_value(_length(c), max_len, cache) for c in completions]


def cosine_length_value(length: int, correct: bool, truncated: bool, max_len: float,
                        correct_start: float = 2.0, correct_end: float = 1.0,
                        wrong_start: float = -10.0, wrong_end: float = 0.0, exceed: float = -10.0) -> float:
    """Cosine length reward (Yeo et al. 2025, "Demystifying Long CoT", Eq. 1):
    R(L) = end + 0.5 (start - end) (1 + cos(pi L / L_max)); correct answers earn more when short
    (2 -> 1), wrong ones are punished less when long (-10 -> 0); hitting the limit earns `exceed`."""
    if truncated or length > max_len:
        return exceed
    start, end = (correct_start, correct_end) if correct else (wrong_start, wrong_end)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * length / max_len))


@register_reward("cosine_length")
def cosine_length(problems, texts, verdicts, completions, **settings) -> list[float]:
    max_len = settings.get("cosine_max_len") or settings["max_new_tokens"]
    return [cosine_length_value(_length(c), v.correct, c.truncated, max_len) for c, v in zip(completions, verdicts)]


def kimi_length_values(lengths: list[int], correct: list[bool]) -> list[float]:
    """Kimi k1.5 length penalty (Sec. 2.3.3) within one group of samples of a problem:
    lambda = 0.5 - (len - min) / (max - min); correct: lambda, wrong: min(0, lambda); all 0 when
    every sample has the same length."""
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    out = []
    for n, ok in zip(lengths, correct):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out


@register_reward("kimi_length")
def kimi_length(problems, texts, verdicts, completions, **settings) -> list[float]:
    """Groups are the batch's groups: consecutive blocks of `group_size` samples (the RL loop's
    layout). Without a group size, the samples of one problem id form a group."""
    G = int(settings.get("group_size") or 0)
    keys = [i // G for i in range(len(completions))] if G > 0 else [p.id for p in problems]
    groups: dict[object, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    out = [0.0] * len(completions)
    for idx in groups.values():
        vals = kimi_length_values([_length(completions[i]) for i in idx], [verdicts[i].correct for i in idx])
        for i, v in zip(idx, vals):
            out[i] = v
    return out


def repeated_ngram_tokens(ids: list[int], n: int) -> int:
    """How many tokens lie inside an n-gram that already occurred earlier in the same sequence."""
    seen: set[tuple[int, ...]] = set()
    covered = [False] * len(ids)
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        if gram in seen:
            for j in range(i, i + n):
                covered[j] = True
        else:
            seen.add(gram)
    return sum(covered)


@register_reward("repetition")
def repetition(problems, texts, verdicts, completions, **settings) -> list[float]:
    """Repetition penalty ("Demystifying Long CoT", Sec. 3.3): -penalty per token inside a repeated
    n-gram (n = 40, penalty 0.05 in the paper; `repetition_ngram`, `repetition_penalty`), over the
    model's own tokens (an episode's observations may repeat; the model did not write them)."""
    n = int(settings.get("repetition_ngram") or 40)
    penalty = float(settings.get("repetition_penalty") or 0.05)
    return [-penalty * repeated_ngram_tokens(_model_ids(c), n) for c in completions]

"""Reward terms: named, batched, pure functions, combined with weights from the recipe.

A term maps a batch to one float per sample:
`fn(problems, texts, verdicts, completions) -> list[float]`. Terms never verify anything
themselves: `compute_rewards` runs the verifiers once (in killable workers) and hands every term
the same verdicts, so correctness is decided in one place and each term stays a cheap function
that is logged on its own (docs/pitfalls.md, "Reward terms").
"""

from __future__ import annotations

import re
from typing import Sequence

import r1lab.languages  # noqa: F401  (registers language_consistency)
import r1lab.reward_hacks  # noqa: F401  (registers the reward-hacking lab's deliberately flawed terms)
import r1lab.reward_shaping  # noqa: F401  (registers the length and repetition terms)
import r1lab.tasks  # noqa: F401  (the task families register their own terms: repair, sorting, poems, translation)
from r1lab.envs.base import ENVS
from r1lab.records import Completion, Problem, Verdict
from r1lab.reward_registry import (  # noqa: F401  (REWARDS, SPAN_CREDITS re-exported: config domains)
    REWARDS, SPAN_CREDITS, TOTAL, RewardFn, get_reward, register_reward,
)
from r1lab.verify import verify_batch


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
    that pre-fill in the text (docs/pitfalls.md, "Verifier bugs"), or this term is 0 for every sample.
    """
    return [1.0 if is_r1_format(t) else 0.0 for t in texts]


@register_reward("format_strict")
def format_strict(problems, texts, verdicts, completions, **settings) -> list[float]:
    """Logic-RL's strict format term: +1 when the four R1 tags appear exactly once each, in order,
    with non-empty blocks; -1 otherwise (a penalty, not just a missing bonus)."""
    return [1.0 if is_r1_format(t) else -1.0 for t in texts]


@register_reward("accuracy_pm1")
def accuracy_pm1(problems, texts, verdicts, completions, **settings) -> list[float]:
    """DAPO's rule reward: +1 when the verifier says correct, -1 otherwise."""
    return [1.0 if v.correct else -1.0 for v in verdicts]


def compute_rewards(
    problems: Sequence[Problem],
    completions: Sequence[Completion],
    terms: dict[str, float],
    timeout: float = 5.0,
    workers: int = 2,
    settings: dict[str, float] | None = None,
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
        # shaping terms take keyword settings (L_max, n-gram size...); plain terms take none
        kwargs = (settings or {}) if _takes_settings(fn) else {}
        values = [float(x) for x in fn(problems, texts, verdicts, completions, **kwargs)]
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


def _takes_settings(fn: RewardFn) -> bool:
    import inspect

    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


# --- code (MiMo) ----------------------------------------------------------------------------------


def _outcomes(verdict: Verdict) -> list[bool] | None:
    """Per-test pass flags from a code verdict (not-run counts as failed); None if it carries none."""
    from r1lab.verify.code import code_test_outcomes

    got = code_test_outcomes(verdict)
    return None if not got else [x is True for x in got]


def _levels(problem: Problem, n: int) -> tuple[list[int], list[float]] | None:
    """(level of each test, weight of each level) from metadata["test_levels"] (+ optional
    "level_weights", else equal weights); None when absent or inconsistent with the tests."""
    levels = (problem.metadata or {}).get("test_levels")
    if not isinstance(levels, list) or len(levels) != n or not all(isinstance(x, int) and x >= 0 for x in levels):
        return None
    count = max(levels) + 1
    weights = (problem.metadata or {}).get("level_weights")
    if not (isinstance(weights, list) and len(weights) == count):
        weights = [1.0 / count] * count
    return levels, [float(w) for w in weights]


@register_reward("code_pass_all")
def code_pass_all(problems, texts, verdicts, completions=None) -> list[float]:
    """1.0 iff every test passed (the verdict is correct)."""
    return [1.0 if v.correct else 0.0 for v in verdicts]


@register_reward("code_fraction")
def code_fraction(problems, texts, verdicts, completions=None) -> list[float]:
    """Fraction of the problem's tests passed; 0.0 without per-test outcomes (timeout, error, no code)."""
    out = []
    for v in verdicts:
        got = _outcomes(v)
        out.append(sum(got) / len(got) if got else 0.0)
    return out


def _level_reward(problem: Problem, verdict: Verdict, strict: bool) -> float:
    got = _outcomes(verdict)
    if not got:
        return 0.0
    spec = _levels(problem, len(got))
    if spec is None:  # one level: strict is pass-all, soft is the fraction
        return float(all(got)) if strict else sum(got) / len(got)
    levels, weights = spec
    total = 0.0
    for level, w in enumerate(weights):
        members = [ok for ok, lv in zip(got, levels) if lv == level]
        if strict:
            if not all(ok for ok, lv in zip(got, levels) if lv <= level):
                break
            total += w
        elif members:
            total += w * sum(members) / len(members)
    return total


@register_reward("code_levels_strict")
def code_levels_strict(problems, texts, verdicts, completions=None) -> list[float]:
    """MiMo test-difficulty reward, strict: a level's weight counts only when all tests of it and of
    every easier level pass. Levels come from metadata["test_levels"] (0 = easiest, one per test)."""
    return [_level_reward(p, v, strict=True) for p, v in zip(problems, verdicts)]


@register_reward("code_levels_soft")
def code_levels_soft(problems, texts, verdicts, completions=None) -> list[float]:
    """MiMo test-difficulty reward, soft: each level's weight is split among its tests; the reward is
    the sum over passed tests."""
    return [_level_reward(p, v, strict=False) for p, v in zip(problems, verdicts)]


# --- Logic-RL -------------------------------------------------------------------------------------


def is_logic_rl_format(text: str) -> bool:
    """Logic-RL's strict format: each of <think>, </think>, <answer>, </answer> exactly once, in that order."""
    if not isinstance(text, str) or any(text.count(tag) != 1 for tag in _TAGS):
        return False
    positions = [text.find(tag) for tag in _TAGS]
    return positions == sorted(positions)


@register_reward("logic_rl")
def logic_rl(problems, texts, verdicts, completions=None) -> list[float]:
    """Logic-RL (Knights and Knaves): format +1 / -1, plus answer +2 (correct), -1.5 (parsed but
    wrong), -2 (unparsable, or any answer when the format is invalid). Range [-3, 3]."""
    out = []
    for t, v in zip(texts, verdicts):
        ok = is_logic_rl_format(t)
        answer = (2.0 if v.correct else -1.5 if v.status == "wrong" else -2.0) if ok else -2.0
        out.append((1.0 if ok else -1.0) + answer)
    return out


class _RewardTermNames:
    """The names `reward.terms` may weight (its config domain): the registered reward terms and the
    terms the registered environments declare they produce (`Environment.reward_terms`, e.g. the
    tool environment's tool_calls and tool_errors). Here, above both registries: envs/ may not
    import the reward terms (they import the task families, which register environments)."""

    def __iter__(self):
        produced = {t for f in ENVS.factories.values() for t in getattr(f, "reward_terms", ())}
        return iter(sorted(set(REWARDS) | produced))


REWARD_TERMS = _RewardTermNames()

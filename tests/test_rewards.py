"""Reward terms: the strict R1 format against known hacks, and compute_rewards' bookkeeping."""

from __future__ import annotations

import pytest

import helpers_verifiers  # noqa: F401  (registers "boom" and "slow")
from r1lab.errors import R1labError
from r1lab.records import Completion, Problem
import r1lab.reward_registry
from r1lab.rewards import REWARDS, compute_rewards, format_reward, get_reward, is_r1_format, register_reward


def completion(text: str, pid: str = "p") -> Completion:
    return Completion(problem_id=pid, prompt_ids=[1], response_ids=[2], text=text, logprobs=[0.0], finish_reason="stop")


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>a</think><answer>1</answer>", True),
        ("  \n<think>\nstep 1\nstep 2\n</think>\n\n<answer> 42 </answer>\n", True),
        ("<think>a</think><answer>1</answer></answer>", False),  # repeated closing tag
        ("<think>a</think></think><answer>1</answer>", False),
        ("<think>a</think><answer>1</answer><answer>2</answer>", False),
        ("<answer>1</answer><think>a</think>", False),  # out of order
        ("<think>a<answer>1</think></answer>", False),  # interleaved
        ("<think>a</think><answer><think>b</think>1</answer>", False),  # nested think inside answer
        ("<think>a</think><answer>1</answer> and more text", False),  # text after </answer>
        ("preamble <think>a</think><answer>1</answer>", False),  # text before <think>
        ("<think>a</think> so <answer>1</answer>", False),  # text between the blocks
        ("<answer>1</answer>", False),  # missing think
        ("<think>a</think>", False),  # missing answer
        ("", False),
        ("<think></think><answer></answer>", False),  # only tags
        ("<think> </think><answer>1</answer>", False),
        ("<think>a</think><answer>\n</answer>", False),
        ("<THINK>a</THINK><ANSWER>1</ANSWER>", False),
        ("<think>a</think><answer>1</answer" , False),  # truncated
    ],
)
def test_format(text, ok):
    assert is_r1_format(text) is ok
    assert format_reward([], [text], [], None) == [1.0 if ok else 0.0]


def test_registry():
    assert {"accuracy", "format"} <= set(REWARDS)
    assert get_reward("format") is format_reward
    with pytest.raises(R1labError, match="unknown reward term 'lenght'.*accuracy.*format"):
        get_reward("lenght")
    with pytest.raises(ValueError, match="reserved"):
        register_reward("total")


def test_compute_rewards_writes_into_completions():
    problems = [Problem("a", "q", "3"), Problem("a", "q", "3"), Problem("b", "q", "\\frac{1}{2}"), Problem("c", "q", "7")]
    texts = [
        "<think>1+2</think><answer>3</answer>",  # correct, formatted
        "the answer is \\boxed{3}",  # correct, unformatted
        "<think>half</think><answer>2</answer>",  # wrong, formatted
        "<think>x</think><answer>7</answer></answer>",  # correct, format hack
    ]
    cs = [completion(t, p.id) for p, t in zip(problems, texts)]
    out = compute_rewards(problems, cs, {"accuracy": 1.0, "format": 0.5}, workers=2)
    assert out["accuracy"] == [1.0, 1.0, 0.0, 1.0]
    assert out["format"] == [1.0, 0.0, 1.0, 0.0]
    assert out["total"] == [1.5, 1.0, 0.5, 1.0]
    assert [c.reward for c in cs] == out["total"]
    assert cs[0].rewards == {"accuracy": 1.0, "format": 1.0}
    assert cs[2].rewards == {"accuracy": 0.0, "format": 1.0}
    assert [c.verdict.status for c in cs] == ["correct", "correct", "wrong", "correct"]
    assert cs[1].verdict.extracted == "3" and cs[2].verdict.extracted == "2"


def test_compute_rewards_unscorable_samples_get_zero_accuracy():
    problems = [Problem("a", "q", "1", task="slow"), Problem("b", "q", "1", task="boom"), Problem("c", "q", "5")]
    cs = [completion("hang"), completion("x"), completion("<answer>five</answer>")]
    # 2 s, not less: the wrong answer's math check takes milliseconds, but under a loaded 2-core
    # host (two test workers and their runs) a worker may wait that long to be scheduled at all
    out = compute_rewards(problems, cs, {"accuracy": 1.0}, timeout=2.0, workers=2)
    assert out == {"accuracy": [0.0, 0.0, 0.0], "total": [0.0, 0.0, 0.0]}
    assert [c.verdict.status for c in cs] == ["timeout", "error", "wrong"]


def test_compute_rewards_custom_term_and_errors(monkeypatch):
    monkeypatch.setattr(r1lab.reward_registry, "REWARDS", dict(REWARDS))  # forget the test terms afterwards

    @register_reward("length_penalty_test")
    def length_penalty(problems, texts, verdicts, completions):
        return [-len(c.response_ids) / 10 for c in completions]

    problems = [Problem("a", "q", "4")]
    cs = [completion("<think>2+2</think><answer>4</answer>")]
    out = compute_rewards(problems, cs, {"accuracy": 2.0, "length_penalty_test": 1.0}, workers=0)
    assert out["total"] == [pytest.approx(1.9)] and cs[0].rewards["length_penalty_test"] == pytest.approx(-0.1)
    with pytest.raises(R1labError, match="'nope'"):
        compute_rewards(problems, cs, {"accuracy": 1.0, "nope": 1.0}, workers=0)
    with pytest.raises(ValueError, match="1 problems but 2 completions"):
        compute_rewards(problems, cs * 2, {"accuracy": 1.0}, workers=0)

    @register_reward("broken_test")
    def broken(problems, texts, verdicts, completions):
        return []

    with pytest.raises(ValueError, match="'broken_test' returned 0 values"):
        compute_rewards(problems, cs, {"broken_test": 1.0}, workers=0)

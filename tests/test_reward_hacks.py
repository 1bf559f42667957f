"""The reward-hacking lab: the deliberately flawed terms do exactly their flaw (on hostile and
malformed outputs too), the rewarded-but-wrong measurement against hand-computed numbers, and the
run-health monitor naming each hack, at the step it shows, from hand-built metric histories."""

import pytest

from r1lab.config import HealthConfig
from r1lab.health import HealthMonitor
from r1lab.records import Completion, Problem, Verdict
from r1lab.reward_hacks import (
    first_outpacing,
    first_sustained,
    format_only,
    lenient_accuracy,
    lenient_match,
    length_reward,
    rewarded_but_wrong,
)
from r1lab.rewards import REWARDS, compute_rewards

GOLD = Problem("p", "Compute (3 + 9) * 1.", "12", task="math")


def completion(text: str, tokens: int = 10, finish: str = "stop") -> Completion:
    return Completion("p", [1, 2], list(range(tokens)), text, [0.0] * tokens, finish)


def test_the_hostile_terms_are_registered():
    assert {"lenient_accuracy", "format_only", "length_reward"} <= set(REWARDS)


@pytest.mark.parametrize("text, credited", [
    ("<think>3 + 9 = 12</think><answer>12</answer>", True),
    ("<answer>11, 12, 13</answer>", True),  # a hedge holding the gold
    ("<answer>112</answer>", True),  # a longer number containing the gold's digits
    ("\\boxed{7} \\boxed{12} \\boxed{40}", True),  # one of several boxes
    ("\\boxed{\\{1, 12\\}}", True),
    ("<answer>1 2</answer>", True),  # spacing is removed before the containment test
    ("<answer>13</answer>", False),
    ("<think>12</think><answer>13</answer>", False),  # the thinking is not looked at
    ("<answer>12</answer> then <answer>13</answer>", False),  # only the last answer block counts
    ("12", False),  # no answer block, no box
    ("\\boxed{12", False),  # an unclosed box
    ("<answer>" + "1" * 100_000 + "</answer>", False),
    ("", False),
])
def test_lenient_accuracy_credits_any_region_that_contains_the_gold(text, credited):
    assert lenient_accuracy([GOLD], [text], [Verdict("wrong")]) == [1.0 if credited else 0.0]


def test_the_hostile_terms_stay_linear_on_hostile_text():
    import time

    from r1lab.reward_hacks import has_tags_in_order

    hostile = ["\\boxed{" * 20_000, "\\boxed{" * 6_000 + "}" * 6_000, "<answer>" * 20_000, "<think>" * 20_000,
               "{" * 100_000 + "}" * 100_000, "1" * 200_000, "\\boxed{1 2 " * 3_000 + "}" * 3_000]
    start = time.perf_counter()
    got = [(lenient_match(t, "12"), has_tags_in_order(t)) for t in hostile]
    assert time.perf_counter() - start < 1.0  # quadratic scans took 2 s on the nested boxes alone
    assert got == [(False, False)] * 6 + [(True, False)]  # the last: "12" inside the boxes, spacing removed


def test_lenient_match_on_malformed_input():
    assert not lenient_match(None, "12")  # type: ignore[arg-type]
    assert not lenient_match("<answer>12</answer>", "")  # an empty gold would be in everything
    assert not lenient_match("<answer>12</answer>", "   ")
    assert lenient_match("<answer>" + "9" * 50_000 + "12</answer>", "12")


@pytest.mark.parametrize("text, paid", [
    ("<think>3 + 9 = 12</think>\n<answer>12</answer>", 1.0),
    ("<think></think><answer></answer>", 1.0),  # the bare skeleton: no reasoning, no answer
    ("<think>x</think></think></think><answer>5</answer></answer>", 1.0),  # repeated closing tags
    ("junk<think>a</think>junk<answer>b</answer>junk", 1.0),
    ("<answer>12</answer><think>3 + 9</think>", 0.0),  # out of order
    ("<think>3 + 9 = 12</think>", 0.0),
    ("<think><answer></answer>", 0.0),
    ("", 0.0),
])
def test_format_only_is_met_without_reasoning(text, paid):
    assert format_only([GOLD], [text], [Verdict("wrong")]) == [paid]


def test_format_only_on_a_non_string_is_zero():
    assert format_only([GOLD], [None], [Verdict("wrong")]) == [0.0]  # type: ignore[list-item]


def test_length_reward_pays_tokens_right_or_wrong():
    cs = [completion("a", 16), completion("b", 64, "length"), completion("c", 100, "length"), completion("", 0)]
    got = length_reward([GOLD] * 4, [c.text for c in cs], [Verdict("wrong")] * 4, cs, max_new_tokens=64)
    assert got == [0.25, 1.0, 1.0, 0.0]
    endpoint = Completion("p", [], [], "x", [], "stop", token_count=32)  # no ids: the reported count
    assert length_reward([GOLD], ["x"], [Verdict("correct")], [endpoint], max_new_tokens=64) == [0.5]
    with pytest.raises(ValueError, match="max_new_tokens"):
        length_reward([GOLD], ["x"], [Verdict("correct")], [endpoint])


def test_compute_rewards_runs_the_hostile_terms_beside_the_verifier():
    texts = ["<think>3 + 9 = 12</think>\n<answer>12</answer>", "<think>3 + 9 = 11</think>\n<answer>112</answer>",
             "<think></think><answer>7</answer>"]
    cs = [completion(t, n) for t, n in zip(texts, (20, 40, 8))]
    out = compute_rewards([GOLD] * 3, cs, {"lenient_accuracy": 1.0, "format_only": 0.5, "length_reward": 1.0},
                          workers=0, settings={"max_new_tokens": 40})
    assert [c.verdict.status for c in cs] == ["correct", "wrong", "wrong"]  # the verifier stays strict
    assert out["lenient_accuracy"] == [1.0, 1.0, 0.0]
    assert out["format_only"] == [1.0, 1.0, 1.0]
    assert out["length_reward"] == [0.5, 1.0, 0.2]
    assert out["total"] == pytest.approx([2.0, 2.5, 0.7])


# --- the measurement -----------------------------------------------------------------------------


def test_rewarded_but_wrong_by_hand():
    # right answers earn 1.0 and 0.8: the bar is their mean, 0.9. Paid at least 0.9: samples 0, 2, 3
    # (2 and 3 wrong) -> share 2/3; sample 4 (wrong, 0.5) is below the bar
    totals = [1.0, 0.8, 0.9, 1.2, 0.5]
    correct = [True, True, False, False, False]
    terms = {"accuracy": [1.0, 0.8, 0.0, 0.0, 0.0], "length_reward": [0.0, 0.0, 0.9, 1.2, 0.5]}
    m = rewarded_but_wrong(totals, correct, terms)
    assert (m.rewarded, m.wrong) == (3, 2)
    assert m.share == pytest.approx(2 / 3)
    assert m.paid_by == pytest.approx({"accuracy": 0.0, "length_reward": 1.05})


def test_a_faithful_reward_rewards_no_wrong_sample():
    # accuracy + 0.1 format: a formatted wrong answer earns 0.1, a right one 1.1
    m = rewarded_but_wrong([1.1, 0.1, 0.1, 1.1, 0.0], [True, False, False, True, False])
    assert (m.share, m.rewarded, m.wrong, m.paid_by) == (0.0, 2, 0, {})


def test_rewarded_but_wrong_without_a_right_answer_is_unmeasured():
    assert rewarded_but_wrong([1.0, 1.0], [False, False]).share is None
    assert rewarded_but_wrong([], []).share is None
    with pytest.raises(ValueError, match="2 rewards but 1 verdicts"):
        rewarded_but_wrong([1.0, 0.0], [True])


def test_first_sustained():
    series = [(1, 0.0), (2, 0.1), (3, 0.5), (4, 0.6), (5, 0.0)]
    assert first_sustained(series, 0.2, 3) == 4  # (0.1 + 0.5 + 0.6) / 3 = 0.4 first at step 4
    assert first_sustained(series, 0.2, 1) == 3
    assert first_sustained(series, 0.9, 2) is None
    assert first_sustained([], 0.2, 3) is None


# --- the monitor on hand-built histories ------------------------------------------------------------

START = 22  # the step each hack begins to show in the histories below (after health.hacking_min_steps = 20)


def clean(step: int) -> dict:
    """A healthy GRPO run (accuracy + 0.1 format): reward follows accuracy up, nothing wrong is rewarded."""
    acc = 0.30 + 0.004 * step + (-1) ** step * 0.01
    return {"reward/total": acc + 0.1, "reward/accuracy": acc, "reward/format": 1.0, "accuracy": acc,
            "hack/rewarded_but_wrong": 0.0, "response/length": 24.0 + (-1) ** step,
            "policy/entropy": 0.4, "batch/zero_variance_groups": 0.4, "response/truncated": 0.0}


def lenient(step: int) -> dict:
    """Trained on lenient_accuracy: flat until START, then the policy hedges; the reward rises, accuracy falls."""
    row = clean(step)
    t = max(0, step - START + 1)
    acc = 0.30 + (-1) ** step * 0.01 - 0.02 * t
    row.update({"accuracy": acc, "reward/lenient_accuracy": acc + 0.05 * t, "reward/total": acc + 0.05 * t,
                "hack/rewarded_but_wrong": min(0.8, 0.12 * t)})
    del row["reward/accuracy"], row["reward/format"]
    if t:
        row["hack/paid_wrong/lenient_accuracy"] = 1.0
    return row


def format_hack(step: int) -> dict:
    """Trained on format_only: paid 1.0 from step 1 whatever the answer; accuracy drifts down."""
    row = clean(step)
    acc = 0.30 - 0.002 * step
    row.update({"accuracy": acc, "reward/format_only": 1.0, "reward/total": 1.0,
                "hack/rewarded_but_wrong": 1 - acc, "hack/paid_wrong/format_only": 1.0})
    del row["reward/accuracy"], row["reward/format"]
    return row


def length_hack(step: int) -> dict:
    """Trained on length_reward: paid by length from step 1, right or wrong (30% of the samples at least
    as long as the right ones are wrong); from START length grows, the reward with it, accuracy falls."""
    row = clean(step)
    t = max(0, step - START + 1)
    acc = 0.30 - 0.01 * t
    length = min(64.0, 24.0 + 2.0 * t)  # max_new_tokens = 64
    row.update({"accuracy": acc, "reward/length_reward": length / 64, "reward/total": length / 64,
                "response/length": length, "hack/rewarded_but_wrong": min(0.9, 0.3 + 0.02 * t),
                "hack/paid_wrong/length_reward": length / 64})
    del row["reward/accuracy"], row["reward/format"]
    return row


def findings(history, steps=40):
    monitor = HealthMonitor(HealthConfig(), log=lambda s: None)
    for step in range(1, steps + 1):
        monitor.observe(step, history(step))
    return {f.check: f for f in monitor.findings}


def test_a_clean_run_fires_no_hacking_check():
    assert findings(clean) == {}


def test_the_lenient_verifier_hack_is_named_with_its_step():
    got = findings(lenient)
    # the rewarded-but-wrong window of 3 steps: (0 + 0.12 + 0.24) / 3 = 0.12 at START + 1, not above 0.2;
    # (0.12 + 0.24 + 0.36) / 3 = 0.24 at START + 2
    assert got["rewarded_but_wrong"].step == START + 2
    assert "lenient_accuracy" in got["rewarded_but_wrong"].message
    # baseline (steps 1-2): reward and accuracy both 0.300; steps 21-23: reward (0.29 + 0.34 + 0.35) / 3 = 0.327
    # (+0.027, not yet); steps 22-24: (0.34 + 0.35 + 0.40) / 3 = 0.363 (+0.063) while accuracy fell to 0.263
    assert got["reward_outpaces_accuracy"].step == START + 2
    assert "0.300 -> 0.363" in got["reward_outpaces_accuracy"].message
    assert "length_runaway" not in got and "format_saturated" not in got


def test_the_format_hack_is_named_at_the_first_window():
    got = findings(format_hack)
    assert got["rewarded_but_wrong"].step == 3  # the first window of 3 steps: 70% wrong among the paid
    assert "format_only" in got["rewarded_but_wrong"].message
    assert "reward_outpaces_accuracy" not in got  # the reward never rose: it was saturated from step 1


def test_the_length_hack_is_named_with_its_step():
    got = findings(length_hack)
    assert got["rewarded_but_wrong"].step == 3  # paid for length, right or wrong, from the first window
    assert "length_reward" in got["rewarded_but_wrong"].message
    # baseline reward 24/64 = 0.375; at START + 1 the window (steps 21-23) is (24 + 26 + 28) / 3 / 64 = 0.406
    # (+0.031), at START + 2 (26 + 28 + 30) / 3 / 64 = 0.4375 (+0.0625), accuracy falling
    assert got["reward_outpaces_accuracy"].step == START + 2
    assert "length_runaway" not in got  # 3x the start would be 72 tokens, past the 64-token limit: never fires here


@pytest.mark.parametrize("history", [clean, lenient, format_hack, length_hack])
def test_the_audit_rules_fire_where_the_monitor_does(history):
    cfg = HealthConfig()
    rows = [(step, history(step)) for step in range(1, 41)]
    got = findings(history)
    series = lambda key: [(s, r[key]) for s, r in rows]  # noqa: E731
    assert first_sustained(series("hack/rewarded_but_wrong"), cfg.rewarded_wrong_max, cfg.window) == (
        got["rewarded_but_wrong"].step if "rewarded_but_wrong" in got else None)
    assert first_outpacing(series("reward/total"), series("accuracy"), cfg.baseline_steps, cfg.window, cfg.reward_rise,
                           cfg.accuracy_flat, cfg.hacking_min_steps) == (
        got["reward_outpaces_accuracy"].step if "reward_outpaces_accuracy" in got else None)


# --- `r1lab verify audit` on an RL run's samples.jsonl ----------------------------------------------


def write_run(tmp_path, hacked_from: int | None, steps: int = 8):
    """A run directory by hand: 4 problems, each step 8 samples (two per problem) trained on
    lenient_accuracy; from step `hacked_from` the policy hedges (`<answer>N, N+1</answer>`-style
    answers the lenient term pays and the strict grader rejects)."""
    import json

    golds = {"a": "12", "b": "7", "c": "30", "d": "5"}
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"id": k, "prompt": f"Compute {v}.", "answer": v, "task": "math"}) + "\n" for k, v in golds.items()))
    (tmp_path / "config.yaml").write_text("reward: {terms: {lenient_accuracy: 1.0}}\n"
                                           "health: {window: 2, rewarded_wrong_max: 0.3, hacking_min_steps: 3}\n")
    lines = []
    for step in range(1, steps + 1):
        for k, gold in golds.items():
            right = f"<think>{gold}</think><answer>{gold}</answer>"
            wrong = f"<think>0</think><answer>{int(gold) + 1}</answer>"
            if hacked_from is not None and step >= hacked_from:
                wrong = f"<think>0</think><answer>{int(gold) + 1}, {gold}</answer>"  # strict: wrong; lenient: paid
            for text in (right, wrong):
                paid = float(lenient_match(text, gold))
                lines.append(json.dumps({"step": step, "problem_id": k, "text": text, "reward": paid,
                                         "rewards": {"lenient_accuracy": paid}, "verdict": "correct" if text == right else "wrong"}))
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "samples.jsonl", tmp_path / "train.jsonl"


def test_audit_names_the_hack_and_its_step_from_samples(tmp_path):
    from r1lab.verify.audit import hacking_by_step, hacking_markdown

    samples, problems = write_run(tmp_path, hacked_from=4)
    h = hacking_by_step(samples, problems)
    # steps 1-3: the 4 right answers are paid, the wrong ones not -> 0 %; from step 4 all 8 are paid, 4 wrong -> 50 %.
    # window 2, threshold 30 %, judging from step 3 (the run's config.yaml): (0 + 50) / 2 = 25 % at step 4, 50 % at 5
    assert [t["rewarded_but_wrong"] for t in h["steps"]] == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert h["fired"]["rewarded_but_wrong"] == 5 and h["paid_by"] == "lenient_accuracy"
    # the reward rose from 0.5 while the strict accuracy stayed at 50 %: baseline steps 1-2 (0.5), window
    # steps 3-4: (0.5 + 1.0) / 2 = 0.75, 0.25 above it
    assert h["fired"]["reward_outpaces_accuracy"] == 4
    assert [t["strict_accuracy"] for t in h["steps"]] == [0.5] * 8
    md = hacking_markdown(h)
    assert "**rewarded_but_wrong** fired at step 5" in md and "**lenient_accuracy**" in md


def test_audit_of_a_clean_run_fires_nothing_and_of_eval_rows_has_no_hacking_section(tmp_path):
    from r1lab.verify.audit import hacking_by_step, hacking_markdown

    samples, problems = write_run(tmp_path, hacked_from=None)
    h = hacking_by_step(samples, problems)
    assert h["fired"] == {"rewarded_but_wrong": None, "reward_outpaces_accuracy": None}
    assert "No hacking rule fired over 8 steps" in hacking_markdown(h)
    flat = tmp_path / "flat.jsonl"
    flat.write_text('{"prompt": "Compute 1.", "answer": "1", "response": "<answer>1</answer>", "correct": true}\n')
    assert hacking_by_step(flat, None) is None


def test_audit_cli_prints_the_hack(tmp_path):
    import subprocess
    import sys

    samples, problems = write_run(tmp_path, hacked_from=3)
    res = subprocess.run([sys.executable, "-m", "r1lab", "verify", "audit", str(samples), "--problems", str(problems),
                          "--n", "0", "--out", str(tmp_path / "audit")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "reward hacking: rewarded_but_wrong fired at step 4 (paid by lenient_accuracy)" in res.stdout
    assert "Reward hacking by step" in (tmp_path / "audit" / "audit.md").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "problem_id": "zz", "text": "x", "reward": 1.0, "rewards": {"format_only": 1.0}, "verdict": "wrong"}\n')
    res = subprocess.run([sys.executable, "-m", "r1lab", "verify", "audit", str(bad), "--problems", str(problems)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "'zz' is not in" in res.stderr


def test_every_rl_step_logs_the_measurement_with_the_weighted_terms():
    import torch

    from r1lab.train.collect import Collected
    from r1lab.train.step_metrics import hack_metrics

    cs = []
    for lenient, fmt, ok in [(1.0, 1.0, True), (1.0, 1.0, False), (0.0, 1.0, False), (0.0, 0.0, False)]:
        c = completion("x")
        c.rewards, c.verdict = {"lenient_accuracy": lenient, "format": fmt}, Verdict("correct" if ok else "wrong")
        c.reward = lenient + 0.1 * fmt
        cs.append(c)
    col = Collected([GOLD] * 4, cs, torch.tensor([c.reward for c in cs]), torch.zeros(4, dtype=torch.long),
                    {"lenient_accuracy": [1.0, 1.0, 0.0, 0.0], "format": [1.0, 1.0, 1.0, 0.0]}, {})
    # the right answer earns 1.1; of the two samples paid that much, one is wrong, paid 1.0 + 0.1 * 1.0
    assert hack_metrics(col, {"lenient_accuracy": 1.0, "format": 0.1}) == pytest.approx(
        {"hack/rewarded_but_wrong": 0.5, "hack/paid_wrong/lenient_accuracy": 1.0, "hack/paid_wrong/format": 0.1})
    cs[0].verdict = Verdict("wrong")  # no right answer in the step: nothing to compare with
    assert hack_metrics(col, {"lenient_accuracy": 1.0, "format": 0.1}) == {"hack/rewarded_but_wrong": None}

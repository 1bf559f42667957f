"""The run-health monitor: every check fires on a metrics stream that shows its failure and stays
quiet on a healthy one and on a near miss; findings are reported once, written line by line, and
NaN/Inf stops the run before a checkpoint."""

import json
import math

import pytest

from r1lab.config import HealthConfig, load_config
from r1lab.errors import ConfigError, TrainingDivergedError
from r1lab.health import (
    HEALTH_CHECKS,
    HealthMonitor,
    health_markdown,
    is_garbled,
    nonprintable_fraction,
    read_findings,
    repeated_ngram_fraction,
)

TRACE = "<think>7 + 3 = 10\n10 * 4 = 40\n40 - 5 = 35</think>\n<answer>35</answer>"
SAMPLES = [TRACE, "<think>2 * 6 = 12\n12 + 9 = 21</think>\n<answer>21</answer>", "<answer>8</answer>", ""]


def healthy(step: int) -> dict:
    """Metrics of a healthy run: slow drifts, small step-to-step noise."""
    wobble = (-1) ** step * 0.02
    return {
        "policy/entropy": 0.5 - 0.002 * step + wobble,
        "response/length": 25.0 + 3 * wobble * 50,
        "response/truncated": 0.02,
        "batch/zero_variance_groups": 0.45 + wobble,
        "policy/kl": 0.0005 * step,
        "rollout/logprob_diff_mean": 1e-5 * (1 + wobble),
        "reward/total": 0.35 + 0.003 * step,
        "reward/accuracy": 0.25 + 0.003 * step,
        "reward/format": 1.0,
        "accuracy": 0.25 + 0.003 * step,
        "response/length_correct": None,  # None is "not measured", not a NaN
        "loss/total": 0.01 + wobble,
        "policy/grad_norm": 0.4,
        "sampling/max_new_tokens": 64,
        "phase": "train",
    }


def run(changes=None, steps=40, samples=None, cfg=None, tmp_path=None, log=None):
    """Feed `steps` steps of healthy metrics with `changes(step, row)` applied; the monitor's findings."""
    monitor = HealthMonitor(cfg or HealthConfig(), tmp_path / "health.jsonl" if tmp_path else None,
                            log=log if log is not None else (lambda s: None))
    for step in range(1, steps + 1):
        row = healthy(step)
        if changes:
            changes(step, row)
        monitor.observe(step, row, samples(step) if samples else SAMPLES)
    return monitor.findings


def fired(findings):
    return [(f.check, f.step) for f in findings]


def after(first: int, key: str, value):
    """From step `first` on, `key` is `value` (a number or a function of the step)."""
    def change(step, row):
        if step >= first:
            row[key] = value(step) if callable(value) else value
    return change


def test_the_registry_holds_every_check_and_a_healthy_run_raises_none():
    assert set(HEALTH_CHECKS) == {"non_finite", "entropy_collapse", "entropy_explosion", "length_collapse",
                                  "length_runaway", "truncation", "no_signal", "kl_blowup", "logprob_gap",
                                  "garbled_output", "reward_hacking", "reward_outpaces_accuracy", "rewarded_but_wrong",
                                  "format_saturated"}
    assert run(steps=200) == []


def test_non_finite_stops_the_run_and_is_written_first(tmp_path):
    lines = []
    with pytest.raises(TrainingDivergedError, match=r"step 4: non-finite values in loss/total, policy/grad_norm"):
        run(lambda s, r: (after(4, "loss/total", math.nan)(s, r), after(4, "policy/grad_norm", math.inf)(s, r)),
            tmp_path=tmp_path, log=lines.append)
    (f,) = read_findings(tmp_path / "health.jsonl")
    assert (f.check, f.step, f.severity) == ("non_finite", 4, "error") and "lower train.lr" in f.what_to_try
    assert len(lines) == 1 and lines[0].startswith("health [non_finite] step 4:")
    # None (not measured) and finite numbers do not fire; a string is not a number
    assert run(after(1, "response/length_correct", None)) == []


def test_disabled_monitor_checks_nothing():
    cfg = HealthConfig(enabled=False)
    assert run(after(3, "loss/total", math.nan), cfg=cfg) == []


def test_entropy_collapse():
    # baseline = mean of steps 1-2, recent = mean of the last 3 steps: the first verdict comes at step 5
    assert fired(run(after(3, "policy/entropy", 0.02))) == [("entropy_collapse", 5)]
    assert run(after(3, "policy/entropy", 0.1)) == []  # a fifth of the start: sharpening, not collapse


def test_entropy_explosion():
    assert fired(run(after(10, "policy/entropy", 2.5))) == [("entropy_explosion", 11)]
    assert run(after(10, "policy/entropy", 1.2), cfg=HealthConfig(entropy_explosion=3.0)) == []  # 2.4x, below 3x
    # 4x a small start but under a nat per token
    low = lambda s, r: r.__setitem__("policy/entropy", 0.15 if s < 10 else 0.6)  # noqa: E731
    assert run(low) == []


def test_length_collapse():
    assert fired(run(after(20, "response/length", 3.0))) == [("length_collapse", 22)]
    assert run(after(20, "response/length", 10.0)) == []  # 40% of the start: shorter, not collapsed


def test_length_runaway_needs_flat_accuracy():
    flat = lambda s, r: r.update({"accuracy": 0.25, "reward/total": 0.35})  # noqa: E731
    longer = after(10, "response/length", 90.0)
    assert fired(run(lambda s, r: (flat(s, r), longer(s, r)))) == [("length_runaway", 12)]
    # R1-Zero: length grows and accuracy with it
    assert run(lambda s, r: (longer(s, r), after(10, "accuracy", 0.5)(s, r))) == []


def test_truncation():
    assert fired(run(after(1, "response/truncated", 0.8))) == [("truncation", 3)]  # a window, no baseline needed
    f = run(after(1, "response/truncated", 0.8))[0]
    assert "max_new_tokens = 64" in f.message and "sampling.max_new_tokens" in f.what_to_try
    assert run(after(1, "response/truncated", 0.3)) == []


def test_no_signal_folds_in_the_zero_variance_warning():
    hard = lambda s, r: r.update({"batch/zero_variance_groups": 0.95, "accuracy": 0.01, "reward/total": 0.11})  # noqa: E731
    (f,) = run(hard)
    assert (f.check, f.step) == ("no_signal", 3) and "too hard" in f.likely_cause
    easy = lambda s, r: r.update({"batch/zero_variance_groups": 1.0, "accuracy": 0.97, "reward/total": 1.07})  # noqa: E731
    assert "too easy" in run(easy)[0].likely_cause
    spike = lambda s, r: r.__setitem__("batch/zero_variance_groups", 1.0 if s == 7 else 0.5)  # noqa: E731
    assert run(spike) == []  # one flat step in a window of three
    assert run(after(1, "batch/zero_variance_groups", 0.85)) == []


def test_kl_blowup():
    assert fired(run(after(15, "policy/kl", 3.0))) == [("kl_blowup", 15)]  # one step of 3 nats lifts the mean past 0.5
    assert run(after(15, "policy/kl", 0.2)) == []


def test_logprob_gap_absolute_and_growing():
    assert fired(run(after(8, "rollout/logprob_diff_mean", 0.3))) == [("logprob_gap", 8)]  # 0.3 / 3 > 0.05
    # a stale engine in fp32: 1e-5 -> 0.01, far under the absolute bound but 1000x its start
    assert fired(run(after(8, "rollout/logprob_diff_mean", 0.01))) == [("logprob_gap", 9)]  # mean 0.0067 >= 0.005
    assert run(after(8, "rollout/logprob_diff_mean", 1e-3)) == []  # 100x, but under a tenth of the bound
    assert run(after(1, "rollout/logprob_diff_mean", 0.02)) == []  # a bf16 engine: steady, under the bound


def test_garbled_output_from_decoded_samples():
    loop = "= 10 = 10 = 10 = 10 = 10 = 10 = 10 = 10 = 10"
    junk = "\x00\x01\x02ab\ufffd\ufffd"
    f = run(samples=lambda s: [loop, loop, junk, TRACE] if s >= 5 else SAMPLES)
    assert fired(f) == [("garbled_output", 7)] and "e.g. '= 10" in f[0].message
    assert run(samples=lambda s: [loop, TRACE, TRACE, TRACE] if s >= 5 else SAMPLES) == []  # a quarter garbled


def test_repetition_and_nonprintable_measures_by_hand():
    # tokens a b a b a b a b: 7 bigrams, the first two new, the other five repeats
    assert repeated_ngram_fraction("a b a b a b a b", 2) == pytest.approx(5 / 7)
    assert repeated_ngram_fraction("a b a", 2) == 0.0  # fewer than 2n tokens: not judged
    # symbols are tokens of their own: "1+1+1+1" is 1 + 1 + 1 + 1 (7 tokens, 6 bigrams, 4 repeats)
    assert repeated_ngram_fraction("1+1+1+1", 2) == pytest.approx(4 / 6)
    # the trace's 34 tokens hold 33 4-grams; "3 5 < /" (of 35</think> and 35</answer>) comes twice
    assert repeated_ngram_fraction(TRACE, 4) == pytest.approx(1 / 33)
    assert nonprintable_fraction("ab\x00\ufffd") == pytest.approx(0.5)
    assert nonprintable_fraction("line\n\ttab é 中") == 0.0
    assert nonprintable_fraction("") == 0.0
    # digits are tokens of their own: "12121212" is 8 tokens, 5 4-grams, the last 3 repeats; a policy
    # that writes one digit over and over is garbled, a number with repeated digits in a trace is not
    assert repeated_ngram_fraction("12121212", 4) == pytest.approx(3 / 5)
    assert repeated_ngram_fraction("x_1 x_1", 2) == pytest.approx(1 / 3)  # x_ 1 x_ 1: x_ is a word
    cfg = HealthConfig()
    assert is_garbled("the the the the the the the the the the", cfg) and not is_garbled(TRACE, cfg)
    assert is_garbled("5" * 64, cfg) and not is_garbled("<think>1000 * 1000 = 1000000</think>\n<answer>1000000</answer>", cfg)


def test_reward_hacking_reward_up_held_out_down():
    def hack(step, row):
        row["reward/total"] = 0.35 + (0.01 * (step - 10) if step > 10 else 0)
        if step in (10, 20, 30):
            row["eval/avg"] = {10: 0.40, 20: 0.38, 30: 0.31}[step]
    assert fired(run(hack)) == [("reward_hacking", 30)]

    def noisy(step, row):  # held-out falls, training reward flat: not the hacking signature
        row["reward/total"] = 0.35
        if step in (10, 20, 30):
            row["eval/avg"] = {10: 0.40, 20: 0.38, 30: 0.31}[step]
    assert run(noisy) == []

    def learning(step, row):  # both rise
        if step in (10, 20, 30):
            row["eval/avg"] = {10: 0.30, 20: 0.35, 30: 0.40}[step]
    assert run(learning) == []


def test_format_saturates_while_accuracy_stays_flat():
    def fmt(step, row):
        row["reward/format"] = min(1.0, 0.2 + 0.1 * step)
        row["accuracy"] = 0.10 + 0.001 * step
        row["reward/total"] = row["accuracy"] + 0.1 * row["reward/format"]
    # the reward rose 0.07 with the format while accuracy stayed flat: both checks say so once judging starts
    assert fired(run(fmt)) == [("reward_outpaces_accuracy", 20), ("format_saturated", 20)]
    # format learned in SFT: saturated from the start (reward and accuracy flat)
    assert run(lambda s, r: r.update({"accuracy": 0.1, "reward/total": 0.2})) == []
    def follows(step, row):  # accuracy follows the format
        fmt(step, row)
        row["accuracy"] = 0.1 + 0.01 * step
        row["reward/total"] = row["accuracy"] + 0.1 * row["reward/format"]
    assert run(follows) == []


def test_each_finding_once_written_as_json_lines_and_kept_on_resume(tmp_path):
    lines = []
    findings = run(after(3, "policy/entropy", 0.01), steps=30, tmp_path=tmp_path, log=lines.append)
    assert fired(findings) == [("entropy_collapse", 5)] and len(lines) == 1
    rows = [json.loads(l) for l in (tmp_path / "health.jsonl").read_text().splitlines()]
    assert rows == [f.to_dict() for f in findings]
    assert set(rows[0]) == {"step", "check", "severity", "message", "likely_cause", "what_to_try"}
    # a resumed run appends and does not report the same check again
    resumed = HealthMonitor(HealthConfig(), tmp_path / "health.jsonl", append=True, log=lines.append)
    resumed.prime([{"step": s, **healthy(s), "policy/entropy": 0.5 if s < 3 else 0.01} for s in range(1, 31)])
    assert resumed.observe(31, {**healthy(31), "policy/entropy": 0.01}) == [] and len(lines) == 1
    assert len(read_findings(tmp_path / "health.jsonl")) == 1


def test_garbled_measures_carried_across_a_resume_fire_at_the_uninterrupted_step():
    loop = "= 10 = 10 = 10 = 10 = 10 = 10 = 10 = 10 = 10"
    samples = lambda s: [loop, loop, loop, TRACE] if s >= 4 else SAMPLES  # noqa: E731
    whole = HealthMonitor(HealthConfig(), log=lambda s: None)
    for step in range(1, 9):
        whole.observe(step, healthy(step), samples(step))
    assert fired(whole.findings) == [("garbled_output", 6)]
    # stopped after step 4 (its checkpoint holds the state), resumed: metrics.jsonl lacks the garbled
    # fractions, the state restores them, and the finding comes at step 6 as it did
    first = HealthMonitor(HealthConfig(), log=lambda s: None)
    for step in range(1, 5):
        first.observe(step, healthy(step), samples(step))
    state = first.state_dict()
    for restore in (True, False):
        resumed = HealthMonitor(HealthConfig(), log=lambda s: None)
        resumed.prime([{"step": s, **healthy(s)} for s in range(1, 5)])
        if restore:
            resumed.load_state_dict(state)
        for step in range(5, 9):
            resumed.observe(step, healthy(step), samples(step))
        assert fired(resumed.findings) == ([("garbled_output", 6)] if restore else [("garbled_output", 7)])


def test_report_section():
    assert health_markdown(None) == "The run-health monitor was off (health.enabled=false)."
    assert health_markdown([], steps=150).startswith("No findings over 150 steps (checks: non_finite, ")
    md = health_markdown(run(after(3, "policy/entropy", 0.01)))
    assert "- **entropy_collapse** (warning, step 5): token entropy fell" in md and "  - try: lower train.lr" in md


def test_thresholds_are_config_fields():
    cfg = load_config(None, ["health.entropy_collapse=0.3", "health.window=5"])
    assert cfg.health.entropy_collapse == 0.3 and cfg.health.window == 5
    # a stricter threshold flags a run that the default lets through
    assert run(after(3, "policy/entropy", 0.1), cfg=cfg.health) != []
    with pytest.raises(ConfigError, match="health.window"):
        HealthMonitor(HealthConfig(window=0))

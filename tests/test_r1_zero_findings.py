"""benchmarks/r1_zero_findings.py: the run commands it builds, and its report on run directories."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def findings():
    spec = importlib.util.spec_from_file_location("r1_zero_findings", ROOT / "benchmarks" / "r1_zero_findings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(path: Path, steps: int, generated: int, eval_every: int, start: float, end: float) -> None:
    (path / "eval").mkdir(parents=True)
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "reward/format": s / steps, "accuracy": s / (2 * steps), "response/length": 40 + s,
               "response/length_wrong": 50 + s, "response/length_correct": 30.0, "sampling/generated": generated,
               "time/step": 10.0}
        if s % eval_every == 0 and s < steps:
            row["eval/avg"] = start + (end - start) * s / steps
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the start's samples end on the right number once in two, without the answer format
    texts = {"start": ["<think> 3 * 4 = 12 </think>", "3 * 4 = 13"], "rl": ["<answer> 12 </answer>", "The answer is 12."]}
    for name, acc in (("start", start), ("rl", end)):
        row = {"avg": acc, "answer": "12", "samples": [{"text": t} for t in texts[name]]}
        (path / "eval" / f"{name}.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")


def test_every_config_is_a_valid_override_set_of_the_recipe(findings):
    from r1lab.config import load_config

    for config, overrides in findings.CONFIGS.items():
        cfg = load_config(ROOT / findings.RECIPE, overrides)
        assert cfg.model.path == "smollm2-135m-instruct", config
    assert load_config(ROOT / findings.RECIPE, findings.CONFIGS["dr_grpo"]).algo.advantage == "dr_grpo"


def test_report_reads_held_out_points_against_generated_samples(findings, tmp_path, capsys):
    _fake_run(tmp_path / "grpo-s0", steps=8, generated=64, eval_every=4, start=0.0, end=0.5)
    _fake_run(tmp_path / "dapo_ds-s0", steps=4, generated=160, eval_every=2, start=0.0, end=0.25)
    rows = findings._metrics(tmp_path / "dapo_ds-s0")
    # start (0 samples), the in-run eval after step 2, the end after step 4
    assert findings._heldout(tmp_path / "dapo_ds-s0", rows) == [(0, 0, 0.0), (2, 320, 0.125), (4, 640, 0.25)]
    assert findings.main(["--out", str(tmp_path), "report", "--seeds", "0", "--host", "test host"]) == 0
    table = (tmp_path / "findings.md").read_text()
    assert "| grpo-s0 | 8 | 512 | 0.0 → 50.0 | 50.0 → 100.0 |" in table and "test host" in table
    for png in ("r1_zero.png", "length.png", "sampling.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert not (tmp_path / "passk.png").exists()  # no pass@k evals yet: no empty plot


def test_unknown_config_is_refused(findings, tmp_path):
    with pytest.raises(SystemExit, match="unknown config 'grpoo'"):
        findings.main(["--out", str(tmp_path), "run", "--configs", "grpoo"])


def test_pass_at_k_by_last_number_and_its_plot(findings, tmp_path):
    d = tmp_path / "passk-base" / "eval"
    d.mkdir(parents=True)
    rows = [{"answer": "12", "samples": [{"text": t} for t in ("12", "so 3 * 4 = 12.", "11", "none")]},
            {"answer": "-3", "samples": [{"text": t} for t in ("3", "4", "-3 + 1 = -2", "x")]}]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = findings.last_number_pass_at_k(d / "results.jsonl")
    assert got[1] == pytest.approx((2 / 4 + 0) / 2) and got[4] == pytest.approx(0.5) and set(got) == {1, 2, 4}
    assert got[2] == pytest.approx((1 - (2 * 1) / (4 * 3)) / 2)  # 1 - C(2,2)/C(4,2) for the first problem
    (d / "summary.json").write_text(json.dumps({"held-out": {"pass@1": 0.1, "pass@2": 0.2, "pass@4": 0.3}}))
    _fake_run(tmp_path / "grpo-s0", steps=4, generated=64, eval_every=2, start=0.0, end=0.5)
    assert findings.main(["--out", str(tmp_path), "report", "--seeds", "0"]) == 0
    assert (tmp_path / "passk.png").stat().st_size > 10_000
    assert "| base, last number | 25.0 | 41.7 | 50.0 |" in (tmp_path / "findings.md").read_text()

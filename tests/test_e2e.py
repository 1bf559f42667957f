"""End to end on a very small model: the demo pipeline, and the sft / rl / eval commands."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1lab.cli import main

SMALL = [
    "model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.intermediate_size=64",
    "data.train_size=300", "data.sft_size=150", "data.eval_size=12", "data.difficulty=2",
    "sft.epochs=1", "sft.batch_size=16", "train.steps=3", "train.prompts_per_step=4", "train.group_size=4",
    "sampling.max_new_tokens=24", "eval.n=4", "eval.ks=[1,4]", "reward.verify_workers=1",
]


HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None  # the track extra


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    tracking = ["tracking=[tensorboard]"] if HAS_TENSORBOARD else []
    code = main(["demo", "--quiet", f"out_dir={out}", "name=demo", *SMALL, "train.eval_every=2", *tracking])
    assert code == 0
    return out / "demo"


def test_demo_writes_the_whole_run_directory(demo_run):
    for rel in ["config.yaml", "metrics.jsonl", "sft_metrics.jsonl", "samples.jsonl", "health.jsonl", "report.md", "summary.json",
                "plots/rl.png", "plots/sft.png", "plots/stages.png", "eval/untrained.jsonl", "eval/sft.jsonl",
                "eval/rl.jsonl", "data/train.jsonl", "data/eval.jsonl", "data/sft.jsonl"]:
        assert (demo_run / rel).is_file(), rel
    for tag in ("base", "sft", "rl"):
        assert (demo_run / "checkpoints" / tag / "config.json").is_file()
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    assert cfg["train"]["steps"] == 3 and cfg["model"]["tiny"]["hidden_size"] == 32


def test_demo_metrics_are_finite_and_complete(demo_run):
    rows = [json.loads(l) for l in (demo_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("reward/total", "reward/accuracy", "reward/format", "loss/total", "policy/entropy",
                    "response/length", "batch/zero_variance_groups", "time/generate", "time/train"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), key
    assert "eval/avg" in rows[1]  # eval_every=2
    summary = json.loads((demo_run / "summary.json").read_text())
    assert set(summary["stages"]) == {"untrained", "sft", "rl"}
    report = (demo_run / "report.md").read_text()
    assert "| stage |" in report and "| untrained |" in report and "| rl |" in report
    assert "## Run health (RL)" in report


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="the track extra is not installed: pip install 'r1lab[track]'")
def test_demo_stages_write_tensorboard_events(demo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for stage, key, steps in (("sft", "sft/loss", None), ("rl", "reward/total", [1, 2, 3])):
        acc = EventAccumulator(str(demo_run / "tensorboard" / stage))
        acc.Reload()
        events = acc.Scalars(key)
        assert events and all(math.isfinite(e.value) for e in events)
        if steps:
            assert [e.step for e in events] == steps
            assert acc.Scalars("eval/avg")[0].step == 2  # the mid-run evaluation goes along


def test_eval_rows_hold_every_sample(demo_run):
    rows = [json.loads(l) for l in (demo_run / "eval" / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert all(len(r["samples"]) == 4 and r["correct"] == sum(s["correct"] for s in r["samples"]) for r in rows)


def test_eval_and_rl_commands_on_the_demo_checkpoint(demo_run, tmp_path):
    data = demo_run / "data" / "eval.jsonl"
    assert main(["eval", str(demo_run / "checkpoints" / "sft"), "--data", str(data), "--n", "2", "--quiet",
                 f"out_dir={tmp_path}", "name=ev", "sampling.max_new_tokens=16"]) == 0
    rows = (tmp_path / "ev" / "eval" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 12
    assert (tmp_path / "ev" / "eval" / "summary.md").read_text().startswith(f"eval ({data.resolve()})\n\n| stage | avg@2 |")
    assert json.loads((tmp_path / "ev" / "eval" / "summary.json").read_text())["eval"]["problems"] == 12
    recipe = tmp_path / "rl.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"steps": 2, "prompts_per_step": 2, "group_size": 4},
                                      "algo": {"kl_coef": 0.04}}))
    assert main(["rl", str(recipe), "--quiet", f"out_dir={tmp_path}", "name=rl", *SMALL[3:6],
                 f"init_from={demo_run / 'checkpoints' / 'sft'}", "train.steps=2", "sampling.max_new_tokens=16",
                 "eval.n=2", "eval.ks=[1,2]", "reward.verify_workers=1", "eval.at_start=false"]) == 0
    assert sorted(p.name for p in (tmp_path / "rl" / "eval").glob("*.jsonl")) == ["rl.jsonl"]  # no start eval
    rows = [json.loads(l) for l in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["policy/kl"] is not None and r["policy/kl"] >= 0 for r in rows)
    assert (tmp_path / "rl" / "checkpoints" / "rl" / "model.safetensors").is_file()


def test_dataset_row_without_answer_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "1+1?", "answer": "2"}\n{"id": "b", "prompt": "2+2?"}\n')
    r = subprocess.run([sys.executable, "-m", "r1lab.cli", "rl", "recipes/tiny/grpo.yaml",
                        f"data.train_path={bad}", f"data.eval_path={bad}", f"out_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"r1lab: error: {bad}:2 (id 'b'): no answer — every problem needs a ground-truth 'answer'"


def test_nan_stops_rl_before_the_checkpoint(demo_run, tmp_path, monkeypatch, capsys):
    """A step whose loss is NaN ends `r1lab rl` with one line and exit 2; health.jsonl says why and
    no checkpoint of the broken policy is written."""
    from r1lab.train.rl import RLTrainer

    real = RLTrainer.train_step

    def nan_at_step_2(self, sampler):
        m, completions = real(self, sampler)
        if self.step == 2:
            m["loss/total"] = float("nan")
        return m, completions

    monkeypatch.setattr(RLTrainer, "train_step", nan_at_step_2)
    assert main(["rl", "recipes/tiny/grpo.yaml", "--quiet", f"out_dir={tmp_path}", "name=nan", *SMALL[:6],
                 f"init_from={demo_run / 'checkpoints' / 'sft'}", "train.steps=4", "train.prompts_per_step=2",
                 "train.group_size=2", "sampling.max_new_tokens=8", "reward.verify_workers=1", "eval.at_start=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("r1lab: error: step 2: non-finite values in loss/total; stopped before saving a checkpoint")
    (finding,) = [json.loads(l) for l in (tmp_path / "nan" / "health.jsonl").read_text().splitlines()
                  if json.loads(l)["check"] == "non_finite"]
    assert finding["step"] == 2
    assert [json.loads(l)["step"] for l in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (tmp_path / "nan" / "checkpoints" / "rl").exists()

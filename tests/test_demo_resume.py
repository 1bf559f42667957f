"""A demo killed with SIGKILL during RL and resumed (`r1lab demo resume=RUN_DIR`) reads its finished
stages back, continues RL from its checkpoint and writes the report the uninterrupted demo writes:
every figure but the timings. A demo cut during SFT resumes SFT from its checkpoint the same way."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lab.cli import main
from r1lab.config import load_config
from r1lab.demo import demo_plan, run_demo
from r1lab.errors import ConfigError
from r1lab.runner import stage_status, write_marker
from r1lab.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
# a tiny demo: 10 SFT steps, 8 RL steps; the cosine length term gives every RL group different
# rewards (a tiny model earns no accuracy), so each RL step moves the weights
ARGS = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "data.train_size=200", "data.sft_size=40", "data.eval_size=6", "reward.verify_workers=1",
        "sft.epochs=2", "sft.batch_size=8", "sft.warmup_steps=2", "sft.save_every=1", "sft.keep_checkpoints=20",
        "reward.terms={accuracy: 1.0, cosine_length: 1.0}", "algo.kl_coef=0.01", "train.steps=8",
        "train.prompts_per_step=4", "train.group_size=4", "train.micro_batch_size=8", "train.eval_every=4",
        "train.save_every=1", "train.keep_checkpoints=2", "sampling.max_new_tokens=16", "eval.n=2", "eval.ks=[1,2]",
        "train.lr=1e-3"]
TIMING = ("time", "seconds", "tokens_per_s", "sft/seconds", "sft/tokens_per_s", "throughput", "resumed")


def _demo(out: Path, *extra):
    return [sys.executable, "-m", "r1lab", "demo", "--quiet", *extra] if extra and extra[0].startswith("resume=") else \
        [sys.executable, "-m", "r1lab", "demo", "--quiet", f"out_dir={out}", "name=demo", *ARGS, *extra]


def _figures(obj):
    """A summary without its timings."""
    if isinstance(obj, dict):
        return {k: _figures(v) for k, v in obj.items() if not (k in TIMING or k.startswith(("time/", "throughput/")))}
    if isinstance(obj, list):
        return [_figures(v) for v in obj]
    return obj


def _report(run: Path) -> str:
    """report.md without its timings: the time section, the stage table's seconds column, the data
    preparation's seconds, and where the run directory lies."""
    text = (run / "report.md").read_text()
    sections = [s for s in text.split("\n## ") if not s.startswith("Time and throughput")]
    lines = []
    for line in "\n## ".join(sections).splitlines():
        if line.startswith(("- seconds:", "out_dir:")):
            continue
        if line.startswith("|"):
            line = "|".join(line.split("|")[:-2])
        lines.append(line)
    return "\n".join(lines)


def _metrics(run: Path, name: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / name).read_text().splitlines()]
    return [_figures(r) for r in rows]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _same_run(whole: Path, resumed: Path) -> None:
    assert _report(resumed) == _report(whole)
    s_whole = json.loads((whole / "summary.json").read_text())
    s_resumed = json.loads((resumed / "summary.json").read_text())
    assert _figures(s_resumed) == _figures(s_whole)
    for name in ("sft_metrics.jsonl", "metrics.jsonl", "samples.jsonl", "health.jsonl"):
        assert _metrics(resumed, name) == _metrics(whole, name), name
    for ckpt in ("sft", "rl"):
        assert _same_weights(whole / "checkpoints" / ckpt, resumed / "checkpoints" / ckpt), ckpt


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    subprocess.run(_demo(out), check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out / "demo"


@pytest.mark.slow
def test_demo_killed_during_rl_and_resumed_writes_the_uninterrupted_report(whole, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_demo(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "demo"
    deadline = time.time() + 600
    while not (run / "checkpoints" / "state" / "step-000003.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the demo ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "stages" / "eval-sft.json").exists() and not (run / "stages" / "rl.json").exists()
    out = subprocess.run(_demo(tmp_path, f"resume={run}"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"resuming {run} (done: data, model, eval-untrained, sft, eval-sft)" in out.stdout
    assert "Time and throughput" in (run / "report.md").read_text() and "- resumed: data, model" in (run / "report.md").read_text()
    _same_run(whole, run)
    # resumed again: the demo had finished, nothing is run or rewritten
    before = (run / "report.md").stat().st_mtime_ns
    summary = run_demo(load_config(run / "config.yaml", [f"resume={run}"]), show_progress=False, log=lambda *_: None)
    assert summary == json.loads((run / "summary.json").read_text())
    assert (run / "report.md").stat().st_mtime_ns == before


@pytest.mark.slow
def test_demo_cut_during_sft_resumes_sft_from_its_checkpoint(whole, tmp_path):
    # the state the demo leaves when stopped after SFT step 4: what comes after is removed
    run = tmp_path / "demo"
    shutil.copytree(whole, run)
    for stage in ("sft", "eval-sft", "rl", "eval-rl", "report"):
        (run / "stages" / f"{stage}.json").unlink()
    for name in ("checkpoints/sft", "checkpoints/rl", "checkpoints/state", "eval/sft.jsonl", "eval/rl.jsonl",
                 "metrics.jsonl", "samples.jsonl", "health.jsonl", "summary.json", "report.md"):
        p = run / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in (run / "checkpoints" / "sft-state").glob("step-*.pt"):
        if int(p.stem.split("-")[1]) > 4:
            p.unlink()
    # in a process of its own with one thread, as the uninterrupted run: the thread count changes sums
    out = subprocess.run(_demo(tmp_path, f"resume={run}"), env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "done: data, model, eval-untrained)" in out.stdout
    _same_run(whole, run)


def test_demo_resume_refuses_a_changed_setting_and_a_marker_of_another_config(tmp_path, capsys):
    run = RunDir.create(load_config(None, [f"out_dir={tmp_path}", "name=demo", "train.lr=1e-3"])).path
    with pytest.raises(ConfigError, match=r"resume: train.lr differs from the run's \(0.001 -> 0.01\)"):
        demo_plan(load_config(run / "config.yaml", [f"resume={run}", "train.lr=1e-2"]))
    demo_plan(load_config(run / "config.yaml", [f"resume={run}", "train.save_every=3", "sft.save_every=5"]))

    def mark(plan, key):
        write_marker(plan, next(s for s in plan.stages if s.key == key), {}, 1.0)

    # a marker written under other settings is refused, naming the setting and the stage
    other = demo_plan(load_config(None, [f"out_dir={tmp_path}", "name=demo", "train.lr=1e-3", "sft.lr=0.5"]))
    for key in ("data", "model"):
        mark(other, key)
    with pytest.raises(ConfigError, match=r"data: sft.lr differs from the finished stage's \(0.5 -> 0.002\)"):
        stage_status(demo_plan(load_config(run / "config.yaml", [f"resume={run}"])))
    # a schedule's integer keys survive the marker; a changed checkpoint cadence leaves a stage done
    sched = [f"out_dir={tmp_path}", "name=sched", "train.max_new_tokens_schedule={0: 8, 5: 16}"]
    run = RunDir.create(load_config(None, sched)).path
    for key in ("data", "model"):
        mark(demo_plan(load_config(None, sched)), key)
    status = stage_status(demo_plan(load_config(run / "config.yaml", [f"resume={run}", "train.save_every=7"])))
    assert [status[k] for k in ("data", "model", "eval-untrained")] == ["done", "done", "new"]
    with pytest.raises(ConfigError, match="not a run directory"):
        demo_plan(load_config(None, [f"resume={tmp_path / 'nothing'}"]))
    assert main(["demo", f"resume={tmp_path / 'nothing'}"]) == 2
    assert "is not a run directory (no config.yaml)" in capsys.readouterr().err

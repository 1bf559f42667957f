"""An RL run killed with SIGKILL and resumed from its directory computes exactly what the
uninterrupted run computes: the same metrics, step by step, and the same final weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lab.config import load_config
from r1lab.errors import ConfigError
from r1lab.runs import truncate_metrics
from r1lab.train.checkpoint import check_resume_config
from r1lab.train.sampler import PromptSampler
from helpers_runs import run_and_kill_at

ROOT = Path(__file__).resolve().parents[1]
# a random tiny model earns no accuracy; the cosine length term still gives every group different
# rewards, so each step really moves the weights (and the KL term needs the reference)
ARGS = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "data.train_size=200", "data.sft_size=10", "data.eval_size=4", "reward.verify_workers=1",
        "reward.terms={accuracy: 1.0, cosine_length: 1.0}", "algo.kl_coef=0.01", "train.steps=8",
        "train.prompts_per_step=4", "train.group_size=4", "train.micro_batch_size=8", "train.mini_batches=2",
        "train.eval_every=0", "train.save_every=1", "train.keep_checkpoints=2", "sampling.max_new_tokens=16",
        "eval.at_start=false", "eval.n=1", "eval.ks=[1]", "train.lr=1e-3"]
TIMING = ("time", "time/", "throughput/")


def _rl(tmp_path, *extra):
    return [sys.executable, "-m", "r1lab", "rl", str(ROOT / "recipes" / "tiny" / "grpo.yaml"), f"out_dir={tmp_path}",
            "--quiet", *ARGS, *extra]


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_rl(tmp_path, "name=whole"), check=True, env=env, capture_output=True)
    state = tmp_path / "killed" / "checkpoints" / "state"
    run_and_kill_at(_rl(tmp_path, "name=killed"), env, state / "step-000003.pt")
    killed_at = len(_rows(tmp_path / "killed"))
    assert 3 <= killed_at < 8 and not (tmp_path / "killed" / "checkpoints" / "rl").exists()
    out = subprocess.run(_rl(tmp_path, f"resume={tmp_path / 'killed'}"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout
    whole, resumed = _rows(tmp_path / "whole"), _rows(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert resumed == whole  # every logged number of every step, bit for bit
    a = load_file(tmp_path / "whole" / "checkpoints" / "rl" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "rl" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(list(state.glob("step-*.pt"))) == 2  # the newest two kept


def test_resume_refuses_a_changed_setting_and_a_run_without_checkpoints(tmp_path):
    saved = load_config(None, ["train.steps=10"])
    check_resume_config(saved, load_config(None, ["train.steps=20", f"resume={tmp_path}"]))  # more steps: fine
    with pytest.raises(ConfigError, match=r"resume: train.lr differs from the run's \(3e-05 -> 0.001\)"):
        check_resume_config(saved, load_config(None, ["train.lr=1e-3"]))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: run\n")
    out = subprocess.run([sys.executable, "-m", "r1lab", "rl", str(ROOT / "recipes" / "tiny" / "grpo.yaml"), f"resume={run}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "has no resumable checkpoint" in out.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_truncated_metrics_drop_later_steps_and_a_cut_off_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": -1, "phase": "value_pretrain"}\n{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    truncate_metrics(path, 1)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [-1, 1]


def test_the_prompt_sampler_continues_its_order_from_its_state():
    from r1lab.records import Problem

    probs = [Problem(id=f"p{i}", prompt=f"q{i}", answer="1") for i in range(7)]
    a = PromptSampler(probs, seed=3, history_resampling=True, easy_pool_prob=0.3)
    a.next(5)
    a.record(probs[0], True)
    state = a.state_dict()
    b = PromptSampler(probs, seed=99, history_resampling=True, easy_pool_prob=0.3)
    b.load_state_dict(state)
    assert [p.id for p in a.next(20)] == [p.id for p in b.next(20)]
    with pytest.raises(ValueError, match="does not have"):
        PromptSampler([Problem(id="other", prompt="q", answer="1")], seed=0).load_state_dict(state)

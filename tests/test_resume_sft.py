"""An SFT run resumed from one of its checkpoints computes exactly what the uninterrupted run
computes: the same logged numbers step by step and the same final weights, whether the checkpoint
falls inside an epoch or at its end, with full fine-tuning or LoRA adapters; and `r1lab sft` killed
with SIGKILL and resumed from its directory does the same."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lab.cli import main
from r1lab.config import SFTConfig, LoRAConfig, TinyModelConfig, load_config
from r1lab.errors import ConfigError
from r1lab.models import build_tiny_model, build_tiny_tokenizer
from r1lab.train.checkpoint import SFT_RESUMABLE_CHANGES, SFT_STATE_DIR, check_resume_config, checkpoints, load_latest
from r1lab.train.lora import apply_lora, merge_lora
from r1lab.train.sft import train_sft
from helpers_runs import run_and_kill_at

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("time", "sft/tokens_per_s")


class Rows:
    """A metrics writer that keeps the rows in memory."""

    def __init__(self):
        self.rows = []

    def write(self, step, metrics):
        self.rows.append({"step": step, **{k: v for k, v in metrics.items() if k not in TIMING}})


def _setup(lora: bool):
    tok = build_tiny_tokenizer(["12 + 34 = 46", "<think>add</think><answer>7</answer>"] * 4)
    model = build_tiny_model(tok, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                                  intermediate_size=64, max_positions=64), seed=3)
    # dropout on the adapters: the torch random stream must be carried across the resume too
    wrapper = apply_lora(model, LoRAConfig(r=2, alpha=4.0, dropout=0.3, target_modules=["q_proj", "v_proj"])) if lora else None
    g = random.Random(5)
    examples = [([g.randrange(3, 60) for _ in range(g.randrange(2, 6))], [g.randrange(3, 60) for _ in range(g.randrange(1, 8))])
                for _ in range(10)]
    return model, tok, wrapper, examples


def _resume_from(path: Path) -> dict:
    """A chosen checkpoint's state with the process's random streams restored, as load_latest does."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state


@pytest.mark.parametrize("lora", [False, True])
def test_sft_resumed_from_any_checkpoint_matches_the_uninterrupted_run(tmp_path, lora):
    # 10 examples in batches of 4: 3 steps per epoch, 8 steps (max_steps) over three epochs
    cfg = SFTConfig(epochs=3, batch_size=4, lr=1e-2, warmup_steps=2, max_steps=8, save_every=1, keep_checkpoints=100)
    model, tok, wrapper, examples = _setup(lora)
    whole = Rows()
    torch.manual_seed(11)
    summary = train_sft(model, tok, examples, cfg, metrics=whole, seed=7, show_progress=False, run_path=tmp_path / "whole")
    final = {k: v.clone() for k, v in merge_lora(wrapper, model).state_dict().items()}
    saved = checkpoints(tmp_path / "whole", SFT_STATE_DIR)
    assert [p.name for p in saved] == [f"step-{i:06d}.pt" for i in range(1, 9)]
    assert summary["sft/steps"] == 8 and [r["step"] for r in whole.rows] == list(range(1, 9))
    for k in (2, 3, 4, 7):  # inside the first epoch, at its end, inside the second, inside the third
        model, tok, wrapper, examples = _setup(lora)  # a fresh process: new weights, other random streams
        torch.manual_seed(999)
        random.seed(999)
        resumed = Rows()
        train_sft(model, tok, examples, cfg, metrics=resumed, seed=7, show_progress=False,
                  run_path=tmp_path / f"from{k}", resume=_resume_from(saved[k - 1]))
        assert resumed.rows == whole.rows[k:], k  # every logged number, bit for bit
        weights = merge_lora(wrapper, model).state_dict()
        assert weights.keys() == final.keys() and all(torch.equal(weights[n], final[n]) for n in final), k


def test_sft_checkpoints_keep_the_newest_and_refuse_another_run(tmp_path):
    cfg = SFTConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=1, save_every=2, keep_checkpoints=2)
    model, tok, _, examples = _setup(False)
    train_sft(model, tok, examples, cfg, show_progress=False, run_path=tmp_path)
    # 6 steps, saved every 2: steps 2, 4, 6; the newest two kept
    assert [p.name for p in checkpoints(tmp_path, SFT_STATE_DIR)] == ["step-000004.pt", "step-000006.pt"]
    assert not list((tmp_path / "checkpoints" / SFT_STATE_DIR).glob(".*tmp"))
    state = load_latest(tmp_path, SFT_STATE_DIR)
    model, tok, _, examples = _setup(False)
    with pytest.raises(ValueError, match="6 steps over 10 examples, this run has 6 over 9"):
        train_sft(model, tok, examples[:9], cfg, show_progress=False, resume=state)
    with pytest.raises(ConfigError, match=r"sft.save_every > 0 writes them"):
        load_latest(tmp_path / "elsewhere", SFT_STATE_DIR)


def test_sft_resume_refuses_a_changed_setting():
    saved = load_config(None, ["sft.epochs=2"])
    check_resume_config(saved, load_config(None, ["sft.epochs=2", "sft.save_every=7", "sft.keep_checkpoints=1",
                                                  "resume=x"]), SFT_RESUMABLE_CHANGES)
    for change, msg in (("sft.epochs=3", r"sft.epochs differs from the run's \(2 -> 3\)"),
                        ("sft.max_steps=4", r"sft.max_steps differs"), ("sft.lora.r=4", r"sft.lora.r differs")):
        with pytest.raises(ConfigError, match=msg):
            check_resume_config(saved, load_config(None, ["sft.epochs=2", change]), SFT_RESUMABLE_CHANGES)


# --------------------------------------------------------------------------------------------
# `r1lab sft`, killed and resumed

ARGS = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "data.train_size=200", "data.sft_size=80", "data.eval_size=4", "reward.verify_workers=1",
        "sft.epochs=3", "sft.batch_size=8", "sft.warmup_steps=2", "sft.save_every=2", "sft.keep_checkpoints=2",
        "eval.n=1", "eval.ks=[1]", "sampling.max_new_tokens=8"]


def _sft(tmp_path, *extra):
    return [sys.executable, "-m", "r1lab", "sft", str(ROOT / "recipes" / "tiny" / "sft.yaml"), f"out_dir={tmp_path}",
            "--quiet", *ARGS, *extra]


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "sft_metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_sft_killed_and_resumed_from_the_cli_gives_the_uninterrupted_run(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_sft(tmp_path, "name=whole"), check=True, env=env, capture_output=True)
    state = tmp_path / "killed" / "checkpoints" / SFT_STATE_DIR
    run_and_kill_at(_sft(tmp_path, "name=killed"), env, state / "step-000004.pt", poll_s=0.005)
    whole = _rows(tmp_path / "whole")
    killed_at = len(_rows(tmp_path / "killed"))
    assert len(whole) == 30 and 4 <= killed_at < 30 and not (tmp_path / "killed" / "checkpoints" / "sft").exists()
    assert main(_sft(tmp_path, f"resume={tmp_path / 'killed'}", "sft.lr=1e-3")[3:]) == 2
    assert "resume: sft.lr differs from the run's (0.002 -> 0.001)" in capsys.readouterr().err
    out = subprocess.run(_sft(tmp_path, f"resume={tmp_path / 'killed'}"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout
    resumed = _rows(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 31))
    assert resumed == whole  # every logged number of every step, bit for bit
    a = load_file(tmp_path / "whole" / "checkpoints" / "sft" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "sft" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in state.glob("step-*.pt")) == ["step-000028.pt", "step-000030.pt"]

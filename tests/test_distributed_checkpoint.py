"""Sharded checkpoints of the trainer group (train/checkpoint.py with train/distributed.py): each
worker writes and reads its own shards; a two-worker run killed (the controller, then one worker)
and resumed computes exactly what the uninterrupted run computes; the run's Hugging Face export is
the gathered weights."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lab.errors import ConfigError
from r1lab.train.checkpoint import checkpoints, load_latest, load_sharded_weights, save_state
from r1lab.train.distributed import PolicyWorkerGroup
from r1lab.train.methods import bind_method
from r1lab.train.policy import LocalPolicyWorker
from test_distributed import BOUND, _batch, _cfg, _max_diff

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "ray"])
def test_each_worker_saves_and_loads_its_own_shards(tiny, tmp_path, launcher):
    if launcher == "ray":
        pytest.importorskip("ray")
    cfg = _cfg({"loss_agg": "token-mean"}, mini_batches=2, micro_batch_size=4)
    cfg.cluster.launcher = launcher
    batch = _batch(cfg, tiny)
    method = bind_method(cfg.algo)
    # one group at a time: a Ray actor takes one CPU, and this host may have two
    a = PolicyWorkerGroup(cfg, copy.deepcopy(tiny[0]), method, workers=2)
    try:
        for step in (1, 2, 3):
            a.update_policy(batch)
            gathered = {k: v.detach().clone() for k, v in a.engine_weights()}
            save_state(tmp_path, step, {"sampler": {"step": step}}, keep=2, policy=a)
        full_a = a.state_dict()
        stats_a = a.update_policy(batch)
        weights_a = {k: v.detach().clone() for k, v in a.engine_weights()}
    finally:
        a.close()
    found = checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-000002", "step-000003"]  # the newest two, directories
    assert sorted(p.name for p in found[-1].iterdir()) == ["model", "state.pt"]
    shards = sorted(p.name for p in (found[-1] / "model").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per worker
    sizes = [(found[-1] / "model" / n).stat().st_size for n in shards[1:]]
    assert min(sizes) > 0.3 * sum(sizes)  # each about half: shards, not one full copy and one empty
    assert not list((tmp_path / "checkpoints" / "state").glob(".*"))  # no temporary left

    # the shards read in one process, no group: the weights of step 3 as the group gathered them
    one = copy.deepcopy(tiny[0])
    load_sharded_weights(one, found[-1])
    assert _max_diff({k: v.detach() for k, v in one.named_parameters()}, gathered) == 0

    state = load_latest(tmp_path)
    assert state["step"] == 3 and state["sampler"] == {"step": 3}
    assert state["policy"]["trainer_workers"] == 2 and state["policy"]["version"] == 6
    with pytest.raises(ConfigError, match=r"cluster.trainer_workers=2, not a one-process trainer"):
        LocalPolicyWorker(cfg, copy.deepcopy(tiny[0]), method).load_state_dict(state["policy"])
    b = PolicyWorkerGroup(cfg, copy.deepcopy(tiny[0]), method, workers=2)
    try:
        b.load_state_dict(state["policy"])
        assert b.version == 6
        assert b.update_policy(batch) == stats_a  # the same next update: Adam's moments came back too
        assert _max_diff(weights_a, dict(b.engine_weights())) == 0
    finally:
        b.close()
    if launcher == "ray":
        return  # three actors need three free CPUs

    # resharded: three workers read the two workers' shards; the gathered model and Adam state are
    # those of step 3 exactly, and the next update is the two workers' within the group bound
    c = PolicyWorkerGroup(cfg, copy.deepcopy(tiny[0]), method, workers=3)
    try:
        c.load_state_dict(load_latest(tmp_path)["policy"])
        full_c = c.state_dict()
        assert _max_diff(full_a["model"], full_c["model"]) == 0
        opt_a, opt_c = full_a["optimizer"], full_c["optimizer"]
        assert opt_a["param_groups"] == opt_c["param_groups"] and opt_a["state"].keys() == opt_c["state"].keys()
        assert all(_max_diff(opt_a["state"][k], opt_c["state"][k]) == 0 for k in opt_a["state"])
        stats_c = c.update_policy(batch)
        assert stats_c.keys() == stats_a.keys() and max(abs(stats_c[k] - stats_a[k]) for k in stats_a) < BOUND
        assert _max_diff(weights_a, dict(c.engine_weights())) < BOUND
    finally:
        c.close()


# -- the command line: kill, resume, export -------------------------------------------------------

ARGS = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "data.train_size=40", "data.sft_size=10", "data.eval_size=4", "reward.verify_workers=1",
        "reward.terms={accuracy: 1.0, cosine_length: 1.0}", "algo.kl_coef=0.01", "train.steps=4",
        "train.prompts_per_step=4", "train.group_size=4", "train.micro_batch_size=8", "train.mini_batches=2",
        "train.eval_every=0", "train.save_every=1", "train.keep_checkpoints=2", "sampling.max_new_tokens=16",
        "eval.at_start=false", "eval.n=1", "eval.ks=[1]", "train.lr=1e-3",
        "cluster.trainer_workers=2", "cluster.timeout_s=120"]
TIMING = ("time", "time/", "throughput/")


def _rl(out: Path, *extra):
    return [sys.executable, "-m", "r1lab", "rl", str(ROOT / "recipes" / "tiny" / "grpo.yaml"), f"out_dir={out}",
            "--quiet", *ARGS, *extra]


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _trainer_workers(pid: int) -> list[int]:
    """The worker processes of the run `pid`: the children of its forkserver."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    servers = [c for c in children.get(pid, []) if b"forkserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return [w for s in servers for w in children.get(s, [])]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"the run ended before {path.name} was written"
        time.sleep(0.01)


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


@pytest.mark.slow
def test_a_two_worker_run_killed_twice_and_resumed_gives_the_uninterrupted_run(tmp_path):
    """Four steps in one go, against: the controller killed (SIGKILL) after a checkpoint, resumed;
    then one trainer worker killed in the resumed run, which stops with a line naming it and the
    checkpoint to resume from, resumed again. The same metrics, step by step, the same export."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(_rl(tmp_path, "name=whole"), check=True, env=env, capture_output=True, timeout=600)
    run = tmp_path / "cut"
    state = run / "checkpoints" / "state"

    # 1. the controller killed once step 1's checkpoint is complete
    proc = subprocess.Popen(_rl(tmp_path, "name=cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(state / "step-000001", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _step(checkpoints(run)[-1])
    assert 1 <= first < 3 and not (run / "checkpoints" / "rl").exists()

    # 2. resumed; one worker killed once the resumed run has written a checkpoint of its own
    proc = subprocess.Popen(_rl(tmp_path, f"resume={run}"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(state / f"step-{first + 1:06d}", proc)
    workers = _trainer_workers(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    t = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and time.time() - t < 60, err[-3000:]
    last = checkpoints(run)[-1]
    assert first < _step(last) < 4
    line = err.strip().splitlines()[-1]
    assert line.startswith("r1lab: error: trainer worker ") and f"(pid {workers[1]}) died during '" in line, line
    assert line.endswith(f"(killed by signal 9); last resumable checkpoint: {last} (continue with resume={run})"), line

    # 3. resumed from that checkpoint to the end
    out = subprocess.run(_rl(tmp_path, f"resume={run}"), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"resuming {run}" in out.stdout
    whole = _rows(tmp_path / "whole")
    assert [r["step"] for r in _rows(run)] == list(range(1, 5))
    assert _rows(run) == whole  # every logged number of every step, bit for bit

    # the Hugging Face export: loads with transformers, equals the last checkpoint's shards gathered
    # and the uninterrupted run's export
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = run / "checkpoints" / "rl"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert AutoTokenizer.from_pretrained(export).eos_token is not None
    last = checkpoints(run)[-1]
    assert last.name == "step-000004"
    gathered = copy.deepcopy(model)
    load_sharded_weights(gathered, last)
    assert _max_diff(dict(model.state_dict()), dict(gathered.state_dict())) == 0
    a, b = load_file(tmp_path / "whole" / "checkpoints" / "rl" / "model.safetensors"), load_file(export / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in checkpoints(run)] == ["step-000003", "step-000004"]


def test_a_resume_may_change_the_number_of_trainer_workers_but_not_leave_or_join_a_group(tmp_path):
    from r1lab.config import load_config
    from r1lab.train.checkpoint import check_resume_config

    saved = load_config(None, ["cluster.trainer_workers=2"])
    check_resume_config(saved, load_config(None, ["cluster.trainer_workers=3", f"resume={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"^resume: cluster.trainer_workers differs from the run's \(2 -> 0\)"):
        check_resume_config(saved, load_config(None, [f"resume={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"^resume: cluster.trainer_workers differs from the run's \(0 -> 2\)"):
        check_resume_config(load_config(None, []), load_config(None, ["cluster.trainer_workers=2", f"resume={tmp_path}"]))

"""Experiment trackers: chosen by name, a clear error for a missing package, and for each backend
the events written for real (offline) and read back with that tool's own reader. The backends'
tests skip when the optional extra is not installed (`pip install 'r1lab[track]'`, `'r1lab[wandb]'`)."""

import glob
import math
import struct

import pytest

from r1lab.config import flatten, load_config
from r1lab.errors import ConfigError
from r1lab.runs import MetricsWriter
from r1lab.tracking import BACKENDS, MultiTracker, Tracker, check_tracking, make_tracker, numeric

STEPS = {-1: {"critic/value_loss": 0.9, "phase": "value_pretrain"},  # value pretraining logs negative steps
         1: {"reward/total": 0.25, "policy/entropy": 0.5, "response/length_correct": None, "accuracy": True},
         2: {"reward/total": 0.5, "policy/entropy": math.nan, "response/length_correct": 21.0, "accuracy": 0.75}}
EXPECTED = {"reward/total": [(1, 0.25), (2, 0.5)], "policy/entropy": [(1, 0.5)], "response/length_correct": [(2, 21.0)],
            "accuracy": [(1, 1.0), (2, 0.75)], "critic/value_loss": [(-1, 0.9)]}


def _log(tracker, path, failed=False):
    """Write STEPS through a MetricsWriter that feeds `tracker` (and closes it, failed if the run raised)."""
    try:
        with MetricsWriter(path / "metrics.jsonl", tracker=tracker) as mw:
            for step, m in STEPS.items():
                mw.write(step, m)
            if failed:
                raise RuntimeError("the run crashed")
    except RuntimeError:
        assert failed


def _cfg(*trackers):
    return load_config(None, [f"tracking=[{', '.join(trackers)}]", "name=run1"])


def test_default_is_files_only_and_names_are_checked(monkeypatch):
    assert load_config().tracking == [] and make_tracker(load_config(), "unused", "rl") is None
    with pytest.raises(ConfigError, match=r"tracking: unknown tracker 'tensorbord' \(known: tensorboard, mlflow, wandb\)"):
        check_tracking(["tensorbord"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tracking: 'mlflow' needs the mlflow package: pip install 'r1lab\[track\]'"):
        check_tracking(["mlflow"])
    assert set(BACKENDS) == {"tensorboard", "mlflow", "wandb"}


def test_missing_package_fails_the_cli_before_a_run_directory(monkeypatch, tmp_path, capsys):
    import importlib.util

    from r1lab.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["demo", "--quiet", f"out_dir={tmp_path}", "name=x", "tracking=[wandb]"]) == 2
    assert "tracking: 'wandb' needs the wandb package: pip install 'r1lab[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_numeric_and_flatten():
    assert numeric({"a": 1, "b": 0.5, "c": None, "d": "x", "e": math.inf, "f": math.nan, "g": False}) == \
        {"a": 1.0, "b": 0.5, "g": 0.0}
    assert flatten({"train": {"lr": 3e-5, "lora": {"r": 0}}, "tracking": [], "reward": {"settings": {}}},
                   into_mappings=True) == {"train.lr": 3e-5, "train.lora.r": 0, "tracking": [], "reward.settings": {}}


class Recorder(Tracker):
    def __init__(self):
        self.logged, self.closed = [], None

    def log(self, step, metrics):
        self.logged.append((step, dict(metrics)))

    def close(self, failed=False):
        self.closed = failed


def test_metrics_writer_feeds_and_closes_its_trackers(tmp_path):
    a, b = Recorder(), Recorder()
    with MetricsWriter(tmp_path / "m.jsonl", tracker=MultiTracker([a, b])) as mw:
        mw.write(1, {"x": 1.0})
    assert a.logged == b.logged == [(1, {"x": 1.0})] and a.closed is False and b.closed is False
    c = Recorder()
    with pytest.raises(ValueError):
        with MetricsWriter(tmp_path / "m2.jsonl", tracker=c) as mw:
            raise ValueError
    assert c.closed is True  # the tracker run is marked failed


def test_tensorboard_events_written_and_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the track extra is not installed: pip install 'r1lab[track]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(make_tracker(_cfg("tensorboard"), tmp_path, "rl"), tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "rl"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(EXPECTED)
    for key, points in EXPECTED.items():
        assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars(key)] == points
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_mlflow_run_written_and_read_back(tmp_path):
    pytest.importorskip("mlflow", reason="the track extra is not installed: pip install 'r1lab[track]'")
    pytest.importorskip("sqlalchemy", reason="the track extra is not installed: pip install 'r1lab[track]'")
    from mlflow.tracking import MlflowClient

    cfg = _cfg("mlflow")
    _log(make_tracker(cfg, tmp_path, "sft"), tmp_path)
    _log(make_tracker(cfg, tmp_path, "rl"), tmp_path, failed=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tmp_path.name)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"sft", "rl"}
    assert runs["sft"].info.status == "FINISHED" and runs["rl"].info.status == "FAILED"
    for run in runs.values():
        for key, points in EXPECTED.items():
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert got == [(s, pytest.approx(v)) for s, v in points], key
        params = run.data.params
        assert params["train.lr"] == "3e-05" and params["name"] == "run1" and params["tracking"] == "['mlflow']"


def _wandb_records(path):
    """The records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB-log chunks in
    32 KiB blocks, each chunk a 7-byte header (checksum, length, type) and a piece of a protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and n == 0:  # zero padding to the end of a block
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def test_wandb_offline_run_written_and_read_back(tmp_path):
    pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install 'r1lab[wandb]'")
    import json

    import os
    import subprocess
    import sys

    env = {**os.environ, **dict.fromkeys(("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"),
                                         str(tmp_path / "wandb-home"))}
    # written in a process of its own, as a run writes it: inside the whole suite's process (after the
    # Ray, vLLM and worker-group tests) the offline run came out without its history records
    code = ("import json, sys; from pathlib import Path; from r1lab.config import load_config; "
            "from r1lab.runs import MetricsWriter; from r1lab.tracking import make_tracker\n"
            "path = Path(sys.argv[1]); steps = json.loads(sys.argv[2])\n"
            "cfg = load_config(None, ['tracking=[wandb]', 'name=run1'])\n"
            "with MetricsWriter(path / 'metrics.jsonl', tracker=make_tracker(cfg, path, 'rl')) as mw:\n"
            "    for step, m in steps.items():\n        mw.write(int(step), m)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), json.dumps(STEPS)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = _wandb_records(path)
    name = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731 (the writer fills one or the other)
    rows = [{name(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    got: dict[str, list] = {}
    for row in rows:
        for key, v in row.items():
            if not key.startswith("_") and key != "step":
                got.setdefault(key, []).append((row["step"], pytest.approx(v)))
    assert got == EXPECTED
    (run,) = [r.run for r in records if r.HasField("run")]
    config = {name(i): json.loads(i.value_json) for i in run.config.update}
    assert config["train"]["lr"] == 3e-5 and run.display_name == "rl"

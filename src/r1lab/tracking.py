"""Experiment trackers beside metrics.jsonl, chosen by the config's `tracking: [...]`.

    tensorboard   event files under <run>/tensorboard/<stage>/   (`tensorboard --logdir <run>/tensorboard`)
    mlflow        a local SQLite store, <run>/mlflow.db           (`mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db`)
    wandb         an offline W&B run under <run>/wandb/           (`wandb sync <run>/wandb/offline-run-*`)

Each stage (sft, rl) is one tracker run; every step's numeric metrics are logged under the same
names as in metrics.jsonl, and the resolved config as parameters. None of them needs a network;
the packages are optional extras (`pip install 'r1lab[track]'`, `'r1lab[wandb]'`), and the default
`tracking: []` writes files only.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any, Callable

from r1lab.config import flatten
from r1lab.errors import ConfigError

# tracker name -> (the module it imports, the extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "track"),
    "mlflow": ("mlflow", "track"),
    "wandb": ("wandb", "wandb"),
}


def check_tracking(names: list[str]) -> None:
    """One clear error for an unknown tracker or one whose package is not installed."""
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f"tracking: unknown tracker {name!r} (known: {', '.join(BACKENDS)})")
        module, extra = BACKENDS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking: {name!r} needs the {module} package: pip install 'r1lab[{extra}]'")


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among `metrics` (strings, None, NaN and Inf are left out; bools as 0/1)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


class Tracker:
    """Receives each step's metrics; `close(failed)` ends the tracker run."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: Path, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=str(logdir))
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in numeric(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # each step on disk: a crashed run keeps its curves

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """A run in a local MLflow store: one SQLite file in the run directory (MLflow's own local
    backend; its older directory store refuses to open unless an environment switch allows it).
    The experiment is named after the run directory, each stage is one MLflow run."""

    def __init__(self, db: Path, experiment: str, run_name: str, config: dict[str, Any]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        db = db.resolve()
        self.uri = f"sqlite:///{db}"
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            experiment, artifact_location=(db.parent / "mlartifacts").as_uri())
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in flatten(config, into_mappings=True).items()]
        for i in range(0, len(params), 100):  # the store takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, v, ts, step) for k, v in numeric(metrics).items()]
        for i in range(0, len(batch), 1000):  # at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbTracker(Tracker):
    """An offline W&B run (nothing leaves the machine; `wandb sync` uploads it later). Steps go to
    a `step` metric rather than W&B's own counter, which must only grow: value pretraining logs
    negative steps first."""

    def __init__(self, root: Path, project: str, run_name: str, config: dict[str, Any]):
        import wandb

        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(root), project=project, name=run_name, config=config)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log({**numeric(metrics), "step": step})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MultiTracker(Tracker):
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log(step, metrics)

    def close(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.close(failed)


FACTORIES: dict[str, Callable[[Path, str, str, dict[str, Any]], Tracker]] = {
    "tensorboard": lambda run_dir, name, stage, config: TensorBoardTracker(run_dir / "tensorboard" / stage, config),
    "mlflow": lambda run_dir, name, stage, config: MLflowTracker(run_dir / "mlflow.db", name, stage, config),
    "wandb": lambda run_dir, name, stage, config: WandbTracker(run_dir, name, stage, config),
}


def make_tracker(cfg: Any, run_dir: str | Path, stage: str) -> Tracker | None:
    """The trackers named by cfg.tracking for one stage of the run in `run_dir`; None when there are none."""
    if not cfg.tracking:
        return None
    check_tracking(cfg.tracking)
    from r1lab.config import to_dict

    run_dir = Path(run_dir)
    config = to_dict(cfg)
    trackers = [FACTORIES[n](run_dir, run_dir.name, stage, config) for n in dict.fromkeys(cfg.tracking)]
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)

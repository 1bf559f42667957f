"""One runner for every command that runs stages: `r1lab demo`, `sft`, `rl`, `dpo`, `pipeline` and
`rstar` each build a `Plan` (its stages, in order) and hand it to `run_plan`.

Done markers. A stage that finished writes `stages/<key>.json` in the plan's run directory: the
settings its result depends on (flat: `sft.lr`), what it produced (`result`) and its seconds.

Resume. `resume=RUN_DIR` runs the same plan again in that directory. Each stage, in order, is
- done: its marker is there, written under the same settings: not run, its result read back;
- resume: interrupted (or finished and asked for more, see `Stage.extends`) with resumable
  checkpoints: it continues from the last one;
- restart: interrupted without checkpoints: it runs again from its start;
- new: it never started.
A finished stage whose settings changed is refused, naming the setting; after a stage that is not
done, every later stage runs again. A fresh run (no resume=) forgets the markers and resumable
checkpoints an earlier run left in its directory.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from r1lab.config import RunConfig, flatten, load_config, save_config
from r1lab.errors import ConfigError, EngineError
from r1lab.records import write_text_atomic

MARKERS = "stages"  # the folder of done markers in a run directory


@dataclass
class Context:
    """What a running stage may read: the plan, each stage's status, and the results and seconds of
    the stages before it (run now or read back from their markers)."""

    plan: "Plan"
    status: dict[str, str]
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def resuming(self, key: str) -> bool:
        """Whether stage `key` continues from its resumable checkpoints."""
        return self.status.get(key) == "resume"

    @property
    def read_back(self) -> list[str]:
        return [k for k, s in self.status.items() if s == "done"]


@dataclass
class Stage:
    key: str  # its name in the plan and its marker's file name
    run: Callable[[Context], Any]  # does the work; returns what the marker records (JSON-able)
    settings: dict[str, Any] = field(default_factory=dict)  # what its result depends on, flat
    label: str = ""  # how messages name it (default: the key)
    seed: int | None = None  # random and torch streams seeded with it before it runs (None: left as they are)
    checkpoints: tuple[Path, str] | None = None  # (run path, folder) of the resumable checkpoints it writes
    # settings whose change continues a finished stage from its checkpoints (more RL steps) instead of refusing
    extends: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None  # a directory of its own, removed when the stage starts again
    check_resume: Callable[[], None] | None = None  # checks before it continues from its checkpoints

    def __post_init__(self) -> None:
        self.label = self.label or self.key

    def has_checkpoints(self) -> bool:
        from r1lab.train.checkpoint import checkpoints

        return self.checkpoints is not None and bool(checkpoints(*self.checkpoints))


@dataclass
class Plan:
    command: str  # `r1lab <command>`, for messages
    run_dir: Path
    stages: list[Stage]
    resume: bool = False  # run again in run_dir: finished stages are read back
    start: Callable[[], None] | None = None  # writes what the run begins with (config.yaml), before any stage


# --------------------------------------------------------------------------------------------
# markers


def marker_path(run_dir: Path, key: str) -> Path:
    return Path(run_dir) / MARKERS / f"{key}.json"


def read_marker(run_dir: Path, key: str) -> dict[str, Any] | None:
    path = marker_path(run_dir, key)
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a marker is written atomically; an unreadable one counts as unfinished
    # a marker of an r1lab before this runner records no settings to compare: its stage runs again
    return marker if isinstance(marker, dict) and "settings" in marker else None


def legacy_markers(run_dir: Path) -> list[str]:
    """Done markers written before this runner (a pipeline stage's done.json, a demo stage's marker
    without settings), relative to the run directory: they are not read, so their stages run again."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob("*/done.json"))
    for path in sorted((run_dir / MARKERS).glob("*.json")):
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not (isinstance(marker, dict) and "settings" in marker):
            found.append(path)
    return [str(p.relative_to(run_dir)) for p in found]


def portable(value: Any, run_dir: Path) -> Any:
    """`value` as its marker holds it: through JSON (a schedule's integer keys become strings on both
    sides of a comparison), paths inside the run directory written relative to it ($RUN/...), so a
    moved run still compares."""
    text = json.dumps(value, default=str, sort_keys=True).replace(json.dumps(str(run_dir))[1:-1], "$RUN")
    return json.loads(text)


def _first_change(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
                  ) -> tuple[str, Any, Any] | None:
    """The first setting whose value differs. A setting recorded on one side only and at its
    default in `defaults` on the other is not a change: an r1lab that added it (or a stage that no
    longer compares it) ran as its default does."""
    for key in [*new, *(k for k in old if k not in new)]:
        one_side = (key in old) != (key in new)
        if one_side and defaults is not None and key in defaults and (new if key in new else old)[key] == defaults[key]:
            continue
        if old.get(key) != new.get(key):
            return key, old.get(key), new.get(key)
    return None


def _defaults() -> dict[str, Any]:
    return json.loads(json.dumps(flatten(RunConfig()), default=str, sort_keys=True))


def write_marker(plan: Plan, stage: Stage, result: Any, seconds: float) -> None:
    marker = {"stage": stage.label, "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "result": result, "settings": portable(stage.settings, plan.run_dir),
              "extends": portable(stage.extends, plan.run_dir)}
    path = marker_path(plan.run_dir, stage.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(marker, indent=1, default=float) + "\n")


# --------------------------------------------------------------------------------------------
# status and running


def stage_status(plan: Plan) -> dict[str, str]:
    """Each stage's status (done | resume | restart | new, see the module doc). Refuses, before
    anything runs, a finished stage whose settings changed."""
    if not plan.resume:
        return {s.key: "new" for s in plan.stages}
    status: dict[str, str] = {}
    defaults = _defaults()
    finished = True  # every stage before this one is done
    for stage in plan.stages:
        marker = read_marker(plan.run_dir, stage.key) if finished else None
        if marker is not None:
            change = _first_change(marker.get("settings", {}), portable(stage.settings, plan.run_dir), defaults)
            if change:
                k, old, new = change
                raise ConfigError(f"{stage.label}: {k} differs from the finished stage's ({old!r} -> {new!r}); "
                                  "a finished stage is not run again (start a new run to change it)")
            grown = _first_change(marker.get("extends", {}), portable(stage.extends, plan.run_dir))
            if not grown:
                status[stage.key] = "done"
                continue
            if not stage.has_checkpoints():
                k, old, new = grown
                raise ConfigError(f"{stage.label}: {k} differs from the finished stage's ({old!r} -> {new!r}) and "
                                  "it has no resumable checkpoint to continue from")
        first_unfinished, finished = finished, False
        if first_unfinished and stage.has_checkpoints():
            if stage.check_resume is not None:
                try:
                    stage.check_resume()
                except ConfigError as e:
                    raise ConfigError(f"{stage.label}: {e}") from None
            status[stage.key] = "resume"
        elif stage.directory is not None and stage.directory.exists():
            status[stage.key] = "restart"
        else:
            status[stage.key] = "new"
    return status


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def run_plan(plan: Plan, log: Callable[..., None] = print, status: dict[str, str] | None = None) -> Context:
    """Run the plan's stages that are not done, in order, each leaving its marker; returns the
    context (every stage's result and seconds). An engine that fails to start in a fresh run leaves
    no run directory behind."""
    status = stage_status(plan) if status is None else status
    fresh = not plan.run_dir.exists()
    with _no_run_left_if_engine_fails(plan.run_dir, fresh):
        if plan.resume:
            done = [s.key for s in plan.stages if status[s.key] == "done"]
            log(f"r1lab {plan.command}: resuming {plan.run_dir} (done: {', '.join(done) or 'nothing'})")
            if legacy := legacy_markers(plan.run_dir):
                log(f"r1lab {plan.command}: {len(legacy)} done marker(s) of an earlier r1lab ({legacy[0]}, ...) record no "
                    "settings to compare: those stages run again")
        else:
            _forget_earlier_run(plan)
        if plan.start is not None:
            plan.start()
        ctx = Context(plan, status)
        for stage in plan.stages:
            state = status[stage.key]
            if state == "done":
                marker = read_marker(plan.run_dir, stage.key) or {}
                ctx.results[stage.key], ctx.seconds[stage.key] = marker.get("result"), marker.get("seconds", 0.0)
                continue
            if state == "restart":
                log(f"{stage.label}: interrupted without a checkpoint, starting it again")
                if stage.directory is not None:
                    shutil.rmtree(stage.directory, ignore_errors=True)
            elif state == "resume":
                log(f"{stage.label}: resuming from its last checkpoint")
            if stage.seed is not None:
                seed_all(stage.seed)
            t = time.time()
            ctx.results[stage.key] = stage.run(ctx)
            ctx.seconds[stage.key] = time.time() - t
            write_marker(plan, stage, ctx.results[stage.key], ctx.seconds[stage.key])
    return ctx


def _forget_earlier_run(plan: Plan) -> None:
    """A fresh run in a directory that held another: that run's markers and resumable checkpoints must
    not be taken for this one's by a later resume."""
    from r1lab.train.checkpoint import checkpoints, remove_checkpoint

    paths = list((plan.run_dir / MARKERS).glob("*.json"))
    for stage in plan.stages:
        if stage.checkpoints is not None:
            paths += checkpoints(*stage.checkpoints)
    for path in paths:
        remove_checkpoint(path)  # a file, or a sharded checkpoint's directory


@contextlib.contextmanager
def _no_run_left_if_engine_fails(path: Path, fresh: bool):
    """An engine that cannot run the model or does not start is found only once the model is loaded,
    after the run directory was made: remove that directory again if this run created it."""
    try:
        yield
    except EngineError:
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# the run directory of a resumed run, and a fresh run's name


def resumed_config(cfg: RunConfig, allowed: tuple[str, ...]) -> RunConfig:
    """The config of a run resumed from cfg.resume: the run's own name and place, checked to be the
    run's settings (those named in `allowed` may change); config.yaml is rewritten with it."""
    from r1lab.train.checkpoint import check_resume_config

    path = Path(cfg.resume)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"resume: {path} is not a run directory (no config.yaml)")
    saved = load_config(path / "config.yaml")
    cfg.name, cfg.out_dir = saved.name, saved.out_dir  # the run's own name, wherever it is resumed from
    check_resume_config(saved, cfg, allowed)
    save_config(cfg, path / "config.yaml")
    return cfg


def name_run(cfg: RunConfig, command: str) -> RunConfig:
    """A run not named on the command line is named after its command and the time."""
    if cfg.name == "run":
        cfg.name = time.strftime(f"{command}-%Y%m%d-%H%M%S")
    return cfg


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.resume) if cfg.resume else Path(cfg.out_dir) / cfg.name


def settings_of(cfg: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config flat (`sft.lr`), less the settings (names or section prefixes) in `skip`."""
    return {k: v for k, v in flatten(cfg).items() if not any(k == s or k.startswith(s + ".") for s in skip)}

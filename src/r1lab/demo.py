"""`r1lab demo`: the whole pipeline on a tiny model, in minutes on a laptop CPU.

data (generate, decontaminate, verify teacher traces) -> tiny model built offline -> eval ->
SFT on verified traces -> eval -> GRPO -> eval -> report.md, plots and a table of what each stage gained.

Each finished stage leaves a done marker (`stages/<stage>.json`: the config it ran with, what it
produced, its seconds). `r1lab demo resume=RUN_DIR` continues an interrupted demo: finished stages
are read back from the run directory, an interrupted SFT or RL stage continues from its last
resumable checkpoint (from its start when it wrote none), an interrupted evaluation from the
problems it scored, so the report equals the uninterrupted run's.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from r1lab.config import RunConfig, from_dict, load_config, save_config, to_dict
from r1lab.errors import ConfigError
from r1lab.models import count_parameters, load_model, resolve_device, save_model
from r1lab.plots import plot_stages
from r1lab.records import Problem, load_problems, save_problems, write_text_atomic
from r1lab.report import stage_table, write_report
from r1lab.runs import RunDir, read_metrics
from r1lab.stages import Data, health_section, load_policy, prepare_data, run_eval, run_rl, run_sft
from r1lab.train.checkpoint import SFT_STATE_DIR, STATE_DIR, check_resume_config, checkpoints, remove_checkpoint

STAGES = ("data", "model", "eval-untrained", "sft", "eval-sft", "rl", "eval-rl", "report")
# settings that may change when a demo is resumed: where and how often checkpoints are written
DEMO_RESUMABLE_CHANGES = ("resume", "train.save_every", "train.keep_checkpoints", "sft.save_every",
                          "sft.keep_checkpoints", "tracking")
TRAINED = {"model": "base", "sft": "sft", "rl": "rl"}  # stage -> the checkpoint it leaves
TIMING_KEYS = ("time", "step")  # metrics.jsonl's bookkeeping columns, not a step's measurements


def resume_config(cfg: RunConfig) -> RunConfig:
    """The config of a demo resumed from cfg.resume: the run's own name and place, checked to be the
    run's settings (only the checkpoint cadence may change); config.yaml is rewritten with it."""
    path = Path(cfg.resume)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"resume: {path} is not a run directory (no config.yaml)")
    saved = load_config(path / "config.yaml")
    cfg.name, cfg.out_dir = saved.name, saved.out_dir  # the run's own name, wherever it is resumed from
    check_resume_config(saved, cfg, DEMO_RESUMABLE_CHANGES)
    save_config(cfg, path / "config.yaml")
    return cfg


class StageMarks:
    """The done markers of a run's stages (stages/<stage>.json). A marker read back must have been
    written under the same settings (those of DEMO_RESUMABLE_CHANGES aside), or it is refused."""

    def __init__(self, run: RunDir, cfg: RunConfig):
        self.folder = run.file("stages")
        self.cfg = cfg

    def done(self, stage: str) -> dict[str, Any] | None:
        path = self.folder / f"{stage}.json"
        if not self.cfg.resume or not path.is_file():
            return None
        marker = json.loads(path.read_text(encoding="utf-8"))
        check_resume_config(from_dict(yaml.safe_load(marker["config"])), self.cfg, DEMO_RESUMABLE_CHANGES)
        return marker

    def mark(self, stage: str, result: Any, seconds: float) -> None:
        # the config as YAML text: JSON would turn the integer keys of step schedules into strings
        config = yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
        marker = {"stage": stage, "seconds": seconds, "result": result, "config": config}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.folder / f"{stage}.json", json.dumps(marker, indent=1, default=float) + "\n")


def _forget_earlier_run(run: RunDir) -> None:
    """A fresh demo in a directory that held another run: that run's markers, resumable checkpoints
    and per-stage evaluations must not be taken for this one's by a later resume."""
    paths = [*run.file("stages").glob("*.json"), *(run.file(f"eval/{s}.jsonl") for s in ("untrained", "sft", "rl"))]
    for folder in (STATE_DIR, SFT_STATE_DIR):
        paths += checkpoints(run.path, folder)
    for path in paths:
        remove_checkpoint(path)  # a file, or a sharded checkpoint's directory


def _seed_stage(cfg: RunConfig, stage: str) -> None:
    """Each stage starts from random streams of its own, so a stage run after a resume starts where
    the uninterrupted run's did, whatever the stages before it consumed."""
    seed = cfg.seed * 1000 + STAGES.index(stage)
    random.seed(seed)
    torch.manual_seed(seed)


def _read_back_data(run: RunDir, report: dict[str, Any]) -> Data:
    """The data stage's output, from the files it wrote."""
    sft = []
    for p in load_problems(run.file("data/sft.jsonl")):
        meta = dict(p.metadata)
        response = str(meta.pop("response"))
        sft.append((Problem(**{**p.to_dict(), "metadata": meta}), response))
    curriculum = None
    if "curriculum" in report:
        report["curriculum"] = {int(level): n for level, n in report["curriculum"].items()}  # JSON keys are strings
        curriculum = {level: load_problems(run.file(f"data/curriculum-{level}.jsonl")) for level in report["curriculum"]}
    return Data(load_problems(run.file("data/train.jsonl")), load_problems(run.file("data/eval.jsonl")), sft, report,
                curriculum)


def _rl_history(run: RunDir) -> list[dict[str, Any]]:
    """The RL steps' metrics as logged (value pretraining rows aside), uninterrupted or resumed alike."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run.file("metrics.jsonl"))
            if r["step"] > 0]


def run_demo(cfg: RunConfig, show_progress: bool = True, log=print) -> dict[str, Any]:
    """Run the demo into out_dir/name, or continue the one cfg.resume names (see the module doc)."""
    t_start = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = RunDir(Path(cfg.resume) if cfg.resume else Path(cfg.out_dir) / cfg.name)
    marks = StageMarks(run, cfg)
    if cfg.resume:
        finished = [s for s in STAGES if marks.done(s) is not None]
        log(f"r1lab demo: resuming {run.path} (done: {', '.join(finished) or 'nothing'})")
        if "report" in finished:
            log(f"the demo had finished. Report: {run.file('report.md')}")
            return json.loads(run.file("summary.json").read_text(encoding="utf-8"))
    else:
        run = RunDir.create(cfg)
        _forget_earlier_run(run)
        log(f"r1lab demo -> {run.path}")
    times: dict[str, float] = {}
    read_back: list[str] = []

    def stage(name: str) -> dict[str, Any] | None:
        """The marker of `name` when it finished before (noted as read back), else None after seeding."""
        marker = marks.done(name)
        if marker is not None:
            read_back.append(name)
            times[name] = marker["seconds"]
            return marker
        _seed_stage(cfg, name)
        return None

    # data
    marker = stage("data")
    if marker is None:
        t = time.time()
        data = prepare_data(cfg, run, log=log)
        for level, pool in (data.curriculum or {}).items():
            save_problems(run.file(f"data/curriculum-{level}.jsonl"), pool)
        marks.mark("data", data.report, time.time() - t)
    else:
        data = _read_back_data(run, marker["result"])

    # the model the next unfinished stage starts from: the last finished training stage's checkpoint
    model = tok = None
    marker = stage("model")
    if marker is None:
        t = time.time()
        model, tok = load_policy(cfg, data)
        save_model(model, tok, run.checkpoint("base"))
        info = {"type": type(model).__name__, "parameters": count_parameters(model), "vocabulary": len(tok)}
        marks.mark("model", info, time.time() - t)
    else:
        info = marker["result"]
    log(f"model: {info['type']}, {info['parameters'] / 1e6:.2f}M parameters, vocabulary {info['vocabulary']}")

    def policy(trained: str):
        nonlocal model, tok
        if model is None:
            model, tok = load_model(run.checkpoint(TRAINED[trained]), cfg.model.dtype)
            model = model.to(resolve_device(cfg.model.device))
        return model, tok

    stages: dict[str, dict[str, float]] = {}

    def evaluate(name: str, trained: str) -> None:
        marker = stage(f"eval-{name}")
        if marker is None:
            t = time.time()
            m, k = policy(trained)
            res = run_eval(cfg, m, k, data.eval, run.file(f"eval/{name}.jsonl"), f"eval {name}", show_progress,
                           resume=bool(cfg.resume), settings={"stage": name})
            marks.mark(f"eval-{name}", res.summary, time.time() - t)
            stages[name] = res.summary
        else:
            stages[name] = marker["result"]
        log(f"  {name}: avg@{cfg.eval.n} {100 * stages[name][f'avg@{cfg.eval.n}']:.1f}%  "
            f"maj@{cfg.eval.n} {100 * stages[name][f'maj@{cfg.eval.n}']:.1f}%")

    evaluate("untrained", "model")
    marker = stage("sft")
    if marker is None:
        t = time.time()
        m, k = policy("model")
        sft_summary = run_sft(cfg, run, m, k, data, show_progress,
                              resume=bool(cfg.resume) and bool(checkpoints(run.path, SFT_STATE_DIR)))
        times["sft"] = time.time() - t
        marks.mark("sft", sft_summary, times["sft"])
    else:
        sft_summary = marker["result"]
    evaluate("sft", "sft")
    if stage("rl") is None:
        t = time.time()
        m, k = policy("sft")
        run_rl(cfg, run, m, k, data, show_progress, resume=bool(cfg.resume) and bool(checkpoints(run.path)))
        times["rl"] = time.time() - t
        marks.mark("rl", {}, times["rl"])
    history = _rl_history(run)
    evaluate("rl", "rl")

    _seed_stage(cfg, "report")
    n = cfg.eval.n
    table = stage_table(stages, n, cfg.eval.ks)
    plot_stages(stages, [f"avg@{n}", f"pass@{max(cfg.eval.ks)}", f"maj@{n}"], run.file("plots/stages.png"),
                "held-out accuracy by stage")
    gain_sft = stages["sft"][f"avg@{n}"] - stages["untrained"][f"avg@{n}"]
    gain_rl = stages["rl"][f"avg@{n}"] - stages["sft"][f"avg@{n}"]
    # a resumed run: the stages read back count with the seconds they took the first time
    total = time.time() - t_start + sum(times[s] for s in read_back)
    gen_tps = [h["throughput/gen_tokens_per_s"] for h in history]
    train_tps = [h["throughput/train_tokens_per_s"] for h in history]
    summary = {
        "stages": stages,
        "gain_sft": gain_sft,
        "gain_rl": gain_rl,
        "seconds": {"total": total, "sft": times["sft"], "rl": times["rl"]},
        "data": data.report,
        "sft": sft_summary,
        "rl_final": history[-1] if history else {},
        "throughput": {
            "rollout_tokens_per_s": sum(gen_tps) / max(1, len(gen_tps)),
            "train_tokens_per_s": sum(train_tps) / max(1, len(train_tps)),
        },
    }
    if cfg.resume:
        summary["resumed"] = {"read_back": read_back}
    write_text_atomic(run.path / "summary.json", json.dumps(summary, indent=2, default=float))
    shown = copy.deepcopy(cfg)
    shown.resume = ""  # the settings the results depend on; a resume is said under "Time"
    resumed = (f"\n- resumed: {', '.join(read_back)} read back from the interrupted run (their seconds as first "
               "measured); an interrupted SFT or RL stage counts the seconds after its resume" if cfg.resume else "")
    write_report(
        run.file("report.md"),
        f"r1lab demo: {run.path.name}",
        [
            ("What each stage gained (held-out problems)",
             f"{len(data.eval)} held-out problems of {', '.join(cfg.data.tasks)} (difficulty {cfg.data.difficulty}), "
             f"{n} samples each at temperature {cfg.eval.temperature}. Accuracies in %, lengths in tokens.\n\n"
             f"{table}\n\nSFT gained {100 * gain_sft:+.1f} points avg@{n}; RL ({cfg.algo.advantage}) "
             f"gained {100 * gain_rl:+.1f} points over SFT.\n\n![stages](plots/stages.png)"),
            ("Training curves", "![sft](plots/sft.png)\n\n![rl](plots/rl.png)"),
            health_section(cfg, run),
            ("Data", "\n".join(f"- {k}: {v}" for k, v in data.report.items())),
            ("Time and throughput",
             f"- total {total:.0f} s (SFT {times['sft']:.0f} s, RL {times['rl']:.0f} s){resumed}\n"
             f"- rollout {summary['throughput']['rollout_tokens_per_s']:.0f} generated tokens/s, "
             f"training {summary['throughput']['train_tokens_per_s']:.0f} tokens/s (mean over RL steps)"),
            ("Files", "config.yaml (resolved config), metrics.jsonl (RL, one line per step), health.jsonl (run-health findings), sft_metrics.jsonl, "
             "samples.jsonl, eval/*.jsonl (per problem, every sample), checkpoints/{base,sft,rl} (HF format), "
             "checkpoints/{sft-state,state} (resumable), stages/*.json (done markers), plots/*.png"),
            ("Config", "```yaml\n" + yaml.safe_dump(to_dict(shown), sort_keys=False) + "```"),
        ],
    )
    marks.mark("report", {"report": "report.md", "summary": "summary.json"}, time.time() - t_start)
    log("")
    log(table)
    log(f"\nSFT {100 * gain_sft:+.1f} points, RL {100 * gain_rl:+.1f} points (avg@{n}); "
        f"{total:.0f} s in all. Report: {run.file('report.md')}")
    return summary

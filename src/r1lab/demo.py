"""`r1lab demo`: the whole pipeline on a tiny model, in minutes on a laptop CPU.

data (generate, decontaminate, verify teacher traces) -> tiny model built offline -> eval ->
SFT on verified traces -> eval -> GRPO -> eval -> report.md, plots and a table of what each stage gained.

The demo is a plan of those stages (STAGES) run by r1lab.runner: each finished stage leaves a done
marker (`stages/<stage>.json`). `r1lab demo resume=RUN_DIR` continues an interrupted demo: finished
stages are read back from the run directory, an interrupted SFT or RL stage continues from its last
resumable checkpoint (from its start when it wrote none), an interrupted evaluation from the
problems it scored, so the report equals the uninterrupted run's.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import torch
import yaml

from r1lab.config import RunConfig, to_dict
from r1lab.eval.stage import run_eval
from r1lab.models import count_parameters, load_model, resolve_device, save_model
from r1lab.plots import plot_stages
from r1lab.records import Problem, load_problems, save_problems, write_text_atomic
from r1lab.report import stage_table, write_report
from r1lab.runner import Context, Plan, Stage, name_run, resumed_config, run_dir_of, run_plan, settings_of
from r1lab.runs import RunDir, read_metrics
from r1lab.stages import Data, health_section, load_policy, prepare_data, run_rl, run_sft
from r1lab.train.checkpoint import SFT_STATE_DIR, STATE_DIR

STAGES = ("data", "model", "eval-untrained", "sft", "eval-sft", "rl", "eval-rl", "report")
# settings that may change when a demo is resumed: where and how often checkpoints are written
DEMO_RESUMABLE_CHANGES = ("resume", "train.save_every", "train.keep_checkpoints", "sft.save_every",
                          "sft.keep_checkpoints", "tracking")
TRAINED = {"model": "base", "sft": "sft", "rl": "rl"}  # stage -> the checkpoint it leaves
TIMING_KEYS = ("time", "step")  # metrics.jsonl's bookkeeping columns, not a step's measurements


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


class _Demo:
    """The demo's stages over one run directory. The data and the model the next stage starts from
    are made by a stage, or read back from the run directory when that stage finished earlier."""

    def __init__(self, cfg: RunConfig, show_progress: bool, log):
        self.cfg, self.show_progress, self.log = cfg, show_progress, log
        self.path = run_dir_of(cfg)
        self.run: RunDir  # made when the run starts
        self._data: Data | None = None
        self.model = self.tok = None

    def start(self) -> None:
        self.run = RunDir(self.path) if self.cfg.resume else RunDir.create(self.cfg)
        if not self.cfg.resume:
            self.log(f"r1lab demo -> {self.run.path}")
            for name in ("untrained", "sft", "rl"):  # an earlier run's evaluations are not this one's
                self.run.file(f"eval/{name}.jsonl").unlink(missing_ok=True)

    def data(self, ctx: Context) -> Data:
        if self._data is None:
            self._data = _read_back_data(self.run, ctx.results["data"])
        return self._data

    def policy(self, trained: str):
        """The model in memory, else the checkpoint `trained` left."""
        if self.model is None:
            model, self.tok = load_model(self.run.checkpoint(TRAINED[trained]), self.cfg.model.dtype)
            self.model = model.to(resolve_device(self.cfg.model.device))
        return self.model, self.tok

    # -- the stages ------------------------------------------------------------------------------

    def prepare(self, ctx: Context) -> dict[str, Any]:
        self._data = prepare_data(self.cfg, self.run, log=self.log)
        for level, pool in (self._data.curriculum or {}).items():
            save_problems(self.run.file(f"data/curriculum-{level}.jsonl"), pool)
        return self._data.report

    def build_model(self, ctx: Context) -> dict[str, Any]:
        self.model, self.tok = load_policy(self.cfg, self.data(ctx))
        save_model(self.model, self.tok, self.run.checkpoint("base"))
        return {"type": type(self.model).__name__, "parameters": count_parameters(self.model),
                "vocabulary": len(self.tok)}

    def evaluate(self, name: str, trained: str):
        def stage(ctx: Context) -> dict[str, float]:
            m, k = self.policy(trained)
            return run_eval(self.cfg, m, k, self.data(ctx).eval, self.run.file(f"eval/{name}.jsonl"), f"eval {name}",
                            self.show_progress, resume=ctx.plan.resume, settings={"stage": name}).summary
        return stage

    def sft(self, ctx: Context) -> dict[str, float]:
        m, k = self.policy("model")
        return run_sft(self.cfg, self.run, m, k, self.data(ctx), self.show_progress, resume=ctx.resuming("sft"))

    def rl(self, ctx: Context) -> dict[str, Any]:
        m, k = self.policy("sft")
        run_rl(self.cfg, self.run, m, k, self.data(ctx), self.show_progress, resume=ctx.resuming("rl"))
        return {}

    def report(self, ctx: Context) -> dict[str, Any]:
        return _report(self.cfg, self.run, self.data(ctx), ctx, self.log)


def demo_plan(cfg: RunConfig, show_progress: bool = True, log=print) -> Plan:
    """The demo's stages (STAGES) in out_dir/name, or in the run cfg.resume names (checked to be that
    run: only the checkpoint cadences may change)."""
    cfg = resumed_config(cfg, DEMO_RESUMABLE_CHANGES) if cfg.resume else name_run(cfg, "demo")
    demo = _Demo(cfg, show_progress, log)
    work = {"data": demo.prepare, "model": demo.build_model, "eval-untrained": demo.evaluate("untrained", "model"),
            "sft": demo.sft, "eval-sft": demo.evaluate("sft", "sft"), "rl": demo.rl,
            "eval-rl": demo.evaluate("rl", "rl"), "report": demo.report}
    folders = {"sft": SFT_STATE_DIR, "rl": STATE_DIR}
    settings = settings_of(cfg, ("name", "out_dir", *DEMO_RESUMABLE_CHANGES))
    # each stage starts from random streams of its own, so a stage run after a resume starts where
    # the uninterrupted run's did, whatever the stages before it consumed
    stages = [Stage(key, work[key], settings, seed=cfg.seed * 1000 + i,
                    checkpoints=(demo.path, folders[key]) if key in folders else None)
              for i, key in enumerate(STAGES)]
    return Plan("demo", demo.path, stages, resume=bool(cfg.resume), start=demo.start)


def run_demo(cfg: RunConfig, show_progress: bool = True, log=print) -> dict[str, Any]:
    """Run the demo into out_dir/name, or continue the one cfg.resume names (see the module doc)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    plan = demo_plan(cfg, show_progress, log)
    ctx = run_plan(plan, log)
    if ctx.status["report"] == "done":
        log(f"the demo had finished. Report: {plan.run_dir / 'report.md'}")
        return json.loads((plan.run_dir / "summary.json").read_text(encoding="utf-8"))
    return ctx.results["report"]


def _report(cfg: RunConfig, run: RunDir, data: Data, ctx: Context, log) -> dict[str, Any]:
    """summary.json and report.md: what each stage gained, curves, health, data, time."""
    info = ctx.results["model"]
    log(f"model: {info['type']}, {info['parameters'] / 1e6:.2f}M parameters, vocabulary {info['vocabulary']}")
    n = cfg.eval.n
    stages = {name: ctx.results[f"eval-{name}"] for name in ("untrained", "sft", "rl")}
    for name, res in stages.items():
        log(f"  {name}: avg@{n} {100 * res[f'avg@{n}']:.1f}%  maj@{n} {100 * res[f'maj@{n}']:.1f}%")
    history = _rl_history(run)
    read_back = [s for s in ctx.read_back if s != "report"]
    times = ctx.seconds
    table = stage_table(stages, n, cfg.eval.ks)
    plot_stages(stages, [f"avg@{n}", f"pass@{max(cfg.eval.ks)}", f"maj@{n}"], run.file("plots/stages.png"),
                "held-out accuracy by stage")
    gain_sft = stages["sft"][f"avg@{n}"] - stages["untrained"][f"avg@{n}"]
    gain_rl = stages["rl"][f"avg@{n}"] - stages["sft"][f"avg@{n}"]
    # a resumed run: the stages read back count with the seconds they took the first time
    total = time.time() - ctx.started + sum(times[s] for s in read_back)
    gen_tps = [h["throughput/gen_tokens_per_s"] for h in history]
    train_tps = [h["throughput/train_tokens_per_s"] for h in history]
    summary = {
        "stages": stages,
        "gain_sft": gain_sft,
        "gain_rl": gain_rl,
        "seconds": {"total": total, "sft": times["sft"], "rl": times["rl"]},
        "data": data.report,
        "sft": ctx.results["sft"],
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
    log("")
    log(table)
    log(f"\nSFT {100 * gain_sft:+.1f} points, RL {100 * gain_rl:+.1f} points (avg@{n}); "
        f"{total:.0f} s in all. Report: {run.file('report.md')}")
    return summary

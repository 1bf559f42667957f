"""Multi-stage recipes: one YAML lists the stages of a training pipeline (data steps, CPT, SFT, DPO,
RL, eval), each fed by the ones before it. `r1lab pipeline RECIPE` checks every stage, then runs them in
order, each in its own directory; `resume=RUN_DIR` skips the finished ones.

    description: Light-R1 at toy scale
    base: _tiny.yaml                       # shared settings: any config section, as in a one-stage recipe
    sft: {epochs: 3}
    stages:
      - sft: {}                            # every verified trace
      - data: {input: sft, steps: [filter: {k: 8, max_pass: 0.5, max_exclusive: true}]}
      - sft: {sft: {epochs: 2}}            # the harder subset, from the first SFT's model
      - data: {steps: [pairs: {k: 8}]}     # verifier-labelled pairs on the RL prompts
      - dpo: {dpo: {loss_args: {beta: 0.3}}}
      - rl: {train: {steps: 100}}
      - eval: {}

Files. The pipeline first prepares the shared `data` section (prepare/), which gives three named
files: `sft` (problems with a verified trace), `train` (RL prompts) and `eval` (held out). A data
stage runs `r1lab data` steps on one file (`input`, default train) and writes one (`output`; by
default its input's name, so the stages after it read the subset, or `pairs` when a step makes
pairs). Training stages read: cpt its text corpus (`cpt.corpus`, no named file; the tiny model's
tokenizer is trained on `sft`, as an SFT stage's is); sft `sft`; dpo `pairs` (given a problems file
instead, it samples its own pairs); rl `train`; eval `eval`. `input: NAME` reads another, such as a
data stage's `output: hard`.

Model. A training stage starts from the model of the training stage before it (the first one from
init_from, else model.path). Data steps that sample (reject-sample, filter, pairs, select) sample
that model unless they name one; eval scores it. A decontaminate step may name vendored benchmarks
(benchmarks: [aime24, math500]) as well as files.

Settings. A stage's mapping sets config sections over the shared ones, for that stage only
(`sft: {epochs: 2}`); name, out_dir, init_from and the data section are the pipeline's. Overrides:
`sft.lr=1e-4` (shared), `stages.2.sft.lr=1e-4` (one stage), `name=`, `out_dir=`, `resume=`.

Running. The pipeline is a plan of r1lab.runner: `prepare`, then one stage per entry. Run directory:
pipeline.yaml (the recipe as resolved), prepare/, then NN-KIND/ per stage (a run directory of its
own); stages/<key>.json is a stage's done marker: the settings it ran with, its outputs and held-out
scores (every training stage is scored; `evaluate_each: false` at the top turns that off);
summary.json and report.md at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from r1lab import runner
from r1lab.config import (RECIPE_META, RunConfig, apply_override, build_section, deep_merge, flatten, load_config,
                          read_recipe, suggest_key)
from r1lab.domains import check_fields
from r1lab.errors import ConfigError, R1labError
from r1lab.records import Problem, write_text_atomic
from r1lab.runner import settings_of

KINDS = ("data", "cpt", "sft", "dpo", "rl", "eval")
TRAINING = ("cpt", "sft", "dpo", "rl")
# cpt trains on its corpus (cpt.corpus); the `sft` file is its data section, as an SFT stage's: the
# tiny model's tokenizer is trained on it, so a pipeline with CPT first and one without have the same
DEFAULT_INPUT = {"data": "train", "cpt": "sft", "sft": "sft", "dpo": "pairs", "rl": "train", "eval": "eval"}
WIRING = {"data": ("input", "output", "steps"), "cpt": ()}  # a stage's own keys besides config sections (others: input)
SET_BY_PIPELINE = {
    "name": "each stage runs in RUN/NN-KIND",
    "out_dir": "each stage runs in RUN/NN-KIND",
    "resume": "resume= resumes the whole pipeline",
    "init_from": "a stage starts from the previous training stage's model",
    "data": "the shared data section is prepared once; a stage reads a file (input: NAME)",
}
ALL_ROWS = 1_000_000_000  # data.sft_size of an SFT stage: every row of its input file is an SFT example

# the config sections a stage does not read: a change there does not make a finished stage stale
NOT_READ = {
    "cpt": ("train", "algo", "sft", "dpo", "health", "cluster", "reward.token_credit"),
    "sft": ("train", "algo", "cpt", "dpo", "health", "cluster", "reward.token_credit"),
    "dpo": ("train", "algo", "cpt", "sft", "health", "cluster", "reward.token_credit"),
    "rl": ("cpt", "sft", "dpo"),
    "eval": ("train", "algo", "cpt", "sft", "dpo", "health", "cluster", "reward.token_credit"),
}
NEVER_COMPARED = ("name", "out_dir", "resume", "tracking")


@dataclass
class FileRef:
    path: Path
    kind: str  # problems | pairs


@dataclass
class Stage:
    index: int
    kind: str
    cfg: RunConfig  # the stage's resolved config (name, out_dir, init_from and data paths set)
    input: str  # name of the file it reads
    input_path: Path
    output: str = ""  # data: name of the file it writes
    output_path: Path | None = None
    steps: list[tuple[str, Any]] = field(default_factory=list)  # data: the `r1lab data` steps, import first
    model: str = ""  # the model it starts from / samples / scores ("" = the tiny model it builds)

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.kind}"

    @property
    def label(self) -> str:
        return f"stages[{self.index}] ({self.kind})"


@dataclass
class Plan:
    run_dir: Path  # absolute
    shared: RunConfig
    stages: list[Stage]
    evaluate_each: bool  # score every training stage's model on the held-out file
    resume: bool
    recipe: dict[str, Any]  # shared settings and stages as resolved from the YAML and the overrides


# --------------------------------------------------------------------------------------------
# planning: everything is checked here, before anything is written


def is_pipeline(raw: dict[str, Any]) -> bool:
    return "stages" in raw


def stage_kinds(raw: dict[str, Any]) -> list[str]:
    """The kinds of a pipeline recipe's stages, in order (for listings)."""
    out = []
    for entry in raw.get("stages") or []:
        out.append(entry if isinstance(entry, str) else next(iter(entry)) if isinstance(entry, dict) and entry else "?")
    return out


def _override(data: dict[str, Any], override: str) -> None:
    """`key.sub=value` on the shared settings; `stages.N.key.sub=value` on stage N's own."""
    key = override.split("=", 1)[0].strip()
    parts = key.split(".")
    if parts[0] != "stages":
        apply_override(data, override)
        return
    stages = data.get("stages")
    if len(parts) < 3 or not parts[1].isdigit():
        raise ConfigError(f"override '{override}': a stage's setting is stages.N.key=value (N counts from 0)")
    i = int(parts[1])
    if not isinstance(stages, list) or i >= len(stages):
        count = len(stages) if isinstance(stages, list) else 0
        raise ConfigError(f"override '{override}': the pipeline has {count} stages")
    entry = stages[i]
    if isinstance(entry, str):
        entry = stages[i] = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"override '{override}': stages[{i}] is not a {{kind: {{settings}}}} mapping")
    (kind, body), = entry.items()
    body = entry[kind] = dict(body or {})
    apply_override(body, ".".join(parts[2:]) + "=" + override.split("=", 1)[1])


def plan_pipeline(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Read a pipeline recipe and resolve every stage: its config, the file it reads and writes, the
    model it starts from. Any error is a ConfigError naming the stage (`stages[i] (kind)`) and field."""
    from r1lab.stages import check_run_config

    raw = read_recipe(recipe)
    if not is_pipeline(raw):
        raise ConfigError(f"{recipe}: no 'stages' list; a one-stage recipe runs with r1lab sft / rl / dpo")
    data = json.loads(json.dumps({k: v for k, v in raw.items() if k not in RECIPE_META}))  # a copy overrides may edit
    for o in overrides:
        _override(data, o)
    entries = data.pop("stages")
    evaluate_each = data.pop("evaluate_each", True)
    if not isinstance(evaluate_each, bool):
        raise ConfigError(f"evaluate_each: expected true/false, got {evaluate_each!r}")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{recipe}: 'stages' must be a non-empty list, e.g. [sft, rl, eval]")
    shared = build_section(RunConfig, data)
    shared = check_run_config(shared)
    if shared.train.curriculum:
        raise ConfigError("train.curriculum generates RL prompts per difficulty; a pipeline's RL stage reads a file "
                          "(the curriculum is not available in pipelines)")
    resume = bool(shared.resume)
    if resume:
        run_dir = Path(shared.resume)
    else:
        name = shared.name if shared.name != "run" else time.strftime("pipeline-%Y%m%d-%H%M%S")
        run_dir = Path(shared.out_dir) / name
    run_dir = run_dir.expanduser().resolve()
    prepared = run_dir / "prepare" / "data"
    files = {name: FileRef(prepared / f"{name}.jsonl", "problems") for name in ("sft", "train", "eval")}
    model = shared.init_from or shared.model.path
    built = model != "tiny"
    stages = []
    for i, entry in enumerate(entries):
        stage = _plan_stage(i, entry, data, run_dir, files, model if built else "")
        stages.append(stage)
        try:
            stage.cfg = check_run_config(stage.cfg, paths=False)  # its input files and model are written by earlier stages
        except ConfigError as e:
            raise ConfigError(f"{stage.label}: {e}") from None
        if stage.kind in TRAINING:
            model, built = str(run_dir / stage.dirname / "checkpoints" / stage.kind), True
    resolved = {**data, "evaluate_each": evaluate_each, "stages": entries}
    return Plan(run_dir, shared, stages, evaluate_each, resume, resolved)


def _plan_stage(i: int, entry: Any, shared: dict[str, Any], run_dir: Path, files: dict[str, FileRef],
                model: str) -> Stage:
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"stages[{i}]: a stage is a kind or a mapping {{kind: {{settings}}}}, "
                          "e.g. {sft: {sft: {epochs: 2}}}")
    (kind, body), = entry.items()
    if kind not in KINDS:
        raise ConfigError(f"stages[{i}]: unknown stage kind '{kind}'{suggest_key(str(kind), list(KINDS), '')}")
    where = f"stages[{i}] ({kind})"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: settings must be a mapping, got {body!r}")
    own = WIRING.get(kind, ("input",))
    wiring = {k: body[k] for k in own if k in body}
    sections = {k: v for k, v in body.items() if k not in own}
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    for key in sections:
        if key in SET_BY_PIPELINE:
            raise ConfigError(f"{where}: '{key}' is set by the pipeline ({SET_BY_PIPELINE[key]})")
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}'{suggest_key(key, [*fields, *own], '')}")
    try:
        cfg = build_section(RunConfig, deep_merge(shared, sections, RunConfig))
        check_fields(cfg, paths=True)  # the files it names itself (those set below are written by earlier stages)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    cfg.name, cfg.out_dir, cfg.resume = f"{i:02d}-{kind}", str(run_dir), ""
    cfg.init_from = model if kind in TRAINING else ""
    name = str(wiring.get("input", DEFAULT_INPUT[kind]))
    if name not in files:
        hint = (" (a data stage with a pairs step writes it; or input: train samples pairs in the DPO stage)"
                if name == "pairs" else "")
        raise ConfigError(f"{where}: input: no earlier stage writes '{name}' (files so far: "
                          f"{', '.join(sorted(files))}){hint}")
    src = files[name]
    stage = Stage(i, kind, cfg, name, src.path, model=model)
    d = cfg.data
    d.eval_path = str(files["eval"].path)
    d.train_path = str(src.path if kind != "eval" else files["train"].path)
    d.sft_size = ALL_ROWS if kind in ("sft", "cpt") else 0
    if kind == "cpt":
        from r1lab.stages import check_corpus

        try:
            check_corpus(cfg)  # readable, with text, longer than a row; the exact token count when the stage starts
        except R1labError as e:  # a DataError of the corpus too: one line naming the stage
            raise ConfigError(f"{where}: {e}") from None
        stage.input, stage.input_path = f"corpus {cfg.cpt.corpus}", Path(cfg.cpt.corpus)
    if kind in ("sft", "rl", "eval") and src.kind != "problems":
        raise ConfigError(f"{where}: input: '{name}' holds preference pairs; a {kind} stage reads problems")
    if kind == "eval":
        d.eval_path = str(src.path)
        if not model:
            raise ConfigError(f"{where}: no model to evaluate: the tiny model is built by the first training stage")
    if kind == "dpo":
        from r1lab.stages import check_dpo_config

        if src.kind == "pairs":
            if cfg.dpo.rounds > 1:
                raise ConfigError(f"{where}: dpo.rounds: iterative rounds sample their own pairs; "
                                  f"input '{name}' is a fixed pairs file (input: train to sample)")
            d.train_path = str(files["train"].path)
        try:
            check_dpo_config(dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, pairs_path="")))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        cfg.dpo.pairs_path = str(src.path) if src.kind == "pairs" else ""
    if kind == "data":
        _plan_data(stage, wiring, files, run_dir, where)
    return stage


def _benchmark_file(entry: Any) -> Any:
    """A decontamination reference: a file, or the name of a vendored benchmark (aime24, math500, ...)."""
    from r1lab.benchmarks import data_path, known_benchmarks

    if isinstance(entry, str) and entry in known_benchmarks() and not Path(entry).exists():
        return str(data_path(entry))
    return entry


def _plan_data(stage: Stage, wiring: dict[str, Any], files: dict[str, FileRef], run_dir: Path, where: str) -> None:
    from r1lab.data.pipeline import STEPS, build_step
    from r1lab.data.reject import SampleSettings
    from r1lab.rollout import engine_options

    entries = wiring.get("steps")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: steps: a non-empty list of `r1lab data` steps, e.g. [filter: {{max_pass: 0.5}}]")
    cfg = stage.cfg
    steps = []
    for j, entry in enumerate(entries):
        here = f"{where}: steps[{j}]"
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{here}: each step is a name or a mapping {{name: {{settings}}}}")
        (name, settings), = entry.items()
        if name == "import":
            raise ConfigError(f"{here}: the stage imports its input file itself (input: NAME)")
        settings = dict(settings or {}) if isinstance(settings, dict) or settings is None else settings
        if name == "decontaminate" and isinstance(settings, dict) and isinstance(settings.get("benchmarks"), list):
            settings["benchmarks"] = [_benchmark_file(b) for b in settings["benchmarks"]]
        if name in STEPS and isinstance(settings, dict) and issubclass(STEPS[name].settings, SampleSettings):
            # sampling follows the shared settings unless the step sets its own
            defaults = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p,
                        "max_new_tokens": cfg.sampling.max_new_tokens, "seed": cfg.seed,
                        "timeout": cfg.reward.verify_timeout, "workers": cfg.reward.verify_workers,
                        "engine": cfg.rollout.engine, "rollout": engine_options(cfg.rollout)}
            if stage.model:
                defaults["model"] = stage.model
            settings = {**defaults, **settings}
            if not settings.get("model") and name in ("pairs", "reject-sample"):
                raise ConfigError(f"{here}: {name} samples a model, and the tiny model is built by the first "
                                  "training stage: put this stage after one, or give the step a model")
        try:
            steps.append(build_step(str(name), settings, here))
        except ConfigError as e:  # a bad setting names the step's setting; say which stage and step too
            raise ConfigError(str(e) if str(e).startswith(here) else f"{here}: {e}") from None
        missing = [b for b in getattr(steps[-1][1], "benchmarks", []) if not Path(b).exists()]
        if missing:
            raise ConfigError(f"{here}: benchmark file not found: {missing[0]}")
    makes_pairs = any(name == "pairs" for name, _ in steps)
    out = str(wiring.get("output") or ("pairs" if makes_pairs else stage.input))
    if not re.fullmatch(r"[A-Za-z0-9_-]+", out):
        raise ConfigError(f"{where}: output: {out!r} is not a name (letters, digits, _ and -)")
    if out == "eval":
        raise ConfigError(f"{where}: output: the held-out file 'eval' is not rewritten; name another output")
    stage.output = out
    stage.output_path = run_dir / stage.dirname / f"{out}.jsonl"
    stage.steps = [build_step("import", {"paths": [str(stage.input_path)]}, f"{where}: input"), *steps]
    kind = "pairs" if makes_pairs else files[stage.input].kind
    files[out] = FileRef(stage.output_path, kind)


# --------------------------------------------------------------------------------------------
# what a stage ran with, recorded in its done marker and compared on resume


def stage_settings(kind: str, cfg: RunConfig | None, stage: Stage | None = None) -> dict[str, Any]:
    """The settings that decide a stage's result, flat (`sft.lr`): for prepare, the data section; for
    a data stage, its files and steps; for the others the config less the sections it does not read."""
    if kind == "prepare":
        return flatten(cfg.data, "data")
    if kind == "data":
        flat = {"input": str(stage.input_path), "output": str(stage.output_path)}
        for j, (name, s) in enumerate(stage.steps):
            flat.update({f"steps[{j}].{name}.{k}": v for k, v in dataclasses.asdict(s).items()})
        return flat
    return settings_of(cfg, NEVER_COMPARED + NOT_READ[kind])


def _prepare_cfg(plan: Plan) -> RunConfig:
    cfg = copy.deepcopy(plan.shared)
    cfg.name, cfg.out_dir, cfg.resume, cfg.init_from = "prepare", str(plan.run_dir), "", ""
    return cfg


# --------------------------------------------------------------------------------------------
# the pipeline as a plan of the runner: prepare, then each stage in its own directory


def runner_plan(plan: Plan, show_progress: bool = True, log: Callable[..., None] = print) -> runner.Plan:
    """The runner's plan of a pipeline: `prepare` and one stage per recipe stage (key NN-KIND), each
    running in RUN/<key>/; an interrupted RL, SFT or CPT stage continues from its checkpoints."""
    from r1lab.train.checkpoint import (CPT_RESUMABLE_CHANGES, CPT_STATE_DIR, RESUMABLE_CHANGES, SFT_RESUMABLE_CHANGES,
                                        SFT_STATE_DIR, STATE_DIR, check_resume_config)

    # the kinds that continue an interrupted stage: the checkpoint folder each writes, the settings
    # that may change across a resume. Any other kind starts again.
    resumable = {"rl": (STATE_DIR, RESUMABLE_CHANGES), "sft": (SFT_STATE_DIR, SFT_RESUMABLE_CHANGES),
                 "cpt": (CPT_STATE_DIR, CPT_RESUMABLE_CHANGES)}
    prepare = _prepare_cfg(plan)
    stages = [runner.Stage("prepare", lambda ctx: _prepare(prepare, log), stage_settings("prepare", prepare),
                           directory=plan.run_dir / "prepare")]
    for stage in plan.stages:
        path = plan.run_dir / stage.dirname
        folder, allowed = resumable.get(stage.kind, (None, ()))

        def check(cfg=stage.cfg, path=path, allowed=allowed) -> None:
            check_resume_config(load_config(path / "config.yaml"), dataclasses.replace(cfg, resume=str(path)), allowed)

        stages.append(runner.Stage(stage.dirname, _runner(stage, plan, path, show_progress, log),
                                   stage_settings(stage.kind, stage.cfg, stage), label=stage.label,
                                   seed=stage.cfg.seed, checkpoints=(path, folder) if folder else None,
                                   directory=path, check_resume=check if folder else None))

    def start() -> None:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(plan.run_dir / "pipeline.yaml", yaml.safe_dump(plan.recipe, sort_keys=False))
        log(f"r1lab pipeline -> {plan.run_dir}")

    return runner.Plan("pipeline", plan.run_dir, stages, resume=plan.resume, start=start)


def check_resume(plan: Plan, show_progress: bool = True, log: Callable[..., None] = print) -> dict[str, str]:
    """What each stage will do (the runner's done | resume | restart | new). Refuses, before anything
    is written, a run directory that is not this pipeline's and a finished stage whose settings changed."""
    run_dir = plan.run_dir
    if not plan.resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"{run_dir} already exists: resume={run_dir} continues it, name=NAME starts another run")
    else:
        if not (run_dir / "pipeline.yaml").is_file():
            raise ConfigError(f"resume: {run_dir} is not a pipeline run directory (no pipeline.yaml)")
        for stage in plan.stages:
            other = [p.name for p in run_dir.glob(f"{stage.index:02d}-*") if p.name != stage.dirname and p.is_dir()]
            if other:
                raise ConfigError(f"{stage.label}: the run's stage {stage.index} is {other[0]}; a resumed pipeline "
                                  "keeps its stages (start a new run to change them)")
    return runner.stage_status(runner_plan(plan, show_progress, log))


# --------------------------------------------------------------------------------------------
# running


def run_pipeline(plan: Plan, show_progress: bool = True, log: Callable[..., None] = print) -> dict[str, Any]:
    """Run (or resume) every stage in order; returns the summary (also summary.json, report.md)."""
    status = check_resume(plan, show_progress, log)
    t0 = time.time()
    runner.run_plan(runner_plan(plan, show_progress, log), log, status)
    return _summarise(plan, time.time() - t0, log)


def _runner(stage: Stage, plan: Plan, path: Path, show_progress: bool, log) -> Callable[[runner.Context], Any]:
    """The work of one recipe stage; its result (outputs, held-out scores) goes into its done marker."""
    def run(ctx: runner.Context) -> dict[str, Any]:
        if not ctx.resuming(stage.dirname):
            log(f"{stage.label}: {stage.input} -> {path}")
        t = time.time()
        if stage.kind == "data":
            outputs, scores = _data(stage, path, show_progress, log), None
        elif stage.kind == "eval":
            outputs, scores = {}, _eval(stage, show_progress)
        else:
            cfg = dataclasses.replace(stage.cfg, resume=str(path)) if ctx.resuming(stage.dirname) else stage.cfg
            outputs, scores = _train(stage, cfg, plan, show_progress, log)
        if scores is not None:
            n = stage.cfg.eval.n
            log(f"{stage.label}: held-out avg@{n} {100 * scores[f'avg@{n}']:.1f}%, {time.time() - t:.0f} s")
        return {"outputs": outputs, "eval": scores}
    return run


def _prepare(cfg: RunConfig, log) -> dict[str, Any]:
    from r1lab.runs import RunDir
    from r1lab.stages import prepare_data

    run = RunDir.create(cfg)
    prepare_data(cfg, run, log=log)
    return {"files": {name: str(run.file(f"data/{name}.jsonl")) for name in ("sft", "train", "eval")}}


RATE_FIELDS = ("pass_rate", "n_correct", "n_samples", "pass_rate_model")


def fresh_pass_rates(rows: list[Problem], model: str) -> int:
    """Drop the pass rates rows carry from another model than `model` (filter and select reuse a
    recorded pass rate; measured under an earlier stage's model it is not this model's). Rows whose
    pass rate names no model (given with the data) keep it. Returns how many were dropped."""
    dropped = 0
    for p in rows:
        other = p.metadata.get("pass_rate_model")
        if other and other != model:
            for key in RATE_FIELDS:
                p.metadata.pop(key, None)
            dropped += 1
    return dropped


def _data(stage: Stage, path: Path, show_progress: bool, log) -> dict[str, Any]:
    from r1lab.data.pipeline import Pipeline, run_pipeline as run_steps, summary_table
    from r1lab.records import load_problems, save_problems

    path.mkdir(parents=True, exist_ok=True)
    steps = stage.steps
    if stage.model and any(name in ("filter", "select") and s.model == stage.model for name, s in steps[1:]):
        rows = load_problems(stage.input_path)
        if n := fresh_pass_rates(rows, stage.model):
            log(f"{stage.label}: {n} pass rates measured under another model dropped; they are measured again")
            save_problems(path / "input.jsonl", rows)
            steps = [(steps[0][0], dataclasses.replace(steps[0][1], paths=[str(path / "input.jsonl")])), *steps[1:]]
    manifest = run_steps(Pipeline(output=str(stage.output_path), steps=steps, source=f"r1lab pipeline {stage.label}"))
    if show_progress:
        log(summary_table(manifest))
    log(f"{stage.label}: {manifest['rows_out']} rows -> '{stage.output}'")
    return {"file": str(stage.output_path), "name": stage.output, "rows": manifest["rows_out"]}


def _scores(cfg: RunConfig, model_path: str, problems_path: str, out: Path, desc: str,
            show_progress: bool) -> dict[str, Any]:
    from r1lab.records import load_problems
    from r1lab.eval.stage import run_eval
    from r1lab.stages import load_policy

    model, tok = load_policy(cfg, path=model_path)
    return run_eval(cfg, model, tok, load_problems(problems_path), out, desc, show_progress).summary


def _eval(stage: Stage, show_progress: bool) -> dict[str, Any]:
    from r1lab.runs import RunDir

    run = RunDir.create(stage.cfg)
    return _scores(stage.cfg, stage.model, stage.cfg.data.eval_path, run.file("eval/results.jsonl"),
                   f"eval {stage.label}", show_progress)


def _train(stage: Stage, cfg: RunConfig, plan: Plan, show_progress: bool, log) -> tuple[dict[str, Any], dict | None]:
    from r1lab.runs import RunDir
    from r1lab.stages import load_policy, prepare_corpus, prepare_data, run_cpt, run_dpo, run_rl, run_sft

    data = prepare_data(cfg, None, log=log)
    model, tok = load_policy(cfg, data)
    if stage.kind == "cpt":  # the corpus tokenised and packed before the stage writes anything
        corpus = prepare_corpus(cfg, tok, getattr(model.config, "max_position_embeddings", None))
        run_cpt(cfg, RunDir.create(cfg), model, tok, data, show_progress=show_progress, corpus=corpus, log=log)
    else:
        train = {"sft": run_sft, "dpo": run_dpo, "rl": run_rl}[stage.kind]
        train(cfg, RunDir.create(cfg), model, tok, data, show_progress=show_progress)
    run = RunDir(Path(cfg.out_dir) / cfg.name)
    out = str(run.checkpoint(stage.kind))
    scores = None
    if plan.evaluate_each:  # the saved model, as the next stage loads it, from the stage's starting streams
        runner.seed_all(cfg.seed)
        scores = _scores(cfg, out, cfg.data.eval_path, run.file(f"eval/{stage.kind}.jsonl"), f"eval {stage.label}",
                         show_progress)
    return {"model": out}, scores


def _summarise(plan: Plan, seconds: float, log) -> dict[str, Any]:
    from r1lab.report import stage_table, write_report

    rows: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}
    for key in ["prepare", *(s.dirname for s in plan.stages)]:
        done = runner.read_marker(plan.run_dir, key) or {}
        timing[key] = done.get("seconds", 0.0)
        if (done.get("result") or {}).get("eval"):
            rows[key] = {**done["result"]["eval"], "seconds": done.get("seconds")}
    n, ks = plan.shared.eval.n, plan.shared.eval.ks
    table = stage_table(rows, n, ks)
    final = [s for s in plan.stages if s.kind in TRAINING]
    summary = {"run_dir": str(plan.run_dir), "stages": rows, "seconds": timing, "total_seconds": sum(timing.values()),
               "this_invocation_seconds": round(seconds, 2),
               "final_model": str(plan.run_dir / final[-1].dirname / "checkpoints" / final[-1].kind) if final else None}
    write_text_atomic(plan.run_dir / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    flow = " -> ".join(s.dirname for s in plan.stages)
    write_report(plan.run_dir / "report.md", f"r1lab pipeline: {plan.run_dir.name}", [
        ("Stages", f"{flow}\n\nHeld-out accuracy after each stage (avg@{n} etc. in %, lengths in tokens, seconds of "
                   f"the stage):\n\n{table}"),
        ("Time", "\n".join(f"- {k}: {v:.0f} s" for k, v in timing.items())
         + f"\n- total: {sum(timing.values()):.0f} s"),
        ("Files", "pipeline.yaml (the recipe as resolved), prepare/data/*.jsonl (the prepared files), NN-KIND/ "
                  "(each stage's run directory), stages/*.json (done markers), summary.json"),
    ])
    log("")
    log(table)
    log(f"\n{sum(timing.values()):.0f} s in all; final model: {summary['final_model']}; "
        f"report: {plan.run_dir / 'report.md'}")
    return summary

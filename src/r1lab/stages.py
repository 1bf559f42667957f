"""The stages a user runs — data, model, SFT, DPO, RL, eval — as functions of a config and a run
directory. The CLI and the demo are thin layers over these."""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from r1lab.benchmarks import (Benchmark, breakdown, breakdown_table, load_benchmark, protocol, summary_table,
                              write_summary_json)
from r1lab.config import RunConfig
from r1lab.errors import ConfigError, DataError, WorkerError
from r1lab.eval.run import EvalResult, evaluate
from r1lab.health import HealthMonitor, health_markdown, read_findings
from r1lab.models import build_tiny_model, build_tiny_tokenizer, load_model, resolve_device, save_model, torch_dtype
from r1lab.plots import RL_PANELS, SFT_PANELS, plot_benchmark_accuracy, plot_breakdown, plot_curves
from r1lab.records import Problem, load_problems, prompt_messages, save_problems
from r1lab.rollout import SamplingParams, engine_options, make_engine
from r1lab.rollout.base import LiveModelEngine
from r1lab.runs import MetricsWriter, RunDir, read_metrics, truncate_metrics
from r1lab.tasks import generate_splits, get_task
from r1lab.tracking import make_tracker
from r1lab.verify import check_gold, verify_batch


def check_run_config(cfg: RunConfig, paths: bool = True) -> RunConfig:
    """The checks every command makes of a loaded config before it writes anything: every setting
    against its domain (again: a command may have changed some since it was read; with `paths`, the
    files and directories it names must exist), dtype and device, the method's pieces and their
    settings, trackers, the trainer group, rollout and reward workers, the rollout engine. Returns
    the config with the defaults that follow from other settings (the off-policy correction of an
    asynchronous run), as the run then saves it."""
    from r1lab.cluster import check_workers, with_off_policy_correction
    from r1lab.domains import check_fields
    from r1lab.rollout import check_engine
    from r1lab.tracking import check_tracking
    from r1lab.train.distributed import check_cluster
    from r1lab.train.methods import bind_method, check_method_settings

    check_fields(cfg, paths=paths)
    torch_dtype(cfg.model.dtype)
    resolve_device(cfg.model.device)
    bind_method(cfg.algo)
    check_method_settings(cfg)
    check_tracking(cfg.tracking)  # a missing package
    check_cluster(cfg)
    check_workers(cfg)
    check_engine(cfg.rollout.engine)  # a missing vLLM extra
    return with_off_policy_correction(cfg)


@dataclass
class Data:
    train: list[Problem]  # RL prompts
    eval: list[Problem]  # held out
    sft: list[tuple[Problem, str]]  # (problem, verified reasoning trace)
    report: dict[str, Any]
    curriculum: dict[int, list[Problem]] | None = None  # difficulty -> RL prompts (train.curriculum)

    @property
    def rl_prompts(self) -> list[Problem] | dict[int, list[Problem]]:
        return self.curriculum or self.train


def frame_problem(problem: Problem, system_prompt: str = "", response_prefix: str = "") -> Problem:
    """The problem with its prompt framed: a system message first (replacing one it has) and an
    assistant message the response continues from. Task parsers read the last user message, so
    they see the question unchanged."""
    messages = [m for m in prompt_messages(problem.prompt) if m.get("role") != "assistant"]
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m.get("role") != "system"]
    if response_prefix:
        messages.append({"role": "assistant", "content": response_prefix})
    return replace(problem, prompt=messages)


def prepare_data(cfg: RunConfig, run: RunDir | None = None, log=print) -> Data:
    """Generate (or load) train and held-out problems, write teacher traces, and curate: drop
    training problems that also appear in the held-out set, traces that do not verify, and
    problems whose gold answer does not score against itself."""
    d = cfg.data
    t0 = time.time()
    if d.train_path or d.eval_path:
        if not (d.train_path and d.eval_path):
            raise DataError("data.train_path and data.eval_path must be given together")
        train, held = load_problems(d.train_path), load_problems(d.eval_path)
    else:
        train, held = generate_splits(d.tasks, d.train_size, d.eval_size, d.difficulty, d.seed)
    report: dict[str, Any] = {"generated_train": len(train), "generated_eval": len(held)}
    def framed(problems: list[Problem]) -> list[Problem]:
        if not (d.system_prompt or d.response_prefix):
            return problems
        return [frame_problem(p, d.system_prompt, d.response_prefix) for p in problems]

    train, held = framed(train), framed(held)

    # decontaminate: no training prompt may equal a held-out prompt (after whitespace normalisation)
    norm = lambda p: " ".join(str(p.prompt).split()).lower()  # noqa: E731
    held_keys = {norm(p) for p in held}
    before = len(train)
    train = [p for p in train if norm(p) not in held_keys]
    report["dropped_contaminated"] = before - len(train)

    # pre-flight: each math gold answer must score correct against itself (docs/pitfalls.md,
    # "Verifier bugs"). Other families (countdown: the answer is a target, the response an
    # expression) are checked through their verified teacher traces below.
    bad = check_gold([p for p in train + held if p.task == "math"])
    if bad:
        p, v = bad[0]
        raise DataError(f"{len(bad)} problem(s) have a gold answer that does not verify against itself, "
                        f"e.g. id {p.id!r} answer {p.answer!r}: {v.reason}")

    # SFT traces: from the data ("response" field) or from the task's teacher; verified either way
    pool = train[: d.sft_size]
    pairs: list[tuple[Problem, str]] = []
    for p in pool:
        if "response" in p.metadata:
            pairs.append((p, str(p.metadata["response"])))
        elif p.metadata.get("family"):
            pairs.append((p, get_task(p.metadata["family"]).teacher_trace(p)))
    verdicts = verify_batch([p for p, _ in pairs], [r for _, r in pairs],
                            timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers)
    sft = [pair for pair, v in zip(pairs, verdicts) if v.correct]
    report["sft_traces"] = len(pairs)
    report["sft_traces_dropped_unverified"] = len(pairs) - len(sft)
    # RL prompts are the training problems not used for SFT when there are enough of them
    rl_pool = train[d.sft_size:] if len(train) - d.sft_size >= max(64, d.train_size // 4) else train
    curriculum = None
    if cfg.train.curriculum and not d.train_path:
        # one pool of RL prompts per scheduled difficulty, decontaminated against the held-out set
        curriculum = {}
        for level in sorted(set(cfg.train.curriculum.values())):
            size = max(64, d.train_size - d.sft_size)
            while True:  # the easy levels of a family may hold fewer distinct problems than asked
                try:
                    pool, _ = generate_splits(d.tasks, size, 1, level, d.seed + 7919 * level)
                    break
                except ConfigError:
                    if size <= 16:
                        raise
                    size //= 2
            curriculum[level] = [p for p in framed(pool) if norm(p) not in held_keys]
        report["curriculum"] = {level: len(pool) for level, pool in curriculum.items()}
    report.update({"rl_prompts": len(rl_pool), "eval": len(held), "seconds": round(time.time() - t0, 2)})
    if run is not None:
        save_problems(run.file("data/train.jsonl"), rl_pool)
        save_problems(run.file("data/eval.jsonl"), held)
        save_problems(run.file("data/sft.jsonl"), [Problem(**{**p.to_dict(), "metadata": {**p.metadata, "response": r}}) for p, r in sft])
    log(f"data: {len(rl_pool)} RL prompts, {len(sft)} verified SFT traces, {len(held)} held-out problems "
        f"({report['dropped_contaminated']} contaminated and {report['sft_traces_dropped_unverified']} unverified dropped)")
    return Data(rl_pool, held, sft, report, curriculum)


def tokenizer_corpus(data: Data) -> list[str]:
    """Text the tiny tokenizer is trained on: chat-formatted prompts and the traces."""
    texts = [f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n" for p in data.train + [q for q, _ in data.sft]]
    texts += [r for _, r in data.sft]
    return texts


def load_policy(cfg: RunConfig, data: Data | None = None, path: str | None = None):
    """The model a stage starts from: `path` / cfg.init_from if given, else model.path; "tiny"
    builds a fresh tiny model (its tokenizer trained on the data's text)."""
    source = path or cfg.init_from or cfg.model.path
    if source == "tiny":
        if data is None:
            raise DataError("building the tiny model needs data to train its tokenizer on")
        tok = build_tiny_tokenizer(tokenizer_corpus(data))
        model = build_tiny_model(tok, cfg.model.tiny, seed=cfg.seed).to(torch_dtype(cfg.model.dtype))
    else:
        model, tok = load_model(source, cfg.model.dtype)
    return model.to(resolve_device(cfg.model.device)), tok


def eval_params(cfg: RunConfig) -> SamplingParams:
    e = cfg.eval
    return SamplingParams(temperature=e.temperature, top_p=e.top_p,
                          max_new_tokens=e.max_new_tokens or cfg.sampling.max_new_tokens)


def run_eval(cfg: RunConfig, model, tokenizer, problems: list[Problem], out_path: Path | None, desc: str,
             show_progress: bool = True, engine=None, resume: bool = False, settings: dict[str, Any] | None = None,
             on_progress=None) -> EvalResult:
    """Evaluate with the config's eval settings. `engine` (e.g. an OpenAIEngine for a served model)
    replaces the local HF engine of `model`; `resume`/`settings`/`on_progress` as in eval.run.evaluate."""
    own = engine is None
    if own:
        engine = make_engine(model, tokenizer, cfg.rollout.engine, batch_size=cfg.eval.batch_size,
                             **engine_options(cfg.rollout))
    if cfg.eval.budget.max_think > 0:
        from r1lab.eval.budget import forced_engine

        engine = forced_engine(engine, cfg.eval.budget)
        b = cfg.eval.budget
        settings = {**(settings or {}), "think_budget": [b.min_think, b.max_think, b.answer_tokens, b.end, b.wait, b.close]}
    try:
        return evaluate(engine, problems, eval_params(cfg), n=cfg.eval.n, ks=cfg.eval.ks, seed=cfg.seed + 777,
                        verify_timeout=cfg.reward.verify_timeout, verify_workers=cfg.reward.verify_workers,
                        out_path=out_path, desc=desc, show_progress=show_progress, resume=resume, settings=settings,
                        on_progress=on_progress)
    finally:
        if own:  # an engine with memory of its own (vLLM) frees it
            engine.close()


def evaluate_benchmarks(cfg, model, tokenizer, benches: list[Benchmark], out_dir, n: int | None = None,
                        temperature: float | None = None, limit: int | None = None,
                        show_progress: bool = True, engine=None, model_id: str = "", prompt: str = "boxed",
                        on_progress=None) -> tuple[dict[str, tuple[int, dict[str, float]]], str]:
    """Score a model on each benchmark with its protocol: per-problem JSONL `out_dir/<name>.jsonl`
    (resumed when it exists with the same settings), and a report (summary table, MATH500 by level
    and subject) written to `out_dir/summary.md` and returned with the summaries, `summary.json`,
    and plots under `out_dir/plots/`.

    `engine` (e.g. an OpenAIEngine) replaces the local engine of `model`/`tokenizer`; `model_id`
    names the model in the saved settings, so that a resume with another model is refused."""
    out_dir = Path(out_dir)
    results: dict[str, tuple[int, dict[str, float]]] = {}
    sections: list[str] = []
    plots: list[Path] = []
    for bench in benches:
        problems = load_benchmark(bench.name, limit, prompt)
        c = copy.deepcopy(cfg)
        c.eval.n, c.eval.temperature, c.eval.top_p = protocol(bench, n, temperature)
        c.eval.ks = sorted({k for k in cfg.eval.ks if k <= c.eval.n} | {1, c.eval.n})
        settings = {"model": model_id, "benchmark": bench.name, "prompt": prompt}
        res = run_eval(c, model, tokenizer, problems, out_dir / f"{bench.name}.jsonl", bench.name, show_progress,
                       engine=engine, resume=True, settings=settings, on_progress=on_progress)
        res.summary.update(temperature=c.eval.temperature, top_p=c.eval.top_p)
        results[bench.name] = (c.eval.n, res.summary)
        for key in bench.breakdown:
            groups = breakdown(res.rows, problems, key)
            sections.append(breakdown_table(f"{bench.name} by {key}", groups))
            p = plot_breakdown(groups, out_dir / "plots" / f"{bench.name}_by_{key}.png",
                               f"{bench.name} accuracy by {key} (avg@{c.eval.n}, {model_id or 'model'})", key)
            plots.append(p)
    plots.insert(0, plot_benchmark_accuracy(results, out_dir / "plots" / "accuracy.png", model_id or "model"))
    report = "\n\n".join([summary_table(results)] + sections)
    report_md = report + "\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(report_md + "\n", encoding="utf-8")
    write_summary_json(out_dir / "summary.json", results, {"model": model_id, "prompt": prompt})
    return results, report


def run_sft(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True,
            resume: bool | None = None) -> dict[str, float]:
    """SFT on the data's verified traces, with resumable checkpoints (sft.save_every). `resume`
    (default: whether cfg.resume is set) continues from the run's last SFT checkpoint."""
    from r1lab.train.sft import sft_examples, train_sft

    if not data.sft:
        raise DataError("no verified SFT traces: give problems with a 'response' field or generated task families")
    from r1lab.train.checkpoint import SFT_STATE_DIR, load_latest
    from r1lab.train.lora import apply_lora, merge_lora

    resume = bool(cfg.resume) if resume is None else resume
    examples = sft_examples(tokenizer, data.sft)
    lora = apply_lora(model, cfg.sft.lora, "sft.lora")  # adapters in place; None = full fine-tuning
    state = None
    if resume:  # continue from the last checkpoint; what was logged after it is dropped
        state = load_latest(run.path, SFT_STATE_DIR)
        truncate_metrics(run.file("sft_metrics.jsonl"), state["step"])
    with MetricsWriter(run.file("sft_metrics.jsonl"), append=resume, tracker=make_tracker(cfg, run.path, "sft")) as mw:
        summary = train_sft(model, tokenizer, examples, cfg.sft, metrics=mw, seed=cfg.seed, show_progress=show_progress,
                            run_path=run.path, resume=state)
    merge_lora(lora, model)  # saved merged: a plain HF directory
    save_model(model, tokenizer, run.checkpoint("sft"))
    plot_curves(read_metrics(run.file("sft_metrics.jsonl")), SFT_PANELS, run.file("plots/sft.png"), "SFT")
    return summary


def run_rl(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True,
           resume: bool | None = None) -> list[dict[str, Any]]:
    """The RL stage, with resumable checkpoints (train.save_every). `resume` (default: whether
    cfg.resume is set) continues from the run's last RL checkpoint; returns the steps run here."""
    from r1lab.train.lora import apply_lora, merge_lora
    from r1lab.train.rl import train_rl

    lora = apply_lora(model, cfg.train.lora, "train.lora")  # adapters in place; None = full fine-tuning
    if cfg.cluster.rollout_workers > 0:  # Ray actors sample; no engine in this process
        from r1lab.cluster.rollout_group import RayRolloutGroup

        engine = RayRolloutGroup(cfg, model, tokenizer)
    else:
        engine = make_engine(model, tokenizer, cfg.rollout.engine, batch_size=cfg.rollout.batch_size,
                             **engine_options(cfg.rollout))

    def on_eval(step: int) -> dict[str, float]:
        # an engine that holds its own weights (vLLM) also evaluates: it follows the policy, and a
        # second copy of it would not fit next to the trainer
        shared = None if isinstance(engine, LiveModelEngine) else engine
        res = run_eval(cfg, model, tokenizer, data.eval, None, f"eval@{step}", show_progress=False, engine=shared)
        return {"eval/avg": res.summary[f"avg@{cfg.eval.n}"]}

    state = None
    resume = bool(cfg.resume) if resume is None else resume
    if resume:  # continue from the last checkpoint; what was logged (or found) after it is dropped
        from r1lab.train.checkpoint import load_latest

        state = load_latest(run.path)
        for name in ("metrics.jsonl", "samples.jsonl", "health.jsonl"):
            truncate_metrics(run.file(name), state["step"])
    health = HealthMonitor(cfg.health, run.file("health.jsonl"), append=resume)
    if state is not None:
        health.prime([r for r in read_metrics(run.file("metrics.jsonl")) if r["step"] > 0])
    try:
        with MetricsWriter(run.file("metrics.jsonl"), append=resume,
                           tracker=make_tracker(cfg, run.path, "rl")) as mw, \
                MetricsWriter(run.file("samples.jsonl"), append=resume) as sw:
            history = train_rl(cfg, model, tokenizer, engine, data.rl_prompts, metrics=mw, samples=sw,
                               on_eval=on_eval, show_progress=show_progress, health=health, run_path=run.path,
                               resume=state)
    except WorkerError as e:  # a worker process is gone: say where the run can continue from
        from r1lab.train.checkpoint import resume_hint

        raise WorkerError(f"{e}; {resume_hint(run.path)}") from None
    finally:
        engine.close()
    merge_lora(lora, model)
    save_model(model, tokenizer, run.checkpoint("rl"))
    plot_curves(read_metrics(run.file("metrics.jsonl")), RL_PANELS, run.file("plots/rl.png"), f"RL ({cfg.algo.advantage})")
    return history


def health_section(cfg: RunConfig, run: RunDir) -> tuple[str, str]:
    """The report's run-health section of an RL stage: what the monitor wrote to health.jsonl."""
    findings = read_findings(run.file("health.jsonl")) if cfg.health.enabled else None
    steps = sum(1 for r in read_metrics(run.file("metrics.jsonl")) if r["step"] > 0)  # not value pretraining
    return "Run health (RL)", health_markdown(findings, steps=steps)


def check_dpo_config(cfg: RunConfig) -> list | None:
    """Reject a bad dpo section before anything is written (the loss's own settings; the section's
    domains were checked when it was read); returns the pairs of dpo.pairs_path, if any."""
    from r1lab.algos.preference import PREFERENCE_LOSSES
    from r1lab.data.pairs import load_pairs

    d = cfg.dpo
    PREFERENCE_LOSSES.bind(d.loss, d.loss_args, "dpo.loss_args")
    return load_pairs(d.pairs_path) if d.pairs_path else None


def run_dpo(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True,
            log=print) -> list[dict[str, Any]]:
    """Preference optimisation. With dpo.pairs_path: one training pass over that file. Otherwise
    dpo.rounds rounds of: sample dpo.samples_per_problem completions per training problem with the
    current policy, verify, pair a correct against a wrong one (data/pairs-round<r>.jsonl and its
    manifest), train with the round's starting model as reference. One row per round comes back."""
    from r1lab.data.pairs import PairSettings, load_pairs, make_pairs
    from r1lab.data.pipeline import StepLog
    from r1lab.records import write_text_atomic
    from r1lab.plots import DPO_PANELS
    from r1lab.train.dpo import dpo_examples, train_dpo
    from r1lab.train.lora import apply_lora, merge_lora

    d = cfg.dpo
    fixed = check_dpo_config(cfg)
    pool = list(data.train)
    history: list[dict[str, Any]] = []
    step = 0
    with MetricsWriter(run.file("dpo_metrics.jsonl")) as mw:
        for r in range(1, d.rounds + 1):
            row: dict[str, Any] = {"round": r}
            if fixed is not None:
                pairs = fixed
            else:
                problems = pool
                if d.prompts_per_round and d.prompts_per_round < len(pool):
                    problems = random.Random(cfg.seed * 1000 + r).sample(pool, d.prompts_per_round)
                problems = [replace(p, metadata=dict(p.metadata)) for p in problems]  # pass rates go on copies
                engine = make_engine(model, tokenizer, cfg.rollout.engine, batch_size=cfg.rollout.batch_size,
                                     dtype=cfg.rollout.dtype, kv_cache_gb=cfg.rollout.kv_cache_gb)
                sampler_name = str(run.checkpoint(f"dpo-round{r - 1}")) if r > 1 else str(cfg.init_from or cfg.model.path)
                s = PairSettings(model=sampler_name, k=d.samples_per_problem,
                                 temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                 max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.seed * 1000 + r,
                                 chunk=max(1, cfg.rollout.batch_size // d.samples_per_problem),
                                 batch_size=cfg.rollout.batch_size,
                                 timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers,
                                 chosen=d.chosen, rejected=d.rejected, pairs_per_problem=d.pairs_per_problem)
                steplog = StepLog(0, "pairs", s, run.file("data"))
                rates: list[float] = []
                started, t = time.strftime("%Y-%m-%dT%H:%M:%S"), time.time()
                rows = list(make_pairs(problems, s, steplog.drop, engine=engine, on_rate=rates.append))
                steplog.rows_in, steplog.rows_out, steplog.seconds = len(problems), len(rows), time.time() - t
                out = run.file(f"data/pairs-round{r}.jsonl")
                save_problems(out, rows)
                manifest = {"status": "ok", "pipeline": f"r1lab dpo, round {r}", "output": str(out),
                            "rows_out": len(rows), "started": started,
                            "seconds": round(steplog.seconds, 3), "steps": [steplog.to_dict(0.0)]}
                write_text_atomic(out.with_name(out.stem + ".manifest.json"), json.dumps(manifest, indent=1) + "\n")
                pairs = load_pairs(out) if rows else []
                row.update({"round/pass_rate": sum(rates) / max(1, len(rates)), "round/problems": len(problems),
                            "round/generated_samples": len(problems) * d.samples_per_problem,
                            "round/pairs": len(rows), "round/seconds_sampling": time.time() - t})
                log(f"dpo round {r}: {len(problems)} problems x {d.samples_per_problem} samples, pass rate "
                    f"{100 * row['round/pass_rate']:.1f}%, {len(rows)} pairs")
                if not rows:
                    raise DataError(f"dpo round {r}: no problem had both a correct and a wrong sample "
                                    f"({len(problems)} problems, pass rate {100 * row['round/pass_rate']:.1f}%)")
            mw.write(step, {k: v for k, v in row.items() if k.startswith("round/")})
            lora = apply_lora(model, d.lora, "dpo.lora")
            t = time.time()
            summary = train_dpo(model, tokenizer, dpo_examples(tokenizer, pairs), d, metrics=mw, seed=cfg.seed + r,
                                show_progress=show_progress, step_offset=step, tag={"dpo/round": r})
            model = merge_lora(lora, model)
            step += int(summary["dpo/steps"])
            row.update(summary)
            row["round/seconds_training"] = time.time() - t
            if d.rounds > 1:
                save_model(model, tokenizer, run.checkpoint(f"dpo-round{r}"))
            if d.eval_every_round and r < d.rounds:
                res = run_eval(cfg, model, tokenizer, data.eval, None, f"eval round {r}", show_progress=False)
                row["eval/avg"] = res.summary[f"avg@{cfg.eval.n}"]
                mw.write(step, {"eval/avg": row["eval/avg"]})
            history.append(row)
    save_model(model, tokenizer, run.checkpoint("dpo"))
    write_text_atomic(run.file("dpo_rounds.json"), json.dumps(history, indent=1, default=float) + "\n")
    plot_curves(read_metrics(run.file("dpo_metrics.jsonl")), DPO_PANELS, run.file("plots/dpo.png"),
                f"{d.loss.upper()} ({d.rounds} round{'s' if d.rounds > 1 else ''})")
    return history

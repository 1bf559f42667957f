"""The evaluation stage: a model scored with a run config's eval settings (the engine the rollout
config describes, eval.n / ks / temperature, budget forcing, the environment of the `env` section
with its tools), on held-out problems or on the vendored benchmarks with each one's protocol."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from r1lab.benchmarks import (Benchmark, breakdown, breakdown_table, load_benchmark, protocol, summary_table,
                              write_summary_json)
from r1lab.config import RunConfig
from r1lab.eval.run import EpisodeSpec, EvalResult, evaluate
from r1lab.eval.transcripts import episode_table, has_episodes, transcripts_markdown, write_samples
from r1lab.plots import plot_benchmark_accuracy, plot_breakdown
from r1lab.records import Problem
from r1lab.rollout import SamplingParams, build_engine
from r1lab.rollout.episodes import EpisodeLimits


def eval_params(cfg: RunConfig) -> SamplingParams:
    e = cfg.eval
    return SamplingParams(temperature=e.temperature, top_p=e.top_p,
                          max_new_tokens=e.max_new_tokens or cfg.sampling.max_new_tokens)


def episode_spec(cfg: RunConfig) -> EpisodeSpec | None:
    """The config's environment as an eval's episodes; None for one_turn (one sample per prompt,
    exactly as without an env section)."""
    e = cfg.env
    if e.name == "one_turn":
        return None
    return EpisodeSpec(e.name, dict(e.settings), EpisodeLimits(e.max_turns, e.max_tokens))


def run_eval(cfg: RunConfig, model, tokenizer, problems: list[Problem], out_path: Path | None, desc: str,
             show_progress: bool = True, engine=None, resume: bool = False, settings: dict[str, Any] | None = None,
             on_progress=None) -> EvalResult:
    """Evaluate with the config's eval settings. `engine` (e.g. an OpenAIEngine for a served model)
    replaces the local HF engine of `model`; `resume`/`settings`/`on_progress` as in eval.run.evaluate."""
    own = engine is None
    if own:
        engine = build_engine(model, tokenizer, cfg.rollout, batch_size=cfg.eval.batch_size)
    if cfg.eval.budget.max_think > 0:
        from r1lab.eval.budget import forced_engine

        engine = forced_engine(engine, cfg.eval.budget)
        b = cfg.eval.budget
        settings = {**(settings or {}), "think_budget": [b.min_think, b.max_think, b.answer_tokens, b.end, b.wait, b.close]}
    try:
        return evaluate(engine, problems, eval_params(cfg), n=cfg.eval.n, ks=cfg.eval.ks, seed=cfg.seed + 777,
                        verify_timeout=cfg.reward.verify_timeout, verify_workers=cfg.reward.verify_workers,
                        out_path=out_path, desc=desc, show_progress=show_progress, resume=resume, settings=settings,
                        on_progress=on_progress, episodes=episode_spec(cfg))
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
    and plots under `out_dir/plots/`. Episodes of an environment (the config's `env`) add the
    episode table, `out_dir/<name>.samples.jsonl` (every transcript) and one transcript per
    benchmark in the report.

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
        if has_episodes(res.rows):
            write_samples(res.rows, out_dir / f"{bench.name}.samples.jsonl")
            sections.append(f"{bench.name}, a transcript:\n\n{transcripts_markdown(res.rows, limit=1)}")
        for key in bench.breakdown:
            groups = breakdown(res.rows, problems, key)
            sections.append(breakdown_table(f"{bench.name} by {key}", groups))
            p = plot_breakdown(groups, out_dir / "plots" / f"{bench.name}_by_{key}.png",
                               f"{bench.name} accuracy by {key} (avg@{c.eval.n}, {model_id or 'model'})", key)
            plots.append(p)
    plots.insert(0, plot_benchmark_accuracy(results, out_dir / "plots" / "accuracy.png", model_id or "model"))
    tables = [summary_table(results)]
    if any("turns" in summary for _, summary in results.values()):
        tables.append(f"Episodes of environment {cfg.env.name} {cfg.env.settings or ''}:\n\n" + episode_table(results))
    report = "\n\n".join(tables + sections)
    report_md = report + "\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(report_md + "\n", encoding="utf-8")
    write_summary_json(out_dir / "summary.json", results, {"model": model_id, "prompt": prompt})
    return results, report

"""What `r1lab eval` runs on a loaded model: plain evaluation, and the test-time scaling sweeps:
accuracy against thinking budgets (s1 budget forcing), and PRM-guided search against majority
voting. Each writes its per-problem results (resumable), a table, a JSON summary (and a plot) into
the eval run directory."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from r1lab.benchmarks import write_summary_json
from r1lab.config import RunConfig
from r1lab.eval.budget import forced_engine, scaling_point, scaling_table
from r1lab.eval.overthink import decoy_report, with_decoy
from r1lab.eval.search import run_beams, score_rows, search_table, selection_points
from r1lab.eval.stage import eval_params, run_eval
from r1lab.plots import plot_scaling, plot_search
from r1lab.records import Problem, write_jsonl, write_text_atomic
from r1lab.report import stage_table
from r1lab.rollout import Engine, build_engine
from r1lab.runs import RunDir


def plain_eval(cfg: RunConfig, model, tok, problems: list[Problem], run: RunDir, model_id: str, source: str,
               label: str, name: str, engine: Engine | None = None, show_progress: bool = True,
               log=print) -> dict[str, float]:
    """n samples per problem (eval/results.jsonl, resumable), the summary (eval/summary.json, what
    --compare reads) and its table (eval/summary.md); `engine` (an endpoint's) replaces the model's."""
    res = run_eval(cfg, model, tok, problems, run.file("eval/results.jsonl"), "eval", show_progress, engine=engine,
                   resume=True, settings={"model": model_id, "benchmark": source})
    write_summary_json(run.file("eval/summary.json"), {label: (cfg.eval.n, res.summary)}, {"model": model_id})
    table = stage_table({name: res.summary}, cfg.eval.n, cfg.eval.ks)
    extra = measures_table(res.summary)  # language mixing and overthinking, where the problems allow
    table = f"{table}\n\n{extra}" if extra else table
    run.file("eval/summary.md").write_text(f"{label} ({source})\n\n{table}\n", encoding="utf-8")
    log(table)
    log(f"per-problem results and summary: {run.file('eval')}")
    return res.summary


def measures_table(summary: dict[str, float]) -> str:
    """The lang/*, overthink/* and decoy/* entries of a summary as a two-column markdown table ("" if none)."""
    keys = [k for k in summary if k.startswith(("lang/", "overthink/", "decoy/"))]
    if not keys:
        return ""
    return "\n".join(["| measure | value |", "|---|---:|"] + [f"| {k} | {summary[k]:.4g} |" for k in keys])


def decoy_probe(cfg: RunConfig, model, tok, problems: list[Problem], run: RunDir, model_id: str, source: str,
                label: str, engine: Engine | None = None, show_progress: bool = True, log=print) -> dict[str, float]:
    """The OverThink-style probe: the plain eval (eval/results.jsonl, resumed: after plain_eval it is
    only read) and the same problems with cfg.eval.decoy in front (eval/decoy.jsonl); the token
    inflation and accuracy change go to eval/decoy.json and eval/decoy.md."""
    settings = {"model": model_id, "benchmark": source}
    base = run_eval(cfg, model, tok, problems, run.file("eval/results.jsonl"), "eval", show_progress, engine=engine,
                    resume=True, settings=settings)
    decoyed = with_decoy(problems, cfg.eval.decoy, cfg.seed)
    res = run_eval(cfg, model, tok, decoyed, run.file("eval/decoy.jsonl"), "eval with decoy", show_progress,
                   engine=engine, resume=True, settings={**settings, "decoy": cfg.eval.decoy})
    report = decoy_report(base.rows, res.rows)
    write_text_atomic(run.file("eval/decoy.json"), json.dumps(
        {"model": model_id, "data": source, "decoy": cfg.eval.decoy, "example": decoyed[0].prompt if decoyed else "",
         **report}, indent=1, default=float) + "\n")
    table = measures_table(report)
    write_text_atomic(run.file("eval/decoy.md"), f"{label} ({source}), decoy {cfg.eval.decoy!r}\n\n{table}\n")
    log(table)
    return report


def think_sweep(cfg: RunConfig, model, tok, problems: list[Problem], run: RunDir, budgets: list[tuple[int, int]],
                model_id: str, source: str, label: str, show_progress: bool = True, log=print) -> list[dict]:
    """Evaluate at each thinking budget (eval/think-MIN-MAX.jsonl, resumable), then the scaling
    table (eval/scaling.md, .json) and the plot of accuracy against thinking tokens (plots/scaling.png)."""
    base = build_engine(model, tok, cfg.rollout, batch_size=cfg.eval.batch_size)
    n, points = cfg.eval.n, []
    for lo, hi in budgets:
        c = copy.deepcopy(cfg)
        c.eval.budget.min_think, c.eval.budget.max_think = lo, hi
        engine = forced_engine(base, c.eval.budget)  # kept here for its counts of inserted Waits
        res = run_eval(c, model, tok, problems, run.file(f"eval/think-{lo}-{hi}.jsonl"), f"think {lo}..{hi}",
                       show_progress, engine=engine, resume=True, settings={"model": model_id, "benchmark": source})
        waits = engine.stats["waits"] if res.summary["resumed_problems"] == 0 else None
        points.append(scaling_point(res.rows, res.summary, n, (lo, hi), waits))
    table = scaling_table(points, n)
    head = (f"{label} ({source}), model {model_id}: {len(problems)} problems, {n} samples each at temperature "
            f"{cfg.eval.temperature}; answer budget {cfg.eval.budget.answer_tokens} tokens after the thinking.")
    write_text_atomic(run.file("eval/scaling.md"), f"{head}\n\n{table}\n")
    write_text_atomic(run.file("eval/scaling.json"),
                      json.dumps({"model": model_id, "data": source, "n": n, "points": points}, indent=1, default=float) + "\n")
    title = f"test-time scaling: {'/'.join(Path(model_id).parts[-3:])} on {label}"
    plot_scaling(points, run.file("plots/scaling.png"), title)
    log(table)
    log(f"per-budget results, table and plot: {run.file('eval')}, {run.file('plots/scaling.png')}")
    return points


def search_sweep(cfg: RunConfig, model, tok, problems: list[Problem], run: RunDir, scorer, model_id: str,
                 source: str, label: str, show_progress: bool = True, log=print) -> list[dict]:
    """Test-time search with a step scorer: max(N) samples per problem (eval/search-samples.jsonl,
    resumable), each scored; best-of-N, PRM-weighted and majority voting over the first N at each N
    (eval/search.jsonl); with eval.search.method=beam, a beam search per N (eval/beam-N.jsonl); the
    table (eval/search.md, eval/summary.md), eval/search.json, the plain metrics of the samples
    (eval/summary.json, as plain eval writes it) and the plot plots/search.png."""
    s = cfg.eval.search
    c = copy.deepcopy(cfg)
    c.eval.n = max(s.ns)
    c.eval.ks = [c.eval.n]
    res = run_eval(c, model, tok, problems, run.file("eval/search-samples.jsonl"), "search samples", show_progress,
                   resume=True, settings={"model": model_id, "benchmark": source})
    rows = score_rows(res.rows, problems, scorer, s.ns, cfg.reward.verify_timeout, cfg.reward.verify_workers)
    write_jsonl(run.file("eval/search.jsonl"), rows)
    points = selection_points(rows, s.ns)
    if s.method == "beam":
        engine = build_engine(model, tok, cfg.rollout, batch_size=cfg.eval.batch_size)
        try:
            for point in points:
                brows, bpoint = run_beams(engine, scorer, problems, eval_params(cfg), point["n"], s, seed=cfg.seed + 555,
                                          timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers)
                write_jsonl(run.file(f"eval/beam-{point['n']}.jsonl"), brows)
                point.update(bpoint)
                if show_progress:
                    log(f"beam N={point['n']} ({bpoint['width']} x {bpoint['expand']}): {100 * bpoint['beam']:.1f}% "
                        f"correct, {bpoint['beam_tokens_per_problem']:.0f} tokens per problem")
        finally:
            engine.close()
    table = search_table(points)
    head = (f"{label} ({source}), model {model_id}, scorer {Path(s.prm).resolve()}: {len(problems)} problems, "
            f"temperature {cfg.eval.temperature}, method {s.method} (implicit-PRM score: {s.agg}). Accuracies in %, "
            "compute in generated tokens per problem; majority voting at equal samples is the baseline.")
    write_text_atomic(run.file("eval/search.md"), f"{head}\n\n{table}\n")
    write_text_atomic(run.file("eval/summary.md"), f"{head}\n\n{table}\n")
    # the plain metrics of the max(N) samples, as plain eval writes them (what --compare reads)
    write_summary_json(run.file("eval/summary.json"), {label: (c.eval.n, res.summary)}, {"model": model_id})
    write_text_atomic(run.file("eval/search.json"), json.dumps(
        {"model": model_id, "data": source, "scorer": str(Path(s.prm).resolve()), "method": s.method,
         "settings": {k: getattr(s, k) for k in ("ns", "beam_width", "beam_expand", "delimiter", "think_end",
                                                 "step_tokens", "max_steps", "agg")},
         "points": points}, indent=1, default=float) + "\n")
    title = f"PRM search: {'/'.join(Path(model_id).parts[-3:])} on {label}"
    plot_search(points, run.file("plots/search.png"), title)
    log(table)
    log(f"per-problem results, table and plot: {run.file('eval')}, {run.file('plots/search.png')}")
    return points

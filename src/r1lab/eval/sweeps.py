"""What `r1lab eval` runs on a loaded model: plain evaluation (one sample per prompt, or episodes of
the config's environment with its tools), and the sweeps: accuracy against thinking budgets (s1
budget forcing), PRM-guided search against majority voting, and the same problems or benchmarks
with several tool sets side by side (no tools, python, ...). Each writes its per-problem results
(resumable), a table, a JSON summary (and a plot) into the eval run directory."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from r1lab.benchmarks import write_summary_json
from r1lab.config import RunConfig
from r1lab.eval.budget import forced_engine, scaling_point, scaling_table
from r1lab.eval.overthink import decoy_report, with_decoy
from r1lab.eval.search import run_beams, score_rows, search_table, selection_points
from r1lab.eval.stage import eval_params, evaluate_benchmarks, run_eval
from r1lab.eval.transcripts import episode_table, has_episodes, transcripts_markdown, write_samples
from r1lab.plots import plot_scaling, plot_search
from r1lab.records import Problem, write_jsonl, write_text_atomic
from r1lab.report import stage_table
from r1lab.rollout import Engine, build_engine
from r1lab.runs import RunDir


def plain_eval(cfg: RunConfig, model, tok, problems: list[Problem], run: RunDir, model_id: str, source: str,
               label: str, name: str, engine: Engine | None = None, show_progress: bool = True,
               log=print) -> dict[str, float]:
    """n samples per problem (eval/results.jsonl, resumable), the summary (eval/summary.json, what
    --compare reads) and its table (eval/summary.md); `engine` (an endpoint's) replaces the model's.
    Episodes of an environment add their table (turns, tool calls, tool errors, finish reasons),
    every transcript in eval/samples.jsonl and two whole transcripts in the report."""
    res = run_eval(cfg, model, tok, problems, run.file("eval/results.jsonl"), "eval", show_progress, engine=engine,
                   resume=True, settings={"model": model_id, "benchmark": source})
    write_summary_json(run.file("eval/summary.json"), {label: (cfg.eval.n, res.summary)}, {"model": model_id})
    table = stage_table({name: res.summary}, cfg.eval.n, cfg.eval.ks)
    extra = measures_table(res.summary)  # language mixing and overthinking, where the problems allow
    table = f"{table}\n\n{extra}" if extra else table
    report = f"{label} ({source})\n\n{table}\n"
    if has_episodes(res.rows):
        table += "\n\n" + episode_table({f"{label} ({cfg.env.name})": (cfg.eval.n, res.summary)})
        write_samples(res.rows, run.file("eval/samples.jsonl"))
        report = (f"{label} ({source}), environment {cfg.env.name} {cfg.env.settings or ''}\n\n{table}\n\n"
                  f"Transcripts (all of them in samples.jsonl):\n\n{transcripts_markdown(res.rows)}\n")
    write_text_atomic(run.file("eval/summary.md"), report)
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


def parse_tool_sets(text: str) -> list[list[str]]:
    """`off,python,python+calculator` -> [[], ["python"], ["python", "calculator"]]: the tool sets of
    a side-by-side sweep (off: no tools, one sample per prompt)."""
    from r1lab.envs import known_tools
    from r1lab.errors import ConfigError

    sets = []
    for item in text.split(","):
        item = item.strip()
        tools = [] if item in ("off", "none") else [t.strip() for t in item.split("+")]
        if not item or any(t not in known_tools() for t in tools):
            raise ConfigError(f"--tools-sweep {text!r}: {item!r} is not off or tools joined by + "
                              f"(known tools: {', '.join(known_tools())})")
        sets.append(tools)
    if len(sets) < 2:
        raise ConfigError(f"--tools-sweep {text!r}: give at least two tool sets to compare, e.g. off,python")
    return sets


def with_tools(cfg: RunConfig, tools: list[str]) -> RunConfig:
    """The config evaluated with `tools` (the tools environment, the config's other tool settings
    kept), or without any (one_turn) when the list is empty."""
    c = copy.deepcopy(cfg)
    if not tools:
        c.env.name, c.env.settings = "one_turn", {}
    else:
        c.env.name = cfg.env.name if cfg.env.name != "one_turn" else "tools"
        c.env.settings = {**cfg.env.settings, "tools": list(tools)}
    return c


def tools_sweep(cfg: RunConfig, model, tok, run: RunDir, tool_sets: list[list[str]], model_id: str, *,
                problems: list[Problem] | None = None, benches=None, source: str = "", label: str = "",
                limit: int | None = None, n: int | None = None, temperature: float | None = None,
                prompt: str = "boxed", show_progress: bool = True, log=print) -> dict[str, tuple[int, dict]]:
    """The same problems (or each benchmark, with its protocol) evaluated once per tool set, into
    eval/tools-<set>/ (resumable), and one table of all of them side by side: eval/tools.md and
    eval/tools.json."""
    results: dict[str, tuple[int, dict]] = {}
    for tools in tool_sets:
        name = "+".join(tools) or "off"
        c = with_tools(cfg, tools)
        out = run.file(f"eval/tools-{name}")
        if benches is not None:
            res, _ = evaluate_benchmarks(c, model, tok, benches, out, n=n, temperature=temperature, limit=limit,
                                         show_progress=show_progress, model_id=model_id, prompt=prompt)
            for bench, (bn, summary) in res.items():
                results[f"{bench}, tools {name}"] = (bn, summary)
        else:
            r = run_eval(c, model, tok, problems or [], out / "results.jsonl", f"tools {name}", show_progress,
                         resume=True, settings={"model": model_id, "benchmark": source})
            if has_episodes(r.rows):
                write_samples(r.rows, out / "samples.jsonl")
            results[f"{label}, tools {name}"] = (c.eval.n, r.summary)
    table = episode_table(results)
    head = (f"model {model_id}: {'benchmarks ' + ', '.join(b.name for b in benches) if benches is not None else source}"
            f", each with the tool sets {', '.join('+'.join(t) or 'off' for t in tool_sets)} (environment "
            f"{cfg.env.name if cfg.env.name != 'one_turn' else 'tools'}, call format "
            f"{cfg.env.settings.get('call_format', 'hermes')}, at most {cfg.env.max_turns} turns); accuracies in %.")
    write_text_atomic(run.file("eval/tools.md"), f"{head}\n\n{table}\n")
    write_summary_json(run.file("eval/tools.json"), results, {"model": model_id})
    log(table)
    log(f"per-problem results per tool set and the table: {run.file('eval')}")
    return results

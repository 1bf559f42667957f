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
    env: str | None = None  # evaluate episodes of this registered environment (env.name)
    tools: str | None = None  # episodes with these tools, joined by + (the tools environment)
    tools_sweep: str | None = None  # comma-separated tool sets evaluated side by side, e.g. off,python
    safety: str | None = None  # JSONL of behaviours: run the safety suite (eval/safety.py) instead of scoring answers
    judge: str | None = None  # safety: the judge's OpenAI-compatible URL (r1lab serve included)
    judge_model: str = "default"
    judge_timeout: float = 60.0  # safety: seconds per judgement, retries included
    attacker: str | None = None  # safety: an attacker model's OpenAI-compatible URL (adversarial-reasoning attack)
    attacker_model: str = "default"
    attack_rounds: int = 0  # safety: attacker rewrites per behaviour at most (needs --attacker)
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
    config's held-out split; plainly, as episodes of an environment with its tools (one set, or a
    sweep of tool sets side by side), with budget forcing (a thinking-budget sweep) or with a
    PRM-guided search. Every setting is checked and the model loaded before the run directory is
    written."""
    from r1lab.rollout.openai import OpenAIEngine, is_endpoint
    from r1lab.runs import RunDir
    from r1lab.eval.sweeps import decoy_probe, plain_eval, search_sweep, think_sweep
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
    if req.safety or req.judge or req.attacker or req.attack_rounds:
        _safety_eval(cfg, req)
        return
    tool_sets = _env_settings(req, cfg)  # before loading the model: a bad environment or tool fails fast
    budgets = _think_settings(req, cfg)  # before loading the model: a bad budget fails fast
    scorer = _search_scorer(req, cfg)  # the scorer is loaded here: a missing reference model fails fast
    if scorer is not None and (budgets or req.benchmarks or is_endpoint(req.model)):
        raise R1labError("--search runs on a local model over --data or the config's held-out split, "
                         "without budget forcing (not with --benchmarks, --think-* or an endpoint)")
    if cfg.eval.decoy and (budgets or scorer is not None or req.benchmarks):
        raise R1labError("eval.decoy probes the plain evaluation (--data or the held-out split), "
                         "not --think-budgets, --search or --benchmarks")
    if (budgets or cfg.eval.budget.max_think > 0) and is_endpoint(req.model):
        raise R1labError("budget forcing needs a local model (it continues token-id prefixes), not an endpoint")
    episodes = cfg.env.name != "one_turn" or bool(tool_sets)
    if episodes and (is_endpoint(req.model) or not _engine_continues_ids(cfg.rollout.engine)):
        raise R1labError(f"eval with an environment (env.name={cfg.env.name if cfg.env.name != 'one_turn' else 'tools'}) "
                         f"continues each episode's token ids, which {'an endpoint' if is_endpoint(req.model) else 'rollout.engine=' + cfg.rollout.engine} "
                         "cannot (it returns text); use a local model with rollout.engine=fast or hf")
    if episodes and (budgets or cfg.eval.budget.max_think > 0 or scorer is not None):
        raise R1labError("--env/--tools/--tools-sweep evaluate episodes; they do not combine with --think-* or --search")
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
        problems = _eval_problems(req, cfg)
    # the model (or endpoint) before anything is written: a bad name or a dead URL leaves no run dir
    model = tok = engine = None
    if is_endpoint(req.model):
        engine = OpenAIEngine(req.model, model=req.model_name, concurrency=req.concurrency)
        engine.check()
    else:
        model, tok = load_policy(cfg, path=req.model)
    model_id = _model_id(req.model)
    if tool_sets:
        from r1lab.eval.sweeps import tools_sweep

        if problems is None and benches is None:
            problems = prepare_data(cfg, None, log=lambda *_: None).eval
        if problems is not None and req.limit:
            problems = problems[: req.limit]
        run = RunDir.create(cfg)
        source, label = _data_source(req)
        tools_sweep(cfg, model, tok, run, tool_sets, model_id, problems=problems, benches=benches, source=source,
                    label=label, limit=req.limit, n=req.n, temperature=req.temperature, prompt=req.prompt,
                    show_progress=not req.quiet)
        return
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
    source, label = _data_source(req)
    if budgets:
        think_sweep(cfg, model, tok, problems, run, budgets, model_id, source, label, show_progress=not req.quiet)
        return
    if scorer is not None:
        search_sweep(cfg, model, tok, problems, run, scorer, model_id, source, label, show_progress=not req.quiet)
        return
    plain_eval(cfg, model, tok, problems, run, model_id, source, label, Path(req.model).name, engine=engine,
               show_progress=not req.quiet)
    if cfg.eval.decoy:
        decoy_probe(cfg, model, tok, problems, run, model_id, source, label, engine=engine, show_progress=not req.quiet)


def _data_source(req: EvalRequest) -> tuple[str, str]:
    """How the report names --data: (source, label)."""
    if not req.data:
        return "held-out split of the config", "held-out"
    if not Path(req.data).exists():  # a generated family
        return f"{req.data} (held-out split)", req.data
    return str(Path(req.data).resolve()), Path(req.data).stem


def _eval_problems(req: EvalRequest, cfg: RunConfig):
    """--data: a file of problems, or a generated family (rg:leg_counting) whose held-out split is
    generated with the config's data seed and difficulty (--limit of them, else data.eval_size)."""
    from r1lab.records import load_problems
    from r1lab.stages import frame_problem
    from r1lab.tasks import TASKS, generate_splits

    if TASKS.makes(req.data) and not Path(req.data).exists():
        problems = generate_splits([req.data], 0, req.limit or cfg.data.eval_size, cfg.data.difficulty, cfg.data.seed)[1]
    else:
        problems = load_problems(req.data)
    # the config's prompt frame, as on its own held-out split: a model trained in a frame is scored in it
    d = cfg.data
    if d.system_prompt or d.response_prefix:
        problems = [frame_problem(p, d.system_prompt, d.response_prefix) for p in problems]
    return problems


def _safety_eval(cfg: RunConfig, req: EvalRequest) -> None:
    """`r1lab eval MODEL --safety FILE --judge URL [--attacker URL --attack-rounds N]`: every flag, the
    behaviours, the endpoints and the model checked before the run directory is written."""
    from r1lab.domains import check_value
    from r1lab.eval.safety import load_behaviours, run_safety
    from r1lab.eval.stage import eval_params
    from r1lab.rollout import build_engine
    from r1lab.rollout.openai import OpenAIEngine, is_endpoint
    from r1lab.runs import RunDir
    from r1lab.stages import load_policy
    from r1lab.verify.audit import check_endpoint
    from r1lab.verify.judge import JudgeVerifier
    from r1lab.verify.safety import SafetyJudge

    if not req.safety:
        raise R1labError("--judge, --attacker and --attack-rounds belong to the safety suite: give --safety FILE")
    others = [flag for flag, v in (("--data", req.data), ("--benchmarks", req.benchmarks), ("--think-*", req.think_max
              or req.think_budgets), ("--search", req.search)) if v]
    if others:
        raise R1labError(f"--safety runs on its own behaviours file, not with {', '.join(others)}")
    check_value(req.judge_timeout, "--judge-timeout", gt=0)
    check_value(req.attack_rounds, "--attack-rounds", ge=0)
    for flag, url in (("--judge", req.judge), ("--attacker", req.attacker)):
        if url and not is_endpoint(url):
            raise R1labError(f"{flag} must be an http(s) URL of an OpenAI-compatible server, got {url!r}")
    if not req.judge:
        raise R1labError("--safety needs --judge URL (an OpenAI-compatible server; r1lab serve CHECKPOINT serves one)")
    if bool(req.attacker) != bool(req.attack_rounds):
        raise R1labError("the adversarial attack needs both --attacker URL and --attack-rounds N >= 1")
    behaviours = load_behaviours(req.safety)
    behaviours = behaviours[: req.limit] if req.limit else behaviours
    check_endpoint(req.judge)
    if req.attacker:
        check_endpoint(req.attacker)
    if is_endpoint(req.model):
        engine = OpenAIEngine(req.model, model=req.model_name, concurrency=req.concurrency)
        engine.check()
    else:
        model, tok = load_policy(cfg, path=req.model)
        engine = build_engine(model, tok, cfg.rollout, batch_size=cfg.eval.batch_size)
    base = lambda url: url.rstrip("/").removesuffix("/v1")  # noqa: E731  (the clients add /v1/...)
    judge = SafetyJudge(base(req.judge), req.judge_model, timeout=req.judge_timeout)
    attacker = None
    if req.attacker:
        client = JudgeVerifier(base(req.attacker), req.attacker_model, timeout=req.judge_timeout, max_tokens=256)
        attacker = client.ask
    run = RunDir.create(cfg)
    try:
        run_safety(behaviours, engine, eval_params(cfg), cfg.eval.n, cfg.seed, judge, run.file("eval"),
                   str(Path(req.safety).resolve()), attacker=attacker, rounds=req.attack_rounds,
                   log=(lambda *_: None) if req.quiet else print)
    finally:
        engine.close()


def _check_eval_flags(req: EvalRequest, cfg: RunConfig) -> None:
    """--n, --temperature, --max-new-tokens in the domains of the settings they set (eval.n, ...);
    --limit and --concurrency in their own. The --think-* and search flags are checked where they
    are applied."""
    from r1lab.domains import check_fields, check_value

    check_fields(cfg.eval, "eval")
    check_value(req.limit, "--limit", ge=1)
    check_value(req.concurrency, "--concurrency", ge=1)


def _engine_continues_ids(engine: str) -> bool:
    """Whether the engine `rollout.engine` names can continue token ids (what episodes need),
    read off its class without building it."""
    if engine != "vllm":
        return True  # fast and hf do; auto picks one of them or vLLM, which run_episodes checks
    from r1lab.rollout.vllm import VLLMEngine

    return bool(VLLMEngine.continues_ids)


def _env_settings(req: EvalRequest, cfg: RunConfig) -> list[list[str]] | None:
    """Apply --env and --tools to cfg.env and check the environment by building one (an unknown
    name, tool or setting is one line here, before the model loads); the tool sets of
    --tools-sweep, or None."""
    from r1lab.domains import check_fields
    from r1lab.envs import make_env
    from r1lab.eval.sweeps import parse_tool_sets, with_tools

    if req.env:
        cfg.env.name = req.env
    if req.tools:
        tools = parse_tool_sets(req.tools.replace(",", "+") + ",off")[0]  # one set: off, or tools joined by + or ,
        cfg.env = with_tools(cfg, tools).env
    check_fields(cfg.env, "env")
    sets = parse_tool_sets(req.tools_sweep) if req.tools_sweep else None
    for tools in sets or [None]:
        c = with_tools(cfg, tools) if tools else cfg
        if c.env.name != "one_turn":
            make_env(c.env.name, **c.env.settings)
    return sets


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

"""Every setting has a domain, and every command refuses a value outside it in one line, exit 2,
before it writes anything.

The property test draws, for every field of every config section, every data step's settings,
every registered method's hyper-parameters and the flags of eval and serve, values at the edges
of its declared domain (which must pass its checks) and beyond them (which must be refused: one
line naming the field, exit 2, nothing written). It runs `r1lab.cli.main` in-process; the first
thing each command does after its checks (make the run directory, load the model, run the
pipeline, start the server) is replaced by raising `Reached`, so no model is built. Its own
generator is seeded: the same draws on every run.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from r1lab.cli import main
from r1lab.config import RunConfig, load_config
from r1lab.domains import _UNSET, Domain, check_fields, domain_of
from r1lab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"

# strings whose domain is any text, or that the code reading them checks (model.device: torch's
# device names, checked by models.resolve_device before anything is written)
FREE_TEXT = {"data.system_prompt", "data.response_prefix", "model.device", "cluster.ray_address",
             "eval.search.think_end", "import.source", "import.task", "import.id_prefix", "import.split",
             "decontaminate.text_field", "select.trace_field", "eval.decoy"}
# dict[str, Any] settings of a registered method: their domains are the method's own (see below)
METHOD_ARGS = {"algo.advantage_args", "algo.policy_loss_args", "algo.kl_args", "algo.correction_args", "dpo.loss_args",
               "import.mapping",
               "env.settings"}  # the environment factory checks its own settings (envs.Factories.make)
SET_BY_PIPELINE = ("name", "out_dir", "resume", "init_from", "data.")


class Reached(Exception):
    """The command passed its checks and got to its first action."""


def _stop(*args, **kwargs):
    raise Reached


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A working directory with the inputs the commands read, and every command's first action
    replaced by raising Reached."""
    import r1lab.data.inspect
    import r1lab.data.pipeline
    import r1lab.demo
    import r1lab.pipeline
    import r1lab.rstar  # imported before the patches: it binds stages.load_policy when first imported
    import r1lab.runs
    import r1lab.serve
    import r1lab.stages

    monkeypatch.setattr(r1lab.runs.RunDir, "create", staticmethod(_stop))
    monkeypatch.setattr(r1lab.stages, "load_policy", _stop)
    monkeypatch.setattr(r1lab.demo, "run_demo", _stop)
    monkeypatch.setattr(r1lab.pipeline, "run_pipeline", _stop)
    monkeypatch.setattr(r1lab.data.pipeline, "StepLog", _stop)
    monkeypatch.setattr(r1lab.data.inspect, "inspect_datasets", _stop)
    monkeypatch.setattr(r1lab.serve, "ChatModel", _stop)
    monkeypatch.chdir(tmp_path)
    problem = {"id": "p1", "prompt": "What is 1+1?", "answer": "2", "metadata": {"response": "<think>1+1</think><answer>2</answer>", "pass_rate": 0.5}}
    Path("problems.jsonl").write_text(json.dumps(problem) + "\n")
    Path("pairs.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    Path("model").mkdir()
    Path("model/config.json").write_text("{}")
    Path("somedir").mkdir()
    return tmp_path


EXISTING = {"file": "problems.jsonl", "exists": "problems.jsonl", "dir": "somedir", "model": "model"}
MISSING = "no/such/path"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def leaves(cls: type, where: str = ""):
    """(dotted name, type, domain, default) for every leaf field of the dataclass `cls`."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaves(tp, name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield name, tp, domain_of(f), default


def _step_settings():
    from r1lab.data.pipeline import STEPS

    return {name: kind.settings for name, kind in STEPS.items()}


def _methods():
    """(registry, method name, hyper-parameter, its domain, its default) of every registered method."""
    from r1lab.algos import ADVANTAGES, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES
    from r1lab.algos.preference import PREFERENCE_LOSSES

    for table in (ADVANTAGES, POLICY_LOSSES, KL_ESTIMATORS, CORRECTIONS, PREFERENCE_LOSSES):
        for name, m in table.methods.items():
            for h, default in m.hparams.items():
                yield table, name, h, m.domains.get(h), default


# --- the declarations --------------------------------------------------------------------------


def test_every_setting_declares_a_domain():
    """Numbers, lists and mappings each have a domain; a string without one is free text, listed."""
    missing = []
    sources = [("", RunConfig)] + list(_step_settings().items())
    for where, cls in sources:
        for name, tp, d, _ in leaves(cls, where):
            if tp is bool or name in METHOD_ARGS:
                continue
            if tp is str and d is None and name not in FREE_TEXT:
                missing.append(name)
            if tp is not str and d is None:
                missing.append(name)
    for table, name, h, d, default in _methods():
        if isinstance(default, (int, float)) and not isinstance(default, bool) and d is None:
            missing.append(f"{table.kind} {name}: {h}")
    assert not missing, f"settings without a domain: {missing}"


def test_every_default_is_in_its_domain():
    """A field at its default is not checked again (r1lab.domains.check_fields): it must be valid."""
    for where, cls in [("", RunConfig)] + list(_step_settings().items()):
        for name, _, d, default in leaves(cls, where):
            if d is not None:
                d.check(default, name, paths=False)
        if cls.__name__ != "DecontamSettings":  # needs a benchmark file, which has no default
            check_fields(cls(), where)  # the rules across fields, at the defaults
    for _, name, h, d, default in _methods():
        if d is not None:
            d.check(default, f"{name}.{h}")


def test_domains_describe_themselves_in_one_line():
    cases = [
        (Domain(ge=1), 0, "x=0: expected an integer >= 1"),
        (Domain(gt=0, le=1), 0.0, "x=0.0: expected a number in (0, 1]"),
        (Domain(ge=0, lt=1), 1.0, "x=1.0: expected a number in [0, 1)"),
        (Domain(ge=2, off=0), 1, "x=1: expected 0 (off) or an integer >= 2"),
        (Domain(ge=0), float("nan"), "x=nan: expected a number >= 0"),
        (Domain(choices=("before", "after")), "during", "x='during': expected 'before' or 'after'"),
        (Domain(choices=("word", "char", "byte")), "chars", "x='chars': expected one of 'word', 'char', 'byte' (did you mean 'char'?)"),
        (Domain(nonempty=True), [], "x=[]: expected a non-empty list"),
        (Domain(ge=1), [1, 0], "x[1]=0: expected an integer >= 1"),
        (Domain(ge=8, keys=Domain(ge=0)), {0: 4}, "x[0]=4: expected an integer >= 8"),
        (Domain(ge=8, keys=Domain(ge=0)), {-1: 8}, "x: key -1: expected an integer >= 0"),
        (Domain(path="file"), "no/such.jsonl", "x='no/such.jsonl': expected an existing file (not found)"),
    ]
    for d, value, message in cases:
        with pytest.raises(ConfigError) as e:
            d.check(value, "x")
        assert str(e.value) == message


def test_an_empty_recipe_is_refused(world, capsys):
    Path("empty.yaml").write_text("")
    Path("described.yaml").write_text("description: nothing else\n")
    for recipe in ("empty.yaml", "described.yaml"):
        assert main(["rl", recipe, "out_dir=out"]) == 2
        assert capsys.readouterr().err == f"r1lab: error: {recipe}: an empty recipe: name at least `base:` or a section\n"
    Path("based.yaml").write_text(f"base: {TINY / 'grpo.yaml'}\n")
    with pytest.raises(Reached):
        main(["rl", "based.yaml", "out_dir=out"])


# --- the issue's eleven cases ----------------------------------------------------------------------

ISSUE = [
    ("train.group_size=0", "train.group_size=0: expected an integer >= 1"),
    ("train.prompts_per_step=0", "train.prompts_per_step=0: expected an integer >= 1"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0: expected an integer >= 1"),
    ("sampling.temperature=-1", "sampling.temperature=-1.0: expected a number >= 0"),
    ("sampling.max_new_tokens=0", "sampling.max_new_tokens=0: expected an integer >= 1"),
    ("train.lr=-1", "train.lr=-1.0: expected a number > 0"),
    ("train.steps=-3", "train.steps=-3: expected an integer >= 1"),
    ("algo.kl_coef=-1", "algo.kl_coef=-1.0: expected a number >= 0"),
    ("train.group_size=1", "train.group_size=1: advantage 'grpo' compares each sample with the other samples"),
    ("train.mini_batches=0", "train.mini_batches=0: expected an integer >= 1"),
    ("eval.n=0", "eval.n=0: expected an integer >= 1"),
]


@pytest.mark.parametrize("override, message", ISSUE)
def test_the_issues_cases_are_one_line_and_leave_nothing(world, capsys, override, message):
    base = ["train.steps=1", "data.train_size=50", "data.eval_size=5", "eval.at_start=false"]
    assert main(["rl", str(TINY / "grpo.yaml"), *base, "out_dir=out", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"r1lab: error: {message}") and err.count("\n") == 1
    assert not Path("out").exists()


@pytest.mark.parametrize("overrides, message", [
    (["algo.advantage=reinforce_pp", "train.group_size=1"], None),  # a batch-level advantage needs no groups
    (["algo.advantage=rloo", "train.group_size=1"], "train.group_size=1: advantage 'rloo'"),
    (["algo.advantage=reinforce_pp", "train.group_size=1", "train.dynamic_sampling=true"],
     "train.dynamic_sampling=true with train.group_size=1"),
    (["train.prompts_per_step=2", "train.group_size=2", "train.mini_batches=5"], "train.mini_batches=5: more than the batch"),
    (["eval.n=4"], "eval.ks=[1, 4, 8]: k=8 needs eval.n >= 8"),
    (["eval.n=4", "eval.ks=[1, 4]"], None),
    (["train.max_new_tokens_schedule={0: 32, 50: 4}"], "train.max_new_tokens_schedule[50]=4: expected an integer >= 8"),
    (["train.min_valid_fraction=0.5"], "needs train.dynamic_sampling=true"),
    (["algo.loss_agg_norm=64"], "algo.loss_agg_norm=64: taken only by loss_agg=seq-mean-token-sum-norm"),
    (["algo.kl_in_reward=true"], "algo.kl_in_reward=true: the KL term is off"),
    (["algo.entropy_control=true", "algo.entropy_coef=0.01", "algo.entropy_max_coef=0.001"], "algo.entropy_max_coef=0.001"),
    (["model.tiny.num_heads=5"], "expected num_heads to divide hidden_size"),
    (["eval.budget.max_think=8", "eval.budget.min_think=16"], "eval.budget.min_think=16: expected at most"),
    (["reward.settings={overlong_max: 16, overlong_cache: 16}"], "reward.settings.overlong_cache=16"),
    (["data.train_path=problems.jsonl"], "data.train_path and data.eval_path must be given together"),
])
def test_combinations_that_make_a_method_meaningless_are_refused(world, capsys, overrides, message):
    if message is None:
        with pytest.raises(Reached):
            main(["rl", str(TINY / "grpo.yaml"), "out_dir=out", *overrides])
        return
    assert main(["rl", str(TINY / "grpo.yaml"), "out_dir=out", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not Path("out").exists()


def test_uneven_mini_batches_are_warned_about(world, caplog):
    with pytest.raises(Reached):
        main(["rl", str(TINY / "grpo.yaml"), "out_dir=out", "train.prompts_per_step=3", "train.group_size=3",
              "train.mini_batches=2"])
    assert "train.mini_batches=2 does not divide the batch of 9 sequences" in caplog.text


# --- the property test ---------------------------------------------------------------------------


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def draws(tp: Any, d: Domain, rng: random.Random) -> tuple[list[Any], list[Any]]:
    """(values in the domain, values out of it) for a field of type `tp`: its edges, one step
    beyond each, one value drawn inside the range and one far beyond it."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        inside, outside = draws(item, dataclasses.replace(d, nonempty=False), rng)
        return [[v] for v in inside], [[v] for v in outside] + ([[]] if d.nonempty else [])
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        key_in, key_out = draws(key_tp, d.keys, rng) if d.keys is not None else (["a"], [])
        if value_tp is typing.Any:  # values of several kinds, checked where they are used: draw the keys only
            return [{}], [{k: None} for k in key_out]
        inside, outside = draws(value_tp, dataclasses.replace(d, keys=None, nonempty=False), rng)
        return ([{key_in[0]: v} for v in inside] + ([] if d.nonempty else [{}]),
                [{key_in[0]: v} for v in outside] + [{k: inside[0]} for k in key_out] + ([{}] if d.nonempty else []))
    if tp is str:
        inside, outside = [], []
        if d.choices is not None:
            inside.append(d.allowed()[0])  # the first only: some (vllm, ray) are slow to check
            outside.append("no-such-choice")
        if d.path:
            inside.append(EXISTING[d.path])
            outside = [MISSING]
        if d.nonempty:
            outside.append("")
        if d.off is not _UNSET:
            inside.append(d.off)
        return inside or ["x"], outside
    integer = tp is int
    inside, outside = d.edges(integer)
    lo = d.ge if d.ge is not None else d.gt
    hi = d.le if d.le is not None else d.lt
    span = 10**6
    a = lo if lo is not None else hi - span
    b = hi if hi is not None else a + span
    inside.append(rng.randint(int(a), int(b)) if integer else rng.uniform(a, b))
    if lo is not None:
        outside.append(lo - rng.randint(2, span) if integer else lo - rng.uniform(1, span))
    if hi is not None:
        outside.append(hi + rng.randint(2, span) if integer else hi + rng.uniform(1, span))
    if not integer:
        outside.append(float("nan"))
    inside = [v for v in inside if d.problem(v) is None]  # a random draw may land on an open edge
    assert all(d.problem(v) for v in outside), (d, outside)
    return inside, outside


def _domain_refusal(name: str, d: Domain, value: Any, err: str) -> bool:
    """Whether `err` is this field's domain refusal (what an in-domain value must never get)."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    text = d.describe(integer) if not isinstance(value, (list, dict)) else ""
    return bool(re.search(rf"{re.escape(name)}(\[[^\]]*\]|\.\w+)?=.*: expected {re.escape(text)}", err)) or (
        f"{name}: key" in err)


def _run(argv: list[str], capsys) -> tuple[str | int, str]:
    try:
        code: str | int = main(argv)
    except Reached:
        code = "reached"
    return code, capsys.readouterr().err


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def check(world: Path, capsys, argv: list[str], name: str, d: Domain, value: Any, allowed: bool) -> None:
    before = _snapshot(world)
    code, err = _run(argv, capsys)
    shown = f"{' '.join(argv)} -> {code}: {err!r}"
    assert "Traceback" not in err, shown
    if allowed:  # at an edge: the command passes this field's checks (another rule may still refuse it)
        assert code == "reached" or (code == 2 and not _domain_refusal(name, d, value, err)), shown
        return
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("r1lab: error: ") and name in lines[0], shown
    assert _snapshot(world) == before, f"{shown}: wrote {set(_snapshot(world)) - set(before)}"


COMMANDS = {  # a command and its fixed arguments; the override comes last
    "rl": ["rl", str(TINY / "grpo.yaml"), "out_dir=out", "--quiet"],
    "sft": ["sft", str(TINY / "sft.yaml"), "out_dir=out", "--quiet"],
    "dpo": ["dpo", str(TINY / "dpo.yaml"), "out_dir=out", "--quiet"],
    "rstar": ["rstar", str(TINY / "rstar_math.yaml"), "out_dir=out", "--quiet"],
    "demo": ["demo", "out_dir=out", "--quiet"],
    "eval": ["eval", "model", "--out", "out/eval", "--quiet"],
    "pipeline": ["pipeline", str(TINY / "light_r1.yaml"), "out_dir=out", "--quiet"],
    "cpt": ["cpt", str(TINY / "cpt.yaml"), f"cpt.corpus={ROOT / 'data' / 'cpt' / 'math_text.jsonl'}",
            "out_dir=out", "--quiet"],
    "pipeline stage": ["pipeline", str(TINY / "light_r1.yaml"), "out_dir=out", "--quiet"],  # stages.2 (an sft stage)
}


def _plan(rng: random.Random, fields: list, commands: list[str]) -> list[tuple[str, str, Any, Any, Domain, bool]]:
    """(command, name, type, value, domain, allowed): every field's out-of-domain values, one on
    every command and the others each on a command drawn at random; its in-domain values each on
    a drawn command."""
    plan = []
    for name, tp, d, _ in fields:
        if d is None:
            continue
        inside, outside = draws(tp, d, rng)
        usable = [c for c in commands if not (c == "pipeline stage" and name.startswith(SET_BY_PIPELINE))]
        for i, c in enumerate(usable):
            plan.append((c, name, tp, outside[(i + rng.randrange(len(outside))) % len(outside)], d, False))
        for v in outside:
            plan.append((rng.choice(usable), name, tp, v, d, False))
        for v in inside:
            plan.append((rng.choice(usable[:6]), name, tp, v, d, True))  # the pipeline's checks are the others'
    return plan


@pytest.fixture
def quick_cli(monkeypatch):
    """The same commands, minus the repeated work that checks nothing: the argument parser is built
    once (the top-level commands' parse results share no state) and each recipe file is read once."""
    import copy
    import functools

    import r1lab.cli
    import r1lab.config
    import r1lab.pipeline

    parser = r1lab.cli.build_parser()
    read = functools.lru_cache(maxsize=None)(r1lab.config.read_recipe)
    monkeypatch.setattr(r1lab.cli, "build_parser", lambda: parser)
    cached = lambda path, _seen=(): copy.deepcopy(read(Path(path), _seen))  # noqa: E731
    monkeypatch.setattr(r1lab.config, "read_recipe", cached)
    monkeypatch.setattr(r1lab.pipeline, "read_recipe", cached)


def test_every_setting_of_every_command_is_checked_at_and_beyond_its_bounds(world, capsys, quick_cli):
    rng = random.Random(36)
    fields = list(leaves(RunConfig))
    plan = _plan(rng, fields, list(COMMANDS))
    assert len({name for _, name, *_ in plan}) > 150
    for command, name, _, value, d, allowed in plan:
        key = f"stages.2.{name}" if command == "pipeline stage" else name
        argv = [*COMMANDS[command], f"{key}={_yaml(value)}"]
        check(world, capsys, argv, name, d, value, allowed)


STEP_ARGS = {"decontaminate": ["--benchmark", "problems.jsonl"], "reject-sample": ["--model", "model"],
             "pairs": ["--model", "model"]}


def test_every_data_step_setting_is_checked_at_and_beyond_its_bounds(world, capsys):
    rng = random.Random(361)
    for step, cls in _step_settings().items():
        for name, tp, d, _ in leaves(cls, step):
            if d is None:
                continue
            inside, outside = draws(tp, d, rng)
            key = name.split(".", 1)[1]
            for values, allowed in ((outside, False), (inside, True)):
                for v in values:
                    if step == "inspect":
                        argv = ["data", "inspect", "problems.jsonl", "--out", "out/inspect"]
                    else:
                        argv = ["data", step, "problems.jsonl", "-o", "out/x.jsonl", *STEP_ARGS.get(step, [])]
                    check(world, capsys, [*argv, f"{key}={_yaml(v)}", "--quiet"], name, d, v, allowed)


METHOD_SETUP = {
    "advantage estimator": lambda m: ["rl", [f"algo.advantage={m}"] + (["algo.critic=true"] if m == "gae" else []),
                                      "algo.advantage_args"],
    "policy loss": lambda m: ["rl", [f"algo.policy_loss={m}"], "algo.policy_loss_args"],
    "KL estimator": lambda m: ["rl", ["algo.kl_coef=0.01", f"algo.kl_estimator={m}"], "algo.kl_args"],
    "rollout correction": lambda m: ["rl", [f"algo.correction={m}"], "algo.correction_args"],
    "preference loss": lambda m: ["dpo", [f"dpo.loss={m}"], "dpo.loss_args"],
}


def test_every_method_hyper_parameter_is_checked_at_and_beyond_its_bounds(world, capsys):
    rng = random.Random(362)
    for table, method, h, d, default in _methods():
        if d is None:
            continue
        command, setup, section = METHOD_SETUP[table.kind](method)
        inside, outside = draws(type(default), d, rng)
        for values, allowed in ((outside, False), (inside, True)):
            for v in values:
                argv = [*COMMANDS[command], *setup, f"{section}.{h}={_yaml(v)}"]
                check(world, capsys, argv, f"{section}.{h}", d, v, allowed)


def test_flags_are_checked_at_and_beyond_their_bounds(world, capsys):
    eval_cmd = ["eval", "model", "--out", "out/eval", "--quiet"]
    cases = [
        (eval_cmd + ["--n", "0"], "eval.n", False), (eval_cmd + ["--n", "1"], "eval.n", True),
        (eval_cmd + ["--temperature", "-0.5"], "eval.temperature", False),
        (eval_cmd + ["--temperature", "0"], "eval.temperature", True),
        (eval_cmd + ["--max-new-tokens", "-1"], "eval.max_new_tokens", False),
        (eval_cmd + ["--max-new-tokens", "1"], "eval.max_new_tokens", True),
        (eval_cmd + ["--limit", "0"], "--limit", False), (eval_cmd + ["--limit", "1"], "--limit", True),
        (eval_cmd + ["--concurrency", "0"], "--concurrency", False),
        (["serve", "model", "--port", "-1"], "--port", False), (["serve", "model", "--port", "65536"], "--port", False),
        (["serve", "model", "--port", "0"], "--port", True), (["serve", "model", "--port", "65535"], "--port", True),
        (["serve", MISSING], "checkpoint", False),
    ]
    for argv, name, allowed in cases:
        before = _snapshot(world)
        code, err = _run(argv, capsys)
        if allowed:
            assert code == "reached", (argv, err)
        else:
            assert code == 2 and err.count("\n") == 1 and name in err, (argv, err)
            assert _snapshot(world) == before


def test_every_shipped_recipe_is_in_its_domains():
    from r1lab.config import read_recipe
    from r1lab.pipeline import is_pipeline, plan_pipeline

    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        if path.name.startswith("_"):
            continue
        if not is_pipeline(read_recipe(path)):
            load_config(path)
        elif path.parent.name == "tiny":  # the others name model directories of another machine
            plan_pipeline(path, [f"out_dir={ROOT / 'no-such-runs'}"])  # plans only: writes nothing

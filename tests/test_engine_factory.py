"""Every engine a command builds comes from one factory (rollout.build_engine) that takes the rollout
config: each `rollout.*` setting a user gives reaches the engine, from every command that samples.
The lower-level constructor (rollout.make_engine) is replaced by a recorder that keeps the options
of each call and hands back a real engine until the call the test stops at."""

import pytest

import r1lab.rollout as rollout
from r1lab.cli import main
from r1lab.config import RolloutConfig

TINY = ["model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.intermediate_size=64",
        "data.train_size=120", "data.sft_size=40", "data.eval_size=2", "data.difficulty=1", "reward.verify_workers=1",
        "sft.epochs=1", "sft.batch_size=16", "train.steps=1", "train.prompts_per_step=2", "train.group_size=2",
        "sampling.max_new_tokens=8", "eval.n=1", "eval.ks=[1]", "eval.max_new_tokens=8"]
# a value other than its default for every setting of the rollout section (the engine stays "fast":
# the vLLM settings are checked on their way, not run)
ROLLOUT = {"dtype": "float32", "batch_size": 7, "kv_cache_gb": 0.25, "gpu_memory_utilization": 0.3,
           "enforce_eager": False, "tensor_parallel_size": 2, "enable_sleep_mode": True, "max_model_len": 777}
SET = [f"rollout.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in ROLLOUT.items()]


class Stop(Exception):
    pass


@pytest.fixture
def built(monkeypatch):
    """The options of each make_engine call; `built.stop_at = k` raises Stop at the k-th call."""
    real = rollout.make_engine
    calls = []

    def record(model, tokenizer, engine="fast", batch_size=256, **options):
        calls.append({"engine": engine, "batch_size": batch_size, **options})
        if len(calls) == record.stop_at:
            raise Stop
        return real(model, tokenizer, engine, batch_size=batch_size, **options)

    record.stop_at, record.calls = 1, calls
    monkeypatch.setattr(rollout, "make_engine", record)
    return record


def every_setting_reached(call: dict, batch_size: int = ROLLOUT["batch_size"]) -> None:
    assert call == {"engine": "fast", **ROLLOUT, "batch_size": batch_size}, call


def test_the_factory_passes_every_rollout_setting(built):
    # every field of the section is named here: a new setting must reach the engine too
    assert set(ROLLOUT) | {"engine"} == {f for f in RolloutConfig.__dataclass_fields__}


@pytest.mark.parametrize("command, extra, stop_at, what", [
    ("rl", ["eval.at_start=false"], 1, "the RL engine"),
    ("rl", ["eval.at_start=false", "cluster.off_policy_steps=1"], 2, "the off-policy snapshot's engine"),
    ("rl", [], 1, "the held-out evaluation"),
    ("dpo", ["eval.at_start=false", "dpo.prompts_per_round=2", "dpo.samples_per_problem=2"], 1, "DPO's pair sampling"),
    ("demo", [], 1, "the demo's evaluation"),
])
def test_every_command_builds_its_engines_from_the_rollout_config(built, tmp_path, command, extra, stop_at, what):
    built.stop_at = stop_at
    recipe = [] if command == "demo" else [f"recipes/tiny/{'grpo' if command == 'rl' else command}.yaml"]
    eval_batch = ["eval.batch_size=5"]
    with pytest.raises(Stop):
        main([command, *recipe, "--quiet", f"out_dir={tmp_path}", "name=x", *TINY, *SET, *eval_batch, *extra])
    last = built.calls[-1]
    # evaluation decodes with eval.batch_size, every other engine with rollout.batch_size
    every_setting_reached(last, 5 if "evaluation" in what else ROLLOUT["batch_size"])


@pytest.mark.slow
def test_rstar_pipeline_and_eval_build_their_engines_from_the_rollout_config(built, tmp_path):
    # rStar: round 0's evaluation, its sandboxed step-by-step accuracy, round 1's tree search
    built.stop_at = 3
    rstar = ["rstar.rounds=1", "rstar.problems_per_round=2", "rstar.rollouts=1", "rstar.candidates=2",
             "rstar.max_depth=1", "rstar.warm_start=false", "eval.batch_size=5"]
    with pytest.raises(Stop):
        main(["rstar", "recipes/tiny/rstar_math.yaml", "--quiet", f"out_dir={tmp_path}", "name=r", *TINY, *SET, *rstar])
    assert len(built.calls) == 3
    every_setting_reached(built.calls[0], 5)
    for call in built.calls[1:]:
        every_setting_reached(call)

    # a pipeline: the SFT stage's evaluation, then a data step that samples the SFT model
    built.calls.clear()
    built.stop_at = 2
    recipe = tmp_path / "p.yaml"
    recipe.write_text("stages:\n  - sft: {}\n  - data: {input: train, steps: [filter: {k: 2, max_pass: 1.0}]}\n")
    with pytest.raises(Stop):
        main(["pipeline", str(recipe), "--quiet", f"out_dir={tmp_path}", "name=p", *TINY, *SET, "eval.batch_size=5"])
    every_setting_reached(built.calls[0], 5)
    # the data step samples with its own batch size (64) and the run's other rollout settings
    every_setting_reached(built.calls[1], 64)

    # r1lab eval of a saved model: plain, and the thinking-budget sweep
    model = tmp_path / "r" / "checkpoints" / "policy-round0"
    for flags in ([], ["--think-budgets", "4"]):
        built.calls.clear()
        built.stop_at = 1
        with pytest.raises(Stop):
            main(["eval", str(model), "--quiet", "--out", str(tmp_path / f"e{len(flags)}"), *TINY, *SET,
                  "eval.batch_size=5", *flags])
        every_setting_reached(built.calls[0], 5)

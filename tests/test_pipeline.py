"""Multi-stage recipes (`r1lab pipeline`): the whole pipeline checked before anything is written,
each stage fed by the one before, and a resume that runs only what did not finish, to the same result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from r1lab.errors import ConfigError
from r1lab.pipeline import check_resume, plan_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[1]

# a pipeline small enough to run in seconds: SFT, a pass-rate filter of the RL prompts under the SFT
# model, two RL steps with a checkpoint after each, and an eval stage
SMALL = {
    "model": {"path": "tiny", "tiny": {"hidden_size": 64, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2,
                                       "intermediate_size": 128, "max_positions": 128}},
    "data": {"tasks": ["arithmetic"], "difficulty": 2, "train_size": 96, "sft_size": 48, "eval_size": 8},
    "reward": {"verify_workers": 0},
    "sampling": {"max_new_tokens": 16},
    "eval": {"n": 2, "ks": [1, 2]},
    "sft": {"epochs": 1, "batch_size": 16, "warmup_steps": 0, "save_every": 1, "keep_checkpoints": 5},
    "train": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "eval_every": 0, "save_every": 1,
              "keep_checkpoints": 5, "micro_batch_size": 16},
    "stages": [
        {"sft": {}},
        {"data": {"steps": [{"filter": {"k": 2, "max_pass": 1.0, "workers": 0}}]}},
        {"rl": {}},
        {"eval": {}},
    ],
}


def write(tmp_path: Path, recipe: dict, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def with_stages(stages, **shared) -> dict:
    return {**SMALL, **shared, "stages": stages}


# --- validation: one line naming the stage and the field, before anything is written ---------


@pytest.mark.parametrize("stages, message", [
    ([{"sft": {}}, {"sftt": {}}], r"stages\[1\]: unknown stage kind 'sftt' \(did you mean 'sft'\?\)"),
    ([{"sft": {"sftt": {"lr": 1}}}], r"stages\[0\] \(sft\): unknown key 'sftt' \(did you mean 'sft'\?\)"),
    ([{"sft": {"sft": {"lrr": 1}}}], r"stages\[0\] \(sft\): unknown config key 'sft.lrr'"),
    ([{"sft": {"sft": {"lr": "fast"}}}], r"stages\[0\] \(sft\): sft.lr: expected a number"),
    ([{"sft": {}}, {"dpo": {}}], r"stages\[1\] \(dpo\): input: no earlier stage writes 'pairs'"),
    ([{"sft": {"input": "hard"}}], r"stages\[0\] \(sft\): input: no earlier stage writes 'hard'"),
    ([{"sft": {}}, {"data": {"steps": ["pairs"]}}, {"rl": {"input": "pairs"}}],
     r"stages\[2\] \(rl\): input: 'pairs' holds preference pairs"),
    ([{"sft": {}}, {"data": {"steps": [{"filtr": {}}]}}], r"stages\[1\] \(data\): steps\[0\]: unknown step 'filtr'"),
    ([{"sft": {}}, {"data": {"steps": [{"filter": {"max_pas": 1}}]}}],
     r"stages\[1\] \(data\): steps\[0\]: unknown config key 'filter.max_pas'"),
    ([{"sft": {}}, {"data": {"steps": [{"filter": {}}], "outptu": "x"}}], r"stages\[1\] \(data\): unknown key 'outptu'"),
    ([{"data": {"steps": ["pairs"]}}], r"stages\[0\] \(data\): steps\[0\]: pairs samples a model"),
    ([{"sft": {}}, {"data": {"steps": ["filter"], "output": "../x"}}], r"stages\[1\] \(data\): output: '../x' is not a name"),
    ([{"eval": {}}], r"stages\[0\] \(eval\): no model to evaluate"),
    ([{"sft": {"init_from": "x"}}], r"stages\[0\] \(sft\): 'init_from' is set by the pipeline"),
    ([{"sft": {"data": {"train_size": 3}}}], r"stages\[0\] \(sft\): 'data' is set by the pipeline"),
    ([{"sft": {}}, {"rl": {"algo": {"policy_loss": "ppo"}}}], r"stages\[1\] \(rl\): algo.policy_loss='ppo': expected one of 'ppo_clip'"),
    ([{"sft": {}}, {"data": {"steps": ["pairs"]}}, {"dpo": {"dpo": {"rounds": 2}}}],
     r"stages\[2\] \(dpo\): dpo.rounds: iterative rounds sample their own pairs"),
    ([{"sft": {}}, {"dpo": {"input": "train", "dpo": {"loss": "dpoo"}}}], r"stages\[1\] \(dpo\): dpo.loss='dpoo': expected one of 'dpo'"),
    # an empty mapping set on a mapping field empties it (and is refused), it does not merge as nothing
    ([{"sft": {}}, {"rl": {"reward": {"terms": {}}}}], r"stages\[1\] \(rl\): reward.terms=\{\}: expected a non-empty mapping"),
])
def test_a_bad_stage_is_named_by_index_and_field(tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message):
        plan_pipeline(write(tmp_path, with_stages(stages)), [f"out_dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


def test_the_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    recipe = write(tmp_path, with_stages([{"sft": {}}, {"dpo": {}}, {"rl": {}}]))
    out = subprocess.run([sys.executable, "-m", "r1lab", "pipeline", str(recipe), f"out_dir={tmp_path / 'runs'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("r1lab: error: stages[1] (dpo): input: no earlier stage writes 'pairs' (files so far: "
                                  "eval, sft, train) (a data stage with a pairs step writes it; or input: train samples "
                                  "pairs in the DPO stage)")
    assert not (tmp_path / "runs").exists()


def test_a_one_stage_recipe_is_not_a_pipeline(tmp_path):
    with pytest.raises(ConfigError, match="no 'stages' list"):
        plan_pipeline(ROOT / "recipes" / "tiny" / "grpo.yaml")


# --- wiring ----------------------------------------------------------------------------------


def test_each_stage_reads_what_the_stage_before_it_wrote(tmp_path):
    stages = [{"sft": {}},
              {"data": {"input": "sft", "output": "hard", "steps": [{"filter": {"max_pass": 0.5, "max_exclusive": True}}]}},
              {"sft": {"input": "hard", "sft": {"lr": 1.0e-4}}},
              {"data": {"steps": [{"pairs": {"k": 4}}]}},
              {"dpo": {}},
              {"data": {"steps": [{"filter": {"min_pass": 0.2, "max_pass": 0.625}}]}},
              {"rl": {}},
              {"eval": {}}]
    plan = plan_pipeline(write(tmp_path, with_stages(stages, sft={"lr": 3.0e-3})),
                         [f"out_dir={tmp_path}", "name=p", "stages.6.train.lr=1e-6", "seed=5"])
    run, s = tmp_path.resolve() / "p", plan.stages
    model = {i: str(run / st.dirname / "checkpoints" / st.kind) for i, st in enumerate(s)}
    prepared = run / "prepare" / "data"
    # the first SFT builds the tiny model; every later stage starts from / samples the one before
    assert s[0].cfg.init_from == "" and s[0].cfg.data.train_path == str(prepared / "sft.jsonl")
    assert s[1].steps[0][1].paths == [str(prepared / "sft.jsonl")] and s[1].steps[1][1].model == model[0]
    assert s[2].cfg.init_from == model[0] and s[2].cfg.data.train_path == str(run / "01-data" / "hard.jsonl")
    assert s[3].steps[0][1].paths == [str(prepared / "train.jsonl")] and s[3].steps[1][1].model == model[2]
    assert s[4].cfg.init_from == model[2] and s[4].cfg.dpo.pairs_path == str(run / "03-data" / "pairs.jsonl")
    assert s[5].steps[1][1].model == model[4] and s[5].output_path == run / "05-data" / "train.jsonl"
    assert s[6].cfg.init_from == model[4] and s[6].cfg.data.train_path == str(run / "05-data" / "train.jsonl")
    assert s[7].model == model[6] and s[7].cfg.data.eval_path == str(prepared / "eval.jsonl")
    # shared settings reach every stage; a stage's own and a stage override only that stage
    assert [st.cfg.sft.lr for st in s[:3]] == [3.0e-3, 3.0e-3, 1.0e-4]
    assert s[6].cfg.train.lr == 1e-6 and s[4].cfg.train.lr == SMALL_LR
    assert all(st.cfg.seed == 5 for st in s)
    # sampling steps follow the shared sampling settings unless they set their own
    assert s[3].steps[1][1].k == 4 and s[3].steps[1][1].max_new_tokens == 16 and s[3].steps[1][1].seed == 5


SMALL_LR = 3e-5  # the config's default RL learning rate (SMALL leaves it)


# --- running and resuming --------------------------------------------------------------------


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next((run / "02-rl" / "checkpoints" / "rl").glob("*.safetensors"))))


def killed_after_step_1(save):
    """`save` (a stage's save_state) that stops the run right after the step-1 checkpoint, as a kill
    would leave it: the checkpoint written, nothing after."""
    def save_then_stop(path, step, state, keep, *args, **kwargs):
        save(path, step, state, keep, *args, **kwargs)
        if step == 1:
            raise KeyboardInterrupt

    return save_then_stop


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and one killed inside its RL stage right after the step-1 checkpoint."""
    import r1lab.train.rl as rl

    tmp = tmp_path_factory.mktemp("pipeline")
    recipe = write(tmp, SMALL)
    quiet = dict(show_progress=False, log=lambda *a: None)
    whole = run_pipeline(plan_pipeline(recipe, [f"out_dir={tmp}", "name=whole"]), **quiet)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl, "save_state", killed_after_step_1(rl.save_state))
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(plan_pipeline(recipe, [f"out_dir={tmp}", "name=cut"]), **quiet)
    return tmp, recipe, whole


@pytest.mark.slow
def test_an_uninterrupted_run_chains_the_stages(runs):
    tmp, _, whole = runs
    run = tmp / "whole"
    done = {p.stem: json.loads(p.read_text())["result"] for p in (run / "stages").glob("*.json")}
    assert sorted(done) == ["00-sft", "01-data", "02-rl", "03-eval", "prepare"]
    assert done["01-data"]["outputs"]["file"] == str(run.resolve() / "01-data" / "train.jsonl")
    rl_cfg = yaml.safe_load((run / "02-rl" / "config.yaml").read_text())
    assert rl_cfg["init_from"] == str(run.resolve() / "00-sft" / "checkpoints" / "sft")
    assert rl_cfg["data"]["train_path"] == done["01-data"]["outputs"]["file"]
    manifest = json.loads((run / "01-data" / "train.manifest.json").read_text())
    assert manifest["steps"][1]["settings"]["model"] == str(run.resolve() / "00-sft" / "checkpoints" / "sft")
    assert all(p["metadata"]["pass_rate_model"].endswith("00-sft/checkpoints/sft")
               for p in map(json.loads, (run / "01-data" / "train.jsonl").read_text().splitlines()))
    assert whole["final_model"] == str(run.resolve() / "02-rl" / "checkpoints" / "rl")
    # the eval stage scores the RL stage's model: the same numbers as the RL stage's own evaluation
    assert done["03-eval"]["eval"]["avg@2"] == done["02-rl"]["eval"]["avg@2"]
    assert set(whole["stages"]) == {"00-sft", "02-rl", "03-eval"} and (run / "report.md").is_file()


@pytest.mark.slow
def test_a_resume_runs_only_what_did_not_finish_to_the_same_result(runs, monkeypatch):
    import r1lab.stages as stages

    tmp, recipe, _ = runs
    cut = tmp / "cut"
    assert not (cut / "stages" / "02-rl.json").exists() and not (cut / "03-eval").exists()
    plan = plan_pipeline(recipe, [f"resume={cut}"])
    assert check_resume(plan) == {"prepare": "done", "00-sft": "done", "01-data": "done", "02-rl": "resume",
                                  "03-eval": "new"}
    calls = []
    for name in ("prepare_data", "run_sft", "run_rl"):
        real = getattr(stages, name)
        monkeypatch.setattr(stages, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    summary = run_pipeline(plan, show_progress=False, log=lambda *a: None)
    assert "run_sft" not in calls and calls.count("run_rl") == 1  # prepare_data here: the RL stage reading its file
    steps = [json.loads(line)["step"] for line in (cut / "02-rl" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # step 1 kept from before the kill, step 2 run after the resume
    whole, again = final_weights(tmp / "whole"), final_weights(cut)
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    ref = json.loads((tmp / "whole" / "summary.json").read_text())
    assert summary["stages"]["03-eval"]["avg@2"] == ref["stages"]["03-eval"]["avg@2"]


@pytest.mark.slow
def test_an_interrupted_stage_without_checkpoints_starts_again(runs):
    import shutil

    tmp, recipe, _ = runs
    run = tmp / "copy"  # a copy of the whole run: the markers' paths are relative to the run directory
    shutil.copytree(tmp / "whole", run)
    (run / "stages" / "03-eval.json").unlink()  # killed inside the eval stage
    (run / "03-eval" / "eval" / "results.jsonl").write_text('{"cut off mid-li')
    plan = plan_pipeline(recipe, [f"resume={run}"])
    assert check_resume(plan) == {"prepare": "done", "00-sft": "done", "01-data": "done", "02-rl": "done",
                                  "03-eval": "restart"}
    summary = run_pipeline(plan, show_progress=False, log=lambda *a: None)
    assert (run / "stages" / "03-eval.json").is_file()
    assert summary["stages"]["03-eval"]["avg@2"] == summary["stages"]["02-rl"]["avg@2"]
    # a data stage that did not finish runs again, and so does every stage after it
    (run / "stages" / "01-data.json").unlink()
    assert check_resume(plan_pipeline(recipe, [f"resume={run}"])) == {
        "prepare": "done", "00-sft": "done", "01-data": "restart", "02-rl": "restart", "03-eval": "restart"}


@pytest.mark.slow
def test_an_interrupted_sft_stage_continues_from_its_checkpoint(runs):
    import r1lab.train.epochs as epoch_loop

    tmp, recipe, _ = runs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(epoch_loop, "save_state", killed_after_step_1(epoch_loop.save_state))
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(plan_pipeline(recipe, [f"out_dir={tmp}", "name=sft-cut"]), show_progress=False,
                         log=lambda *a: None)
    run = tmp / "sft-cut"
    plan = plan_pipeline(recipe, [f"resume={run}"])
    assert check_resume(plan) == {"prepare": "done", "00-sft": "resume", "01-data": "new", "02-rl": "new",
                                  "03-eval": "new"}
    run_pipeline(plan, show_progress=False, log=lambda *a: None)
    steps = [json.loads(line)["step"] for line in (run / "00-sft" / "sft_metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    whole, again = final_weights(tmp / "whole"), final_weights(run)
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("stages.0.sft.lr=0.5", r"stages\[0\] \(sft\): sft.lr differs from the finished stage's \(0.002 -> 0.5\)"),
    ("sampling.max_new_tokens=20", r"stages\[0\] \(sft\): sampling.max_new_tokens differs .*\(16 -> 20\)"),
    ("stages.1.steps=[{filter: {k: 3}}]", r"stages\[1\] \(data\): steps\[1\].filter.k differs .*\(2 -> 3\)"),
    ("data.eval_size=9", r"prepare: data.eval_size differs from the finished stage's \(8 -> 9\)"),
])
def test_a_changed_setting_of_a_finished_stage_is_refused(runs, override, message):
    tmp, recipe, _ = runs
    with pytest.raises(ConfigError, match=message):
        check_resume(plan_pipeline(recipe, [f"resume={tmp / 'whole'}", override]))


@pytest.mark.slow
def test_a_new_run_into_an_existing_directory_is_refused(runs):
    tmp, recipe, _ = runs
    with pytest.raises(ConfigError, match="already exists: resume="):
        check_resume(plan_pipeline(recipe, [f"out_dir={tmp}", "name=whole"]))


# --- the multi-stage recipes -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["light_r1", "exaone_deep"])
def test_the_published_pipelines_plan(name, tmp_path):
    model = tmp_path / "model"  # the recipe's model is a directory of another machine; planning checks that it exists
    model.mkdir()
    (model / "config.json").write_text("{}")
    plan = plan_pipeline(ROOT / "recipes" / f"{name}.yaml", [f"out_dir={tmp_path}", f"model.path={model}"])
    assert plan.shared.model.path != "tiny" and [s.kind for s in plan.stages][-2:] == ["rl", "eval"]
    if name == "light_r1":
        assert plan.shared.dpo.loss_args == {"beta": 0.3} and plan.shared.algo.kl_coef == 0.001
        window = plan.stages[-3].steps[1][1]
        assert (window.min_pass, window.max_pass) == (0.2, 0.625)
        decontaminate = plan.stages[0].steps[1][1]  # vendored benchmarks named, found wherever r1lab runs from
        assert decontaminate.ngram == 32 and [Path(b).name for b in decontaminate.benchmarks] == [
            "aime24.jsonl", "aime25.jsonl", "math500.jsonl"] and all(Path(b).is_file() for b in decontaminate.benchmarks)
    else:
        assert plan.shared.dpo.loss == "simper" and (plan.shared.eval.temperature, plan.shared.eval.top_p) == (0.6, 0.95)


@pytest.mark.slow
@pytest.mark.parametrize("name, kinds", [
    ("light_r1", ["data", "data", "sft", "data", "sft", "data", "dpo", "data", "rl", "eval"]),
    ("exaone_deep", ["sft", "data", "data", "dpo", "data", "rl", "eval"]),
])
def test_the_tiny_twins_run_end_to_end_each_stage_feeding_the_next(name, kinds, tmp_path):
    plan = plan_pipeline(ROOT / "recipes" / "tiny" / f"{name}.yaml", [f"out_dir={tmp_path}", "name=twin", "sft.epochs=4"])
    assert [s.kind for s in plan.stages] == kinds
    summary = run_pipeline(plan, show_progress=False, log=lambda *a: None)
    run = tmp_path.resolve() / "twin"
    files = {n: str(run / "prepare" / "data" / f"{n}.jsonl") for n in ("sft", "train", "eval")}
    model, models = "", []
    for s in plan.stages:  # what each stage read is what the stages before it wrote
        done = json.loads((run / "stages" / f"{s.dirname}.json").read_text())["result"]
        if s.kind == "data":
            manifest = json.loads(Path(done["outputs"]["file"]).with_suffix(".manifest.json").read_text())
            assert manifest["steps"][0]["settings"]["paths"] == [files[s.input]]
            for step in manifest["steps"][1:]:
                if "model" in step["settings"]:
                    assert step["settings"]["model"] == model and step["settings"]["engine"] == "fast"
            files[done["outputs"]["name"]] = done["outputs"]["file"]
            continue
        cfg = yaml.safe_load((run / s.dirname / "config.yaml").read_text())
        if s.kind == "eval":
            rl = json.loads((run / "stages" / f"{plan.stages[-2].dirname}.json").read_text())["result"]["eval"]
            assert [done["eval"][k] for k in ("avg@4", "pass@4", "maj@4")] == [rl[k] for k in ("avg@4", "pass@4", "maj@4")]
            continue
        assert cfg["init_from"] == model  # "" for the first: the tiny model is built
        if s.kind == "dpo":
            assert cfg["dpo"]["pairs_path"] == files["pairs"]
        else:
            assert cfg["data"]["train_path"] == files[s.input]
        model = done["outputs"]["model"]
        models.append(model)
        assert Path(model, "config.json").is_file()
    assert summary["final_model"] == models[-1] and models[-1].endswith("rl/checkpoints/rl")
    assert len(summary["stages"]) == kinds.count("sft") + 3  # every training stage and the eval, scored


def test_a_pass_rate_measured_under_another_model_is_measured_again():
    from r1lab.pipeline import fresh_pass_rates
    from r1lab.records import Problem

    rate = lambda model: {"pass_rate": 0.5, "n_correct": 2, "n_samples": 4, **({"pass_rate_model": model} if model else {})}  # noqa: E731
    rows = [Problem(id="a", prompt="1+1", answer="2", metadata={**rate("m/sft"), "response": "r"}),
            Problem(id="b", prompt="1+2", answer="3", metadata=rate("m/dpo")),
            Problem(id="c", prompt="1+3", answer="4", metadata=rate(""))]
    assert fresh_pass_rates(rows, "m/dpo") == 1
    assert rows[0].metadata == {"response": "r"}  # another model's: gone, the rest of the row kept
    assert rows[1].metadata == rate("m/dpo") and rows[2].metadata == rate("")  # this model's, and a given one: kept


def test_a_missing_benchmark_file_is_found_before_anything_runs(tmp_path):
    stages = [{"data": {"input": "sft", "steps": [{"decontaminate": {"benchmarks": ["nowhere/aime24.jsonl"]}}]}}]
    with pytest.raises(ConfigError, match=r"stages\[0\] \(data\): steps\[0\]: benchmark file not found: nowhere/aime24.jsonl"):
        plan_pipeline(write(tmp_path, with_stages(stages)), [f"out_dir={tmp_path / 'runs'}"])


@pytest.mark.slow
def test_a_stage_added_after_a_finished_run_filters_under_the_newest_model(runs):
    """A second filter of the RL prompts, appended to a finished run: only it runs, and it measures
    the pass rates again under the RL model instead of reusing the SFT model's."""
    import shutil

    tmp, _, _ = runs
    run = tmp / "grown"
    shutil.copytree(tmp / "whole", run)
    recipe = write(tmp, with_stages([*SMALL["stages"], {"data": {"output": "again", "steps": [{"filter": {"k": 2, "workers": 0}}]}}]),
                   "grown.yaml")
    plan = plan_pipeline(recipe, [f"resume={run}"])
    assert list(check_resume(plan).values()) == ["done"] * 5 + ["new"]
    run_pipeline(plan, show_progress=False, log=lambda *a: None)
    rl_model = str(run.resolve() / "02-rl" / "checkpoints" / "rl")
    rows = [json.loads(line) for line in (run / "04-data" / "again.jsonl").read_text().splitlines()]
    assert rows and all(r["metadata"]["pass_rate_model"] == rl_model for r in rows)
    assert (run / "04-data" / "input.jsonl").is_file()


@pytest.mark.slow
def test_a_pipeline_killed_by_sigkill_resumes_to_the_same_result(runs):
    """The CLI killed (SIGKILL) once its first stage finished, wherever the next ones were; resumed,
    it ends with the weights of the uninterrupted run."""
    import os
    import signal
    import time

    tmp, recipe, _ = runs
    run = tmp / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "r1lab", "pipeline", str(recipe), f"out_dir={tmp}", "name=killed",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.time() + 300
    while not (run / "stages" / "00-sft.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    status = check_resume(plan_pipeline(recipe, [f"resume={run}"]))
    assert status["prepare"] == status["00-sft"] == "done" and status["03-eval"] != "done"
    run_pipeline(plan_pipeline(recipe, [f"resume={run}"]), show_progress=False, log=lambda *a: None)
    whole, again = final_weights(tmp / "whole"), final_weights(run)
    assert all(torch.equal(whole[k], again[k]) for k in whole)

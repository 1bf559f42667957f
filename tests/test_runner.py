"""The one runner: a plan of stages, their done markers, and the resume scheme every command shares
(done / resume / restart / new), on stages that only record what they were asked to do."""

import json
import random

import pytest
import torch

from r1lab.errors import ConfigError, EngineError
from r1lab.runner import Plan, Stage, marker_path, run_plan, stage_status


def plan_of(tmp_path, calls, resume=False, settings=None, extends=None, fail=None, seeds=False):
    """Three stages a, b, c in tmp_path/run; b writes resumable checkpoints into run/checkpoints/state."""
    run = tmp_path / "run"

    def work(key):
        def run_stage(ctx):
            if key == fail:
                raise KeyboardInterrupt  # killed inside the stage
            calls.append((key, ctx.status[key], random.random() if seeds else None))
            return {"key": key, "before": sorted(ctx.results)}
        return run_stage

    return Plan("test", run, [
        Stage("a", work("a"), settings or {"lr": 1.0, "path": str(run / "x")}, seed=1 if seeds else None),
        Stage("b", work("b"), {"lr": 1.0}, seed=2 if seeds else None, checkpoints=(run, "state"),
              extends=extends or {"train.steps": 2}),
        Stage("c", work("c"), {"lr": 1.0}, directory=run / "c"),
    ], resume=resume)


def test_a_fresh_plan_runs_every_stage_and_leaves_a_marker_each(tmp_path):
    calls = []
    ctx = run_plan(plan_of(tmp_path, calls), log=lambda *_: None)
    assert [c[:2] for c in calls] == [("a", "new"), ("b", "new"), ("c", "new")]
    assert ctx.results["c"] == {"key": "c", "before": ["a", "b"]}  # each stage sees the results before it
    marker = json.loads(marker_path(tmp_path / "run", "a").read_text())
    assert marker["result"] == {"key": "a", "before": []}
    assert marker["settings"] == {"lr": 1.0, "path": "$RUN/x"}  # paths inside the run are relative to it


def test_a_resume_reads_finished_stages_back_and_runs_the_rest(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan_of(tmp_path, calls, fail="b"), log=lambda *_: None)
    (tmp_path / "run" / "c").mkdir()  # c had started once (it has a directory of its own)
    assert stage_status(plan_of(tmp_path, [], resume=True)) == {"a": "done", "b": "new", "c": "restart"}
    calls = []
    ctx = run_plan(plan_of(tmp_path, calls, resume=True), log=lambda *_: None)
    assert [c[:2] for c in calls] == [("b", "new"), ("c", "restart")]
    assert ctx.results["a"] == {"key": "a", "before": []} and ctx.read_back == ["a"]
    assert not (tmp_path / "run" / "c").exists()  # emptied before it started again (the stage made none)


def test_an_interrupted_stage_with_checkpoints_resumes_and_later_ones_run_again(tmp_path):
    run_plan(plan_of(tmp_path, []), log=lambda *_: None)
    marker_path(tmp_path / "run", "b").unlink()
    (tmp_path / "run" / "checkpoints" / "state").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "state" / "step-000001.pt").write_bytes(b"")
    calls = []
    run_plan(plan_of(tmp_path, calls, resume=True), log=lambda *_: None)
    assert [c[:2] for c in calls] == [("b", "resume"), ("c", "new")]  # c's marker is not trusted after b


def test_a_changed_setting_of_a_finished_stage_is_refused_and_more_steps_continue(tmp_path):
    run_plan(plan_of(tmp_path, []), log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"a: lr differs from the finished stage's \(1.0 -> 2.0\)"):
        stage_status(plan_of(tmp_path, [], resume=True, settings={"lr": 2.0, "path": str(tmp_path / "run" / "x")}))
    # more steps for b, which has no checkpoint: refused; with one it continues
    more = {"train.steps": 5}
    with pytest.raises(ConfigError, match=r"b: train.steps differs .*\(2 -> 5\) and it has no resumable checkpoint"):
        stage_status(plan_of(tmp_path, [], resume=True, extends=more))
    (tmp_path / "run" / "checkpoints" / "state").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "state" / "step-000002.pt").write_bytes(b"")
    assert stage_status(plan_of(tmp_path, [], resume=True, extends=more)) == {"a": "done", "b": "resume", "c": "new"}


def test_a_setting_added_since_the_marker_counts_only_when_off_its_default(tmp_path):
    # the marker was written by an r1lab without reward.token_credit; today's default ({}) is what it ran
    run_plan(plan_of(tmp_path, []), log=lambda *_: None)
    here = {"lr": 1.0, "path": str(tmp_path / "run" / "x")}
    assert stage_status(plan_of(tmp_path, [], resume=True, settings={**here, "reward.token_credit": {}}))["a"] == "done"
    with pytest.raises(ConfigError, match=r"a: reward.token_credit differs .*\(None -> \{'visual_readings': 1.0\}\)"):
        stage_status(plan_of(tmp_path, [], resume=True, settings={**here, "reward.token_credit": {"visual_readings": 1.0}}))
    with pytest.raises(ConfigError, match=r"a: not_a_setting differs .*\(None -> 0\)"):  # no default to compare with
        stage_status(plan_of(tmp_path, [], resume=True, settings={**here, "not_a_setting": 0}))
    # the other way round: the marker recorded it at its default, the stage no longer compares it
    run_plan(plan_of(tmp_path, [], settings={**here, "reward.token_credit": {}}), log=lambda *_: None)
    assert stage_status(plan_of(tmp_path, [], resume=True, settings=here))["a"] == "done"


def test_a_marker_without_settings_counts_as_unfinished(tmp_path):
    """An older r1lab's demo marker (the config as YAML, no settings): the stage runs again."""
    run_plan(plan_of(tmp_path, []), log=lambda *_: None)
    marker_path(tmp_path / "run", "b").write_text(json.dumps({"stage": "b", "seconds": 1.0, "result": {},
                                                              "config": "train: {lr: 1.0}\n"}))
    assert stage_status(plan_of(tmp_path, [], resume=True)) == {"a": "done", "b": "new", "c": "new"}
    (tmp_path / "run" / "sft").mkdir()  # an older pipeline stage's marker
    (tmp_path / "run" / "sft" / "done.json").write_text("{}")
    lines: list[str] = []
    run_plan(plan_of(tmp_path, [], resume=True), log=lines.append)
    assert any("2 done marker(s) of an earlier r1lab (sft/done.json, ...)" in x and "run again" in x for x in lines)


def test_a_moved_run_still_compares(tmp_path):
    run_plan(plan_of(tmp_path, []), log=lambda *_: None)
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "moved").rename(moved / "run")
    assert stage_status(plan_of(moved, [], resume=True))["a"] == "done"


def test_each_stage_starts_from_its_own_seed_whatever_ran_before(tmp_path):
    whole = []
    run_plan(plan_of(tmp_path / "w", whole, seeds=True), log=lambda *_: None)
    cut = []
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan_of(tmp_path / "c", cut, seeds=True, fail="b"), log=lambda *_: None)
    torch.manual_seed(12345)
    random.seed(12345)
    resumed = []
    run_plan(plan_of(tmp_path / "c", resumed, seeds=True, resume=True), log=lambda *_: None)
    assert resumed[0][2] == whole[1][2]  # stage b drew what it drew in the uninterrupted run


def test_a_fresh_run_forgets_an_earlier_runs_markers_and_checkpoints(tmp_path):
    run_plan(plan_of(tmp_path, []), log=lambda *_: None)
    state = tmp_path / "run" / "checkpoints" / "state"
    state.mkdir(parents=True)
    (state / "step-000001.pt").write_bytes(b"")
    calls = []
    plan = plan_of(tmp_path, calls, fail="a")
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, log=lambda *_: None)
    assert not list((tmp_path / "run" / "stages").glob("*.json")) and not list(state.iterdir())


def test_an_engine_that_fails_in_a_fresh_run_leaves_no_run_directory(tmp_path):
    def broken(ctx):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text("x")
        raise EngineError("rollout.engine=vllm: the vLLM engine did not start")

    with pytest.raises(EngineError):
        run_plan(Plan("test", tmp_path / "run", [Stage("a", broken)]), log=lambda *_: None)
    assert not (tmp_path / "run").exists()

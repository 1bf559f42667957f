"""The verifiers adapter: verifiers 0.4.0 tasks (verifiers.v1) defined in Python run as r1lab
episodes, r1lab sampling token-exact and the tasks' own async rewards scoring; tools from their
toolsets are called in process, failures are observations; vf:module:attr is a task source."""

import json

import pytest

pytest.importorskip("verifiers.v1", reason="verifiers is not installed (extra verifiers)")

from helpers_episodes import ScriptedEngine, spelled  # noqa: E402

from r1lab.config import load_config  # noqa: E402
from r1lab.errors import ConfigError  # noqa: E402
from r1lab.eval.run import EpisodeSpec, evaluate  # noqa: E402
from r1lab.envs.verifiers_adapter import task_problem  # noqa: E402
from r1lab.reward_registry import get_reward  # noqa: E402
from r1lab.rollout import SamplingParams  # noqa: E402
from r1lab.rollout.episodes import EpisodeLimits, run_episodes, score_episodes  # noqa: E402
from r1lab.tasks import generate_splits  # noqa: E402
from r1lab.verify import verify_batch  # noqa: E402

PARAMS = SamplingParams(temperature=0, max_new_tokens=200)
LIMITS = EpisodeLimits(max_turns=4, max_tokens=3000)


def engine_for(tok, turns):
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    script = [spelled(tok, t) for t in turns[:-1]] + [spelled(tok, turns[-1]) + [eos]]
    return ScriptedEngine(tok, script, [eos])


def call(name, **arguments):
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def test_single_turn_task_is_scored_by_its_own_rewards(tiny):
    p = task_problem("vf_tasks:qa_tasks", 2)  # What is 3 + 3?
    assert p.prompt[0] == {"role": "system", "content": "Answer in <answer> tags."} and p.answer == "6"
    ep = run_episodes(engine_for(tiny[1], ["<answer>6</answer>"]), [p], PARAMS, env="verifiers", limits=LIMITS)[0]
    assert ep.finish_reason == "stop" and len(ep.turns) == 1 and ep.env_rewards["vf_episode_reward"] == 1.0
    assert ep.env_rewards["vf/correct"] == 1.0
    score_episodes([ep], {"vf_reward": 1.0}, workers=0)
    assert ep.completion.reward == 1.0 and ep.completion.verdict.correct
    wrong = verify_batch([p], ["<answer>7</answer>"], workers=0)[0]
    assert wrong.status == "wrong" and "correct=0" in wrong.reason


def test_tool_task_calls_its_toolset_and_the_trace_holds_the_tool_turns(tiny):
    p = task_problem("vf_tasks:tool_tasks", 0)  # What is 3 * 7?
    turns = [call("multiply", a=3, b="x"), call("explode"), call("multiply", a=3, b=7), "<answer>21</answer>"]
    ep = run_episodes(engine_for(tiny[1], turns), [p], PARAMS, env="verifiers",
                      limits=EpisodeLimits(max_turns=5, max_tokens=4000))[0]
    observations = ep.texts[1::2][:3]
    assert "error" in observations[0] and "ValueError" in observations[0]  # int("x") failed: an observation
    assert "boom" in observations[1] and "21" in observations[2]
    assert [t.tool_calls for t in ep.turns] == [1, 1, 1, 0] and sum(t.tool_errors for t in ep.turns) == 2
    # correct (1.0) + used_tool (0.5 x 1.0): the rewards saw the tool messages of the episode
    assert ep.env_rewards["vf_episode_reward"] == 1.5 and ep.env_rewards["vf/used_tool"] == 1.0
    assert "multiply" in ep.env.guide() and '"a": "int"' in ep.env.guide()
    res = evaluate(engine_for(tiny[1], turns), [p], PARAMS, n=1, verify_workers=0, show_progress=False,
                   episodes=EpisodeSpec("verifiers", {"max_tool_calls": 4}, EpisodeLimits(max_turns=5, max_tokens=4000)))
    assert res.summary["avg@1"] == 1.0 and res.summary["tool_calls"] == 3 and res.summary["tool_errors"] == 2


@pytest.mark.parametrize("response", ["", "x" * 30_000, "<answer>6</answer> and more", "<answer>['6']</answer>"])
def test_hostile_answers_are_not_correct(response):
    p = task_problem("vf_tasks:qa_tasks", 2)
    assert not verify_batch([p], [response], workers=0)[0].correct
    assert get_reward("vf_reward")([p], [response], [None]) == [0.0]


def test_task_sets_are_a_task_source_and_bad_references_are_one_line():
    train, held = generate_splits(["vf:vf_tasks:qa_tasks"], 4, 2, 1, 7)
    assert len(train) == 4 and len(held) == 2 and {p.prompt[1]["content"] for p in train}.isdisjoint(
        {p.prompt[1]["content"] for p in held})
    assert all(p.task == "verifiers" and verify_batch([p], [f"<answer>{p.answer}</answer>"], workers=0)[0].correct
               for p in train + held)
    with pytest.raises(ConfigError, match="problem space is too small"):
        generate_splits(["vf:vf_tasks:qa_tasks"], 10, 2, 1, 7)  # six tasks in all
    with pytest.raises(ConfigError, match=r"data.tasks\[0\]='vf:no_such_module:x': verifiers task set .*cannot import"):
        load_config(None, ["data.tasks=[vf:no_such_module:x]"])
    with pytest.raises(ConfigError, match="expected module:attr"):
        load_config(None, ["data.tasks=[vf:vf_tasks]"])

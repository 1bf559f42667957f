"""Every bad env setting of an RL command is one line naming it, exit status 2, and nothing written:
the environment is built once from env.settings when the config is checked, its tools are checked
against what the task families allow, and an engine that cannot continue token ids is refused."""

import pytest

from r1lab.cli import main
from r1lab.config import RunConfig
from r1lab.errors import ConfigError
from r1lab.rollout.openai import OpenAIEngine
from r1lab.train.episodes import check_episode_engine

BAD = [
    (["env.name=nope"], "env.name='nope': expected "),
    (["env.name=tools", "env.settings={tools: [hammer]}"],
     "env.settings of env.name=tools: unknown tool 'hammer'; known: calculator, python, search"),
    (["env.name=tools", "env.settings={tools: [search]}", "data.tasks=[multiply]"],
     "env.settings.tools: task family 'multiply' does not allow search (it allows: calculator, python)"),
    (["env.name=tools", "env.max_turns=0"], "env.max_turns=0: expected an integer >= 1"),
    (["env.name=tools", "env.max_tokens=-3"], "env.max_tokens=-3: expected an integer >= 1"),
    (["env.name=tools", "env.settings={call_format: xml}"],
     "env.settings of env.name=tools: tool environment: call_format must be one of hermes, tags, got 'xml'"),
    (["env.name=tools", "env.settings={max_tool_calls: -1}"],
     "env.settings of env.name=tools: tool environment: limits must be positive"),
    (["env.name=tools", "env.settings={hammer: 1}"], "environment 'tools': bad settings ['hammer']"),
    (["env.name=tools", "env.settings={tool_settings: {calculator: {nope: 1}}}"], "tool 'calculator': bad settings ['nope']"),
    (["env.name=tools", "env.settings=3"], "env.settings: expected a mapping, got 3"),
    (["reward.terms={accuracy: 1.0, tool_errors: 0.5}"],
     "reward.terms: tool_errors is not a term env.name=one_turn produces (it produces: none)"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_env_setting_is_one_line_and_exit_2_with_nothing_written(overrides, message, tmp_path, capsys):
    assert main(["rl", "recipes/tiny/grpo.yaml", "--quiet", f"out_dir={tmp_path}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1lab: error: ") and "\n" not in err
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_an_engine_that_cannot_continue_token_ids_is_refused_for_episodes():
    cfg = RunConfig()
    cfg.env.name = "tools"
    engine = OpenAIEngine("http://localhost:1/v1", model="m")
    assert not engine.continues_ids
    with pytest.raises(ConfigError, match=r"^env.name=tools: multi-turn episodes need an engine that continues token "
                                          r"ids \(fast, hf, vllm\); OpenAIEngine cannot$"):
        check_episode_engine(cfg, engine)
    cfg.env.name = "one_turn"
    check_episode_engine(cfg, engine)  # a one-turn run asks nothing of the engine


def test_environment_reward_terms_pass_the_config_domain_when_the_environment_produces_them():
    from r1lab.config import load_config
    from r1lab.stages import check_run_config

    cfg = load_config("recipes/tiny/tool_calc.yaml", ["reward.terms={accuracy: 1.0, tool_calls: 0.1, tool_errors: 0.5}"])
    check_run_config(cfg)
    with pytest.raises(ConfigError, match="key 'tool_callz': expected one of"):
        load_config("recipes/tiny/tool_calc.yaml", ["reward.terms={accuracy: 1.0, tool_callz: 0.1}"])


def test_failed_tool_calls_are_penalised_by_a_positive_weight_on_tool_error_penalty(tiny):
    """reward.terms weights are >= 0; the tool environment's tool_error_penalty (-1 per failed call)
    takes one, and an episode with two failed calls then a right answer scores 1 + 0.25 * (-2)."""
    from helpers_episodes import ScriptedEngine

    from r1lab.config import load_config
    from r1lab.records import Problem
    from r1lab.rollout import SamplingParams
    from r1lab.rollout.episodes import EpisodeLimits, run_episodes, score_episodes
    from r1lab.stages import check_run_config

    terms = {"accuracy": 1.0, "tool_error_penalty": 0.25}
    check_run_config(load_config("recipes/tiny/tool_calc.yaml", ["reward.terms={accuracy: 1.0, tool_error_penalty: 0.25}"]))
    with pytest.raises(ConfigError, match=r"^reward.terms.tool_error_penalty=-0.25: expected a number >= 0$"):
        load_config("recipes/tiny/tool_calc.yaml", ["reward.terms={accuracy: 1.0, tool_error_penalty: -0.25}"])
    tok = tiny[1]
    eos = tok.eos_token_id
    turns = ["<calc>1/0</calc>", "<calc>2 +</calc>", "<answer>5</answer>"]
    script = [tok(t, add_special_tokens=False)["input_ids"] for t in turns]
    script[-1] = script[-1] + [eos]
    ep = run_episodes(ScriptedEngine(tok, script, [eos]), [Problem("q", "Add 2 and 3.", "5", task="math")],
                      SamplingParams(temperature=0, max_new_tokens=64), env="tools",
                      env_settings={"tools": ["calculator"], "call_format": "tags"},
                      limits=EpisodeLimits(max_turns=4, max_tokens=400))[0]
    assert [t.tool_errors for t in ep.turns] == [1, 1, 0] and ep.env_rewards["tool_error_penalty"] == -2.0
    out = score_episodes([ep], terms, workers=0)
    # 1 (right) + 0.25 * (-2): exact in binary floating point
    assert ep.completion.verdict.correct and out["total"] == [0.5] and ep.completion.reward == 0.5
    assert ep.completion.rewards == {"accuracy": 1.0, "tool_error_penalty": -2.0}

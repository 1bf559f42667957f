"""Tools and the tool environment: calls parsed in both formats, each tool on good and hostile input,
python's state across an episode's calls, every failure an observation (never a crash, never an
escape), the limits' finish reasons, and whole episodes through the runner."""

import os
import time

import pytest
from helpers_episodes import ScriptedEngine, spelled

from r1lab.envs import (CalculatorTool, SearchIndex, SearchTool, Tool, ToolCall, ToolEnvironment, ToolResult,
                        calculate, call_tool, make_env, make_tool, parse_tool_call)
from r1lab.errors import ConfigError
from r1lab.records import Problem

TOOLS = {"python": make_tool("python"), "calculator": CalculatorTool()}


def hermes(name, **arguments):
    import json

    return f'Let me check.<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


# --- parsing -----------------------------------------------------------------------------------


def test_calls_are_parsed_in_both_formats():
    assert parse_tool_call(hermes("python", code="print(1)"), "hermes", TOOLS) == ToolCall("python", {"code": "print(1)"})
    # arguments as a JSON string, as some models write them
    assert parse_tool_call('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1+2\\"}"}</tool_call>',
                           "hermes", TOOLS) == ToolCall("calculator", {"expression": "1+2"})
    assert parse_tool_call("think <python>\nprint(2)\n</python>", "tags", TOOLS) == ToolCall("python", {"code": "print(2)"})
    assert parse_tool_call("so <calc>3*4</calc>", "tags", TOOLS) == ToolCall("calculator", {"expression": "3*4"})
    assert parse_tool_call("<answer>4</answer>", "hermes", TOOLS) is None
    assert parse_tool_call("<answer>4</answer>", "tags", TOOLS) is None


@pytest.mark.parametrize("text, message", [
    ('<tool_call>{"name": "python", "arguments": {"code": "1"</tool_call>', "not JSON"),
    ('<tool_call>["python"]</tool_call>', "expected"),
    ('<tool_call>{"name": "python", "arguments": [1]}</tool_call>', "arguments are not a JSON object"),
    ('<tool_call>{"name": "python", "arguments": "{oops"}</tool_call>', "arguments are not a JSON object"),
    ('just text</tool_call>', "without <tool_call>"),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "unknown tool 'rm_rf'; available: calculator, python"),
])
def test_malformed_and_unknown_calls_are_messages_for_the_model(text, message):
    got = parse_tool_call(text, "hermes", TOOLS)
    assert isinstance(got, str) and message in got


# --- the calculator ------------------------------------------------------------------------------


def test_calculator_evaluates_arithmetic_without_eval():
    assert calculate("2 + 3 * (4 - 1)") == 11 and calculate("7 / 2") == 3.5 and calculate("8 / 2") == 4
    assert calculate("2^10") == 1024 and calculate("factorial(5) % 7") == 1
    assert calculate("sqrt(16) + log(e)") == 5.0 and calculate("-pi") == -calculate("pi")
    for bad in ["__import__('os').system('id')", "().__class__", "open('/etc/passwd')", "x", "'a' * 10",
                "2 ** 10 ** 10", "9 ** 999999", "factorial(10 ** 6)", "-" * 60 + "1", "1" * 600,
                "lambda: 1", "[1, 2]", "1 if 1 else 2", "max(x=1)"]:
        with pytest.raises(ValueError):
            calculate(bad)
    out = CalculatorTool().run({"expression": "1/0"}, {}, 1.0)
    assert out.status == "error" and "ZeroDivisionError" in out.text
    assert CalculatorTool().run({"expression": "2 ** 0.5"}, {}, 1.0).text == "1.41421356237"


# --- search ----------------------------------------------------------------------------------------

CORPUS = [{"title": "Paris", "text": "Paris is the capital and largest city of France."},
          {"title": "Mount Everest", "text": "Mount Everest is Earth's highest mountain above sea level, 8849 m."},
          {"title": "Python", "text": "Python is a programming language created by Guido van Rossum."}]


def test_search_finds_the_best_passages_and_says_when_none_match(tmp_path):
    tool = SearchTool(SearchIndex(CORPUS), k=2)
    out = tool.run({"query": "highest mountain on Earth"}, {}, 1.0)
    assert out.ok and out.text.startswith("[1] Mount Everest\n") and "8849" in out.text
    assert tool.run({"query": "zebra quagga"}, {}, 1.0).text == "no results"
    assert tool.run({"query": "the of and"}, {}, 1.0).text == "no results"  # stopwords only
    assert tool.run({"query": 3}, {}, 1.0).status == "error"
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(__import__("json").dumps(d) for d in CORPUS) + "\n")
    assert "France" in make_tool("search", corpus=str(path), k=1).run({"query": "capital of France"}, {}, 1.0).text
    with pytest.raises(ConfigError, match="corpus file not found"):
        make_tool("search", corpus=str(tmp_path / "none.jsonl"))


# --- python: state and hostile code ----------------------------------------------------------------


def test_python_keeps_an_episodes_state_by_replaying_its_successful_cells():
    py, state = make_tool("python"), {}
    assert py.run({"code": "x = 21\nprint('set')"}, state, 5.0).text == "set\n"
    assert py.run({"code": "y = undefined_name"}, state, 5.0).status == "error"  # not kept
    out = py.run({"code": "```python\nprint(x * 2)\n```"}, state, 5.0)
    assert out.text == "42\n"  # the first cell's output is not repeated
    assert state["python_cells"] == ["x = 21\nprint('set')", "print(x * 2)"]
    assert py.run({"code": "print(x)"}, {}, 5.0).status == "error"  # another episode: nothing kept
    stateless = make_tool("python", keep_state=False)
    s2 = {}
    stateless.run({"code": "x = 1"}, s2, 5.0)
    assert "NameError" in stateless.run({"code": "print(x)"}, s2, 5.0).text


@pytest.mark.parametrize("code, status, says", [
    ("import os\nwhile True: os.fork()", "error", "os.fork is not allowed"),
    ("while True: pass", "timeout", "timed out after 2s"),
    ("print('x' * 100_000_000)", "output_limit", "output over 100000 bytes"),
    ("print(open('/etc/passwd').read())", "error", "reading outside the working directory is not allowed"),
    ("import os\nprint(os.listdir('/'))", "error", "listing outside the working directory is not allowed"),
    ("open('/tmp/r1lab-escape', 'w').write('x')", "error", "writing outside the working directory is not allowed"),
    ("import socket\nsocket.create_connection(('1.1.1.1', 80))", "error", "not allowed"),
    ("x = bytearray(2 * 1024 ** 3)", "memory", "out of memory"),
    ("import os\nos.kill(os.getppid(), 9)", "error", "os.kill is not allowed"),
])
def test_hostile_python_is_contained_and_reported(code, status, says):
    out = call_tool(make_tool("python"), {"code": code}, {}, 2.0)
    assert out.status == status and says in out.text, out
    assert not os.path.exists("/tmp/r1lab-escape")
    assert os.getppid() > 1  # we are alive, and so is our parent


# --- any tool, whatever it does --------------------------------------------------------------------


class Hostile(Tool):
    name, tag, argument = "hostile", "hostile", "how"

    def run(self, arguments, state, timeout):
        how = arguments["how"]
        if how == "raise":
            raise RuntimeError("boom")
        if how == "hang":
            time.sleep(30)
        if how == "wrong type":
            return 42
        return ToolResult("x" * 100_000)


@pytest.mark.parametrize("how, status, says", [("raise", "error", "failed: RuntimeError: boom"),
                                               ("hang", "timeout", "timed out after 0.3s"),
                                               ("wrong type", "error", "returned int")])
def test_a_tool_that_raises_hangs_or_misbehaves_is_an_error_result(how, status, says):
    t0 = time.monotonic()
    out = call_tool(Hostile(), {"how": how}, {}, 0.3)
    assert out.status == status and says in out.text and time.monotonic() - t0 < 5


def test_tool_environment_truncates_floods_and_counts_errors():
    env = ToolEnvironment(tools=(), call_format="tags", tool_objects=[Hostile()], max_output_chars=100)
    env.reset(Problem("q", "Q?", "1"))
    r = env.step("<hostile>flood</hostile>")
    assert not r.done and r.observation.startswith("\n<output>\n" + "x" * 100 + "\n... [99900 more characters cut]")
    r = env.step("<hostile>raise</hostile>")
    assert r.info["tool_errors"] == 1 and "boom" in r.observation
    assert r.rewards == {"tool_calls": 1.0, "tool_errors": 1.0, "tool_error_penalty": -1.0}
    assert env.step("<answer>1</answer>").done


def test_tool_environment_limits_and_instructions():
    env = make_env("tools", tools=["calculator"], max_tool_calls=1)
    messages = env.reset(Problem("q", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "4"))
    assert messages[0]["content"].startswith("Be brief.\n\nYou may call tools") and '"name": "calculator"' in messages[0]["content"]
    assert env.stop == ("</tool_call>",)
    r = env.step(hermes("calculator", expression="2+2"))
    assert r.observation == [{"role": "tool", "content": "4"}] and r.info["status"] == "ok"
    r = env.step(hermes("calculator", expression="2+3"))
    assert r.done and r.finish_reason == "max_tool_calls"
    slow = ToolEnvironment(tools=(), call_format="tags", tool_objects=[Hostile()], tool_timeout_s=0.2, max_tool_seconds=0.3)
    slow.reset(Problem("q", "Q?", "1"))
    assert slow.step("<hostile>hang</hostile>").info["status"] == "timeout"
    assert slow.step("<hostile>hang</hostile>").info["status"] == "timeout"
    r = slow.step("<hostile>hang</hostile>")
    assert r.done and r.finish_reason == "tool_timeout"
    assert make_env("tools", tools=["python", "calculator"], call_format="tags").stop == ("</python>", "</calc>")
    with pytest.raises(ConfigError, match="call_format"):
        make_env("tools", call_format="xml")
    with pytest.raises(ConfigError, match="unknown tool 'shell'"):
        make_env("tools", tools=["shell"])


# --- whole episodes ------------------------------------------------------------------------------


@pytest.mark.parametrize("call_format", ["hermes", "tags"])
def test_tool_episode_through_the_runner(tiny, call_format):
    """Python twice (state kept), then the answer: the observation ids are the tool's output rendered
    once, the verifier scores the last turn, the counts reach the metrics."""
    from r1lab.rollout import SamplingParams
    from r1lab.rollout.episodes import EpisodeLimits, episode_metrics, run_episodes, score_episodes

    tok = tiny[1]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    if call_format == "hermes":
        turns = [hermes("python", code="x = 3\nprint(x + 2)"), hermes("python", code="print(x * 7)")]
    else:
        turns = ["<python>x = 3\nprint(x + 2)</python>", "<python>print(x * 7)</python>"]
    script = [spelled(tok, t) for t in turns] + [spelled(tok, "<answer>21</answer>") + [eos]]
    engine = ScriptedEngine(tok, script, [eos])
    ep = run_episodes(engine, [Problem("q", "What is 3 * 7?", "21")], SamplingParams(temperature=0, max_new_tokens=200),
                      env="tools", env_settings={"tools": ["python"], "call_format": call_format},
                      limits=EpisodeLimits(max_turns=4, max_tokens=2000))[0]
    assert ep.finish_reason == "stop" and len(ep.turns) == 3
    obs_texts = ep.texts[1::2][:2]
    assert ("5\n" in obs_texts[0] and "21\n" in obs_texts[1]) and ep.answer == "".join(turns) + "<answer>21</answer>"
    sampled = [i for i, m in zip(ep.ids, ep.mask) if m]
    assert sampled == [t for s in script for t in s]
    score_episodes([ep], {"accuracy": 1.0, "tool_errors": -0.5}, workers=0)
    assert ep.completion.verdict.correct and ep.completion.reward == 1.0
    m = episode_metrics([ep])
    assert m["env/tool_calls"] == 2 and m["env/tool_errors"] == 0 and m["env/env_tokens_per_turn"] > 0


def test_the_search_tool_loads_no_numba_so_vllm_can_start_in_the_same_process():
    """vLLM's start-up scans every loaded module and crashes on llvmlite's wrappers (which bm25s's
    numba backend loads): the search tool keeps bm25s on numpy."""
    import subprocess
    import sys

    code = ("import sys\nfrom r1lab.envs.tools import SearchIndex\n"
            "SearchIndex(['a cat sat', 'a dog ran']).search('cat', 1)\n"
            "print('numba' in sys.modules, 'llvmlite' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]

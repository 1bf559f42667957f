"""`r1lab eval` with environments: episodes scored on their answer, with turns, tool calls, tool
errors, finish reasons and whole transcripts in the rows, samples.jsonl and the report; a tool set
sweep writes one side-by-side table; what cannot run episodes is refused in one line."""

import json

import pytest
from helpers_episodes import ScriptedEngine, spelled

from r1lab.cli import main
from r1lab.eval.run import EpisodeSpec, evaluate
from r1lab.eval.transcripts import episode_table, sample_records, transcripts_markdown
from r1lab.records import Problem
from r1lab.rollout import SamplingParams
from r1lab.rollout.episodes import EpisodeLimits

TAGS = EpisodeSpec("tools", {"tools": ["calculator"], "call_format": "tags"}, EpisodeLimits(max_turns=3, max_tokens=400))
PARAMS = SamplingParams(temperature=0, max_new_tokens=120)


def scripted(tok, turns):
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    script = [spelled(tok, t) for t in turns[:-1]] + [spelled(tok, turns[-1]) + [eos]]
    return ScriptedEngine(tok, script, [eos])


def test_eval_of_tool_episodes_counts_turns_calls_and_keeps_transcripts(tiny, tmp_path):
    tok = tiny[1]
    engine = scripted(tok, ["<calc>6*7</calc>", "<answer>42</answer>"])
    probs = [Problem("a", "What is 6 * 7?", "42"), Problem("b", "What is 6 * 8?", "48")]
    out = tmp_path / "results.jsonl"
    res = evaluate(engine, probs, PARAMS, n=2, ks=[1, 2], verify_workers=0, out_path=out, show_progress=False,
                   episodes=TAGS)
    s = res.summary
    # "a" is right twice, "b" (the same script) wrong twice: avg@2 = pass@2 = 0.5
    assert s["avg@2"] == 0.5 and s["pass@2"] == 0.5 and s["pass@1"] == 0.5
    assert s["turns"] == 2 and s["tool_calls"] == 1 and s["tool_errors"] == 0 and s["finish/stop"] == 1.0
    sample = res.rows[0]["samples"][0]
    # what the verifier read: the model's last turn (or, where episodes score every model turn, those joined)
    assert sample["correct"] and sample["answer_text"].endswith("<answer>42</answer>") and sample["finish"] == "stop"
    assert "<output>" not in sample["answer_text"]  # never an observation
    assert [seg["by"] for seg in sample["transcript"]] == ["model", "env", "model"]
    assert "42" in sample["transcript"][1]["text"] and sample["text"] == "".join(t["text"] for t in sample["transcript"])
    assert sample["length"] == sum(len(s) for s in engine.script) and sample["env_tokens"] > 0
    # the per-problem file records the environment: a resume with another one is refused
    saved = json.loads((tmp_path / "results.settings.json").read_text())
    assert saved["env"] == "tools" and saved["env_settings"]["tools"] == ["calculator"] and saved["max_turns"] == 3
    from r1lab.eval.run import ResumeError

    other = EpisodeSpec("tools", {"tools": ["python"], "call_format": "tags"}, TAGS.limits)
    with pytest.raises(ResumeError, match="env_settings"):
        evaluate(engine, probs, PARAMS, n=2, verify_workers=0, out_path=out, resume=True, show_progress=False,
                 episodes=other)
    records = sample_records(res.rows)
    assert len(records) == 4 and records[0]["transcript"] == sample["transcript"] and records[0]["tool_calls"] == 1
    md = transcripts_markdown(res.rows)
    assert md.count("[model]") == 4 and "<calc>6*7</calc>" in md and "gold '48'" in md  # one right, one wrong
    table = episode_table({"x": (2, s)})
    assert "| x | 2 | 2 | 50.0 | 50.0 | 2.00 | 1.00 | 0.00 |" in table and "finish stop" in table


def test_failed_tool_calls_and_limits_are_counted_per_episode(tiny):
    tok = tiny[1]
    # an unknown tool, then a calculator error, then the turn limit ends the episode
    div = '<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>'
    engine = scripted(tok, ["<tool_call>{oops</tool_call>", div, div])
    spec = EpisodeSpec("tools", {"tools": ["calculator"], "call_format": "hermes"}, EpisodeLimits(max_turns=2, max_tokens=400))
    res = evaluate(engine, [Problem("a", "1+1?", "2")], PARAMS, n=1, verify_workers=0, show_progress=False, episodes=spec)
    s, sample = res.summary, res.rows[0]["samples"][0]
    assert sample["turns"] == 2 and sample["tool_calls"] == 2 and sample["tool_errors"] == 2
    assert sample["finish"] == "max_turns" and s["finish/max_turns"] == 1.0 and s["truncated"] == 1.0
    assert not sample["correct"] and s["tool_errors"] == 2


def test_one_turn_eval_is_unchanged_by_the_episode_path(tiny):
    """Without an environment a sample row has no episode fields, and the summary no episode keys."""
    engine = scripted(tiny[1], ["<answer>2</answer>"])
    res = evaluate(_OneTurn(engine), [Problem("a", "1+1?", "2")], PARAMS, n=1, verify_workers=0, show_progress=False)
    assert "turns" not in res.summary and "transcript" not in res.rows[0]["samples"][0]
    assert res.rows[0]["samples"][0]["correct"]


class _OneTurn:
    """A ScriptedEngine seen through `generate` (what a one-turn eval calls)."""

    batch_size = 8

    def __init__(self, engine):
        self.engine = engine

    def generate(self, problems, params, n=1, seed=None, on_batch=None):
        from r1lab.rollout.base import encode_prompts

        prompts = [e.ids for e in encode_prompts(self.engine.tokenizer, problems) for _ in range(n)]
        return self.engine.generate_ids(prompts, params)


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    model, tok = tiny
    path = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _one_line_exit_2(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_eval_refuses_what_cannot_run_episodes_in_one_line(tiny_dir, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"id": "a", "prompt": "1+1?", "answer": "2"}) + "\n")
    out = tmp_path / "out"
    err = _one_line_exit_2(capsys, ["eval", "http://127.0.0.1:9/v1", "--tools", "python", "--data", str(data),
                                    "--out", str(out), "--quiet"])
    assert "continues each episode's token ids" in err
    err = _one_line_exit_2(capsys, ["eval", str(tiny_dir), "--tools", "pyhton", "--data", str(data), "--out", str(out)])
    assert "pyhton" in err and "known tools" in err
    err = _one_line_exit_2(capsys, ["eval", str(tiny_dir), "--env", "nope", "--data", str(data), "--out", str(out)])
    assert "env.name='nope'" in err
    err = _one_line_exit_2(capsys, ["eval", str(tiny_dir), "--tools", "python", "--data", str(data), "--out", str(out),
                                    "env.settings.max_tool_calls=-1"])
    assert "limits must be positive" in err
    from r1lab.rollout.vllm import VLLMEngine

    if not VLLMEngine.continues_ids:  # until vLLM continues token ids (the envrl branch)
        err = _one_line_exit_2(capsys, ["eval", str(tiny_dir), "--tools", "python", "--data", str(data), "--out",
                                        str(out), "rollout.engine=vllm"])
        assert "rollout.engine=vllm" in err
    err = _one_line_exit_2(capsys, ["eval", str(tiny_dir), "--tools-sweep", "python", "--data", str(data), "--out", str(out)])
    assert "at least two tool sets" in err
    assert not out.exists()


def test_benchmarks_with_and_without_the_python_tool_in_one_table(tiny_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["eval", str(tiny_dir), "--benchmarks", "gsm8k", "--limit", "2", "--n", "1", "--max-new-tokens", "6",
                 "--tools-sweep", "off,python", "--out", str(out), "--quiet", "env.max_turns=2"]) == 0
    table = (out / "eval" / "tools.md").read_text()
    assert "| gsm8k, tools off | 2 | 1 |" in table and "| gsm8k, tools python | 2 | 1 |" in table
    with_tool = [json.loads(line) for line in (out / "eval" / "tools-python" / "gsm8k.jsonl").read_text().splitlines()]
    assert len(with_tool) == 2 and all("transcript" in s and "turns" in s for r in with_tool for s in r["samples"])
    without = [json.loads(line) for line in (out / "eval" / "tools-off" / "gsm8k.jsonl").read_text().splitlines()]
    assert all("turns" not in s for r in without for s in r["samples"])
    assert (out / "eval" / "tools-python" / "gsm8k.samples.jsonl").is_file()
    summary = json.loads((out / "eval" / "tools.json").read_text())
    assert set(summary) == {"gsm8k, tools off", "gsm8k, tools python", "_meta"}

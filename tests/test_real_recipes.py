"""The real-model recipes and their data: GSM8K train in the R1 format (exact bytes, traces that
verify), and recipes whose GRPO stage starts from the checkpoint their SFT stage writes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from r1lab.config import load_config
from r1lab.records import load_problems
from r1lab.verify import verify_batch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "gsm8k"
REAL = ROOT / "recipes" / "real"


def _make_r1():
    spec = importlib.util.spec_from_file_location("make_r1", DATA / "make_r1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,rows", [("train_r1.jsonl", 7273), ("dev_r1.jsonl", 200)])
def test_vendored_gsm8k_r1_files_are_the_recorded_bytes(name, rows):
    digest = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
    assert digest in (DATA / "PROVENANCE.md").read_text()
    assert len(load_problems(DATA / name)) == rows


def test_r1_trace_removes_calculator_annotations():
    m = _make_r1()
    assert m.r1_trace("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe earned $<<0.2*50=10>>10.", "24") == (
        "<think>\nNatalia sold 48/2 = 24 clips in May.\nShe earned $10.\n</think>\n<answer>24</answer>")
    row = json.loads((DATA / "train_r1.jsonl").open().readline())
    assert row["id"] == "gsm8k-train-0" and row["answer"] == "72"
    assert row["prompt"].endswith("inside <answer> </answer>.") and "<<" not in row["response"]


def test_gsm8k_r1_traces_verify_against_their_answers():
    """Every 73rd training trace and all dev traces score correct (the data stage checks all)."""
    problems = load_problems(DATA / "train_r1.jsonl")[::73] + load_problems(DATA / "dev_r1.jsonl")
    verdicts = verify_batch(problems, [p.metadata["response"] for p in problems], timeout=10.0, workers=2)
    assert [(p.id, v.status, v.reason) for p, v in zip(problems, verdicts) if not v.correct] == []


def test_real_recipes_chain_sft_into_grpo():
    names = {p.stem for p in REAL.glob("[!_]*.yaml")}
    assert names == {"smollm2_gsm8k_sft_lora", "smollm2_gsm8k_sft_full", "smollm2_gsm8k_grpo", "smollm2_arith_sft",
                     "smollm2_arith_grpo", "smollm2_r1_zero", "smollm2_python_tool"}
    for sft, rl in (("smollm2_gsm8k_sft_lora", "smollm2_gsm8k_grpo"), ("smollm2_arith_sft", "smollm2_arith_grpo")):
        s, r = load_config(REAL / f"{sft}.yaml"), load_config(REAL / f"{rl}.yaml")
        assert r.init_from == f"{s.out_dir}/{s.name}/checkpoints/sft"
        assert s.model.path == "smollm2-135m-instruct" and s.sft.lora.r > 0 and r.train.lora.r > 0
        assert r.sampling.max_new_tokens <= 200 and 30 <= r.train.steps <= 60
    full = load_config(REAL / "smollm2_gsm8k_sft_full.yaml")
    assert full.sft.lora.r == 0 and full.model.dtype == "float32"
    for p in (full.data.train_path, full.data.eval_path):
        assert (ROOT / p).is_file()


def test_r1_zero_recipe_starts_from_the_instruct_model_with_the_r1_frame():
    from r1lab.rewards import is_r1_format
    from r1lab.stages import prepare_data

    cfg = load_config(REAL / "smollm2_r1_zero.yaml")
    assert cfg.model.path == "smollm2-135m-instruct" and not cfg.init_from and cfg.data.sft_size == 0
    assert set(cfg.reward.terms) == {"accuracy", "format"} and cfg.train.lora.r == 0
    assert cfg.data.response_prefix == "<think>" and "<answer>" in cfg.data.system_prompt
    # the worked example in the instruction is itself in the format the reward asks for
    example = cfg.data.system_prompt.split("Example:")[1].strip()
    assert is_r1_format(example)
    cfg.data.train_size, cfg.data.eval_size = 200, 20
    data = prepare_data(cfg, None, log=lambda *_: None)
    assert data.eval[0].prompt[-1] == {"role": "assistant", "content": "<think>"}
    assert not {str(p.prompt) for p in data.train} & {str(p.prompt) for p in data.eval}


def test_python_tool_recipe_sfts_on_sandboxed_episodes_of_its_environment(tiny):
    """SmolLM2 with the Python tool: the plain-tag format (its template has no tool calls), and its
    teacher traces replay through the recipe's environment, the printed product coming back from
    the sandbox exactly as the trace shows it; only the model's turns are targets."""
    from r1lab.rollout.episodes import limits_of, trace_episode
    from r1lab.stages import check_run_config
    from r1lab.tasks import generate_splits, get_task

    cfg = check_run_config(load_config(REAL / "smollm2_python_tool.yaml"))
    assert cfg.model.path == "smollm2-135m-instruct" and cfg.env.name == "tools"
    assert cfg.env.settings["tools"] == ["python"] and cfg.env.settings["call_format"] == "tags"
    assert cfg.sft.lora.r > 0 and cfg.train.lora.r > 0 and cfg.train.steps * cfg.train.prompts_per_step <= 128
    train, _ = generate_splits(cfg.data.tasks, 12, 2, cfg.data.difficulty, 0)
    family = get_task("multiply_python")
    by_teacher = {p.metadata["teacher"]: p for p in train}
    for teacher, calls in (("tool", 1), ("direct", 0)):
        p = by_teacher[teacher]
        ep = trace_episode(tiny[1], p, family.teacher_trace(p), cfg.env.name, cfg.env.settings, limits_of(cfg))
        assert [t.tool_calls for t in ep.turns] == [1] * calls + [0] and ep.finish_reason == "stop"
        assert [t.tool_errors for t in ep.turns] == [0] * (calls + 1) and ep.texts[-1].endswith(f"<answer>{p.answer}</answer>")
        if calls:
            assert ep.texts[1] == f"\n<output>\n{p.answer}\n\n</output>\n" and ep.mask.count(0) > 0

"""One reading of a prompt as text (records.prompt_text) and as chat messages (records.prompt_messages)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from r1lab.records import Problem, prompt_messages, prompt_text

FEW_SHOT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Use 1, 2 to make 3."},
    {"role": "assistant", "content": "<answer>1 + 2</answer>"},
    {"role": "user", "content": "Use 3, 5, 7 to make 22."},
]


def test_plain_text_is_itself_whatever_is_asked():
    for which in ("question", "user", "all"):
        assert prompt_text("Compute 2 + 2.", which) == "Compute 2 + 2."


def test_chat_prompt_question_user_and_all():
    assert prompt_text(FEW_SHOT) == "Use 3, 5, 7 to make 22."  # the last user message
    assert prompt_text(FEW_SHOT, "user") == "Use 1, 2 to make 3.\nUse 3, 5, 7 to make 22."
    assert prompt_text(FEW_SHOT, "all") == "Be brief.\nUse 1, 2 to make 3.\n<answer>1 + 2</answer>\nUse 3, 5, 7 to make 22."


def test_odd_messages_never_raise():
    odd = ["not a message", {"content": "no role: the user's"}, {"role": "user"}, {"role": "assistant", "content": 5}]
    assert prompt_text(odd) == ""  # the last user message has no content
    assert prompt_text(odd, "user") == "no role: the user's\n"
    assert prompt_text(odd, "all") == "no role: the user's\n\n5"
    assert prompt_text([{"role": "system", "content": "s"}]) == ""  # no user message at all
    assert prompt_text([]) == ""
    with pytest.raises(ValueError, match="which"):
        prompt_text("q", "last")


def test_prompt_messages():
    assert prompt_messages("hi") == [{"role": "user", "content": "hi"}]
    messages = prompt_messages(FEW_SHOT)
    assert messages == FEW_SHOT and messages is not FEW_SHOT  # a copy the caller may extend


def test_the_readers_agree():
    """The task parsers, dedup and a model without a chat template all read the prompt through prompt_text."""
    from r1lab.data.dedup import prompt_of
    from r1lab.models import render_prompt
    from r1lab.tasks import get_task

    p = Problem("p", FEW_SHOT, "22", task="countdown")
    # countdown reads the numbers of the question asked, not of the few-shot example
    assert get_task("countdown").dedupe_key(p) == "countdown [3, 5, 7] -> 22"
    assert prompt_of(p) == prompt_text(FEW_SHOT, "user")
    assert render_prompt(SimpleNamespace(chat_template=None), FEW_SHOT) == prompt_text(FEW_SHOT, "all") + "\n"
    assert render_prompt(SimpleNamespace(chat_template=None), "q") == "q\n"


def test_frame_problem_adds_the_r1_zero_frame_and_parsers_still_read_the_question():
    from r1lab.models import render_prompt, response_prefill
    from r1lab.stages import frame_problem
    from r1lab.tasks import get_task

    p = Problem("a", "Compute (8 - 5) + 2.", "5", task="math", metadata={"family": "arithmetic"})
    framed = frame_problem(p, "Answer in <answer> tags.", "<think>")
    assert framed.prompt == [{"role": "system", "content": "Answer in <answer> tags."},
                             {"role": "user", "content": "Compute (8 - 5) + 2."},
                             {"role": "assistant", "content": "<think>"}]
    assert p.prompt == "Compute (8 - 5) + 2."  # the original is left alone
    assert get_task("arithmetic").teacher_trace(framed).endswith("<answer>5</answer>")
    assert response_prefill(framed.prompt) == "<think>" and response_prefill(p.prompt) == ""
    # a model without a chat template continues the prefill, with no newline after it
    assert render_prompt(SimpleNamespace(chat_template=None), framed.prompt) == (
        "Answer in <answer> tags.\nCompute (8 - 5) + 2.\n<think>")
    # framing again replaces the system message and the prefill instead of stacking them
    again = frame_problem(frame_problem(framed, "Other.", "<think>\n"), "", "")
    assert again.prompt == [{"role": "system", "content": "Other."}, {"role": "user", "content": "Compute (8 - 5) + 2."}]


def test_prepare_data_frames_train_and_held_out_problems():
    from r1lab.config import RunConfig
    from r1lab.stages import prepare_data

    cfg = RunConfig()
    cfg.data.train_size, cfg.data.sft_size, cfg.data.eval_size = 80, 8, 10
    cfg.data.system_prompt, cfg.data.response_prefix = "Use tags.", "<think>"
    data = prepare_data(cfg, None, log=lambda *_: None)
    for p in data.train[:3] + data.eval[:3] + [q for q, _ in data.sft[:3]]:
        assert p.prompt[0] == {"role": "system", "content": "Use tags."}
        assert p.prompt[-1] == {"role": "assistant", "content": "<think>"}
    assert len(data.sft) == 8  # the teacher still reads the question behind the frame
    # the curriculum's own pools are framed too, and decontaminated against the framed held-out set
    cfg.train.curriculum = {0: 1, 5: 2}
    data = prepare_data(cfg, None, log=lambda *_: None)
    for pool in data.curriculum.values():
        assert all(p.prompt[0]["content"] == "Use tags." and p.prompt[-1]["content"] == "<think>" for p in pool)
    held = {prompt_text(p.prompt) for p in data.eval}
    assert not held & {prompt_text(p.prompt) for p in data.curriculum[2]}


def test_unverified_sft_traces_are_dropped_unless_kept_on_purpose(tmp_path):
    from r1lab.config import RunConfig
    from r1lab.records import Problem, save_problems
    from r1lab.stages import prepare_data
    from r1lab.tasks import generate_splits, get_task

    train, held = generate_splits(["arithmetic"], 12, 4, 2, seed=0)
    rows = []
    for i, p in enumerate(train):
        trace = get_task("arithmetic").teacher_trace(p)
        if i < 4:  # a hedged answer: the gold among other numbers, which the verifier rejects
            trace = trace.rsplit("<answer>", 1)[0] + f"<answer>{int(p.answer) + 1} {p.answer}</answer>"
        rows.append(Problem(**{**p.to_dict(), "metadata": {**p.metadata, "response": trace}}))
    save_problems(tmp_path / "train.jsonl", rows)
    save_problems(tmp_path / "eval.jsonl", held)
    cfg = RunConfig()
    cfg.data.train_path, cfg.data.eval_path = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
    cfg.data.sft_size = 12
    data = prepare_data(cfg, None, log=lambda *_: None)
    assert len(data.sft) == 8 and data.report["sft_traces_dropped_unverified"] == 4
    assert data.report["sft_traces_kept_unverified"] == 0
    cfg.data.keep_unverified_sft = True
    logged = []
    data = prepare_data(cfg, None, log=logged.append)
    assert len(data.sft) == 12 and data.report["sft_traces_dropped_unverified"] == 0
    assert data.report["sft_traces_kept_unverified"] == 4 and "4 unverified SFT traces KEPT" in logged[-1]


def test_eval_data_file_is_scored_in_the_config_frame(tmp_path):
    from r1lab.config import RunConfig
    from r1lab.evaluate import EvalRequest, _eval_problems
    from r1lab.records import save_problems
    from r1lab.tasks import generate_splits

    _, held = generate_splits(["arithmetic"], 0, 3, 2, seed=0)
    save_problems(tmp_path / "held.jsonl", held)
    cfg = RunConfig()
    plain = _eval_problems(EvalRequest(model="m", data=str(tmp_path / "held.jsonl")), cfg)
    assert [p.prompt for p in plain] == [p.prompt for p in held]  # no frame configured: as written
    cfg.data.system_prompt, cfg.data.response_prefix = "Use tags.", "<think>"
    framed = _eval_problems(EvalRequest(model="m", data=str(tmp_path / "held.jsonl")), cfg)
    assert all(p.prompt[0] == {"role": "system", "content": "Use tags."} and
                   p.prompt[-1] == {"role": "assistant", "content": "<think>"} for p in framed)
    save_problems(tmp_path / "framed.jsonl", framed)  # a file framed already is not framed twice
    again = _eval_problems(EvalRequest(model="m", data=str(tmp_path / "framed.jsonl")), cfg)
    assert [p.prompt for p in again] == [p.prompt for p in framed]

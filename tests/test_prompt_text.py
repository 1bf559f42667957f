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

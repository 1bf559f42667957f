"""Translation: the generated number corpus, the verifier, and the chrF / BLEU terms on gaming attempts."""

from __future__ import annotations

import pytest

from r1lab.records import Problem
from r1lab.rewards import get_reward
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.translation import check_translation, in_words

REF = "quatre cent cinquante-quatre"


def P(answer: str = REF) -> Problem:
    return Problem("t1", "Translate to French: four hundred and fifty-four", answer, task="translation")


def terms(body: str | None) -> tuple[float, float]:
    text = "no tags" if body is None else f"<think>454</think>\n<answer>{body}</answer>"
    return get_reward("chrf")([P()], [text], [None])[0], get_reward("bleu")([P()], [text], [None])[0]


def test_the_corpus_is_num2words_on_both_sides_and_the_teacher_is_correct():
    family = get_task("translation")
    train, held = generate_splits(["translation"], 200, 20, 2, seed=0)
    for p in train[:20]:
        m = p.metadata
        assert p.answer == in_words(m["number"], m["target_lang"]) and in_words(m["number"], m["source_lang"]) in p.prompt
        assert check_translation(family.teacher_trace(p), p).correct
    assert in_words(42, "de") == "zweiundvierzig"


def test_the_reference_scores_one_and_case_does_not_matter():
    assert terms(REF) == (1.0, 1.0) and terms(REF.upper()) == (1.0, 1.0)
    assert check_translation(f"<answer>{REF.replace('-', ' ').upper()}</answer>", P()).correct


@pytest.mark.parametrize("name, body", [
    ("the reference twice", f"{REF} {REF}"),
    ("the reference padded with words", f"{REF} et encore des mots pour gagner"),
    ("the reference among other guesses", f"quatre cent {REF} cinq cent cinquante"),
])
def test_padding_around_the_reference_costs_reward_and_is_not_correct(name, body):
    chrf, bleu = terms(body)
    assert chrf < 0.95 and bleu < 0.5
    assert not check_translation(f"<answer>{body}</answer>", P()).correct


@pytest.mark.parametrize("body", [None, "", "   ", "four hundred and fifty-four", "x" * 2000])
def test_no_answer_empty_copied_source_or_overlong_earn_little(body):
    chrf, bleu = terms(body)
    assert chrf < 0.15 and bleu == 0.0

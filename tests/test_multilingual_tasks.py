"""The multilingual families (tasks/multilingual.py): prompts in the language lingua names, the
English verifiers on digits in every language, one held-out set per language."""

import random

import pytest

from r1lab.languages import consistency, language_shares
from r1lab.tasks import generate_splits, get_task, teacher_dataset
from r1lab.tasks.multilingual import MULTILINGUAL, chinese_number, number_words
from r1lab.verify import verify_batch

FAMILIES = [f"{fam}_{lang}" for fam in ("arithmetic", "countdown") for lang in MULTILINGUAL]


def test_at_least_five_languages_besides_english_including_chinese():
    assert "zh" in MULTILINGUAL and len(set(MULTILINGUAL) - {"en"}) >= 5


@pytest.mark.parametrize("n, words", [(0, "零"), (7, "七"), (10, "十"), (15, "十五"), (20, "二十"), (105, "一百零五"),
                                      (110, "一百一十"), (1010, "一千零一十"), (10010, "一万零一十"),
                                      (12345, "一万二千三百四十五"), (100000, "十万"), (1000001, "一百万零一")])
def test_chinese_numbers_by_hand(n, words):
    assert chinese_number(n) == words


def test_chinese_number_rejects_what_it_cannot_write():
    for bad in (-1, 10**8, 2.5, "7"):
        with pytest.raises(ValueError):
            chinese_number(bad)


def test_operands_are_words_in_each_language():
    assert [number_words(7, lang) for lang in MULTILINGUAL] == ["seven", "七", "sept", "sieben", "siete", "семь", "七"]
    problem = get_task("arithmetic_de").generate(random.Random(0), 2)
    assert not any(ch.isdigit() for ch in problem.prompt)  # the German prompt says every number in words


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_is_in_its_language_and_the_teacher_reasons_in_it(name):
    lang = name.rsplit("_", 1)[1]
    _, problems = generate_splits([name], 0, 6, 2, seed=3)
    for p in problems:
        assert p.metadata["language"] == lang
        shares = language_shares(p.prompt)
        assert max(shares, key=shares.get) == lang, (p.prompt, shares)
    for p, trace in teacher_dataset(problems):
        assert consistency(trace, lang) == 1.0, trace


@pytest.mark.parametrize("name", FAMILIES)
def test_verifier_accepts_the_right_answer_and_rejects_wrong_ones(name):
    _, problems = generate_splits([name], 0, 4, 2, seed=5)
    pairs = teacher_dataset(problems)
    right = [trace for _, trace in pairs]
    if name.startswith("arithmetic"):
        wrong = [f"<think>x</think>\n<answer>{int(p.answer) + 1}</answer>" for p in problems]
        # the answer inside a larger number, and the answer written in words, are not the answer
        wrong += [f"<think>x</think>\n<answer>{p.answer}1</answer>" for p in problems]
        wrong += [f"<think>x</think>\n<answer>{number_words(int(p.answer) + 100, p.metadata['language'])}</answer>"
                  for p in problems]
    else:  # the target alone is not an expression of the numbers
        wrong = [f"<think>x</think>\n<answer>{p.answer}</answer>" for p in problems]
        wrong += [f"<think>x</think>\n<answer>{' + '.join(map(str, p.metadata['numbers']))} + 1</answer>"
                  for p in problems]
    k = len(wrong) // len(problems)
    verdicts = verify_batch(problems + problems * k, right + wrong, workers=0)
    assert all(v.correct for v in verdicts[: len(problems)]), verdicts[: len(problems)]
    assert not any(v.correct for v in verdicts[len(problems):]), verdicts[len(problems):]


def test_held_out_set_per_language_and_no_problem_shared_across_languages():
    names = [f"arithmetic_{lang}" for lang in MULTILINGUAL]
    train, held_out = generate_splits(names, 140, 70, 2, seed=0)
    for lang in MULTILINGUAL:
        assert sum(p.metadata["language"] == lang for p in held_out) == 10
    key = lambda p: (p.metadata["start"], str(p.metadata["steps"]))  # noqa: E731  (the mathematics)
    assert not {key(p) for p in train} & {key(p) for p in held_out}
    assert len({key(p) for p in held_out}) == len(held_out)
    # a language's held-out set does not move when other languages are added
    _, alone = generate_splits(["arithmetic_zh"], 20, 10, 2, seed=0)
    _, first = generate_splits(["arithmetic_zh", "arithmetic_fr"], 40, 20, 2, seed=0)
    assert [p.prompt for p in alone] == [p.prompt for p in first if p.metadata["language"] == "zh"]


def test_trace_needs_the_problem_metadata():
    family = get_task("arithmetic_fr")
    problem = family.generate(random.Random(0), 2)
    problem.metadata.pop("steps")
    with pytest.raises(ValueError, match="steps"):
        family.teacher_trace(problem)


def test_translate_keeps_the_mathematics_and_rejects_a_broken_chain():
    source = get_task("arithmetic_en").generate(random.Random(3), 2)
    for lang in MULTILINGUAL:
        family = get_task(f"arithmetic_{lang}")
        moved = family.translate(source)
        assert moved.answer == source.answer and moved.metadata["language"] == lang
        assert (moved.metadata["start"], moved.metadata["steps"]) == (source.metadata["start"], source.metadata["steps"])
        # the same prompt the family itself writes for that chain, and a trace that reaches the answer
        assert moved.prompt == family.told(source.metadata["start"], source.metadata["steps"], source.answer).prompt
        assert f"<answer>{source.answer}</answer>" in family.teacher_trace(moved)
    assert get_task("arithmetic_zh").translate(source).id == f"{source.id}-zh"
    family = get_task("arithmetic_de")
    for bad in ({"start": "7", "steps": [["+", 3]]}, {"start": 7, "steps": [["/", 3]]},
                {"start": 7, "steps": [["+", True]]}, {"start": -1, "steps": []}, {"start": 7, "steps": "+3"},
                {"start": 7, "steps": [["+", -2]]}, {}):
        with pytest.raises(ValueError, match="chain"):
            family.translate(source.__class__(id="x", prompt="p", answer="1", task="math", metadata=bad))

"""Translation with a reference, scored by chrF and BLEU (sacrebleu).

No parallel corpus can be downloaded here, so the generated one is verifiable by construction:
cardinal numbers written in words, English to French, German or Spanish (and back), both sides
from `num2words`. "Translate to French: forty-two" -> "quarante-deux". Difficulty d draws numbers
below 10^(d+1) (d=1: 0..99). The teacher pivots through the digits: `<think>42</think>`.

Any JSONL of problems with task "translation", the source in the prompt and the reference as the
answer is scored the same way (the verifier and the terms read nothing else).

Verifier ("translation"): correct iff the answer equals the reference after case, whitespace and
hyphen normalisation (chrF 100). Reward terms (registered here): `chrf` and `bleu`, sacrebleu's
sentence scores over 100 of the lowercased texts, in [0, 1]; 0 without an answer. Padding the answer with extra words
lowers both (precision), copying the source scores what it shares with the reference.
"""

from __future__ import annotations

import functools
import random

from r1lab.records import Problem, Verdict
from r1lab.reward_registry import register_reward
from r1lab.tasks.base import TaskFamily, extract_answer, format_trace, register_task
from r1lab.verify.registry import register_verifier

LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish"}
MAX_ANSWER_CHARS = 1000


@functools.lru_cache(maxsize=None)
def _num2words():
    from num2words import num2words

    return num2words


def in_words(n: int, lang: str) -> str:
    return _num2words()(n, lang=lang)


def normalise(text: str) -> str:
    return " ".join(text.lower().replace("-", " ").split())


@register_task("translation")
class Translation(TaskFamily):
    task = "translation"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        n = rng.randrange(10 ** (difficulty + 1))
        lang = rng.choice(sorted(LANGUAGES))
        to_english = rng.random() < 0.25
        src, tgt = ("en", lang) if not to_english else (lang, "en")
        name = "English" if tgt == "en" else LANGUAGES[tgt]
        return Problem(id="", prompt=f"Translate to {name}: {in_words(n, src)}", answer=in_words(n, tgt),
                       task=self.task, metadata={"number": n, "source_lang": src, "target_lang": tgt})

    def teacher_trace(self, problem: Problem) -> str:
        return format_trace([str((problem.metadata or {})["number"])], problem.answer)


def _answer(text: str) -> str | None:
    answer = extract_answer(text) if isinstance(text, str) else None
    return None if answer is None or len(answer) > MAX_ANSWER_CHARS else answer


@register_verifier("translation", answer_only=True)
def check_translation(response: str, problem: Problem) -> Verdict:
    """Correct iff the answer equals the reference (case, spacing and hyphens aside)."""
    answer = _answer(response)
    if answer is None:
        return Verdict("unparsable", "no <answer>...</answer> (of at most 1000 characters) in the response")
    if normalise(answer) == normalise(problem.answer):
        return Verdict("correct", extracted=answer)
    return Verdict("wrong", "not the reference translation", answer[:300])


@functools.lru_cache(maxsize=None)
def _metrics():
    from sacrebleu.metrics import BLEU, CHRF

    return CHRF(), BLEU(effective_order=True)  # effective order: short sentences are not scored 0


def _sentence_scores(problems, texts, which: int) -> list[float]:
    metric = _metrics()[which]
    out = []
    for p, t in zip(problems, texts):
        answer = _answer(t)
        if not answer or not answer.strip():
            out.append(0.0)
            continue
        # case aside, as the verifier; min(): BLEU's float residue reaches 1.0000000000000004
        score = metric.sentence_score(answer.lower(), [str(p.answer).lower()]).score / 100.0
        out.append(min(1.0, max(0.0, score)))
    return out


@register_reward("chrf")
def chrf(problems, texts, verdicts, completions=None) -> list[float]:
    """sacrebleu chrF (character n-gram F-score, beta 2) of the answer against the reference, in [0, 1]."""
    return _sentence_scores(problems, texts, 0)


@register_reward("bleu")
def bleu(problems, texts, verdicts, completions=None) -> list[float]:
    """sacrebleu sentence BLEU (effective order) of the answer against the reference, in [0, 1]."""
    return _sentence_scores(problems, texts, 1)

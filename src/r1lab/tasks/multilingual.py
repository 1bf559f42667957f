"""Multilingual task families: word arithmetic and countdown, each in English, Chinese, French,
German, Spanish, Russian and Japanese (`arithmetic_zh`, `countdown_fr`, ...).

Every problem carries its language in metadata["language"] (ISO 639-1), which the
language-consistency reward and the lang/* metrics read. The verifiers are the English families'
("math" for arithmetic, "countdown"), and the answers are numbers in digits in every language.

- `arithmetic_<lang>`: the arithmetic family's left-to-right chain told in words, the operands
  written as words (`num2words`; Chinese by `chinese_number`, which num2words lacks):
  "Start with seven. Add three. Multiply by four. What is the result?" Difficulty: operations.
- `countdown_<lang>`: "Use each of the numbers 3, 5, 7 exactly once to make 22." in the language.

The teacher traces think in the problem's language (a lead sentence, and for arithmetic each step
named as the prompt names it: "Add three: 7 + 3 = 10"), so SFT on them teaches reasoning in the
prompt's language. The dedupe key is the mathematics, not the wording: a problem in one language
and its translation are the same problem, so train and eval never share one across languages
when the families are generated together.
"""

from __future__ import annotations

import random

from r1lab.records import Problem
from r1lab.tasks.arithmetic import OPERAND_MAX, Arithmetic
from r1lab.tasks.base import TaskFamily, evaluate_steps, format_number, format_trace, parse_expression, register_task
from r1lab.tasks.countdown import Countdown, numbers_and_target

MULTILINGUAL = ("en", "zh", "fr", "de", "es", "ru", "ja")

# per language: start, add, subtract, multiply (each a sentence with {n}), the question, the lead
# sentence of the teacher trace, the countdown prompt ({numbers}, {target}) and its number separator
_TEMPLATES: dict[str, dict[str, str]] = {
    "en": {"start": "Start with {n}.", "+": "Add {n}.", "-": "Subtract {n}.", "*": "Multiply by {n}.",
           "ask": "What is the result?", "lead": "Let us work it out step by step.",
           "countdown": "Use each of the numbers {numbers} exactly once to make {target}.", "sep": ", "},
    "zh": {"start": "从{n}开始。", "+": "加上{n}。", "-": "减去{n}。", "*": "乘以{n}。",
           "ask": "结果是多少？", "lead": "我们一步一步地计算。",
           "countdown": "请把数字{numbers}每个恰好用一次，算出{target}。", "sep": "、"},
    "fr": {"start": "Commencez par {n}.", "+": "Ajoutez {n}.", "-": "Soustrayez {n}.", "*": "Multipliez par {n}.",
           "ask": "Quel est le résultat ?", "lead": "Calculons étape par étape.",
           "countdown": "Utilisez chacun des nombres {numbers} exactement une fois pour obtenir {target}.", "sep": ", "},
    "de": {"start": "Beginne mit {n}.", "+": "Addiere {n}.", "-": "Subtrahiere {n}.", "*": "Multipliziere mit {n}.",
           "ask": "Was ist das Ergebnis?", "lead": "Wir rechnen Schritt für Schritt.",
           "countdown": "Verwende jede der Zahlen {numbers} genau einmal, um {target} zu erhalten.", "sep": ", "},
    "es": {"start": "Empieza con {n}.", "+": "Suma {n}.", "-": "Resta {n}.", "*": "Multiplica por {n}.",
           "ask": "¿Cuál es el resultado?", "lead": "Calculemos paso a paso.",
           "countdown": "Usa cada uno de los números {numbers} exactamente una vez para obtener {target}.", "sep": ", "},
    "ru": {"start": "Начните с числа {n}.", "+": "Прибавьте {n}.", "-": "Вычтите {n}.", "*": "Умножьте на {n}.",
           "ask": "Какой получится результат?", "lead": "Посчитаем по шагам.",
           "countdown": "Используйте каждое из чисел {numbers} ровно один раз, чтобы получить {target}.", "sep": ", "},
    "ja": {"start": "{n}から始めます。", "+": "{n}を足します。", "-": "{n}を引きます。", "*": "{n}を掛けます。",
           "ask": "答えはいくつですか？", "lead": "一歩ずつ計算します。",
           "countdown": "数字{numbers}をそれぞれ一度だけ使って{target}を作ってください。", "sep": "、"},
}
_CLOSING = ".。"  # a step sentence's closing punctuation, dropped when the trace names the step

_ZH_DIGITS = "零一二三四五六七八九"
_ZH_UNITS = ((1000, "千"), (100, "百"), (10, "十"))


def chinese_number(n: int) -> str:
    """A non-negative integer below 10^8 in Chinese numerals: 7 -> 七, 15 -> 十五, 105 -> 一百零五,
    10010 -> 一万零一十. (num2words 0.5 has no Chinese.)"""
    if not isinstance(n, int) or not 0 <= n < 10**8:
        raise ValueError(f"chinese_number: expected an integer in [0, 10^8), got {n!r}")
    if n < 10:
        return _ZH_DIGITS[n]
    if n >= 10**4:
        high, low = divmod(n, 10**4)
        rest = "" if low == 0 else ("零" if low < 1000 else "") + _below_10000(low, leading=False)
        return _below_10000(high, leading=True) + "万" + rest
    return _below_10000(n, leading=True)


def _below_10000(n: int, leading: bool) -> str:
    """1..9999; `leading`: the first group of the number, where 10..19 is 十.. rather than 一十.."""
    out, zero = "", False
    for value, unit in _UNITS_AND_ONES:
        digit, n = divmod(n, value)
        if digit == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        if value == 10 and digit == 1 and not out and leading:
            out += unit
        else:
            out += _ZH_DIGITS[digit] + unit
    return out


_UNITS_AND_ONES = (*_ZH_UNITS, (1, ""))


def number_words(n: int, lang: str) -> str:
    """`n` written as words in `lang`: num2words, or chinese_number for Chinese."""
    if lang == "zh":
        return chinese_number(n)
    from num2words import num2words

    return num2words(n, lang=lang)


class WordArithmetic(TaskFamily):
    """The arithmetic family's chain told in words in one language (subclasses set `language`)."""

    task = "math"
    language = "en"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        t = _TEMPLATES[self.language]
        value = start = rng.randint(1, OPERAND_MAX)
        steps: list[list] = []
        for _ in range(difficulty):
            value, op, b = Arithmetic._step(rng, value)
            steps.append([op, b])
        return self.told(start, steps, str(value))

    def told(self, start: int, steps: list[list], answer: str, id: str = "") -> Problem:
        """The chain `start`, then each [op, operand] of `steps`, told in this family's language."""
        t = _TEMPLATES[self.language]
        sentences = [t["start"].format(n=number_words(start, self.language))]
        sentences += [t[op].format(n=number_words(b, self.language)) for op, b in steps]
        joiner = "" if self.language in ("zh", "ja") else " "
        return Problem(id=id, prompt=joiner.join([*sentences, t["ask"]]), answer=answer, task=self.task,
                       metadata={"language": self.language, "start": start, "steps": [list(s) for s in steps]})

    def translate(self, problem: Problem) -> Problem:
        """A word-arithmetic problem of any language told in this family's language: the same
        mathematics and answer (a parallel held-out set compares languages on equal problems)."""
        start, steps = _chain(problem)
        return self.told(start, steps, problem.answer, id=f"{problem.id}-{self.language}")

    def dedupe_key(self, problem: Problem) -> str:
        return f"arithmetic {problem.metadata.get('start')} {problem.metadata.get('steps')}"

    def teacher_trace(self, problem: Problem) -> str:
        """The lead sentence, then per operation its sentence and the step: `Add three: 7 + 3 = 10`."""
        start, steps = _chain(problem)
        t = _TEMPLATES[self.language]
        colon = "：" if self.language in ("zh", "ja") else ": "
        expr, lines = str(start), [t["lead"]]
        for op, b in steps:
            expr = f"({expr}) {op} {b}"
            value, worked = evaluate_steps(parse_expression(expr, max_chars=4000, max_depth=200))
            said = t[op].format(n=number_words(b, self.language)).rstrip(_CLOSING)
            lines.append(f"{said}{colon}{worked[-1]}")
        return format_trace(lines, format_number(value) if steps else str(start))


def _chain(problem: Problem) -> tuple[int, list]:
    """The start and [op, operand] steps of a word-arithmetic problem, or a ValueError naming the problem."""
    start, steps = problem.metadata.get("start"), problem.metadata.get("steps")
    if not (isinstance(start, int) and not isinstance(start, bool) and isinstance(steps, list) and all(
            isinstance(s, list) and len(s) == 2 and s[0] in ("+", "-", "*") and isinstance(s[1], int)
            and not isinstance(s[1], bool) and s[1] >= 0 for s in steps) and start >= 0):
        raise ValueError(f"problem {problem.id!r}: metadata has no valid 'start' and 'steps' (a word-arithmetic chain)")
    return start, steps


class WordCountdown(Countdown):
    """Countdown with its prompt and trace lead in one language (subclasses set `language`)."""

    language = "en"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        problem = super().generate(rng, difficulty)
        t = _TEMPLATES[self.language]
        numbers = problem.metadata["numbers"]
        problem.prompt = t["countdown"].format(numbers=t["sep"].join(map(str, numbers)), target=problem.answer)
        problem.metadata["language"] = self.language
        return problem

    def teacher_trace(self, problem: Problem) -> str:
        numbers_and_target(problem)  # a problem without its numbers fails here, with the reason
        trace = super().teacher_trace(problem)
        return trace.replace("<think>", f"<think>{_TEMPLATES[self.language]['lead']}\n", 1)


for _lang in MULTILINGUAL:
    register_task(f"arithmetic_{_lang}")(type(f"WordArithmetic_{_lang}", (WordArithmetic,), {"language": _lang}))
    register_task(f"countdown_{_lang}")(type(f"WordCountdown_{_lang}", (WordCountdown,), {"language": _lang}))

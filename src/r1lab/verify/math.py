"""Math answers: read the final answer out of a response, compare it with the gold answer via math-verify.

Extraction is ours, comparison is math-verify's. We decide *which* text is the answer (the last
`<answer>` block, else the last `\\boxed{}`, else the last "the answer is ..." after any `</think>`)
so that scratch work in `<think>` can never be scored, then hand only that text to math-verify,
which knows that `\\frac{3}{4}`, `0.75` and `3/4` are equal, and also handles percents (`50\\%`
equals 50 and 0.5, as math-verify decides), degrees (`30^\\circ`), units (`5 \\text{ cm}`),
intervals, sets, tuples and matrices.

Multiple choice: a gold answer that is a letter A-E is compared as a letter. The response may
give the letter in any common form ("B", "(B)", "B) 12", "\\text{B}") or, when the problem lists its
options in `metadata["choices"]` (a list in A, B, C order or a dict letter -> text), the text of
an option, which is mapped to its letter. A gold option text with a letter response works too.

Hostile answers (huge exponents, deeply nested LaTeX, megabyte strings) are bounded by the
worker pool's hard per-item timeout in `verify_batch`, not here: see tests/test_verify_math.py.

A gold answer that math-verify cannot turn into a mathematical object is an *error*, never a
string comparison: otherwise an unparseable gold answer would score 1.0 against a response that
copies it verbatim (PITFALLS #2, open-r1#293).
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from functools import lru_cache
from typing import Any

from r1lab.records import Problem, Verdict
from r1lab.verify.registry import register_verifier

# math-verify bounds its own parsing and comparison with signal.alarm, which only works in the
# main thread. Verifier workers set this to None: there the hard limit is the parent killing the
# worker, which turns a hang into a counted "timeout" verdict rather than a silent "wrong".
INTERNAL_TIMEOUT_S: int | None = 5

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
# one token of a brace scan: a box opener, an escaped character (so \{ and \} do not count), or a brace
_BRACE_TOKENS = re.compile(r"(?P<box>\\(?:boxed|fbox|framebox)(?![A-Za-z])\s*\{)|(?P<esc>\\.)|(?P<open>\{)|(?P<close>\})", re.DOTALL)
_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _has_box(text: str) -> bool:
    return any(box in text for box in ("\\boxed", "\\fbox", "\\framebox"))


def _last_box_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the content of the box that closes last, braces matched; None if none closes.

    One linear scan over the braces, so a response with thousands of unclosed boxes stays cheap.
    """
    depth = 0
    opened: list[tuple[int, int]] = []  # (brace depth outside the box, content start)
    last = None
    for m in _BRACE_TOKENS.finditer(text):
        kind = m.lastgroup
        if kind == "box":
            opened.append((depth, m.end()))
            depth += 1
        elif kind == "open":
            depth += 1
        elif kind == "close":
            depth = max(depth - 1, 0)
            if opened and opened[-1][0] == depth:
                last = (opened.pop()[1], m.start())
    return last


def _last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}`; a box inside it is unwrapped too."""
    found = None
    while _has_box(text):
        span = _last_box_span(text)
        if span is None:
            break
        found = text = text[span[0] : span[1]]
    return found


def _clean(answer: str) -> str | None:
    """Strip whitespace and math-mode wrappers (`$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`) and a `\\textbf{(073)}`
    wrapper around a bare number; empty -> None."""
    s = answer.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
    s = _SENTENCE_END.sub("", s)  # "x = 4." ends a sentence; left on, the period stops LaTeX parsing
    m = _TEXT_NUMBER.match(s)
    s = m.group(1) if m else s
    e = _E_NOTATION.match(s)
    if e:  # 1e3, 2.5E-1: math-verify reads the `e` as Euler's number; a bounded exponent becomes a decimal
        s = format(Decimal(s), "f")
    return s or None


_SENTENCE_END = re.compile(r"(?<!\\)[\s.,;:!?]+$")  # not an escaped `\,` / `\;` spacing command
# An expression cut off or unbalanced ("4 \cdot", "4x+", "2r-7)"): math-verify's plain-expression
# reader would take the leading number out of it ("4", "4", "2") and score that.
_DANGLING = re.compile(r"(?:(?<!\\)[-+*/^=(\[{,_]|\\cdot|\\times|\\div|\\pm|\\frac|\\sqrt)\s*$")


def _well_formed(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0 and not _DANGLING.search(s)


# a number set as text, as contest solutions box it: `\textbf{(073)}`, `\text{ 12 }`; math-verify would
# read the text as a string, never equal to the number 73
_E_NOTATION = re.compile(r"^-?\d+(?:\.\d+)?[eE][-+]?\d{1,3}$")  # exponent bounded: no 1e999999 blow-up
_TEXT_NUMBER = re.compile(r"^\\(?:text|textbf|mathbf|mathrm)\{\s*\(?\s*(-?\d+(?:\.\d+)?)\s*\)?\s*\}$")


_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.{1,200}?)\s*(?:\.\s|\.?\s*$|\n)", re.IGNORECASE)


def _phrase_answer(text: str) -> str | None:
    """The last "the answer is X" / "final answer: X" after the last `</think>` (the sentence's end stops X)."""
    tail = text[text.rfind("</think>") + 1 :] if "</think>" in text else text
    tail = tail[-20_000:]  # where a conclusion is; bounds the scan on megabyte responses
    found = None
    for m in _PHRASE.finditer(tail):
        found = m.group(1)
    return _clean(found) if found is not None else None


# GSM8K's final-answer line, "#### 1,234": the number after the last "####" on its line
_HASH_ANSWER = re.compile(r"^[ \t]*####[ \t]*([^\n]+?)[ \t]*$", re.MULTILINE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _hash_answer(text: str) -> str | None:
    """The answer of the last `#### N` line (GSM8K style), thousands separators removed: "1,234"
    would otherwise read as a tuple. Only after the last `</think>`, like the phrase rule."""
    tail = text[text.rfind("</think>") + 1 :] if "</think>" in text else text
    found = None
    for m in _HASH_ANSWER.finditer(tail[-20_000:]):
        found = m.group(1)
    return _clean(_THOUSANDS.sub("", found)) if found is not None else None


def extract_answer(text: str, phrases: bool = False) -> tuple[str | None, str]:
    """(answer, where) with where in "answer_tag" | "boxed" | "hash" | "phrase" | "none".

    The last complete `<answer>...</answer>` block wins: the last opening tag that is followed by
    a closing tag, up to the first closing tag after it (so repeated or stray tags never leak
    into the answer). Inside it, a `\\boxed{}` narrows the answer to the last box. Without an
    answer block, the last complete box anywhere in the text; without a box, the last `#### N`
    line (GSM8K's own answer format). Empty content gives (None, "none").
    """
    if not isinstance(text, str):
        return None, "none"
    start = text.rfind(_ANSWER_OPEN, 0, max(text.rfind(_ANSWER_CLOSE), 0))
    if start >= 0:
        close = text.find(_ANSWER_CLOSE, start)
        content = text[start + len(_ANSWER_OPEN) : close]
        boxed = _last_boxed(content)
        answer = _clean(boxed if boxed is not None else content)
        return (answer, "answer_tag") if answer is not None else (None, "none")
    boxed = _last_boxed(text)
    answer = _clean(boxed) if boxed is not None else None
    if answer is not None:
        return answer, "boxed"
    answer = _hash_answer(text) if "####" in text else None
    if answer is not None:
        return answer, "hash"
    answer = _phrase_answer(text) if phrases else None
    return (answer, "phrase") if answer is not None else (None, "none")


def _timeout() -> int | None:
    """math-verify's own alarm only where signals work (the main thread); None disables it."""
    return INTERNAL_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple[Any, ...]:
    """The mathematical objects math-verify reads from a bare answer string; () when none.

    Wrapped in `$...$` so the LaTeX extractor sees the whole string as one expression; no string
    fallback, so "does not parse" really means no sympy object came out. Cached: a group of G
    samples shares one gold answer, and short answers repeat across a batch.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if not _well_formed(answer):
        return ()
    parsed = parse(
        f"${answer}$",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        fallback_mode="no_fallback",
        parsing_timeout=_timeout(),
    )
    return tuple(parsed)


def gold_text(answer: str) -> str | None:
    """The comparable text of a gold answer: a `\\boxed{}` in it is unwrapped, math delimiters stripped."""
    boxed = _last_boxed(answer)
    return _clean(boxed if boxed is not None else answer)


_LETTER = re.compile(r"^\(?([A-E])\)?(?:[.:)]\s*.*)?$", re.DOTALL)
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$", re.DOTALL)


def choice_letter(answer: str) -> str | None:
    """"B", "(B)", "B.", "B) 12", "\\text{(B)}" -> "B"; anything else -> None."""
    s = answer.strip()
    m = _TEXT_WRAP.match(s)
    s = m.group(1).strip() if m else s
    m = _LETTER.match(s)
    return m.group(1) if m else None


def _choices(problem: Problem) -> dict[str, str]:
    raw = (problem.metadata or {}).get("choices")
    if isinstance(raw, dict):
        return {str(k).strip().upper(): str(v) for k, v in raw.items() if str(k).strip().upper() in "ABCDE"}
    if isinstance(raw, list):
        return {letter: str(v) for letter, v in zip("ABCDE", raw)}
    return {}


def _same(a: str, b: str) -> bool:
    """a and b are the same answer: equal after whitespace normalisation, or mathematically equal."""
    from math_verify import verify

    if " ".join(a.split()).lower() == " ".join(b.split()).lower():
        return True
    pa, pb = _parse(a), _parse(b)
    return bool(pa and pb and verify(list(pb), list(pa), timeout_seconds=_timeout()))


def _choice_verdict(answer: str | None, where: str, problem: Problem) -> Verdict | None:
    """The verdict for a multiple-choice problem; None when the problem is not one."""
    options = _choices(problem)
    gold = choice_letter(str(problem.answer)) if len(str(problem.answer).strip()) <= 4 or not options else None
    if gold is None:
        return None
    if answer is None:
        return Verdict("unparsable", "no non-empty <answer>...</answer> block and no \\boxed{} in the response")
    letter = choice_letter(answer)
    if letter is None and options:
        matches = [k for k, text in options.items() if _same(answer, text)]
        letter = matches[0] if len(matches) == 1 else None
    if letter is None:
        return Verdict("unparsable", f"answer ({where}) {_short(answer)!r} is not one of the choices", extracted=answer)
    ok = letter == gold
    return Verdict("correct" if ok else "wrong", f"choice {letter} ({where}) {'is' if ok else 'is not'} {gold}", extracted=answer)


@register_verifier("math", answer_only=True, reads=("choices",))
def verify_math(response: str, problem: Problem) -> Verdict:
    """Correct iff the extracted answer is mathematically equal to the gold answer.

    unparsable: no answer found, or it is not readable as math. error: the gold answer itself is
    unusable (a data bug, reported rather than scored). Multiple choice: see the module docstring.
    """
    from math_verify import verify

    answer, where = extract_answer(response, phrases=True)
    choice = _choice_verdict(answer, where, problem)
    if choice is not None:
        return choice
    options = _choices(problem)
    letter = choice_letter(answer) if answer is not None and options else None
    if letter is not None and letter in options:  # gold is an option's text, the response names its letter
        answer, where = options[letter], f"{where}, choice {letter}"
    gold_str = gold_text(str(problem.answer))
    gold = _parse(gold_str) if gold_str is not None else ()
    if not gold:  # checked first: a broken gold answer is reported whatever the response says
        return Verdict("error", f"gold answer {problem.answer!r} does not parse as math", extracted=answer)
    if answer is None:
        return Verdict("unparsable", "no non-empty <answer>...</answer> block and no \\boxed{} in the response")
    pred = _parse(answer)
    if not pred:
        return Verdict("unparsable", f"answer ({where}) {_short(answer)!r} does not parse as math", extracted=answer)
    ok = verify(list(gold), list(pred), timeout_seconds=_timeout())
    reason = f"answer ({where}) {'equals' if ok else 'differs from'} gold {problem.answer!r}"
    return Verdict("correct" if ok else "wrong", reason, extracted=answer)


def _short(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "..."

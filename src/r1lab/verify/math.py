"""Math answers: read the final answer out of a response, compare it with the gold answer via math-verify.

Extraction is ours, comparison is math-verify's. We decide *which* text is the answer (the last
`<answer>` block, else the last `\\boxed{}`) so that scratch work in `<think>` can never be scored,
then hand only that text to math-verify, which knows that `\\frac{3}{4}`, `0.75` and `3/4` are equal.

A gold answer that math-verify cannot turn into a mathematical object is an *error*, never a
string comparison: otherwise an unparseable gold answer would score 1.0 against a response that
copies it verbatim (PITFALLS #2, open-r1#293).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from r1lab.records import Problem, Verdict
from r1lab.verify import register_verifier

# math-verify bounds its own parsing and comparison with signal.alarm, which only works in the
# main thread. Verifier workers set this to None: there the hard limit is the parent killing the
# worker, which turns a hang into a counted "timeout" verdict rather than a silent "wrong".
INTERNAL_TIMEOUT_S: int | None = 5

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
# one token of a brace scan: a box opener, an escaped character (so \{ and \} do not count), or a brace
_BRACE_TOKENS = re.compile(r"(?P<box>\\(?:boxed|fbox)(?![A-Za-z])\s*\{)|(?P<esc>\\.)|(?P<open>\{)|(?P<close>\})", re.DOTALL)
_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _has_box(text: str) -> bool:
    return "\\boxed" in text or "\\fbox" in text


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
    """Strip whitespace and math-mode wrappers (`$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`); empty -> None."""
    s = answer.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
    return s or None


def extract_answer(text: str) -> tuple[str | None, str]:
    """(answer, where) with where in "answer_tag" | "boxed" | "none".

    The last complete `<answer>...</answer>` block wins: the last opening tag that is followed by
    a closing tag, up to the first closing tag after it (so repeated or stray tags never leak
    into the answer). Inside it, a `\\boxed{}` narrows the answer to the last box. Without an
    answer block, the last complete box anywhere in the text. Empty content gives (None, "none").
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
    return (answer, "boxed") if answer is not None else (None, "none")


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


@register_verifier("math", answer_only=True)
def verify_math(response: str, problem: Problem) -> Verdict:
    """Correct iff the extracted answer is mathematically equal to the gold answer.

    unparsable: no answer found, or it is not readable as math. error: the gold answer itself is
    unusable (a data bug, reported rather than scored).
    """
    from math_verify import verify

    answer, where = extract_answer(response)
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

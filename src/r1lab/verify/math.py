"""Math answers: read the final answer out of a response, compare it with the gold answer via math-verify.

Extraction is ours, comparison is math-verify's. We decide *which* text is the answer (the last
`<answer>` block, else the last `\\boxed{}`, else the last "the answer is ..." after any `</think>`)
so that scratch work in `<think>` can never be scored, then hand only that text to math-verify,
which knows that `\\frac{3}{4}`, `0.75` and `3/4` are equal, and also handles percents (`50\\%`
equals 50 and 0.5, as math-verify decides), degrees (`30^\\circ`), units (`5 \\text{ cm}`),
intervals, sets, tuples and matrices.

Where math-verify alone is too lenient or too strict, we decide first:

- Several answers. Boxes joined only by commas, "and"/"or", spacing or a variable's label
  ("\\boxed{1} and \\boxed{2}") are one answer, the set of their values; a box after a sentence
  replaces the earlier ones (a self-correction). A gold written as several boxes needs them all.
  So a hedge ("\\boxed{4} or \\boxed{5}", "4 or 5", "5 (or 6)") or a list holding the gold earns
  nothing for a one-value gold.
- False statements. An answer asserting a relation between numbers that does not hold ("3 = 7",
  "x = 2 + 3 = 9") is wrong; math-verify would score its right-hand side.
- Writing. `\\mathrm{e}` / `\\mathrm{i}` are the constants and a free `i` the imaginary unit;
  clock times and ratios ("7:30", "2:5") compare as written; "1 000" is one number and "4 5" none;
  an interval equals the bounds that describe it ("-1 < x \\le 4"), never an inequality still to
  be solved; identical answer text is correct; "Final answer: the largest $n$ is 34" reads as 34.

Multiple choice: a gold answer that is a letter A-E is compared as a letter. The response may
give the letter in any common form ("B", "(B)", "B) 12", "\\text{B}") or, when the problem lists its
options in `metadata["choices"]` (a list in A, B, C order or a dict letter -> text), the text of
an option, which is mapped to its letter. A gold option text with a letter response works too.

Hostile answers (huge exponents, deeply nested LaTeX, megabyte strings) are bounded by the
worker pool's hard per-item timeout in `verify_batch`, not here: see tests/test_verify_math.py.

A gold answer that math-verify cannot turn into a mathematical object is an *error*, never a
string comparison: otherwise an unparseable gold answer would score 1.0 against a response that
copies it verbatim (open-r1#293).
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
# (a box written with a doubled backslash, `\\boxed{`, as text escaped twice shows it, is a box too)
_BRACE_TOKENS = re.compile(r"(?P<box>\\{1,2}(?:boxed|fbox|framebox)(?![A-Za-z])\s*\{)|(?P<esc>\\.)|(?P<open>\{)|(?P<close>\})", re.DOTALL)
_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _has_box(text: str) -> bool:
    return any(box in text for box in ("\\boxed", "\\fbox", "\\framebox"))


def _box_spans(text: str) -> list[tuple[int, int, int]]:
    """(command start, content start, content end) of every box that closes, braces matched, in order.

    One linear scan over the braces, so a response with thousands of unclosed boxes stays cheap.
    """
    depth = 0
    opened: list[tuple[int, int, int]] = []  # (brace depth outside the box, command start, content start)
    spans = []
    for m in _BRACE_TOKENS.finditer(text):
        kind = m.lastgroup
        if kind == "box":
            opened.append((depth, m.start(), m.end()))
            depth += 1
        elif kind == "open":
            depth += 1
        elif kind == "close":
            depth = max(depth - 1, 0)
            if opened and opened[-1][0] == depth:
                _, cmd, content = opened.pop()
                spans.append((cmd, content, m.start()))
    return sorted(spans)


def _outer_boxes(text: str) -> list[tuple[int, int, int]]:
    """The boxes that sit inside no other closed box, in order."""
    outer: list[tuple[int, int, int]] = []
    for span in _box_spans(text):
        if not outer or span[0] > outer[-1][2]:
            outer.append(span)
    return outer


def _last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}`; a box inside it is unwrapped too."""
    found = None
    while _has_box(text):
        spans = _outer_boxes(text)
        if not spans:
            break
        found = text = text[spans[-1][1] : spans[-1][2]]
    return found


# What may stand between boxes that state one answer together ("\\boxed{1} and \\boxed{2}",
# "\\boxed{(1,2)}, \\boxed{(2,1)}", "x = \\boxed{4} \\quad\\text{or}\\quad y = \\boxed{5}"): spacing, commas,
# math delimiters, "and"/"or", and a variable's label. Anything else (a sentence, "no, wait") separates
# answers, and the last box alone is the response's answer.
_JOIN = re.compile(
    r"(?:\s|[,;&~]|\$|\\[()\[\]]|\\[,;: !]|\\q?quad\b|\\text\s*\{\s*(?:and|or|,)?\s*\}|\b(?:and|or)\b"
    r"|\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*=)*"
)


_MAX_GROUP = 64


def _box_group(text: str, spans: list[tuple[int, int, int]] | None = None) -> list[str] | None:
    """The contents of the last box and of the boxes joined to it (see `_JOIN`), in order; None if no box.

    "\\boxed{4} or \\boxed{5}" is one answer of two values, so a hedge is compared as the set {4, 5}."""
    spans = _outer_boxes(text) if spans is None else spans
    if not spans:
        return None
    group = [spans[-1]]
    for span in reversed(spans[-_MAX_GROUP:-1]):  # a longer run of boxes is junk; its tail still lists values
        between = text[span[2] + 1 : group[0][0]]
        if len(between) > 200 or not _JOIN.fullmatch(between):
            break
        group.insert(0, span)
    return [_last_boxed(text[a:b]) or text[a:b] for _, a, b in group]


def _boxes(text: str) -> list[str]:
    """The contents of every outer box, each unwrapped like `_last_boxed` does."""
    return [_last_boxed(text[a:b]) or text[a:b] for _, a, b in _outer_boxes(text)]


def _clean(answer: str) -> str | None:
    """Strip whitespace and math-mode wrappers (`$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`) and a `\\textbf{(073)}`
    wrapper around a bare number; normalise the writings below; empty -> None."""
    s = _unescape_twice(answer.strip())
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
    if _GROUPED_THOUSANDS.match(s):  # "1 000", "1\,000": math-verify reads the space as a product (1*0)
        s = _GROUP_SEPARATOR.sub("", s)
    s = _UPRIGHT_LETTER.sub(lambda m: m.group(1) or m.group(2), s)  # math-verify drops \mathrm{e} as a unit
    s = _TILDE.sub(" ", s)  # a tie is a space ("5~\\text{or}~6" must read as 5 or 6, not as 5)
    s = _TEXT_SEPARATOR.sub(", ", s)  # "5 \\text{, } 6" lists two values (math-verify reads 6)
    return s or None


def _unescape_twice(s: str) -> str:
    """`\\\\frac{1}{2}` -> `\\frac{1}{2}` when every command in s has its backslash doubled (text escaped
    twice, as JSON dumps of LaTeX often are); a single `\\\\` between rows of a matrix is left alone."""
    runs = _COMMAND_BACKSLASHES.findall(s)
    if runs and all(len(r) % 2 == 0 for r in runs):
        return s.replace("\\\\", "\\")
    return s


_COMMAND_BACKSLASHES = re.compile(r"\\+(?=[A-Za-z])")
_SENTENCE_END = re.compile(r"(?<!\\)[\s.,;:!?]+$")  # not an escaped `\,` / `\;` spacing command
# An expression cut off or unbalanced ("4 \cdot", "4x+", "2r-7)"): math-verify's plain-expression
# reader would take the leading number out of it ("4", "4", "2") and score that.
_DANGLING = re.compile(r"(?:(?<!\\)[-+*/^=(\[{,_]|\\cdot|\\times|\\div|\\pm|\\frac|\\sqrt)\s*$")
# digit groups of three after a space or a thin space: one number; other numbers side by side ("4 5")
# are no answer (math-verify would read them as a mixed number, 4 + 5)
_GROUP_SEPARATOR = re.compile(r"(?<=\d)(?: |\\[,;:! ]|~|\{,\}|\\,\{\})(?=\d{3})")
_GROUPED_THOUSANDS = re.compile(r"^-?\d{1,3}(?:(?: |\\[,;:! ]|~|\{,\}|\\,\{\})\d{3})+(?:\.\d+)?$")
_SIDE_BY_SIDE = re.compile(r"^-?\d+(?:\.\d+)?(?:(?:\s|\\[,;:! ]|\\q?quad)+-?\d+(?:\.\d+)?)+$")
_TILDE = re.compile(r"(?<!\\)~")
_TEXT_SEPARATOR = re.compile(r"\\(?:text|mbox|textrm|textnormal)\s*\{\s*[,;]\s*\}")
# an upright single-letter constant (\mathrm{e}, {\rm i}, \operatorname{e}) is the letter itself
_UPRIGHT_LETTER = re.compile(r"\\(?:mathrm|mathup|rm|operatorname)\s*\{\s*([ei])\s*\}|\{\s*\\rm\s+([ei])\s*\}")


def _well_formed(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0 and not _DANGLING.search(s) and not _SIDE_BY_SIDE.match(s)


# a number set as text, as contest solutions box it: `\textbf{(073)}`, `\text{ 12 }`; math-verify would
# read the text as a string, never equal to the number 73
_E_NOTATION = re.compile(r"^-?\d+(?:\.\d+)?[eE][-+]?\d{1,3}$")  # exponent bounded: no 1e999999 blow-up
_TEXT_NUMBER = re.compile(r"^\\(?:text|textbf|mathbf|mathrm)\{\s*\(?\s*(-?\d+(?:\.\d+)?)\s*\)?\s*\}$")


_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.{1,200}?)\s*(?:\.\s|\.?\s*$|\n)", re.IGNORECASE)
# "the largest $n$ is 34": the subject before the first "is" names the answer, it is not part of it
_QUOTES = re.compile(r"^(?:\\?[\"'`])+|(?:\\?[\"'`])+$")
_SUBJECT = re.compile(r"^(?:the|a|an|our|its|their)\s.{0,150}?\s(?:is|are|equals|=)\s+(?P<answer>.+)$", re.IGNORECASE | re.DOTALL)


def _phrase_match(text: str) -> tuple[str, int] | None:
    """(X, where X starts in text) of the last "the answer is X" / "final answer: X" after the last
    `</think>` (the sentence's end stops X); a leading "The ... is" in X is dropped."""
    cut = text.rfind("</think>") + 1 if "</think>" in text else 0
    cut = max(cut, len(text) - 20_000)  # where a conclusion is; bounds the scan on megabyte responses
    found = None
    for m in _PHRASE.finditer(text, cut):
        found = m
    if found is None:
        return None
    answer = found.group(1).strip()
    subject = _SUBJECT.match(answer)
    answer = subject.group("answer") if subject else answer
    return _QUOTES.sub("", answer), found.start()  # quotes around X are not part of it


_PROSE = re.compile(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}")  # two words in a row
_COMMAND = re.compile(r"\\[A-Za-z]+")


def _phrase_answer(text: str) -> str | None:
    found = _phrase_match(text)
    return _clean(found[0]) if found is not None else None


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


def _members(parts: list[str]) -> list[str]:
    """Cleaned, non-empty parts with repeats dropped, in order."""
    out: dict[str, None] = {}
    for part in parts:
        c = _clean(part)
        if c is not None:
            out.setdefault(c)
    return list(out)


def _extract(text: str, phrases: bool) -> tuple[list[str], str]:
    """(the parts of the answer, where): one part, or the values of boxes joined into one answer."""
    if not isinstance(text, str):
        return [], "none"
    start = text.rfind(_ANSWER_OPEN, 0, max(text.rfind(_ANSWER_CLOSE), 0))
    if start >= 0:
        close = text.find(_ANSWER_CLOSE, start)
        content = text[start + len(_ANSWER_OPEN) : close]
        group = _box_group(content)
        parts = _members(group if group is not None else [content])
        return (parts, "answer_tag") if parts else ([], "none")
    spans = _outer_boxes(text) if _has_box(text) else []
    if spans and phrases:  # "final answer is X" written after the last box is the later, final word
        said = _phrase_match(text[spans[-1][2] :])
        final = _clean(said[0]) if said is not None else None
        if final is not None and not _PROSE.search(_COMMAND.sub(" ", final)) and _parse(final):
            return [final], "phrase"  # (a sentence, "what we found", is no answer: math-verify reads w*h*a*t)
    group = _box_group(text, spans) if spans else None
    parts = _members(group) if group is not None else []
    if parts:
        return parts, "boxed"
    answer = _hash_answer(text) if "####" in text else None
    if answer is not None:
        return [answer], "hash"
    answer = _phrase_answer(text) if phrases else None
    return ([answer], "phrase") if answer is not None else ([], "none")


def extract_answer(text: str, phrases: bool = False) -> tuple[str | None, str]:
    """(answer, where) with where in "answer_tag" | "boxed" | "hash" | "phrase" | "none".

    The last complete `<answer>...</answer>` block wins: the last opening tag that is followed by
    a closing tag, up to the first closing tag after it (so repeated or stray tags never leak
    into the answer). Inside it, a `\\boxed{}` narrows the answer to the last box. Without an
    answer block, the last complete box anywhere in the text (with `phrases`, a "final answer is X"
    after it wins); without a box, the last `#### N` line (GSM8K's own answer format). Boxes joined
    only by commas, "and"/"or" or spacing ("\\boxed{1} and \\boxed{2}") are one answer, their values
    listed "1, 2". Empty content gives (None, "none").
    """
    parts, where = _extract(text, phrases)
    return (", ".join(parts), where) if parts else (None, "none")


def _timeout() -> int | None:
    """math-verify's own alarm only where signals work (the main thread); None disables it."""
    return INTERNAL_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple[Any, ...]:
    """The mathematical objects math-verify reads from a bare answer string; () when none.

    Wrapped in `$...$` so the LaTeX extractor sees the whole string as one expression; no string
    fallback, so "does not parse" really means no sympy object came out. A free symbol `i` is the
    imaginary unit (so `e^{i\\pi}` is -1). Cached: a group of G samples shares one gold answer,
    and short answers repeat across a batch.
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
    if not parsed and _PLUS_MINUS.search(answer):
        parsed = _plus_minus(answer)
    return tuple(_imaginary_unit(x) for x in parsed)


_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])")


def _plus_minus(answer: str) -> list[Any]:
    """`\\frac{-1 \\pm \\sqrt{13}}{4}`, which math-verify cannot read, as the set of its two values
    (every \\pm taking the same sign, \\mp the other); [] if either does not parse."""
    import sympy

    values = []
    for sign, other in (("+", "-"), ("-", "+")):
        one = _PLUS_MINUS.sub(lambda m: sign if m.group() == "\\pm" else other, answer)  # noqa: B023
        got = _parse(one)
        if len(got) != 1:
            return []
        values.append(got[0])
    try:
        return [sympy.FiniteSet(*values)]
    except (TypeError, ValueError):
        return []


def _imaginary_unit(expr: Any) -> Any:
    import sympy

    try:
        symbols = [s for s in expr.free_symbols if getattr(s, "name", None) == "i"]
        return expr.subs({s: sympy.I for s in symbols}) if symbols else expr
    except Exception:  # noqa: BLE001 (an object sympy cannot substitute into stays as it is)
        return expr


def _gold_parts(answer: str) -> list[str] | None:
    """The parts of a gold answer; None when its boxes disagree (several boxes with different
    values that do not form one answer: which of them is meant cannot be told)."""
    if _has_box(answer) and _outer_boxes(answer):
        group = _members(_box_group(answer) or [])
        if any(c not in group for c in _members(_boxes(answer))):
            return None
        return group
    return _members([answer])


def gold_text(answer: str) -> str | None:
    """The comparable text of a gold answer: its box (or its boxes joined into one answer, values
    listed "1, 2") unwrapped, math delimiters stripped; None if empty or its boxes disagree."""
    parts = _gold_parts(answer)
    return ", ".join(parts) if parts else None


_LETTER = re.compile(r"^\(?([A-E])\)?(?:[.:)]\s*.*)?$", re.DOTALL)
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$", re.DOTALL)


def choice_letter(answer: str) -> str | None:
    """"B", "(B)", "B.", "B) 12", "\\text{(B)}" -> "B"; anything else -> None, including a second
    letter after the first ("B) or C)": a hedge between options)."""
    s = answer.strip()
    m = _TEXT_WRAP.match(s)
    s = m.group(1).strip() if m else s
    m = _LETTER.match(s)
    if m is None or _OTHER_LETTER.search(s, m.end(1)):
        return None
    return m.group(1)


_OTHER_LETTER = re.compile(r"(?<![A-Za-z\\])[A-E](?![A-Za-z])")


def _choices(problem: Problem) -> dict[str, str]:
    raw = (problem.metadata or {}).get("choices")
    if isinstance(raw, dict):
        return {str(k).strip().upper(): str(v) for k, v in raw.items() if str(k).strip().upper() in "ABCDE"}
    if isinstance(raw, list):
        return {letter: str(v) for letter, v in zip("ABCDE", raw)}
    return {}


def _same(a: str, b: str) -> bool:
    """a and b are the same answer: equal after whitespace normalisation, or mathematically equal."""
    if _as_text(a) == _as_text(b):
        return True
    pa, pb = _parse(a), _parse(b)
    return bool(pa and pb and _equal(pb, pa))


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


def _as_text(s: str) -> str:
    return "".join(s.split()).lower()


# a clock time or a ratio ("12:00", "7 : 32"): compared as written, never as the division math-verify
# would read (a time h:00 is a division by zero); "S_1:S_2 = 7:32" names the ratio before the "="
_COLON = re.compile(r"^\d+(?:\.\d+)?(?:\s*(?:\\colon|:)\s*\d+(?:\.\d+)?)+$")


def _colon_form(s: str) -> str | None:
    tail = s.rsplit("=", 1)[-1].strip()
    if not _COLON.match(tail):
        return None
    return ":".join(str(Decimal(p.strip())) for p in re.split(r"\\colon|:", tail))


def _equal(gold: tuple[Any, ...], pred: tuple[Any, ...]) -> bool:
    """math-verify's equality, with a set of numbers (an interval, a union) equal to the bounds that
    describe it ("-1 < x \\le 4" for (-1, 4]) both ways; math-verify itself reads only a gold relation
    as a set."""
    import sympy
    from math_verify import verify

    if any(isinstance(g, sympy.Set) or (isinstance(g, sympy.Eq) and isinstance(g.rhs, sympy.Set)) for g in gold):
        pred = tuple(_bounds_as_set(p) for p in pred)  # (a gold "x \\in [a, b]" reads as Eq(x, [a, b]))
    return bool(verify(list(gold), list(pred), timeout_seconds=_timeout()))


def _bounds_as_set(expr: Any) -> Any:
    """`-1 < x \\le 4` -> Interval.Lopen(-1, 4): only bounds, each a variable against a number, one
    variable throughout. An inequality still to be solved ("(x-1)(x-2) < 0") is left as it is: read as
    its solution set it would reward restating the question."""
    import sympy
    from sympy.core.relational import Relational

    rels, stack = [], [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, (sympy.And, sympy.Or)):
            stack.extend(node.args)
        elif isinstance(node, Relational):
            rels.append(node)
        else:
            return expr
    variables = set()
    for rel in rels:
        sides = (rel.lhs, rel.rhs)
        if not any(isinstance(a, sympy.Symbol) for a in sides) or not any(_is_number(a) for a in sides):
            return expr
        variables |= rel.free_symbols
    if len(variables) != 1:
        return expr
    try:
        return expr.as_set()
    except Exception:  # noqa: BLE001 (sympy cannot: compare as math-verify would)
        return expr


def _false_statement(expr: Any) -> bool:
    """True if expr states a relation between two numbers that does not hold ("3 = 7", "x = 2 + 2 = 5").

    math-verify scores an equation by its right-hand side alone, so without this "3 = 7" would earn
    the reward for 7."""
    import sympy
    from sympy.core.relational import Relational

    stack, seen = [expr], 0
    while stack and seen < 200:
        node, seen = stack.pop(), seen + 1
        if isinstance(node, Relational) and _is_number(node.lhs) and _is_number(node.rhs):
            # too large to check cheaply ("x = 9^{9^{9}} = 5") counts as false: it cannot earn a reward
            if not (_evaluable(node.lhs) and _evaluable(node.rhs)) or _holds(node) is False:
                return True
        stack.extend(a for a in getattr(node, "args", ()) if isinstance(a, sympy.Basic))
    return False


def _is_number(side: Any) -> bool:
    return bool(getattr(side, "is_number", False))


def _evaluable(side: Any) -> bool:
    """A number cheap to evaluate: no tower of powers, no huge exponent or factorial."""
    import sympy

    try:
        for p in side.atoms(sympy.Pow):
            if p.exp.atoms(sympy.Pow, sympy.factorial) or abs(sympy.N(p.exp, 15)) > 10_000:
                return False
        return all(abs(sympy.N(f.args[0], 15)) <= 10_000 for f in side.atoms(sympy.factorial))
    except (TypeError, ValueError, ArithmeticError):
        return False


def _holds(rel: Any) -> bool | None:
    """Whether a relation between two numbers holds; None when that cannot be told (an equation with a
    rounded decimal side, "= 0.33", or an inequality with an infinite or complex side)."""
    import sympy

    lhs, rhs = rel.lhs, rel.rhs
    infinite = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)
    if lhs.has(*infinite) or rhs.has(*infinite):  # "1/0 = 5", "\\infty = 5": equal only if the same
        if isinstance(rel, (sympy.Eq, sympy.Ne)):
            return (lhs == rhs) == isinstance(rel, sympy.Eq)
        return None
    try:
        diff = complex(sympy.N(lhs - rhs, 30))
        scale = max(abs(complex(sympy.N(lhs, 30))), abs(complex(sympy.N(rhs, 30))), 1.0)
    except (TypeError, ValueError, ArithmeticError, OverflowError):
        return None
    if isinstance(rel, (sympy.Eq, sympy.Ne)):
        if lhs.atoms(sympy.Float) or rhs.atoms(sympy.Float):
            return None
        return (abs(diff) <= 1e-12 * scale) == isinstance(rel, sympy.Eq)
    if diff.imag != 0:
        return None
    truth = rel.func(sympy.Float(diff.real), 0)
    return bool(truth) if truth in (sympy.true, sympy.false) else None


_HEDGE_WORDS = frozenset({"or", "either", "else", "otherwise", "maybe", "perhaps", "possibly", "alternatively"})
# (a digit after ^ or _ is a unit's power or index: \\mathrm{cm^2})
_TEXT_WITH_DIGIT = re.compile(r"\\(?:text|mbox|textrm|textbf|textit|textnormal|mathrm)\s*\{[^{}]*(?<![\^_\d])\d[^{}]*\}")


def _hedged(answer: str, pred: tuple[Any, ...]) -> bool:
    """The answer names alternatives in words, or hides numbers in text, and math-verify's reading
    keeps only one value: "5 (or 6)" reads as 6, "5 \\text{ (or 6)}" and "5 \\text{ or six}" as 5.
    (Alternatives it reads as a set, "5 \\text{ or } 6", are compared as that set instead.)"""
    import sympy

    listed = len(pred) == 1 and isinstance(pred[0], (sympy.FiniteSet, sympy.Or))
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", _COMMAND.sub(" ", answer))}
    if words & _HEDGE_WORDS and not listed:
        return True
    return bool(_TEXT_WITH_DIGIT.search(answer)) and not _TEXT_NUMBER.match(answer)


def _compare(gold_parts: list[str], gold: tuple[Any, ...], parts: list[str], pred: tuple[Any, ...]) -> bool:
    """Whether the response's answer equals the gold answer.

    Several values against a one-value gold ("\\boxed{4} or \\boxed{5}" for 5) are correct only if every
    one of them equals it (a repeated answer), never because one does: a hedge or a list holding the
    gold earns nothing. Otherwise the answers are compared whole, as sets when they list values."""
    if len(parts) > 1 and len(gold_parts) == 1:
        each = [_parse(p) for p in parts]
        if all(e and _equal(gold, e) for e in each):
            return True
    return _equal(gold, pred)


@register_verifier("math", answer_only=True, reads=("choices",))
def verify_math(response: str, problem: Problem) -> Verdict:
    """Correct iff the extracted answer is mathematically equal to the gold answer.

    unparsable: no answer found, or it is not readable as math. error: the gold answer itself is
    unusable (a data bug, reported rather than scored). Multiple choice: see the module docstring.
    Also wrong: an answer that states a false relation between numbers ("3 = 7"), and a time or
    ratio written "h:mm" / "a:b" that differs from the gold as written.
    """
    parts, where = _extract(response, phrases=True)
    answer = ", ".join(parts) if parts else None
    choice = _choice_verdict(answer, where, problem)
    if choice is not None:
        return choice
    options = _choices(problem)
    letter = choice_letter(answer) if answer is not None and options else None
    if letter is not None and letter in options:  # gold is an option's text, the response names its letter
        answer, where = options[letter], f"{where}, choice {letter}"
        parts = _members([answer])
    gold_parts = _gold_parts(str(problem.answer))
    if gold_parts is None:
        return Verdict("error", f"gold answer {problem.answer!r} has boxes with different values that do not "
                                "form one answer", extracted=answer)
    gold_str = ", ".join(gold_parts) if gold_parts else None
    gold = _parse(gold_str) if gold_str is not None else ()
    gold_clock = _colon_form(gold_str) if gold_str is not None else None
    if not gold and gold_clock is None:  # checked first: a broken gold answer is reported whatever the response says
        return Verdict("error", f"gold answer {problem.answer!r} does not parse as math", extracted=answer)
    if answer is None or not parts:
        return Verdict("unparsable", "no non-empty <answer>...</answer> block and no \\boxed{} in the response")
    clock = _colon_form(answer)
    if gold_clock is not None or clock is not None:
        ok = gold_clock == clock or _as_text(gold_str) == _as_text(answer)
        reason = f"answer ({where}) {'is' if ok else 'is not'} {problem.answer!r} as written (a time or ratio)"
        return Verdict("correct" if ok else "wrong", reason, extracted=answer)
    if _as_text(gold_str) == _as_text(answer):
        return Verdict("correct", f"answer ({where}) is the gold {problem.answer!r} as written", extracted=answer)
    pred = _parse(answer)
    if not pred:
        return Verdict("unparsable", f"answer ({where}) {_short(answer)!r} does not parse as math", extracted=answer)
    if _hedged(answer, pred):
        return Verdict("wrong", f"answer ({where}) {_short(answer)!r} names alternatives or hides numbers in words",
                       extracted=answer)
    if any(_false_statement(p) for p in pred):
        return Verdict("wrong", f"answer ({where}) {_short(answer)!r} states a false relation between numbers",
                       extracted=answer)
    ok = _compare(gold_parts, gold, parts, pred)
    reason = f"answer ({where}) {'equals' if ok else 'differs from'} gold {problem.answer!r}"
    return Verdict("correct" if ok else "wrong", reason, extracted=answer)


def _short(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "..."

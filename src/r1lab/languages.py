"""Which language a response reasons in: DeepSeek-R1's language-consistency reward and the
language-mixing metric, measured with the `lingua` detector.

The measured text is the reasoning: the thinking block (`<think>...</think>`; with a template that
pre-fills `<think>`, everything before `</think>`; an unclosed block runs to the end), or the whole
response when it has no thinking block.

What counts. Code, numbers, LaTeX and symbols carry no language, so they are cut out before
anything is counted: fenced and inline code, `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`, LaTeX
commands, markup tags, and every token that touches a digit or an underscore (`x2`, `3x`,
`var_name`). What is left are the *units*: a word (a run of letters) of a spaced script, and a
single character of Chinese or Japanese script (which writes no spaces; a character is about a
morpheme, so a Chinese sentence weighs about 1.5 times its English translation).

Which language. The text is cut into segments at sentence punctuation, line breaks and changes of
script; the detector, restricted to a configured set of languages, names each segment's language
(None when it cannot decide). A loanword inside a sentence of another language of the same script
is therefore counted with its sentence; a Chinese phrase inside an English sentence is its own
segment.

The share. Each *distinct* unit (case-folded) counts once per language it was found in:
share(L) = |distinct units in segments of L| / sum over languages (and undecided) of the same.
Counting distinct units is the defence against padding: a response that repeats one target-language
word a thousand times gains one unit, not a thousand (tests/test_languages.py). A reasoning with no
units at all (empty, only numbers, only code) has no shares; the reward gives it 0.0, so deleting
the reasoning is never the way to full marks, and the metric counts it apart (`lang/no_words`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import defaultdict
from statistics import mean
from typing import Iterable, Sequence

from lingua import Language, LanguageDetectorBuilder

from r1lab.reward_registry import register_reward

# the languages the detector tells apart unless configured otherwise (reward.languages): those of
# the multilingual task families; fewer candidates make the detector faster and surer
DEFAULT_LANGUAGES = ("en", "zh", "fr", "de", "es", "ru", "ja")
DEFAULT_LANGUAGE = "en"  # the target of a problem without metadata["language"] when none is configured
MIX_THRESHOLD = 0.2  # a response "mixes" when two or more languages each hold at least this share


# every ISO 639-1 code lingua knows: the domain of reward.language and reward.languages
_LINGUA = {lang.iso_code_639_1.name.lower(): lang for lang in Language.all()}
LANGUAGES = tuple(sorted(_LINGUA))


@functools.lru_cache(maxsize=8)
def detector(languages: tuple[str, ...]):
    """A lingua detector restricted to `languages` (ISO 639-1 codes), built once per process per set."""
    unknown = [c for c in languages if c not in LANGUAGES]
    if unknown:
        raise ValueError(f"unknown language codes {unknown}; lingua knows {', '.join(LANGUAGES)}")
    chosen = [_LINGUA[c] for c in dict.fromkeys(languages)]
    if len(chosen) == 1:  # lingua needs two candidates; a second one only makes "other" possible
        chosen.append(_LINGUA["en" if languages[0] != "en" else "fr"])
    return LanguageDetectorBuilder.from_languages(*chosen).build()


# --- the reasoning, cleaned of what carries no language ---------------------------------------


def thinking_block(text: str) -> str | None:
    """The content of the thinking block (a template's pre-filled `<think>` counts: everything
    before `</think>`; an unclosed block runs to the end), or None when the text has none."""
    if not isinstance(text, str):
        return None
    close = text.find("</think>")
    if close >= 0:
        head = text[:close]
        opened = head.rfind("<think>")
        return head[opened + len("<think>"):] if opened >= 0 else head
    opened = text.find("<think>")
    return text[opened + len("<think>"):] if opened >= 0 else None


def reasoning_text(text: str) -> str:
    """The thinking block's content, or the whole text when it has none (see the module doc)."""
    thinking = thinking_block(text)
    return thinking if thinking is not None else text if isinstance(text, str) else ""


_NO_LANGUAGE = re.compile(
    r"```.*?(?:```|\Z)"            # fenced code (an unclosed fence runs to the end)
    r"|`[^`\n]*`"                  # inline code
    r"|\$\$.*?(?:\$\$|\Z)"         # display math
    r"|\$[^$\n]*\$"                # inline math
    r"|\\\[.*?(?:\\\]|\Z)|\\\(.*?(?:\\\)|\Z)"
    r"|\\[A-Za-z]+"                # a LaTeX command left outside math
    r"|</?[A-Za-z_][\w-]{0,30}/?>"  # markup tags
    r"|https?://\S+",
    re.DOTALL,
)
# letters with inner apostrophes or hyphens; cut into units by _pieces
_LETTERS = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_GLUE = re.compile(r"[\w]")  # a digit or underscore (or letter) glued to a run of letters
_SEGMENT_END = re.compile(r"[.!?;:。！？；：…\n]+")


def _script(ch: str) -> str:
    """The script class of a letter: 'cjk' (Han, kana), 'hangul', 'cyrillic', 'latin', ... or 'other'."""
    name = unicodedata.name(ch, "")
    if name.startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA")):
        return "cjk"
    for script in ("HANGUL", "CYRILLIC", "GREEK", "LATIN", "ARABIC", "HEBREW", "DEVANAGARI", "THAI"):
        if name.startswith(script):
            return script.lower()
    return "other"


def _pieces(run: str) -> list[tuple[str, str]]:
    """(script, unit) of a run of letters: CJK characters one by one, other scripts as words."""
    out: list[tuple[str, str]] = []
    word, word_script = "", ""
    for ch in run:
        s = _script(ch) if ch.isalpha() else word_script or "other"  # an apostrophe or hyphen joins
        if s == "cjk" or (word and s != word_script):
            if word:
                out.append((word_script, word))
            word, word_script = "", ""
        if s == "cjk":
            out.append(("cjk", ch))
        else:
            word, word_script = word + ch, s
    if word:
        out.append((word_script, word))
    return out


def segments(text: str) -> list[tuple[str, list[str]]]:
    """(script, units) of each segment of the reasoning, in order, cleaned of code, math and symbols.

    A word of a spaced script glued to a digit or an underscore (`x2`, `3x`, `var_name`) is an
    identifier or a unit of measure, not language, and is dropped; Chinese and Japanese write
    numbers against words (`3个`, `まず3と4`), so their characters are kept."""
    cleaned = _NO_LANGUAGE.sub(" ", text)
    out: list[tuple[str, list[str]]] = []
    for sentence in _SEGMENT_END.split(cleaned):
        current, units = "", []
        for m in _LETTERS.finditer(sentence):
            pieces = _pieces(m.group(0))
            glued_before = m.start() > 0 and _GLUE.match(sentence[m.start() - 1])
            glued_after = m.end() < len(sentence) and _GLUE.match(sentence[m.end()])
            if glued_before and pieces and pieces[0][0] != "cjk":
                pieces = pieces[1:]
            if glued_after and pieces and pieces[-1][0] != "cjk":
                pieces = pieces[:-1]
            for script, unit in pieces:
                if script != current and units:
                    out.append((current, units))
                    units = []
                current = script
                units.append(unit)
        if units:
            out.append((current, units))
    return out


@functools.lru_cache(maxsize=65536)
def _detect(segment_text: str, languages: tuple[str, ...]) -> str | None:
    found = detector(languages).detect_language_of(segment_text)
    if found is None:
        return None
    code = found.iso_code_639_1.name.lower()
    return code if code in languages else None  # the padding candidate of a one-language set


def language_units(text: str, languages: Sequence[str] = DEFAULT_LANGUAGES) -> dict[str | None, set[str]]:
    """Distinct case-folded units of the reasoning of `text`, by detected language (None: undecided)."""
    langs = tuple(languages)
    out: dict[str | None, set[str]] = defaultdict(set)
    for script, units in segments(reasoning_text(text)):
        joined = "".join(units) if script == "cjk" else " ".join(units)
        out[_detect(joined, langs)].update(u.casefold() for u in units)
    return dict(out)


def language_shares(text: str, languages: Sequence[str] = DEFAULT_LANGUAGES) -> dict[str | None, float]:
    """Share of the reasoning's distinct units in each detected language; {} when it has no units."""
    units = language_units(text, languages)
    total = sum(len(u) for u in units.values())
    return {lang: len(u) / total for lang, u in units.items()} if total else {}


def consistency(text: str, target: str, languages: Sequence[str] = DEFAULT_LANGUAGES) -> float | None:
    """The share of the reasoning in `target`; None when the reasoning has no units."""
    langs = tuple(dict.fromkeys([*languages, target]))
    shares = language_shares(text, langs)
    return shares.get(target, 0.0) if shares else None


def target_language(problem, configured: str = "") -> str:
    """The configured language, else the problem's metadata["language"], else English."""
    if configured:
        return configured
    lang = (problem.metadata or {}).get("language") if problem is not None else None
    return lang if isinstance(lang, str) and lang else DEFAULT_LANGUAGE


@register_reward("language_consistency")
def language_consistency(problems, texts, verdicts, completions, **settings) -> list[float]:
    """DeepSeek-R1's language-consistency reward (R1 report, Sec. 2.3.2): the share of the
    reasoning written in the target language (`reward.language`, else the problem's
    metadata["language"], else English), in [0, 1]; 0.0 for a reasoning with no words."""
    languages = tuple(settings.get("languages") or DEFAULT_LANGUAGES)
    configured = str(settings.get("language") or "")
    out = []
    for p, t in zip(problems, texts):
        value = consistency(t, target_language(p, configured), languages)
        out.append(0.0 if value is None else value)
    return out


def language_metrics(problems: Iterable, texts: Iterable[str], languages: Sequence[str] = DEFAULT_LANGUAGES,
                     configured: str = "", threshold: float = MIX_THRESHOLD) -> dict[str, float]:
    """The language-mixing metrics of the responses whose problem carries a language, or of all when
    a target is `configured` ({} when none is measured); see `mixing_metrics`."""
    targets = [target_language(p, configured) if configured or (p.metadata or {}).get("language") else None
               for p in problems]
    return mixing_metrics(list(texts), targets, languages, threshold)


def mixing_metrics(texts: Sequence[str], targets: Sequence[str | None], languages: Sequence[str] = DEFAULT_LANGUAGES,
                   threshold: float = MIX_THRESHOLD) -> dict[str, float]:
    """Over the responses whose target language is not None ({} when there are none):
    lang/consistency: mean share in the target language, over responses that have words;
    lang/mixed: share of those responses with two or more languages at >= `threshold` each;
    lang/no_words: share of all measured responses whose reasoning has no words."""
    langs = tuple(languages)
    values, mixed, no_words, measured = [], [], 0, 0
    for text, target in zip(texts, targets):
        if target is None:
            continue
        measured += 1
        shares = language_shares(text, tuple(dict.fromkeys([*langs, target])))
        if not shares:
            no_words += 1
            continue
        values.append(shares.get(target, 0.0))
        mixed.append(sum(1 for lang, s in shares.items() if lang is not None and s >= threshold) >= 2)
    if not measured:
        return {}
    return {"lang/consistency": mean(values) if values else float("nan"),
            "lang/mixed": mean(mixed) if mixed else float("nan"),
            "lang/no_words": no_words / measured}

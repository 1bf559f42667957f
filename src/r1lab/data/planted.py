"""Planted contamination: a training corpus with benchmark items hidden in it, to measure decontamination.

Real training problems (presumed clean) are mixed with copies of benchmark items, each copy edited
in one of these ways:

- `exact`: the item as it is;
- `whitespace_case`: spaces, line breaks and tabs changed, the case changed (all lower, all upper
  or capitalised words);
- `latex`: the mathematics respelled without changing it (`\\frac` as `\\dfrac` or `a/b`, `\\le`
  as `\\leq`, `x^2` as `x^{2}`, `$...$` as `\\(...\\)`, `\\cdot` as `\\times`, `\\left(`, unicode
  symbols, numbers of a word problem put in `$...$`, ...);
- `wrapped`: the item inside a prompt template (an instruction before and/or after it);
- `numbers_one` / `numbers_all`: one number, or every number, replaced by another of as many digits
  (the "same problem, new numbers" rewrite); only items that contain a number are used.

A third of the clean rows are wrapped in the same templates, so a template is no sign of a copy.
`score` runs any matcher over the corpus and returns precision and recall per kind. The edits are
deterministic given the seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

WRAPPERS = [
    "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{{}}.\n\n{p}",
    "{p}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "Question: {p}\nAnswer: Let's think step by step.",
    "You will be given a problem. Please reason step by step, and put your final answer within \\boxed{{}}:\n{p}",
    "Return your final response within \\boxed{{}}. {p}",
    "Here is a practice problem from an old contest.\n\n{p}\n\nExplain each step, then give the final answer on its own line.",
    "<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n",
    "### Problem\n{p}\n\n### Instructions\nThink step by step inside <think> </think>, then give only the final answer "
    "inside <answer> </answer>.",
]
_NUMBER = re.compile(r"(?<![\\A-Za-z])\d+")
_DECIMAL = re.compile(r"\d+(?:[.,]\d+)*")


def _whitespace_case(t: str, rng: random.Random) -> str:
    case = rng.choice(["lower", "upper", "capitalise"])
    if case == "lower":
        t = t.lower()
    elif case == "upper":
        t = t.upper()
    else:
        t = re.sub(r"(?<![\\\w])([a-z])", lambda m: m.group(1).upper(), t)
    parts = t.split(" ")
    return "  " + "".join(p + rng.choice([" ", "  ", "\n", "\t", " \n "]) for p in parts).rstrip(" ") + "\n\n"


_LATEX_RULES: list[tuple[str, Callable[[str], str]]] = [
    ("dfrac", lambda t: re.sub(r"\\frac(?![A-Za-z])", r"\\dfrac", t)),
    ("slash", lambda t: re.sub(r"(?<!\d)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}",
                               lambda m: f"{m.group(1)}/{m.group(2)}" if len(m.group(1) + m.group(2)) <= 2
                               else f"({m.group(1)})/({m.group(2)})", t)),
    ("braced_powers", lambda t: re.sub(r"\^(\w)", r"^{\1}", t)),
    ("bare_powers", lambda t: re.sub(r"\^\{(\w)\}", r"^\1", t)),
    ("paren_math", lambda t: re.sub(r"\$([^$]+)\$", r"\\(\1\\)", t)),
    ("leq", lambda t: re.sub(r"\\(le|ge|ne)(?![A-Za-z])", r"\\\1q", t)),
    ("le", lambda t: re.sub(r"\\(le|ge|ne)q(?![A-Za-z])", r"\\\1", t)),
    ("times", lambda t: re.sub(r"\\cdot(?![A-Za-z])", r"\\times", t)),
    ("ldots", lambda t: re.sub(r"\\c?dots(?![A-Za-z])", r"\\ldots", t)),
    ("left_right", lambda t: re.sub(r"\$([^$]+)\$", lambda m: "$" + m.group(1).replace("(", "\\left(").replace(")", "\\right)") + "$", t)),
    ("mbox", lambda t: re.sub(r"\\text\{", r"\\mbox{", t)),
    ("degree", lambda t: re.sub(r"\^\\circ|\^\{\\circ\}", "°", t)),
    ("unicode", lambda t: t.replace("\\leq", "≤").replace("\\geq", "≥").replace("\\pi", "π").replace("\\times", "×")),
    ("thin_space", lambda t: re.sub(r"\s*=\s*", r" \\,=\\, ", t)),
    ("dollar_numbers", lambda t: _DECIMAL.sub(lambda m: f"${m.group()}$", t) if "$" not in t and "\\" not in t else t),
    ("escaped_dollar", lambda t: re.sub(r"\$(\d)", r"\\$\1", t) if "\\(" not in t and t.count("$") % 2 else t),
    ("grouping", lambda t: re.sub(r"\b(\d{1,3})(\d{3})\b", r"\1,\2", t)),
]


def _latex(t: str, rng: random.Random) -> str:
    rules = _LATEX_RULES[:]
    rng.shuffle(rules)
    out, applied = t, 0
    for _, rule in rules:
        new = rule(out)
        if new != out and (applied == 0 or rng.random() < 0.5):
            out, applied = new, applied + 1
    return out


def _wrapped(t: str, rng: random.Random) -> str:
    return rng.choice(WRAPPERS).format(p=t)


def _new_number(s: str, rng: random.Random) -> str:
    while True:
        new = str(rng.randint(10 ** (len(s) - 1) if len(s) > 1 else 0, 10 ** len(s) - 1))
        if new != s:
            return new


def _numbers_all(t: str, rng: random.Random) -> str:
    return _NUMBER.sub(lambda m: _new_number(m.group(), rng), t)


def _numbers_one(t: str, rng: random.Random) -> str:
    spans = [m.span() for m in _NUMBER.finditer(t)]
    a, b = rng.choice(spans)
    return t[:a] + _new_number(t[a:b], rng) + t[b:]


KINDS: dict[str, Callable[[str, random.Random], str]] = {
    "exact": lambda t, rng: t,
    "whitespace_case": _whitespace_case,
    "latex": _latex,
    "wrapped": _wrapped,
    "numbers_one": _numbers_one,
    "numbers_all": _numbers_all,
}
NUMBER_KINDS = ("numbers_one", "numbers_all")


@dataclass
class Row:
    id: str
    text: str
    kind: str  # "clean" or a planted kind
    benchmark_id: str = ""  # the item a planted row copies


def build_corpus(clean: list[tuple[str, str]], bench: list[tuple[str, str]], per_kind: int, seed: int = 0,
                 kinds: tuple[str, ...] = tuple(KINDS), wrap_clean: float = 1 / 3) -> list[Row]:
    """`clean` and `bench` are (id, text); `per_kind` benchmark items are planted per kind (each kind
    draws its own items). The rows come back shuffled."""
    rng = random.Random(seed)
    rows = [Row(i, _wrapped(t, rng) if rng.random() < wrap_clean else t, "clean") for i, t in clean]
    with_numbers = [b for b in bench if _NUMBER.search(b[1])]
    for kind in kinds:
        pool = with_numbers if kind in NUMBER_KINDS else bench
        for j, (bid, text) in enumerate(rng.sample(pool, min(per_kind, len(pool)))):
            rows.append(Row(f"{kind}-{j}", KINDS[kind](text, rng), kind, bid))
    rng.shuffle(rows)
    return rows


def score(rows: list[Row], flagged: Callable[[Row], bool], apart: tuple[str, ...] = NUMBER_KINDS) -> dict[str, Any]:
    """Precision and recall of `flagged` over the corpus: overall (kinds in `apart` left out of both),
    per kind, and the clean rows it flagged (false positives)."""
    hit = {r.id: bool(flagged(r)) for r in rows}
    kinds = sorted({r.kind for r in rows} - {"clean"}, key=lambda k: list(KINDS).index(k) if k in KINDS else 99)
    per_kind = {}
    for k in kinds:
        of_kind = [r for r in rows if r.kind == k]
        caught = sum(hit[r.id] for r in of_kind)
        per_kind[k] = {"rows": len(of_kind), "caught": caught, "recall": caught / len(of_kind)}
    clean = [r for r in rows if r.kind == "clean"]
    fp = [r.id for r in clean if hit[r.id]]
    planted = [r for r in rows if r.kind not in ("clean", *apart)]
    tp = sum(hit[r.id] for r in planted)
    return {
        "clean_rows": len(clean), "planted_rows": len(planted), "true_positives": tp, "false_positives": len(fp),
        "precision": tp / (tp + len(fp)) if tp + len(fp) else float("nan"),
        "recall": tp / len(planted) if planted else float("nan"),
        "clean_flagged_rate": len(fp) / len(clean) if clean else float("nan"),
        "per_kind": per_kind, "false_positive_ids": fp,
    }

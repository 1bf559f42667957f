"""Agreement of r1lab's math verifier with Math-Verify's own parametrized test suite.

The suite is read at run time from a checkout of https://github.com/huggingface/Math-Verify
(MIT-licensed); nothing of it is kept in this repository, so its cases stay unseen by r1lab's tests:

    python benchmarks/verifier_agreement.py PATH/TO/Math-Verify/tests [--json out.json] [--show all]

Every `@pytest.mark.parametrize` case with a gold, a prediction and an expected 0/1 is run through
r1lab's `verify_math` (gold as the problem's answer, prediction as the response) and, for
reference, through the installed math_verify under the settings the suite's test asks for.

A prediction is fed as written when it marks its answer (a box, an `<answer>` block, an answer
phrase); a prediction that is nothing but an answer (a short expression, no prose) is fed inside
`<answer>...</answer>`, which is how a model trained with r1lab's format states it. Items whose
gold or prediction is prose that never marks an answer do not "state an answer explicitly": r1lab
refuses to guess the answer from prose by design, so they are counted apart. An item's expectation
is "setting-specific" when its test asks for a non-default setting (LaTeX-only or plain-only
extraction, float precision other than 6 decimals, `strict=False`, `allow_set_relation_comp`) and
math_verify itself, under the defaults, does not return it: r1lab has one setting.

Printed: agreement overall, on explicit items and on explicit items whose expectation is not
setting-specific; the count of accepted-wrong (r1lab scores correct where the suite expects 0); the
disagreements by kind, then each one.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from r1lab.records import Problem
from r1lab.verify.math import verify_math

DEFAULTS = {"match_types": ("latex", "expr"), "precision": 6, "strict": True, "allow_set_relation_comp": False}


@dataclass
class Case:
    id: str
    gold: str
    pred: str
    expected: int
    settings: dict = field(default_factory=dict)


def _literal(node: ast.AST) -> object:
    """A literal from the test file; an f-string over `math` (one case formats sqrt(17)) is evaluated
    with nothing but `math` in scope."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        code = compile(ast.Expression(node), "<case>", "eval")
        return eval(code, {"__builtins__": {}, "math": math})  # noqa: S307  (a literal-like expression)


def _call_settings(fn: ast.FunctionDef) -> dict:
    """Keyword settings of the suite's helper call in a test body: {name: literal or ('param', name)}."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "compare_strings":
            out = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Name):
                    out[kw.arg] = ("param", kw.value.id)
                else:
                    out[kw.arg] = _literal(kw.value)
            return out
    return {}


def load_cases(root: Path) -> tuple[list[Case], list[str]]:
    """Every (gold, pred, expected) case of the test files under root; plus what was skipped, and why."""
    cases, skipped = [], []
    files = sorted(root.rglob("test_*.py")) if root.is_dir() else [root]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            for deco in fn.decorator_list:
                if not (isinstance(deco, ast.Call) and getattr(deco.func, "attr", None) == "parametrize"):
                    continue
                names = [s.strip() for s in _literal(deco.args[0]).split(",")]
                if not ({"gold", "pred"} <= set(names) and ({"expected", "result"} & set(names))):
                    skipped.append(f"{path.name}::{fn.name} (parameters {names}: not gold/pred/expected)")
                    continue
                call = _call_settings(fn)
                for i, elt in enumerate(deco.args[1].elts):
                    row = dict(zip(names, _literal(elt)))
                    settings = dict(DEFAULTS)
                    for k, v in call.items():
                        settings[k] = row[v[1]] if isinstance(v, tuple) and v and v[0] == "param" else v
                    for k in ("precision", "strict", "allow_set_relation_comp"):
                        if k in row:
                            settings[k] = row[k]
                    settings["match_types"] = tuple(settings["match_types"])
                    expected = int(row.get("expected", row.get("result")))
                    cases.append(Case(f"{path.name}::{fn.name}[{i}]", row["gold"], row["pred"], expected, settings))
    return cases, skipped


# --- does an item state its answer explicitly? -------------------------------------------------------

_MATH = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_MARKER = re.compile(r"\\(?:boxed|fbox|framebox)\b|<answer>|final answer|answer is|answer:", re.IGNORECASE)
_COMMAND = re.compile(r"\\[A-Za-z]+")
_CONNECTOR = re.compile(r"\b(?:and|or)\b", re.IGNORECASE)
_WORDS = re.compile(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}")


def is_bare(text: str) -> bool:
    """Nothing but an answer: no two prose words in a row outside math mode, and short."""
    outside = _CONNECTOR.sub(" ", _COMMAND.sub(" ", _MATH.sub(" ", text)))
    return len(text) <= 120 and not _WORDS.search(outside)


def explicit(text: str) -> str | None:
    """"marked", "bare", or None (prose that leaves the answer to be guessed)."""
    if _MARKER.search(text):
        return "marked"
    return "bare" if is_bare(text) else None


def response_for(pred: str) -> str:
    return f"<answer>{pred}</answer>" if explicit(pred) == "bare" else pred


def math_verify_says(case: Case, settings: dict | None = None) -> int:
    """What the installed math_verify returns under the test's own settings (its own baseline), or
    under the settings given."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    s = settings or case.settings
    configs = [LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig() for t in s["match_types"]]
    try:
        g, p = parse(case.gold, configs), parse(case.pred, configs)
        return int(verify(g, p, float_rounding=s["precision"], strict=s["strict"],
                          allow_set_relation_comp=s["allow_set_relation_comp"]))
    except Exception:  # noqa: BLE001 (a library failure is a 0, as its tests would see it)
        return 0


def non_default(settings: dict) -> list[str]:
    return [f"{k}={settings[k]}" for k in DEFAULTS if settings[k] != DEFAULTS[k]]


def run(cases: list[Case]) -> list[dict]:
    rows = []
    for c in cases:
        v = verify_math(response_for(c.pred), Problem(id=c.id, prompt="", answer=c.gold, task="math"))
        rows.append({
            **asdict(c),
            "gold_explicit": explicit(c.gold),
            "pred_explicit": explicit(c.pred),
            "non_default": non_default(c.settings),
            "r1lab": int(v.correct),
            "status": v.status,
            "reason": v.reason,
            "extracted": v.extracted,
            "math_verify": math_verify_says(c),
            # the expectation holds only under the test's own settings: math_verify itself, under the
            # defaults (LaTeX and plain extraction, 6 decimals, strict), does not return it
            "setting_specific": bool(non_default(c.settings)) and math_verify_says(c, DEFAULTS) != c.expected,
        })
    return rows


def disagreement_kind(row: dict, explicit_item: bool) -> str:
    """A coarse kind, from the item's class and r1lab's own verdict."""
    if not explicit_item:
        return "prose only: r1lab reads no unmarked answer"
    if row["setting_specific"]:
        return "expectation specific to a non-default setting"
    if row["r1lab"]:
        return "r1lab accepts, suite expects 0"
    if row["status"] == "error":
        return "r1lab reports the gold as unusable"
    if "false relation" in row["reason"]:
        return "r1lab: the answer states a false relation between numbers"
    return f"r1lab refuses ({row['status']})"


def _pct(rows: list[dict], key: str = "r1lab") -> str:
    agree = sum(r[key] == r["expected"] for r in rows)
    return f"{agree}/{len(rows)} ({100 * agree / max(len(rows), 1):.1f}%)"


def _short(s: str | None, n: int = 90) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tests", type=Path, help="Math-Verify's tests/ folder (or one test file)")
    ap.add_argument("--json", type=Path, help="write every item's row here")
    ap.add_argument("--show", choices=("disagreements", "all"), default="disagreements")
    args = ap.parse_args(argv)
    if not args.tests.exists():
        print(f"error: {args.tests} does not exist (give the tests/ folder of a Math-Verify checkout)", file=sys.stderr)
        return 2
    try:
        cases, skipped = load_cases(args.tests)
    except (OSError, SyntaxError, ValueError, TypeError) as e:
        print(f"error: cannot read the suite's cases under {args.tests}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not cases:
        print(f"error: no gold/pred/expected cases found under {args.tests}", file=sys.stderr)
        return 2
    t0 = time.time()
    rows = run(cases)
    took = time.time() - t0
    explicit_rows = [r for r in rows if r["gold_explicit"] and r["pred_explicit"]]
    default_rows = [r for r in explicit_rows if not r["setting_specific"]]
    print(f"{len(cases)} cases from {args.tests} ({len(skipped)} parametrized tests skipped: not gold/pred/expected), {took:.0f}s")
    for s in skipped:
        print(f"  skipped {s}")
    print("\n| items | r1lab agrees | math_verify (installed) agrees |\n|---|---:|---:|")
    for name, part in [("all", rows), ("answer stated explicitly", explicit_rows),
                       ("explicit, expectation not specific to a setting", default_rows),
                       ("prose only (not explicit)", [r for r in rows if r not in explicit_rows])]:
        print(f"| {name} | {_pct(part)} | {_pct(part, 'math_verify')} |")
    accepted_wrong = [r for r in rows if r["r1lab"] == 1 and r["expected"] == 0]
    refused_right = [r for r in rows if r["r1lab"] == 0 and r["expected"] == 1]
    print(f"\naccepted-wrong (r1lab correct, suite expects 0): {len(accepted_wrong)}; "
          f"refused-right (r1lab not correct, suite expects 1): {len(refused_right)}")
    kinds = Counter(disagreement_kind(r, r in explicit_rows) for r in rows if r["r1lab"] != r["expected"])
    print("\n| disagreement | items |\n|---|---:|")
    for kind, n in kinds.most_common():
        print(f"| {kind} | {n} |")
    shown = rows if args.show == "all" else [r for r in rows if r["r1lab"] != r["expected"]]
    print(f"\n{'every item' if args.show == 'all' else 'disagreements'} ({len(shown)}):")
    for r in shown:
        kind = "explicit" if r in explicit_rows else f"gold {r['gold_explicit']}, pred {r['pred_explicit']}"
        flag = "" if r["r1lab"] == r["expected"] else ("ACCEPTED-WRONG " if r["r1lab"] else "REFUSED ")
        setting = f", {', '.join(r['non_default'])}{' (setting-specific)' if r['setting_specific'] else ''}" if r["non_default"] else ""
        print(f"- {flag}{r['id']} [{kind}{setting}] "
              f"expected {r['expected']}, math_verify {r['math_verify']}, r1lab {r['status']}\n"
              f"    gold {_short(r['gold'])!r}\n    pred {_short(r['pred'])!r}\n    {_short(r['reason'], 160)}")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

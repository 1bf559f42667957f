"""Precision and recall of dedup and decontamination on planted cases, by kind of edit.

Dedup: real, distinct-looking problems (MATH train, GSM8K train) are the bases; planted variants of
each kind follow them. A dropped variant is a true positive; a dropped base is a false positive (it
may be a real near-duplicate inside MATH/GSM8K - examples are printed so they can be judged).

Decontamination: the real benchmark files are the references; the training corpus is real training
problems (presumed clean) plus edited copies of benchmark items. A flagged copy is a true positive;
a flagged training problem counts as a false positive, with examples printed (some are genuine
overlaps between MATH train and MATH500, which no label here records). benchmarks/decontam_quality.py
measures decontamination per kind over several seeds and all training rows.

    python benchmarks/data_quality.py [--data /work/shared/data] [--embedding-model DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from r1lab.data.decontam import BenchmarkIndex
from r1lab.data.dedup import DedupSettings, dedup
from r1lab.records import Problem

SYNONYMS = [("What is", "Find"), ("Find", "Determine"), ("How many", "What is the number of"), ("Compute", "Calculate"),
            ("Let ", "Suppose "), ("If ", "Given that "), (" has ", " owns "), (" buys ", " purchases "), (" each ", " every "),
            ("the value of", "the value for"), (" total ", " overall "), ("Evaluate", "Work out")]
PREFIXES = ["Solve the following problem. ", "Question: ", "Please answer: "]
NUM = re.compile(r"\d+")


def whitespace(t: str, rng: random.Random) -> str:
    return "  ".join(t.split(" ")).replace(". ", ".\n\n") + "  \n"


def latex(t: str, rng: random.Random) -> str:
    t = t.replace("\\frac", "\\dfrac").replace("(", "\\left(").replace(")", "\\right)").replace("=", "\\,=\\,")
    return re.sub(r"\^(\w)", r"^{\1}", t) if "$" in t else "$" + t + "$"


def numbers(t: str, rng: random.Random) -> str:
    """Change the first two numbers (the 'same problem, new numbers' rewrite)."""
    count = [0]

    def bump(m: re.Match) -> str:
        count[0] += 1
        return str(int(m.group()) + rng.randint(1, 9)) if count[0] <= 2 else m.group()

    return NUM.sub(bump, t)


def paraphrase(t: str, rng: random.Random) -> str:
    for a, b in SYNONYMS:
        t = t.replace(a, b, 1)
    return rng.choice(PREFIXES) + t


def case_punct(t: str, rng: random.Random) -> str:
    return t.lower().replace(",", "").replace("?", " ?")


def embedded(t: str, rng: random.Random) -> str:
    return "Here is a practice problem from an old contest. " + t + " Explain each step and put the final answer in a box."


def first_half(t: str, rng: random.Random) -> str:
    words = t.split()
    return " ".join(words[: max(1, len(words) // 2)])


DEDUP_KINDS = {"whitespace": whitespace, "latex": latex, "numbers": numbers, "paraphrase": paraphrase, "case_punct": case_punct}
DECONTAM_KINDS = {"verbatim": lambda t, r: t, **DEDUP_KINDS, "embedded": embedded, "first_half": first_half}


def load(path: Path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return rows[:n] if n else rows


def pr(tp: int, fp: int, fn: int) -> str:
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    return f"precision {p:.3f}  recall {r:.3f}  (tp {tp}, fp {fp}, fn {fn})"


def bench_dedup(data: Path, per_kind: int, seed: int, configs: dict[str, dict]) -> None:
    rng = random.Random(seed)
    bases = [r["problem"] for r in load(data / "math_train.jsonl")[::3]] + [r["problem"] for r in load(data / "gsm8k_train.jsonl")[::7]]
    rows = [Problem(f"base-{i}", t, "0") for i, t in enumerate(bases)]
    for kind, fn in DEDUP_KINDS.items():
        for j, i in enumerate(rng.sample(range(len(bases)), per_kind)):
            rows.append(Problem(f"{kind}-{j}-of-base-{i}", fn(bases[i], rng), "0"))
    rng.shuffle(rows[len(bases):])
    print(f"\n## dedup: {len(bases)} real bases (MATH train, GSM8K train), {per_kind} planted variants per kind\n")
    for name, cfg in configs.items():
        drops: list[tuple[str, str, str]] = []
        list(dedup(rows, DedupSettings(**cfg), lambda *a: drops.append(a)))
        dropped = {d[0]: d[2] for d in drops}
        fp = [d for d in drops if d[0].startswith("base-")]
        wrong = [rid for rid, kept in dropped.items() if not rid.startswith("base-") and kept != rid.split("-of-")[1]]
        tp = len(dropped) - len(fp)
        print(f"### {name}: {json.dumps(cfg)}")
        print(f"overall  {pr(tp, len(fp), len(DEDUP_KINDS) * per_kind - tp)}; variants absorbed by a row other than their base: {len(wrong)}")
        for kind in DEDUP_KINDS:
            got = sum(1 for rid in dropped if rid.startswith(kind + "-"))
            print(f"  {kind:<11} recall {got / per_kind:.3f} ({got}/{per_kind})")
        for rid, _, kept in fp[:3]:
            a, b = next(p for p in rows if p.id == rid).prompt, next(p for p in rows if p.id == kept).prompt
            print(f"  false positive {rid} ~ {kept}:\n    {a[:110]!r}\n    {b[:110]!r}")
        print()


def bench_decontam(data: Path, per_kind: int, seed: int, ngrams: list[int]) -> None:
    rng = random.Random(seed)
    files = [data / f"{n}.jsonl" for n in ("math500", "aime24", "aime25", "amc23", "gsm8k_test")]
    bench = [(str(f), r["problem"]) for f in files for r in load(f)]
    clean = [r["problem"] for r in load(data / "math_train.jsonl")[1::3]] + [r["problem"] for r in load(data / "gsm8k_train.jsonl")[1::7]]
    planted = [(kind, fn(bench[i][1], rng)) for kind, fn in DECONTAM_KINDS.items() for i in rng.sample(range(len(bench)), per_kind)]
    print(f"## decontamination: references {', '.join(f.name for f in files)} ({len(bench)} items); "
          f"{len(clean)} presumed-clean training problems; {per_kind} planted copies per kind\n")
    for n in ngrams:
        index = BenchmarkIndex.from_files([str(f) for f in files], n)
        hit_clean = [t for t in clean if index.match("c", t)]
        by_kind = Counter(kind for kind, t in planted if index.match("p", t))
        tp = sum(by_kind.values())
        print(f"### ngram {n} (+ exact; the other settings at their defaults)")
        print(f"overall  {pr(tp, len(hit_clean), len(planted) - tp)}")
        print("  " + "  ".join(f"{k} {by_kind[k] / per_kind:.2f}" for k in DECONTAM_KINDS))
        for t in hit_clean[:2]:
            h = index.match("c", t)[0]
            print(f"  flagged training item ({h.benchmark_id}, n-gram {h.ngram!r}): {t[:100]!r}")
        print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--per-kind", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedding-model", default="", help="local sentence-embedding model dir (e.g. all-MiniLM-L6-v2)")
    args = ap.parse_args()
    data = Path(args.data)
    configs = {
        "default": {},
        "numbers kept": {"mask_numbers": False},
        "threshold 0.8": {"threshold": 0.8},
        "5-gram shingles": {"ngram": 5},
    }
    if args.embedding_model:
        configs["embedding only (cos >= 0.95)"] = {"exact": False, "minhash": False, "embedding_model": args.embedding_model}
    bench_dedup(data, args.per_kind, args.seed, configs)
    bench_decontam(data, args.per_kind // 2, args.seed, [8, 13, 32])


if __name__ == "__main__":
    main()

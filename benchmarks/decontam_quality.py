"""Decontamination precision and recall on real training rows with benchmark items planted, per kind of edit.

References: the five vendored benchmarks (MATH500, GSM8K test, AIME 2024/2025, AMC 2023; 1,919 items).
Training corpus: real GSM8K train and MATH train problems (presumed clean), half of each, plus
benchmark items planted by `r1lab.data.planted` (exact, whitespace and case, LaTeX respelled, wrapped
in instructions; numbers changed, one or all, reported apart). Each seed draws another clean
sample and other planted items; the table gives the mean over seeds (and the worst seed).

`--all-clean` also runs every setting over all training rows (no sample) and counts the clean rows
each one flags, with how many of those are near-copies of the benchmark item they hit (the same
problem with a word or number changed: real overlap between the splits that no label records).

    python benchmarks/decontam_quality.py --data /work/shared/data [--clean 2000] [--per-kind 100] [--seeds 5] [--all-clean]
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
from pathlib import Path
from statistics import mean

from r1lab.benchmarks import data_path, known_benchmarks
from r1lab.data.decontam import BenchmarkIndex, DecontamSettings, decontam_tokens
from r1lab.data.planted import KINDS, NUMBER_KINDS, build_corpus, score

SETTINGS = {
    "default": {},
    "any shared 8-gram (one n-gram enough)": {"min_coverage": 1e-9, "common_items": 0},
    "min_coverage 0.5": {"min_coverage": 0.5},
    "13-grams": {"ngram": 13},
    "5-grams": {"ngram": 5},
    "mask_numbers": {"mask_numbers": True},
}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def index_for(files: list[str], cfg: dict) -> tuple[BenchmarkIndex, DecontamSettings]:
    s = DecontamSettings(benchmarks=files, **cfg)
    return BenchmarkIndex.from_settings(s), s


def flagger(index: BenchmarkIndex, s: DecontamSettings):
    return lambda r: index.match(r.id, r.text, s.exact, s.min_overlap, s.min_coverage)


def near_copy(a: str, b: str) -> bool:
    """The row and the item are one problem with small changes (token edit similarity >= 0.7)."""
    return difflib.SequenceMatcher(None, decontam_tokens(a), decontam_tokens(b), autojunk=False).ratio() >= 0.7


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data", help="directory with gsm8k_train.jsonl and math_train.jsonl")
    ap.add_argument("--clean", type=int, default=2000, help="clean training rows per corpus (half GSM8K, half MATH)")
    ap.add_argument("--per-kind", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--all-clean", action="store_true", help="also count flagged rows over all training rows")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    data = Path(args.data)
    files = [str(data_path(name)) for name in known_benchmarks()]
    bench_rows = [r for f in files for r in load(Path(f))]
    bench = [(r["id"], r["problem"]) for r in bench_rows]
    text_of = dict(bench)
    gsm = [(r["id"], r["problem"]) for r in load(data / "gsm8k_train.jsonl")]
    math = [(r["id"], r["problem"]) for r in load(data / "math_train.jsonl")]
    main_kinds = [k for k in KINDS if k not in NUMBER_KINDS]
    print(f"references: {len(bench)} items ({', '.join(Path(f).stem for f in files)}); training pool: "
          f"{len(gsm)} GSM8K train + {len(math)} MATH train; corpus: {args.clean} clean rows + {args.per_kind} "
          f"planted per kind; {args.seeds} seeds\n")
    out: dict = {"clean": args.clean, "per_kind": args.per_kind, "seeds": args.seeds, "settings": {}}
    head = " | ".join(KINDS)
    print(f"| setting | precision | recall | clean rows flagged | {head} |")
    print("|---|---:|---:|---:|" + "---:|" * len(KINDS))
    for name, cfg in SETTINGS.items():
        index, s = index_for(files, cfg)
        runs = []
        for seed in range(args.seeds):
            rng = random.Random(seed)
            clean = rng.sample(gsm, args.clean // 2) + rng.sample(math, args.clean - args.clean // 2)
            rows = build_corpus(clean, bench, args.per_kind, seed=seed)
            runs.append(score(rows, flagger(index, s)))
        p, r = [x["precision"] for x in runs], [x["recall"] for x in runs]
        fp = [x["false_positives"] for x in runs]
        recall = {k: mean(x["per_kind"][k]["recall"] for x in runs) for k in KINDS}
        print(f"| {name} | {mean(p):.3f} (min {min(p):.3f}) | {mean(r):.3f} (min {min(r):.3f}) | "
              f"{mean(fp):.1f} of {args.clean} | " + " | ".join(f"{recall[k]:.2f}" for k in KINDS) + " |")
        out["settings"][name] = {"config": cfg, "precision": p, "recall": r, "false_positives": fp, "recall_per_kind": recall}
    print(f"\nprecision and recall count the kinds {', '.join(main_kinds)}; {', '.join(NUMBER_KINDS)} are reported apart.")

    if args.all_clean:
        everything = gsm + math
        print(f"\n## all {len(everything)} training rows (no planted items)\n")
        print("| setting | rows flagged | of which near-copies of the item hit | GSM8K | MATH |")
        print("|---|---:|---:|---:|---:|")
        for name, cfg in SETTINGS.items():
            index, s = index_for(files, cfg)
            flagged = []
            for rid, text in everything:
                hits = index.match(rid, text, s.exact, s.min_overlap, s.min_coverage)
                if hits:
                    flagged.append((rid, text, hits[0]))
            near = sum(near_copy(t, text_of[h.benchmark_id]) for _, t, h in flagged)
            gsm_n = sum(rid.startswith("gsm8k") for rid, _, _ in flagged)
            print(f"| {name} | {len(flagged)} ({len(flagged) / len(everything):.2%}) | {near} | {gsm_n} | {len(flagged) - gsm_n} |")
            out["settings"][name]["all_clean"] = {"flagged": len(flagged), "near_copies": near, "ids": [f[0] for f in flagged]}
            if name == "default":
                examples = flagged[:: max(1, len(flagged) // 6)][:6]
        print("\nexamples flagged by the default:")
        for rid, text, h in examples:
            print(f"- {rid} (coverage {h.coverage:.2f} of {h.benchmark_id}): {text[:120]!r}\n  item: {text_of[h.benchmark_id][:120]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

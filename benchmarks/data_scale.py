"""Throughput and peak memory of `r1lab data` on a large generated corpus.

Generates N templated word problems (random names, objects, places and numbers, so that instances
of one template are similar but not near-duplicates), plants exact/whitespace duplicates and
verbatim benchmark items, writes them as JSONL, then runs import + exact + MinHash dedup +
decontamination as one streaming pipeline and reports rows/s per step and peak RSS.

    python benchmarks/data_scale.py [--n 200000] [--benchmarks a.jsonl b.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import deque
from pathlib import Path
from typing import Iterator

from r1lab.data.pipeline import Pipeline, build_step, run_pipeline, summary_table
from r1lab.records import write_jsonl

DEFAULT_BENCH = [f"/work/shared/data/{n}.jsonl" for n in ("math500", "aime24", "aime25", "amc23", "gsm8k_test")]
NAMES = "Ava Ben Chloe Diego Elena Farid Grace Hiro Ines Jamal Kira Liam Mei Noah Olga Priya Quinn Rosa Sami Tara Umar Vera Wen Xavi Yara Zoe".split()
THINGS = "apples pencils marbles stickers books coins cards shells beads stamps cookies bottles tickets flowers kites".split()
PLACES = "market school park library bakery museum garage harbour station garden".split()
TEMPLATES = [
    "{a} has {x} {t} and buys {y} more at the {p}. Then {a} gives {z} {t} to {b}. How many {t} does {a} have now?",
    "At the {p}, {a} sorts {x} {t} into boxes of {y}. How many full boxes are there, and how many {t} are left over?",
    "{a} reads {x} pages on Monday and {y} pages on Tuesday at the {p}. If the book has {z} pages, how many are left?",
    "A {p} sells {t} for {x} dollars each. {a} buys {y} of them and pays with a {z} dollar bill. What is the change?",
    "{a} and {b} share {x} {t} in the ratio {y} to {z}. How many {t} does {b} receive?",
    "The {p} is open {x} hours a day for {y} days. {a} works there {z} hours a week. What fraction of the opening hours is that?",
    "Find the remainder when {x}^{y} is divided by {z}.",
    "How many positive integers less than {x} are divisible by {y} but not by {z}?",
    "Let $f(x) = {x}x^2 + {y}x - {z}$. Compute $f({y}) - f({z})$.",
    "A rectangle at the {p} has perimeter {x} cm and one side of {y} cm. What is its area in square centimetres?",
    "{a} drives {x} km at {y} km/h and then {z} km at {x} km/h. What is the average speed for the whole trip?",
    "In how many ways can {x} {t} be arranged in a row if {y} particular ones must stay together?",
]


def generate(n: int, bench_items: list[str], seed: int = 0) -> Iterator[dict]:
    """Rows one at a time (only the last 1000 are remembered, for the planted copies), so the
    peak RSS reported below is the pipeline's, not the generator's."""
    rng = random.Random(seed)
    recent: deque[str] = deque(maxlen=1000)
    for i in range(n):
        if bench_items and i % 2000 == 1999:  # 0.05% verbatim benchmark items
            text = rng.choice(bench_items)
        elif i % 50 == 49 and recent:  # 2% whitespace/case copies of a recent row
            text = "  " + rng.choice(recent).upper().replace(" ", "  ")
        else:
            text = rng.choice(TEMPLATES).format(a=rng.choice(NAMES), b=rng.choice(NAMES), t=rng.choice(THINGS), p=rng.choice(PLACES),
                                                x=rng.randint(2, 999), y=rng.randint(2, 99), z=rng.randint(2, 999))
            recent.append(text)
        yield {"uid": f"g{i}", "question": text, "final": str(rng.randint(0, 999))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--benchmarks", nargs="*", default=[p for p in DEFAULT_BENCH if Path(p).exists()])
    ap.add_argument("--ngram", type=int, default=8)
    ap.add_argument("--mask-numbers", choices=("true", "false"), default="true",
                    help="dedup.mask_numbers; false keeps number-only variants, so more rows reach decontamination")
    args = ap.parse_args()
    bench_items = [json.loads(line)["problem"] for p in args.benchmarks for line in open(p, encoding="utf-8")]
    with tempfile.TemporaryDirectory(prefix="r1lab-scale-") as tmp:
        raw = Path(tmp) / "raw.jsonl"
        write_jsonl(raw, generate(args.n, bench_items))
        print(f"corpus: {args.n} rows, {raw.stat().st_size / 2**20:.1f} MiB JSONL; benchmarks: {len(args.benchmarks)} files, {len(bench_items)} items")
        steps = [build_step("import", {"paths": [str(raw)], "mapping": {"uid": "id", "question": "prompt", "final": "answer"}}, "import"),
                 build_step("dedup", {"mask_numbers": args.mask_numbers == "true"}, "dedup")]
        if args.benchmarks:
            steps.append(build_step("decontaminate", {"benchmarks": args.benchmarks, "ngram": args.ngram}, "decontaminate"))
        manifest = run_pipeline(Pipeline(output=str(Path(tmp) / "out.jsonl"), steps=steps))
    print(summary_table(manifest))
    print(f"total {manifest['seconds']:.1f}s for {args.n} rows ({args.n / manifest['seconds']:.0f} rows/s end to end), "
          f"peak RSS {manifest['peak_rss_mb']:.0f} MB (whole process)")
    print(f"settings: dedup {json.dumps({k: v for k, v in manifest['steps'][1]['settings'].items() if k in ('threshold', 'num_perm', 'ngram', 'mask_numbers')})}, "
          f"decontaminate ngram={args.ngram}")


if __name__ == "__main__":
    main()

"""Judge the scoring pipeline on the benchmarks' own reference solutions.

Each reference solution is fed through `verify_batch` as if a model had written it. A correct
pipeline (answer extraction + math-verify comparison against the gold answer) must score every
one of them correct; any miss is a bug in extraction or comparison, or in the data, and is listed
with its reason. As a control, each solution is also paired with another problem's gold answer
(a fixed derangement): that must score near 0, or the scorer is accepting anything.

GSM8K references are rebuilt in their original form, `solution + "\\n#### " + answer`, so the
`#### N` extraction rule is what is tested there. AIME 2025 and AMC 2023 ship no solutions.

    .venv/bin/python benchmarks/score_references.py [--benchmarks math500,gsm8k,aime24] [--workers 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from r1lab.benchmarks import get_benchmark, load_benchmark
from r1lab.records import Problem, Verdict
from r1lab.verify import verify_batch

WITH_SOLUTIONS = ("math500", "gsm8k", "aime24")
# references that state no final answer in any form a scorer should accept; listed, never hidden.
# A "last number in the text" rule would pass them, and would also credit any response that merely
# mentions the right number, so the extractor deliberately stays strict.
KNOWN_DATA_MISSES: dict[str, str] = {}  # aime24-60 was one until \framebox counted as a box


def reference_text(p: Problem) -> str:
    """The reference solution as a model output would give it."""
    solution = p.metadata.get("solution") or ""
    if p.source == "gsm8k":
        return f"{solution}\n#### {p.answer}"
    return solution


def shuffled(problems: list[Problem], seed: int = 0) -> list[Problem]:
    """A derangement: every problem's slot gets a different problem (with a different gold answer
    where possible), so the pairing tests rejection, not luck."""
    rng = random.Random(seed)
    order = list(range(len(problems)))
    rng.shuffle(order)
    shift = order[1:] + order[:1]  # a cyclic shift of a random order never maps i to i
    mapping = dict(zip(order, shift))
    return [problems[mapping[i]] for i in range(len(problems))]


def score(name: str, workers: int, timeout: float) -> tuple[dict[str, float], list[tuple[Problem, Verdict]]]:
    problems = [p for p in load_benchmark(name) if p.metadata.get("solution")]
    texts = [reference_text(p) for p in problems]
    verdicts = verify_batch(problems, texts, timeout=timeout, workers=workers)
    others = shuffled(problems)
    control = verify_batch(others, texts, timeout=timeout, workers=workers)
    # a shuffled pairing whose gold happens to equal the true answer is not a false positive
    fair = [(o, v) for o, p, v in zip(others, problems, control) if o.answer.strip() != p.answer.strip()]
    row = {
        "problems": len(problems),
        "correct": sum(v.correct for v in verdicts),
        "accuracy": sum(v.correct for v in verdicts) / max(len(problems), 1),
        "shuffled_pairs": len(fair),
        "shuffled_accuracy": sum(v.correct for _, v in fair) / max(len(fair), 1),
    }
    misses = [(p, v) for p, v in zip(problems, verdicts) if not v.correct]
    return row, misses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default=",".join(WITH_SOLUTIONS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    names = [get_benchmark(n.strip()).name for n in args.benchmarks.split(",") if n.strip()]
    t0 = time.time()
    print("| benchmark | references | correct | accuracy | shuffled pairs | shuffled accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    all_misses: list[tuple[str, Problem, Verdict]] = []
    for name in names:
        row, misses = score(name, args.workers, args.timeout)
        print(f"| {name} | {row['problems']} | {row['correct']} | {100 * row['accuracy']:.1f}% | "
              f"{row['shuffled_pairs']} | {100 * row['shuffled_accuracy']:.1f}% |", flush=True)
        all_misses += [(name, p, v) for p, v in misses]
    unexplained = [m for m in all_misses if m[1].id not in KNOWN_DATA_MISSES]
    print(f"\n{len(all_misses)} misses, {len(unexplained)} not explained by the data ({time.time() - t0:.0f}s)")
    for name, p, v in all_misses:
        note = f" [known data issue: {KNOWN_DATA_MISSES[p.id]}]" if p.id in KNOWN_DATA_MISSES else ""
        print(f"- {name} {p.id}: {v.status}: {v.reason} (extracted {v.extracted!r}, gold {p.answer!r}){note}")
    return 0 if not unexplained else 1


if __name__ == "__main__":
    sys.exit(main())

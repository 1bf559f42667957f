"""RLVR beyond math on the tiny model: each family's tiny recipe (SFT on teacher traces, then GRPO),
two seeds, reward and held-out score by step.

    OMP_NUM_THREADS=1 flock /tmp/r1lab-heavy.lock python benchmarks/beyond_math.py [--families code_repair ...]

Writes benchmarks/results/beyond_math/<family>.png (both seeds: the training reward by step, and
the held-out avg@n - the family's verifier - after SFT (step 0) and every train.eval_every steps),
results.json, and prints the markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"code_repair": "repair_tests", "sorting": "sort_speed", "poem": "poem_syllables", "translation": "chrf"}


def run(family: str, seed: int, out: Path) -> dict:
    name = f"{family}-s{seed}"
    cmd = [sys.executable, "-m", "r1lab", "pipeline", str(ROOT / "recipes" / "tiny" / f"{family}.yaml"),
           f"out_dir={out}", f"name={name}", f"seed={seed}", f"data.seed={seed}", "--quiet"]
    t = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    run_dir = out / name
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "01-rl" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sft_avg = next(v for k, v in summary["stages"]["00-sft"].items() if k.startswith("avg@"))
    rl_avg = next(v for k, v in summary["stages"]["01-rl"].items() if k.startswith("avg@"))
    held = [(0, sft_avg)] + [(r["step"], r["eval/avg"]) for r in rows if "eval/avg" in r] + [(rows[-1]["step"], rl_avg)]
    return {"seed": seed, "seconds": round(time.time() - t, 1), "sft_avg": sft_avg, "rl_avg": rl_avg, "held_out": held,
            "reward": [(r["step"], r["reward/total"]) for r in rows],
            "term": [(r["step"], r.get(f"reward/{FAMILIES[family]}")) for r in rows]}


def plot(family: str, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in runs:
        axes[0].plot(*zip(*r["reward"]), label=f"seed {r['seed']}")
        axes[1].plot(*zip(*r["held_out"]), marker="o", label=f"seed {r['seed']}")
    axes[0].set(title=f"{family}: training reward (total)", xlabel="GRPO step")
    axes[1].set(title=f"{family}: held-out avg@n (verifier)", xlabel="GRPO step (0 = after SFT)")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--out", default="/tmp/r1lab-beyond-math")
    args = ap.parse_args()
    results_dir = ROOT / "benchmarks" / "results" / "beyond_math"
    results_dir.mkdir(parents=True, exist_ok=True)
    results_file = results_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for family in args.families:
        runs = [run(family, seed, Path(args.out)) for seed in args.seeds]
        plot(family, runs, results_dir / f"{family}.png")
        results[family] = runs
        results_file.write_text(json.dumps(results, indent=1) + "\n")
    print("| family | paid term | seed | reward, first 5 steps | reward, last 5 steps | term, first 5 | term, last 5 "
          "| held-out after SFT | held-out after GRPO | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family, runs in results.items():
        for r in runs:
            rew, term = [v for _, v in r["reward"]], [v or 0.0 for _, v in r["term"]]
            print(f"| {family} | {FAMILIES[family]} | {r['seed']} | {mean(rew[:5]):.3f} | {mean(rew[-5:]):.3f} "
                  f"| {mean(term[:5]):.3f} | {mean(term[-5:]):.3f} | {100 * r['sft_avg']:.1f} | {100 * r['rl_avg']:.1f} "
                  f"| {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()

"""What continued pre-training on math text changes downstream, on the tiny model: the CPT -> SFT ->
GRPO pipeline (recipes/tiny/cpt_pipeline.yaml) against the same SFT and GRPO without the CPT stage,
from the same initial weights and the same tokenizer, for each seed.

    OMP_NUM_THREADS=1 /work/bin/heavy python benchmarks/cpt_downstream.py [--seeds 0 1]

The seed changes the model's initial weights, the shuffling and the sampling; the problems (data.seed)
and the corpus stay fixed, so the corpus's decontamination against the held-out problems holds.
Writes benchmarks/results/cpt_downstream/{results.json,cpt_downstream.png} and prints the table for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "cpt_pipeline.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "cpt_downstream"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def avg(summary: dict) -> float:
    return next(v for k, v in summary.items() if k.startswith("avg@"))


def run(arm: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """One pipeline: `cpt` (the recipe as it is) or `none` (its SFT and RL stages only), with the
    same `overrides` (shared settings) in both."""
    recipe = RECIPE
    if arm == "none":
        recipe = out / "no_cpt.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(f"base: {RECIPE}\nstages: [sft: {{}}, rl: {{}}]\n")
    name = f"{arm}-s{seed}"
    cmd = [sys.executable, "-m", "r1lab", "pipeline", str(recipe), f"out_dir={out}", f"name={name}", f"seed={seed}",
           *overrides, "--quiet"]
    t = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    run_dir = out / name
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = summary["stages"]
    key = {s.split("-", 1)[1]: s for s in stages}
    rl_rows = read_jsonl(run_dir / key["rl"] / "metrics.jsonl")
    result = {"arm": arm, "seed": seed, "seconds": round(time.time() - t, 1),
              "stage_seconds": summary["seconds"],
              "sft_avg": avg(stages[key["sft"]]), "rl_avg": avg(stages[key["rl"]]),
              "rl_heldout": [(0, avg(stages[key["sft"]]))] + [(r["step"], r["eval/avg"]) for r in rl_rows if "eval/avg" in r],
              "rl_reward": [(r["step"], r["reward/total"]) for r in rl_rows]}
    if "cpt" in key:
        cpt_rows = read_jsonl(run_dir / key["cpt"] / "cpt_metrics.jsonl")
        ppl = [(r["step"], r["cpt/heldout_ppl"]) for r in cpt_rows if "cpt/heldout_ppl" in r]
        result.update({"cpt_avg": avg(stages[key["cpt"]]), "cpt_heldout_ppl": ppl,
                       "cpt_loss": [(r["step"], r["cpt/loss"]) for r in cpt_rows if "cpt/loss" in r],
                       "cpt_tokens_per_s": cpt_rows[-1]["cpt/tokens_per_s"],
                       "cpt_corpus": json.loads((run_dir / key["cpt"] / "cpt_corpus.json").read_text())})
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colors = {0: "tab:blue", 1: "tab:orange", 2: "tab:green", 3: "tab:red"}
    for r in results:
        c = colors.get(r["seed"], None)
        if r["arm"] == "cpt":
            axes[0].plot(*zip(*r["cpt_loss"]), color=c, alpha=0.35, linewidth=1)
            axes[0].plot(*zip(*[(s, math.log(p)) for s, p in r["cpt_heldout_ppl"]]), color=c, marker="o",
                         label=f"seed {r['seed']}: held-out")
        style = "-" if r["arm"] == "cpt" else "--"
        heldout = r["rl_heldout"] + [(r["rl_reward"][-1][0], r["rl_avg"])]  # the stage's own final evaluation
        axes[2].plot(*zip(*[(step, 100 * v) for step, v in heldout]), style, color=c, marker="o" if r["arm"] == "cpt" else "s",
                     label=f"seed {r['seed']}, {'with' if r['arm'] == 'cpt' else 'no'} CPT")
    axes[0].set(title="CPT: train loss (faint) and held-out NLL", xlabel="CPT step", ylabel="nats / token")
    seeds = sorted({r["seed"] for r in results})
    width = 0.2
    for i, (arm, stage) in enumerate([("none", "sft_avg"), ("cpt", "sft_avg"), ("none", "rl_avg"), ("cpt", "rl_avg")]):
        vals = [100 * next(r[stage] for r in results if r["arm"] == arm and r["seed"] == s) for s in seeds]
        xs = [j + (i - 1.5) * width for j in range(len(seeds))]
        bars = axes[1].bar(xs, vals, width, label=f"{'after GRPO' if stage == 'rl_avg' else 'after SFT'}, "
                           f"{'with' if arm == 'cpt' else 'no'} CPT", hatch="//" if arm == "cpt" else None,
                           color="tab:gray" if stage == "sft_avg" else "tab:purple", alpha=0.6 if arm == "none" else 0.9)
        for b, v in zip(bars, vals):
            axes[1].text(b.get_x() + b.get_width() / 2, v + 0.5, f"{v:.1f}", ha="center", fontsize=7)
    axes[1].set_xticks(range(len(seeds)))
    axes[1].set_xticklabels([f"seed {s}" for s in seeds])
    axes[1].set(title="held-out avg@2 (%), 200 problems", ylabel="%")
    axes[1].set_ylim(0, axes[1].get_ylim()[1] * 1.6)  # room for the labels and the legend
    axes[2].set(title="held-out avg@2 (%) during GRPO (0 = after SFT)", xlabel="GRPO step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=2 if ax is axes[1] else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: list[dict]) -> str:
    lines = ["| seed | CPT | held-out after CPT | after SFT | after GRPO | CPT held-out ppl (start -> end) | seconds |",
             "|---:|---|---:|---:|---:|---|---:|"]
    for r in sorted(results, key=lambda r: (r["seed"], r["arm"] != "none")):
        ppl = (f"{r['cpt_heldout_ppl'][0][1]:.2f} -> {r['cpt_heldout_ppl'][-1][1]:.2f}" if r["arm"] == "cpt" else "-")
        after_cpt = f"{100 * r['cpt_avg']:.1f}" if r["arm"] == "cpt" else "-"
        lines.append(f"| {r['seed']} | {'yes' if r['arm'] == 'cpt' else 'no'} | {after_cpt} | {100 * r['sft_avg']:.1f} | "
                     f"{100 * r['rl_avg']:.1f} | {ppl} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--out", default="/tmp/r1lab-cpt-downstream")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="shared settings for both arms, e.g. sft.epochs=5 (recorded with the results)")
    ap.add_argument("--tag", default="", help="results go to results[-TAG].json and cpt_downstream[-TAG].png")
    ap.add_argument("--report", action="store_true", help="plot and print from the results file, run nothing")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    suffix = f"-{args.tag}" if args.tag else ""
    results_file, figure = RESULTS / f"results{suffix}.json", RESULTS / f"cpt_downstream{suffix}.png"
    if args.report:
        results = json.loads(results_file.read_text())
        plot(results, figure)
        print(table(results))
        return
    results = []
    for seed in args.seeds:
        for arm in ("none", "cpt"):
            results.append({**run(arm, seed, out / (args.tag or "default"), args.set), "overrides": args.set})
            results_file.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, figure)
    print(table(results))


if __name__ == "__main__":
    main()

"""Multimodal reasoning on a CPU: `recipes/tiny/vlm.yaml` (a tiny Qwen2-VL built offline, SFT on
verified teacher traces of the visual families, then GRPO with the pictures in the prompt), per seed,
with a control that tells reading the picture from guessing: the same held-out questions over a
blank white picture.

    /work/bin/heavy python benchmarks/vlm_seeds.py run --seed 0      # one seed (run seeds side by side)
    python benchmarks/vlm_seeds.py report --seeds 0 1                # figure + table from the saved runs

Writes benchmarks/results/vlm/<tag>seed<N>.json per seed, and `report` draws benchmarks/results/vlm/<tag>vlm.png
(training reward by GRPO step; held-out avg@4 after SFT, at every eval, after GRPO; the blank-picture
control after SFT and after GRPO; per family) and prints the markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vlm"
FAMILIES = ("count_shapes", "bar_value", "digit_sum")


def r1lab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "r1lab", *args], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def per_family(eval_jsonl: Path) -> dict[str, float]:
    """avg@n (%) per family and overall, from an eval's per-problem JSONL."""
    scores: dict[str, list[float]] = defaultdict(list)
    for line in eval_jsonl.read_text().splitlines():
        row = json.loads(line)
        scores[row["id"].rsplit("-", 1)[0]].append(row["avg"])
        scores["all"].append(row["avg"])
    return {k: round(100 * sum(v) / len(v), 1) for k, v in scores.items()}


def blank_copy(src: Path, dst: Path) -> None:
    """The held-out problems with every picture replaced by a white one of the same size."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "src"))
    from r1lab.images import decode_image, png_bytes, to_data_url

    rows = []
    for line in src.read_text().splitlines():
        row = json.loads(line)
        row["images"] = [to_data_url(png_bytes(Image.new("RGB", decode_image(u).size, (255, 255, 255)))) for u in row["images"]]
        rows.append(json.dumps(row))
    dst.write_text("\n".join(rows) + "\n")


def run(seed: int, out: Path, tag: str = "") -> None:
    name = f"vlm-s{seed}"
    run_dir = out / name
    t = time.time()
    if not (run_dir / "summary.json").exists():  # a finished pipeline is kept: only the control runs again
        r1lab("pipeline", str(ROOT / "recipes" / "tiny" / "vlm.yaml"), f"out_dir={out}", f"name={name}", f"seed={seed}",
              f"data.seed={seed}", "--quiet")
        (run_dir / "pipeline_seconds.txt").write_text(f"{time.time() - t:.1f}\n")
    seconds = float((run_dir / "pipeline_seconds.txt").read_text()) if (run_dir / "pipeline_seconds.txt").exists() else None
    blank = run_dir / "held_out_blank.jsonl"
    blank_copy(run_dir / "prepare" / "data" / "eval.jsonl", blank)
    control = {}
    for stage, ckpt in (("sft", run_dir / "00-sft" / "checkpoints" / "sft"), ("rl", run_dir / "01-rl" / "checkpoints" / "rl")):
        # the recipe's eval settings (a pipeline recipe is not an eval config: its settings are given here)
        r1lab("eval", str(ckpt), "--data", str(blank), "--n", "4", "--out", str(run_dir / f"blank-{stage}"), "--quiet",
              f"seed={seed}", "eval.temperature=1.0", "sampling.max_new_tokens=72", "rollout.engine=hf")
        control[stage] = per_family(run_dir / f"blank-{stage}" / "eval" / "results.jsonl")
    rows = [json.loads(line) for line in (run_dir / "01-rl" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sft, rl = (per_family(next((run_dir / d / "eval").glob("*.jsonl"))) for d in ("00-sft", "01-rl"))
    held = [(0, sft["all"])] + [(r["step"], round(100 * r["eval/avg"], 1)) for r in rows if "eval/avg" in r]
    held.append((rows[-1]["step"], rl["all"]))
    result = {"seed": seed, "seconds": round(seconds, 1), "held_out": held, "sft": sft, "rl": rl, "blank": control,
              "reward": [(r["step"], r["reward/total"]) for r in rows],
              "accuracy": [(r["step"], r.get("reward/accuracy")) for r in rows]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}seed{seed}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("seed", "seconds", "sft", "rl", "blank")}))


def report(seeds: list[int], tag: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads((RESULTS / f"{tag}seed{s}.json").read_text()) for s in seeds]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for r in runs:
        axes[0].plot(*zip(*r["accuracy"]), label=f"seed {r['seed']}", alpha=0.8)
        line, = axes[1].plot(*zip(*r["held_out"]), marker="o", label=f"seed {r['seed']}: pictures")
        last = r["held_out"][-1][0]
        axes[1].plot([0, last], [r["blank"]["sft"]["all"], r["blank"]["rl"]["all"]], ls="--", marker="x",
                     color=line.get_color(), label=f"seed {r['seed']}: blank pictures")
    width = 0.8 / (2 * len(runs))
    for i, r in enumerate(runs):
        for j, stage in enumerate(("sft", "rl")):
            x = [k + (2 * i + j) * width for k in range(len(FAMILIES))]
            axes[2].bar(x, [r[stage][f] for f in FAMILIES], width, label=f"seed {r['seed']} after {stage.upper()}")
            axes[2].scatter(x, [r["blank"][stage][f] for f in FAMILIES], marker="x", color="black", zorder=3)
    axes[2].set_xticks([k + 0.4 - width / 2 for k in range(len(FAMILIES))], FAMILIES)
    axes[0].set(title="training accuracy per GRPO step", xlabel="GRPO step", ylabel="fraction correct")
    axes[1].set(title="held-out avg@4 (%)", xlabel="GRPO step (0 = after SFT)")
    axes[2].set(title="held-out avg@4 by family (x: blank pictures)", ylabel="%")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{tag}vlm.png", dpi=90)
    plt.close(fig)
    print("| seed | stage | all | count_shapes | bar_value | digit_sum | all, blank pictures | seconds |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        for stage in ("sft", "rl"):
            cells = " | ".join(str(r[stage][f]) for f in ("all", *FAMILIES))
            print(f"| {r['seed']} | {stage} | {cells} | {r['blank'][stage]['all']} | {r['seconds'] if stage == 'rl' else ''} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", default="/tmp/r1lab-vlm")
    p.add_argument("--tag", default="", help="prefix of the result files (e.g. round2_)")
    p = sub.add_parser("report")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--tag", default="")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.seed, Path(args.out), args.tag)
    else:
        report(args.seeds, args.tag)


if __name__ == "__main__":
    main()

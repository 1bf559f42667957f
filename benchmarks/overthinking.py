"""The length rewards r1lab has, compared on the overthinking measures at equal samples, on the
tiny model (two seeds).

    OMP_NUM_THREADS=1 /work/bin/heavy python benchmarks/overthinking.py [--seeds 0,1] [--steps 40]

The setting. Arithmetic at difficulties 1-3 (1-3 operations; level 1 has 243 problems in all). SFT (one checkpoint shared by every
run) on teacher traces of which a planted share `--planted` keeps thinking after the answer: one or
two check lines that undo the last step (`check: 35 / 5 = 7`) - redundant work after the answer is
already written, the overthinking the measures look for. GRPO from it, equal samples in every arm
(steps x 8 prompts x 4 samples), paid by:
  base      accuracy + 0.1 format
  cosine    cosine_length (Yeo et al.; replaces accuracy: it carries correctness) + 0.1 format
  kimi      accuracy + 0.1 format + 0.5 kimi_length (Kimi k1.5, within each group)
  overlong  accuracy + 0.1 format + soft_overlong (DAPO; L_max = max_new_tokens, L_cache = half of it)
Each trained checkpoint, and the SFT one, is evaluated with `r1lab eval --data` on 24 held-out
problems per level (4 samples each, temperature 1) with `eval.decoy=default`: tokens by level,
the share of correct samples that keep thinking after the answer first appears, and the decoy's
token inflation and accuracy change.

Writes benchmarks/results/overthinking/{results.json, overthinking.png} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from r1lab.records import Problem, save_problems  # noqa: E402
from r1lab.tasks import generate_splits, get_task  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "overthinking"
LEVELS = (1, 2, 3)
LEVEL1_CAP = 150  # level 1 holds only 243 distinct problems: its SFT share is capped, its RL share is what is left
MAX_NEW = 96
ARMS = {
    "base": "{accuracy: 1.0, format: 0.1}",
    "cosine": "{cosine_length: 1.0, format: 0.1}",
    "kimi": "{accuracy: 1.0, format: 0.1, kimi_length: 0.5}",
    "overlong": "{accuracy: 1.0, format: 0.1, soft_overlong: 1.0}",
}
SETTINGS = f"reward.settings={{cosine_max_len: {MAX_NEW}, overlong_max: {MAX_NEW}, overlong_cache: {MAX_NEW // 2}}}"
_UNDO = {"+": "-", "-": "+", "*": "/"}


def with_checks(trace: str, rng: random.Random) -> str:
    """The trace with one or two check lines after its last step: `a op b = c` -> `check: c undo b = a`."""
    head, rest = trace.split("</think>", 1)
    last = head.rsplit("\n", 1)[-1].removeprefix("<think>")
    a, op, b, _, c = last.split()
    checks = [f"check: {c} {_UNDO[op]} {b} = {a}"]
    if rng.random() < 0.5:
        checks.append(f"so the result is {c}")
    return head + "\n" + "\n".join(checks) + "</think>" + rest


def build_data(work: Path, sft_per_level: int, rl_per_level: int, held_per_level: int, planted: float) -> dict:
    rng = random.Random(0)
    sft, rl, held = [], [], []
    family = get_task("arithmetic")
    for level in LEVELS:
        n_sft = min(sft_per_level, LEVEL1_CAP) if level == 1 else sft_per_level
        n_rl = min(rl_per_level, 243 - held_per_level - n_sft) if level == 1 else rl_per_level
        train, h = generate_splits(["arithmetic"], n_sft + n_rl, held_per_level, level, seed=level)
        for p in train[:n_sft]:
            trace = family.teacher_trace(p)
            plant = rng.random() < planted
            sft.append(Problem(**{**p.to_dict(), "id": f"L{level}-{p.id}", "metadata": {
                **p.metadata, "response": with_checks(trace, rng) if plant else trace, "planted_check": plant}}))
        rl += [Problem(**{**p.to_dict(), "id": f"L{level}-{p.id}"}) for p in train[n_sft:]]
        held += [Problem(**{**p.to_dict(), "id": f"L{level}-{p.id}"}) for p in h]
    rng.shuffle(sft)
    rng.shuffle(rl)
    work.mkdir(parents=True, exist_ok=True)
    paths = {"sft": work / "sft.jsonl", "rl": work / "rl.jsonl", "held": work / "heldout.jsonl"}
    for key, problems in (("sft", sft), ("rl", rl), ("held", held)):
        save_problems(paths[key], problems)
    return {"paths": paths, "sft": len(sft), "rl": len(rl), "held": len(held),
            "planted": sum(p.metadata["planted_check"] for p in sft)}


def r1lab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "r1lab", *args, "--quiet"], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")})


COMMON = ["eval.n=4", "eval.ks=[1,4]", f"sampling.max_new_tokens={MAX_NEW}", "reward.verify_workers=0"]


def evaluate(ckpt: Path, held: Path, out: Path) -> dict:
    if not (out / "eval" / "decoy.json").is_file():
        r1lab("eval", str(ckpt), "--data", str(held), "--n", "4", "--max-new-tokens", str(MAX_NEW), "--out", str(out),
              "reward.verify_workers=0", "eval.ks=[1,4]", "eval.decoy=default")
    summary = json.loads((out / "eval" / "summary.json").read_text())
    plain = next(v for k, v in summary.items() if k != "_meta")  # {label: {n, avg@n, ...}}
    return {"summary": plain, "decoy": json.loads((out / "eval" / "decoy.json").read_text())}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ("sft", *ARMS) if results["arms"].get(a)]  # a cut-short run has fewer
    colors = {"sft": "tab:gray", "base": "tab:blue", "cosine": "tab:green", "kimi": "tab:orange", "overlong": "tab:red"}
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for arm in arms:
        runs = results["arms"][arm]
        levels = [[r["by_level"].get(str(lv)) for r in runs] for lv in LEVELS]
        axes[0].plot(LEVELS, [mean(v) for v in levels], marker="o", color=colors[arm], label=arm)
    axes[0].set(title="mean tokens by difficulty", xlabel="operations", ylabel="tokens", xticks=LEVELS)
    metrics = [("accuracy", "held-out accuracy (avg@4)"), ("continued", "correct samples thinking past the answer"),
               ("inflation", "decoy: token inflation (x)")]
    for ax, (key, title) in zip(axes[1:], metrics):
        for i, arm in enumerate(arms):
            vals = [r[key] for r in results["arms"][arm]]
            ax.bar(i, mean(vals), color=colors[arm], alpha=0.85)
            ax.plot([i] * len(vals), vals, "k.", ms=5)
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set(title=title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    fig.suptitle("tiny model, arithmetic levels 1-3, SFT with planted check lines, then GRPO at equal samples "
                 "(dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def row_of(seed: int, ev: dict) -> dict:
    s, d = ev["summary"], ev["decoy"]
    acc = next(v for k, v in s.items() if k.startswith("avg@"))
    return {"seed": seed, "accuracy": acc, "len_mean": s["len_mean"],
            "by_level": {str(lv): v for lv, v in ev.get("by_level", {}).items()},
            "len_easiest": s.get("overthink/len_easiest"), "len_hardest": s.get("overthink/len_hardest"),
            "continued": s.get("overthink/continued", float("nan")), "after_first": s.get("overthink/after_first"),
            "measured": s.get("overthink/measured"), "inflation": d["decoy/token_inflation"],
            "decoy_accuracy_change": d["decoy/accuracy_change"]}


def levels_of(out: Path) -> dict:
    from r1lab.eval.overthink import length_by_level

    rows = [json.loads(line) for line in (out / "eval" / "results.jsonl").read_text().splitlines() if line.strip()]
    return length_by_level(rows)


def table(results: dict) -> str:
    lines = ["| arm | seed | accuracy % | tokens L1 | tokens L3 | L3 / L1 | thinking past the answer % (measured) "
             "| after it, share of thinking | decoy inflation | decoy accuracy change (pts) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, runs in results["arms"].items():
        for r in runs:
            f = lambda x, spec, scale=1: "–" if x is None else format(scale * x, spec)  # noqa: E731  (none measured)
            lines.append(f"| {arm} | {r['seed']} | {f(r['accuracy'], '.1f', 100)} | {f(r['len_easiest'], '.1f')} "
                         f"| {f(r['len_hardest'], '.1f')} | {f(r['len_hardest'] / r['len_easiest'], '.2f')} "
                         f"| {f(r['continued'], '.1f', 100)} ({r['measured']}) | {f(r['after_first'], '.3f')} "
                         f"| {f(r['inflation'], '.2f')} | {f(r['decoy_accuracy_change'], '+.1f', 100)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--sft-per-level", type=int, default=900)
    ap.add_argument("--rl-per-level", type=int, default=300)
    ap.add_argument("--held-per-level", type=int, default=24)
    ap.add_argument("--planted", type=float, default=0.4)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--work", default="/tmp/r1lab-overthinking")
    args = ap.parse_args()
    work = Path(args.work)
    t0 = time.time()
    data = build_data(work, args.sft_per_level, args.rl_per_level, args.held_per_level, args.planted)
    print(f"data: {data['sft']} SFT traces ({data['planted']} with planted checks), {data['rl']} RL prompts, "
          f"{data['held']} held out", flush=True)
    p = data["paths"]
    if not (work / "sft" / "checkpoints" / "sft").is_dir():
        r1lab("sft", str(ROOT / "recipes" / "tiny" / "sft.yaml"), f"out_dir={work}", "name=sft",
              f"data.train_path={p['sft']}", f"data.eval_path={p['held']}", f"data.sft_size={data['sft']}",
              f"sft.epochs={args.epochs}", *COMMON)
    ckpt = work / "sft" / "checkpoints" / "sft"
    results = {"settings": vars(args), "data": {k: v for k, v in data.items() if k != "paths"}, "arms": {}}

    def scored(seed: int, out: Path) -> dict:
        ev = evaluate(ckpt if out.name == "eval-sft" else out.parent / "checkpoints" / "rl", p["held"], out)
        ev["by_level"] = levels_of(out)
        return row_of(seed, ev)

    results["arms"]["sft"] = [scored(0, work / "sft" / "eval-sft")]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            name = f"{arm}-s{seed}"
            t = time.time()
            if not (work / name / "checkpoints" / "rl").is_dir():
                r1lab("rl", str(ROOT / "recipes" / "tiny" / "grpo.yaml"), f"out_dir={work}", f"name={name}",
                      f"init_from={ckpt}", f"seed={seed}", f"data.train_path={p['rl']}", f"data.eval_path={p['held']}",
                      "data.sft_size=0", f"train.steps={args.steps}", "train.prompts_per_step=8", "train.group_size=4",
                      f"train.eval_every={args.steps}", "eval.at_start=false", f"reward.terms={ARMS[arm]}", SETTINGS,
                      *COMMON)
            results["arms"].setdefault(arm, []).append({**scored(seed, work / name / "eval-final"),
                                                        "seconds": round(time.time() - t, 1)})
            print(f"{name}: {time.time() - t:.0f} s", flush=True)
            results["seconds"] = round(time.time() - t0, 1)
            save(results)  # after every run: a cut-short benchmark keeps what it measured
    print(table(results))


def save(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, OUT / "overthinking.png")


if __name__ == "__main__":
    main()

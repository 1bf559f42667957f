"""GRPO, Dr. GRPO, DAPO, REINFORCE++ and PPO (ORZ) (or the tiny recipes --methods names, e.g.
grpo,prime) on the demo task at an equal sample budget.

    .venv/bin/python benchmarks/compare_recipes.py [--budget 12800] [--eval-every 3200] [--seed 0]
        [--methods grpo,dr_grpo,dapo,reinforce_pp,orz_ppo] [--sft runs/compare/sft/checkpoints/sft]

A --methods entry may carry overrides of its recipe: `prime:algo.advantage_args.process_coef=0`
(several joined by ';').

One SFT model (the demo's first stage) is trained once; every method starts from it, runs its
tiny recipe (recipes/tiny/<name>.yaml) until it has generated `budget` samples (dynamic sampling
spends samples on dropped groups too), and is scored on the same 200 held-out problems (avg@8,
temperature 1) every `eval_every` samples. With --sft, every method starts from that SFT checkpoint
instead (several RL seeds from one SFT model). Prints a markdown table and writes
runs/compare/compare.png (held-out accuracy and response length against samples seen).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from r1lab.cli import _quiet_libraries  # noqa: E402
from r1lab.config import load_config  # noqa: E402
from r1lab.models import load_model  # noqa: E402
from r1lab.rollout import make_engine  # noqa: E402
from r1lab.runs import RunDir  # noqa: E402
from r1lab.stages import load_policy, prepare_data, run_eval, run_sft  # noqa: E402
from r1lab.train.rl import RLTrainer  # noqa: E402
from r1lab.train.sampler import PromptSampler  # noqa: E402

METHODS = {"GRPO": "grpo", "Dr. GRPO": "dr_grpo", "DAPO": "dapo", "REINFORCE++": "reinforce_pp", "PPO (ORZ)": "orz_ppo",
           "PRIME": "prime"}
DEFAULT = "grpo,dr_grpo,dapo,reinforce_pp,orz_ppo"
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=12800)
    ap.add_argument("--eval-every", type=int, default=3200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--methods", default=DEFAULT, help="tiny recipe names, comma-separated")
    ap.add_argument("--sft", default="", help="start every method from this SFT checkpoint (default: train one)")
    args = ap.parse_args()
    labels = {name: label for label, name in METHODS.items()}
    chosen = {}
    for entry in args.methods.split(","):
        name, _, extra = entry.partition(":")
        chosen[labels.get(name, name) + (f" [{extra}]" if extra else "")] = (name, extra.split(";") if extra else [])
    _quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(ROOT / "recipes/tiny/sft.yaml", [f"seed={args.seed}", f"out_dir={out}", "name=sft"])
    sft_dir = Path(args.sft) if args.sft else out / "sft" / "checkpoints" / "sft"
    run = None if args.sft else RunDir.create(base)
    data = prepare_data(base, run, log=lambda *_: None)
    if args.sft and not (sft_dir / "config.json").exists():
        raise SystemExit(f"--sft {sft_dir}: no model there")
    if not (sft_dir / "config.json").exists():
        model, tok = load_policy(base, data)
        run_sft(base, run, model, tok, data, show_progress=False)
    results = {}
    for label, (name, extra) in chosen.items():
        cfg = load_config(ROOT / f"recipes/tiny/{name}.yaml",
                          [f"seed={args.seed}", f"init_from={sft_dir}", f"out_dir={out}", *extra])
        model, tok = load_model(sft_dir)
        engine = make_engine(model, tok, cfg.rollout.engine, batch_size=cfg.rollout.batch_size,
                             dtype=cfg.rollout.dtype, kv_cache_gb=cfg.rollout.kv_cache_gb)  # as `r1lab rl` does
        trainer = RLTrainer(cfg, model, tok, engine)
        sampler = PromptSampler(data.rl_prompts, seed=cfg.seed)
        if cfg.algo.critic and cfg.algo.value_pretrain_steps:
            trainer.pretrain_critic(sampler)
        seen, next_eval, curve, prm_acc, t0 = 0, 0, [], [], time.time()
        while True:
            if seen >= next_eval:
                s = run_eval(cfg, model, tok, data.eval, None, "eval", show_progress=False).summary
                curve.append({"samples": seen, "avg": s["avg@8"], "pass8": s["pass@8"], "len": s["len_mean"]})
                next_eval += args.eval_every
            if seen >= args.budget:
                break
            m, _ = trainer.train_step(sampler)
            seen += m["sampling/generated"]
            if "prm/accuracy" in m:  # PRIME: how often the PRM's outcome logit had the verdict's sign
                prm_acc.append(m["prm/accuracy"])
        results[label] = {"curve": curve, "seconds": time.time() - t0, "steps": trainer.step, "prm_accuracy": prm_acc}
        print(f"{label}: avg@8 {100 * curve[0]['avg']:.1f} -> {100 * curve[-1]['avg']:.1f} "
              f"in {trainer.step} steps, {time.time() - t0:.0f} s"
              + (f", PRM outcome accuracy first/last 5 steps {sum(prm_acc[:5]) / len(prm_acc[:5]):.2f} / "
                 f"{sum(prm_acc[-5:]) / len(prm_acc[-5:]):.2f}" if prm_acc else ""), flush=True)
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    plot(results, args.budget, args.seed, out / "compare.png")
    print(f"\n# compare_recipes, {time.strftime('%Y-%m-%d')}, budget {args.budget} samples, seed {args.seed}")
    print("| method | steps | held-out avg@8 start | end | pass@8 end | mean length end | wall time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        a, b = r["curve"][0], r["curve"][-1]
        print(f"| {label} | {r['steps']} | {100 * a['avg']:.1f} | {100 * b['avg']:.1f} | {100 * b['pass8']:.1f} | "
              f"{b['len']:.1f} | {r['seconds']:.0f} s |")


def plot(results: dict, budget: int, seed: int, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, r in results.items():
        xs = [p["samples"] for p in r["curve"]]
        axes[0].plot(xs, [100 * p["avg"] for p in r["curve"]], marker="o", label=label)
        axes[1].plot(xs, [p["len"] for p in r["curve"]], marker="o", label=label)
    lengths = [p["len"] for r in results.values() for p in r["curve"]]
    mid = (max(lengths) + min(lengths)) / 2
    if max(lengths) - min(lengths) < 4:  # do not let autoscaling blow a fraction of a token up to full height
        axes[1].set_ylim(mid - 2, mid + 2)
    axes[0].set_ylabel("held-out avg@8 (%)")
    axes[1].set_ylabel("mean response length (tokens)")
    for ax in axes:
        ax.set_xlabel("samples generated")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"RL methods from one SFT model, equal sample budget ({budget}), seed {seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

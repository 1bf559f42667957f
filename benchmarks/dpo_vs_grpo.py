"""DPO, iterative DPO and GRPO on the demo task from one SFT model, at an equal number of generated samples.

    .venv/bin/python benchmarks/dpo_vs_grpo.py [--budget 4096] [--seeds 0 1] [--rounds 2 4] [--sft DIR] [--out runs/dpo_vs_grpo]

The SFT model is the demo's first stage (recipes/tiny/sft.yaml), trained once into OUT/sft unless
--sft names a checkpoint. Every method starts from it and may generate `budget` samples:
- DPO: one round of recipes/tiny/dpo.yaml on budget / k problems (k samples each);
- iterative DPO: recipes/tiny/iterative_dpo.yaml (Iterative RPO: DPO + NLL), `--rounds` rounds of
  budget / (rounds * k) problems each;
- GRPO: recipes/tiny/grpo.yaml steps until it has generated `budget` samples.
All are scored on the same 200 held-out problems (avg@8, temperature 1). Prints a markdown table and
writes OUT/dpo_vs_grpo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from r1lab.cli import _quiet_libraries  # noqa: E402
from r1lab.config import load_config  # noqa: E402
from r1lab.models import load_model  # noqa: E402
from r1lab.rollout import make_engine  # noqa: E402
from r1lab.runs import RunDir  # noqa: E402
from r1lab.stages import load_policy, prepare_data, run_dpo, run_eval, run_sft  # noqa: E402
from r1lab.train.rl import PromptSampler, RLTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def score(cfg, model, tok, data) -> dict[str, float]:
    s = run_eval(cfg, model, tok, data.eval, None, "eval", show_progress=False).summary
    n = cfg.eval.n
    return {"avg": s[f"avg@{n}"], "pass": s[f"pass@{n}"], "maj": s[f"maj@{n}"]}


def run_dpo_method(recipe: str, rounds: int, budget: int, seed: int, sft_dir: Path, out: Path, data, name: str):
    cfg = load_config(ROOT / recipe, [f"seed={seed}", f"init_from={sft_dir}", f"out_dir={out}", f"name={name}"])
    k = cfg.dpo.samples_per_problem
    cfg.dpo.rounds = rounds
    cfg.dpo.prompts_per_round = budget // (rounds * k)
    cfg.dpo.eval_every_round = False
    model, tok = load_model(sft_dir)
    t0 = time.time()
    history = run_dpo(cfg, RunDir.create(cfg), model, tok, data, show_progress=False, log=lambda *_: None)
    seconds = time.time() - t0
    return cfg, model, tok, {
        "seconds": seconds, "samples": sum(h["round/generated_samples"] for h in history),
        "pairs": [h["round/pairs"] for h in history], "pass_rate": [h["round/pass_rate"] for h in history],
        "margin_end": history[-1]["dpo/margin"], "steps": sum(int(h["dpo/steps"]) for h in history),
    }


def run_grpo(budget: int, seed: int, sft_dir: Path, out: Path, data):
    cfg = load_config(ROOT / "recipes/tiny/grpo.yaml", [f"seed={seed}", f"init_from={sft_dir}", f"out_dir={out}"])
    model, tok = load_model(sft_dir)
    engine = make_engine(model, tok, cfg.rollout.engine, batch_size=cfg.rollout.batch_size,
                         dtype=cfg.rollout.dtype, kv_cache_gb=cfg.rollout.kv_cache_gb)
    trainer = RLTrainer(cfg, model, tok, engine)
    sampler = PromptSampler(data.rl_prompts, seed=cfg.seed)
    seen, t0 = 0, time.time()
    while seen < budget:
        m, _ = trainer.train_step(sampler)
        seen += m["sampling/generated"]
    return cfg, model, tok, {"seconds": time.time() - t0, "samples": seen, "steps": trainer.step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=4096, help="generated samples per method")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rounds", type=int, nargs="+", default=[2], help="rounds of iterative DPO (one run per value)")
    ap.add_argument("--methods", nargs="+", default=["dpo", "rpo", "grpo"], choices=["dpo", "rpo", "grpo"])
    ap.add_argument("--sft", help="SFT checkpoint to start from (default: train the demo's SFT stage into OUT/sft)")
    ap.add_argument("--out", default="runs/dpo_vs_grpo")
    args = ap.parse_args()
    _quiet_libraries()
    out = Path(args.out)
    base = load_config(ROOT / "recipes/tiny/sft.yaml", [f"out_dir={out}", "name=sft"])
    run = RunDir.create(base)
    data = prepare_data(base, run, log=lambda *_: None)
    sft_dir = Path(args.sft) if args.sft else run.checkpoint("sft")
    if not (sft_dir / "config.json").exists():
        model, tok = load_policy(base, data)
        run_sft(base, run, model, tok, data, show_progress=False)
    model, tok = load_model(sft_dir)
    start = score(base, model, tok, data)
    print(f"SFT model {sft_dir}: held-out avg@8 {100 * start['avg']:.1f}", flush=True)
    results: dict = {"sft": str(sft_dir), "start": start, "budget": args.budget, "host": platform.node(),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": []}
    for seed in args.seeds:
        methods = []
        if "dpo" in args.methods:
            methods.append(("DPO (1 round)", lambda: run_dpo_method("recipes/tiny/dpo.yaml", 1, args.budget, seed,
                                                                     sft_dir, out, data, f"dpo-s{seed}")))
        for rounds in args.rounds if "rpo" in args.methods else []:
            methods.append((f"RPO ({rounds} round{'s' if rounds > 1 else ''})",
                            lambda r=rounds: run_dpo_method("recipes/tiny/iterative_dpo.yaml", r, args.budget, seed,
                                                            sft_dir, out, data, f"idpo{r}-s{seed}")))
        if "grpo" in args.methods:
            methods.append(("GRPO", lambda: run_grpo(args.budget, seed, sft_dir, out, data)))
        for label, fn in methods:
            cfg, model, tok, info = fn()
            info.update(method=label, seed=seed, **{f"end_{k}": v for k, v in score(cfg, model, tok, data).items()})
            results["runs"].append(info)
            print(f"seed {seed} {label}: avg@8 {100 * start['avg']:.1f} -> {100 * info['end_avg']:.1f} "
                  f"({info['samples']} samples, {info['seconds']:.0f} s)", flush=True)
            (out / "dpo_vs_grpo.json").write_text(json.dumps(results, indent=1, default=float))
    print("\n| method | seed | samples | held-out avg@8 start | end | gain | maj@8 end | pass@8 end | train time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["runs"]:
        print(f"| {r['method']} | {r['seed']} | {r['samples']} | {100 * start['avg']:.1f} | {100 * r['end_avg']:.1f} | "
              f"{100 * (r['end_avg'] - start['avg']):+.1f} | {100 * r['end_maj']:.1f} | {100 * r['end_pass']:.1f} | "
              f"{r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()

"""Held-out gain of one-step-off asynchronous GRPO against synchronous GRPO, over seeds.

    OMP_NUM_THREADS=1 python benchmarks/async_gain.py [--seeds 0 1] [key.sub=value ...]

For each seed: the demo's SFT stage once (recipes/tiny/demo.yaml), then its GRPO stage twice from
that SFT checkpoint: cluster.off_policy_steps=0 (synchronous) and 1 (each batch sampled from the
weights one update old while the previous one trains, with the default tis correction), both with
the fast engine in this process. Prints one markdown table: held-out avg@8 after SFT and after
each GRPO run, the gains, and the mean wall time per step of each run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from r1lab.cli import _quiet_libraries  # noqa: E402
from r1lab.cluster import with_off_policy_correction  # noqa: E402
from r1lab.config import load_config  # noqa: E402
from r1lab.runs import RunDir, read_metrics  # noqa: E402
from r1lab.stages import load_policy, prepare_data, run_eval, run_rl, run_sft  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "demo.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="runs/bench-async")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    _quiet_libraries()
    rows = []
    for seed in args.seeds:
        base = [*args.overrides, f"seed={seed}", f"out_dir={args.out}"]
        cfg = load_config(DEMO, [*base, f"name=sft-s{seed}"])
        run = RunDir.create(cfg)
        data = prepare_data(cfg, run, log=lambda *_: None)
        model, tok = load_policy(cfg, data)
        run_sft(cfg, run, model, tok, data, show_progress=False)
        key = f"avg@{cfg.eval.n}"
        sft = run_eval(cfg, model, tok, data.eval, None, "sft", show_progress=False).summary[key]
        row = {"seed": seed, "sft": sft}
        for mode, steps_off in (("sync", 0), ("async", 1)):
            cfg = load_config(DEMO, [*base, f"name=rl-{mode}-s{seed}", f"init_from={run.checkpoint('sft')}",
                                     f"cluster.off_policy_steps={steps_off}"])
            cfg = with_off_policy_correction(cfg)
            rl_run = RunDir.create(cfg)
            rl_data = prepare_data(cfg, rl_run, log=lambda *_: None)
            rl_model, rl_tok = load_policy(cfg, rl_data)
            t = time.time()
            run_rl(cfg, rl_run, rl_model, rl_tok, rl_data, show_progress=False)
            secs = time.time() - t
            m = [r for r in read_metrics(rl_run.file("metrics.jsonl")) if r["step"] > 0]
            row[mode] = run_eval(cfg, rl_model, rl_tok, rl_data.eval, None, mode, show_progress=False).summary[key]
            row[f"{mode}_step_s"] = statistics.mean(r["time/step"] for r in m)
            row[f"{mode}_s"] = secs
            print(f"seed {seed} {mode}: {key} {row[mode]:.3f} in {secs:.0f} s", flush=True)
        rows.append(row)
    print(f"\n# async vs sync GRPO, {time.strftime('%Y-%m-%d %H:%M')} UTC, {platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"| seed | SFT {key} | sync GRPO {key} | async GRPO {key} | sync gain | async gain | sync s/step | async s/step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {100 * r['sft']:.1f} | {100 * r['sync']:.1f} | {100 * r['async']:.1f} | "
              f"{100 * (r['sync'] - r['sft']):+.1f} | {100 * (r['async'] - r['sft']):+.1f} | "
              f"{r['sync_step_s']:.2f} | {r['async_step_s']:.2f} |")
    mean = lambda k: statistics.mean(r[k] for r in rows)  # noqa: E731
    print(f"| **mean** | {100 * mean('sft'):.1f} | {100 * mean('sync'):.1f} | {100 * mean('async'):.1f} | "
          f"{100 * (mean('sync') - mean('sft')):+.1f} | {100 * (mean('async') - mean('sft')):+.1f} | "
          f"{mean('sync_step_s'):.2f} | {mean('async_step_s'):.2f} |")


if __name__ == "__main__":
    main()

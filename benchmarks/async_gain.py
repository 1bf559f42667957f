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

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from r1lab.cli import _quiet_libraries  # noqa: E402

from async_speed import MODES, rl_from_sft, sft_once  # noqa: E402 -- benchmarks/: the one SFT-then-RL block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="runs/bench-async")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    _quiet_libraries()
    rows = []
    for seed in args.seeds:
        sft_ckpt, sft, _ = sft_once(seed, args.overrides, args.out, evaluate=True)
        row = {"seed": seed, "sft": sft}
        for mode, modes_key in (("sync", "sync"), ("async", "k1")):
            r = rl_from_sft(sft_ckpt, seed, f"rl-{mode}-s{seed}", MODES[modes_key], args.overrides, args.out, evaluate=True)
            key = r["key"]
            row[mode] = r["heldout"]
            row[f"{mode}_step_s"] = statistics.mean(x["time/step"] for x in r["metrics"])
            row[f"{mode}_s"] = r["wall_s"]
            print(f"seed {seed} {mode}: {key} {row[mode]:.3f} in {r['wall_s']:.0f} s", flush=True)
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

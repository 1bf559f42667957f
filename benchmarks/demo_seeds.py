"""The demo's claim, measured: held-out avg@8 of the untrained, SFT and GRPO models over seeds.

    .venv/bin/python benchmarks/demo_seeds.py [--seeds 0 1] [key.sub=value ...]

Runs the full demo once per seed (runs/bench-seed<N>/) and prints one markdown table with each
seed's figures and their mean, plus wall time per run. The data seed is fixed, so every run is
scored on the same 200 held-out problems; the run seed changes the model's initialisation, the
SFT order and every sample drawn.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from r1lab.cli import _quiet_libraries  # noqa: E402
from r1lab.config import load_config  # noqa: E402
from r1lab.demo import run_demo  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "demo.yaml"  # what `r1lab demo` runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    _quiet_libraries()
    rows = []
    for seed in args.seeds:
        cfg = load_config(DEMO, [*args.overrides, f"seed={seed}", f"name=bench-seed{seed}"])
        t = time.time()
        s = run_demo(cfg, show_progress=False, log=lambda *_: None)
        rows.append((seed, s, time.time() - t))
        print(f"seed {seed} done in {time.time() - t:.0f} s", flush=True)
    n = cfg.eval.n
    key = f"avg@{n}"
    print(f"\n# demo over seeds, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores")
    print(f"| seed | untrained {key} | SFT {key} | GRPO {key} | SFT gain | GRPO gain over SFT | GRPO pass@{n} | run time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for seed, s, secs in rows:
        st = s["stages"]
        print(f"| {seed} | {100 * st['untrained'][key]:.1f} | {100 * st['sft'][key]:.1f} | {100 * st['rl'][key]:.1f} | "
              f"{100 * s['gain_sft']:+.1f} | {100 * s['gain_rl']:+.1f} | {100 * st['rl'][f'pass@{n}']:.1f} | {secs:.0f} s |")
    mean = lambda f: sum(f(s) for _, s, _ in rows) / len(rows)  # noqa: E731
    print(f"| mean | {100 * mean(lambda s: s['stages']['untrained'][key]):.1f} | {100 * mean(lambda s: s['stages']['sft'][key]):.1f} | "
          f"{100 * mean(lambda s: s['stages']['rl'][key]):.1f} | {100 * mean(lambda s: s['gain_sft']):+.1f} | "
          f"{100 * mean(lambda s: s['gain_rl']):+.1f} | {100 * mean(lambda s: s['stages']['rl'][f'pass@{n}']):.1f} | "
          f"{sum(t for *_, t in rows) / len(rows):.0f} s |")


if __name__ == "__main__":
    main()

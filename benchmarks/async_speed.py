"""Throughput and held-out accuracy of synchronous, one-step-off and fully asynchronous GRPO, with
one core for sampling and one for training, and a timeline of where the wall time goes.

    OMP_NUM_THREADS=1 python benchmarks/async_speed.py [--seeds 0 1] [--rl-steps 20] [key.sub=value ...]

For each seed: the demo's SFT stage once (recipes/tiny/demo.yaml), then its GRPO stage three times
from that checkpoint, each for --rl-steps steps on the same prompts:
  sync      cluster.off_policy_steps=0: sample, then train, one thread
  k1        cluster.off_policy_steps=1: the producer thread samples the next batch while this trains
  k2+partial  cluster.off_policy_steps=2, cluster.partial_rollouts=true: the producer up to two
            steps ahead, taking new weights mid-generation (k2: the same without partial rollouts,
            for engines other than the fast one)
OMP_NUM_THREADS=1 makes each thread's torch work run on that thread alone, so the producer and the
trainer use one core each (the synchronous run uses one core). Writes results.json and
timeline.png (the three runs of the first seed) to --out, and prints a markdown table: steps per
minute (60 / the mean time/step of steps 3..N, the trainer's period), held-out avg@n after the same
number of steps (= the same number of samples), and the mean staleness.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from r1lab.cli import _quiet_libraries  # noqa: E402
from r1lab.cluster import with_off_policy_correction  # noqa: E402
from r1lab.config import load_config  # noqa: E402
from r1lab.plots import plot_timeline  # noqa: E402
from r1lab.runs import RunDir, read_metrics  # noqa: E402
from r1lab.stages import load_policy, prepare_data, run_eval, run_rl, run_sft  # noqa: E402
from r1lab.train.timeline import read_timeline  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "demo.yaml"
MODES = {"sync": ["cluster.off_policy_steps=0"], "k1": ["cluster.off_policy_steps=1"],
         "k2": ["cluster.off_policy_steps=2"],
         "k2+partial": ["cluster.off_policy_steps=2", "cluster.partial_rollouts=true"]}


def host() -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1].strip()
    isa = subprocess.run("grep -o -w -E 'avx512_bf16|amx_bf16|avx2' /proc/cpuinfo | sort -u", shell=True,
                         capture_output=True, text=True).stdout.split()
    return f"{cpu} ({', '.join(isa)}), {os.cpu_count()} cores"


def write(out: Path, started: str, args, rows: list[dict], timelines: dict[str, list[dict]]) -> dict:
    meta = {"started_utc": started, "ended_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "host": host(),
            "load_avg_end": os.getloadavg(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "rl_steps": args.rl_steps, "overrides": args.overrides}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    # a window from step 3 on: past the first batch, which every mode samples before training
    start = max(s["t0"] for sp in timelines.values() for s in sp if s["who"] == "trainer" and s["what"] == "train"
                and s["step"] == min(2, args.rl_steps - 1))
    plot_timeline({f"{m} (seed {args.seeds[0]})": sp for m, sp in timelines.items()}, out / "timeline.png",
                  f"GRPO, tiny demo recipe, one thread per side; {meta['host']}; {started} UTC",
                  window=(0, min(start + 25.0, min(max(s["t1"] for s in sp) for sp in timelines.values()))))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rl-steps", type=int, default=20)
    ap.add_argument("--modes", nargs="+", default=["sync", "k1", "k2+partial"], choices=list(MODES))
    ap.add_argument("--sft-from", default="", help="an SFT checkpoint per seed: a format string with {seed}")
    ap.add_argument("--no-eval", action="store_true", help="throughput only (the timed, exclusive part)")
    ap.add_argument("--out", default="benchmarks/results/async_speed")
    ap.add_argument("--runs", default="/tmp/r1lab-async-speed")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    _quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    rows, timelines = [], {}
    for seed in args.seeds:
        base = [*args.overrides, f"seed={seed}", f"out_dir={args.runs}"]
        if args.sft_from:
            sft_ckpt = args.sft_from.format(seed=seed)
        else:
            cfg = load_config(DEMO, [*base, f"name=sft-s{seed}"])
            run = RunDir.create(cfg)
            data = prepare_data(cfg, run, log=lambda *_: None)
            model, tok = load_policy(cfg, data)
            run_sft(cfg, run, model, tok, data, show_progress=False)
            sft_ckpt = str(run.checkpoint("sft"))
        for mode in args.modes:
            cfg = load_config(DEMO, [*base, f"name=rl-{mode}-s{seed}", f"init_from={sft_ckpt}", f"train.steps={args.rl_steps}",
                                     "train.eval_every=0", "train.save_every=0", *MODES[mode]])
            cfg = with_off_policy_correction(cfg)
            rl_run = RunDir.create(cfg)
            rl_data = prepare_data(cfg, rl_run, log=lambda *_: None)
            rl_model, rl_tok = load_policy(cfg, rl_data)
            t = time.time()
            run_rl(cfg, rl_run, rl_model, rl_tok, rl_data, show_progress=False)
            wall = time.time() - t
            m = [r for r in read_metrics(rl_run.file("metrics.jsonl")) if r["step"] > 0]
            key = f"avg@{cfg.eval.n}"
            acc = (float("nan") if args.no_eval else
                   run_eval(cfg, rl_model, rl_tok, rl_data.eval, None, mode, show_progress=False).summary[key])
            steady = [r["time/step"] for r in m[2:]]
            spans = read_timeline(rl_run.file("timeline.jsonl"))
            busy = lambda who, what: sum(s["t1"] - s["t0"] for s in spans if s["who"] == who and s["what"] == what)  # noqa: E731
            row = {"seed": seed, "mode": mode, "key": key, "heldout": acc, "steps": len(m), "wall_s": wall,
                   "step_s": statistics.mean(steady), "steps_per_min": 60 / statistics.mean(steady),
                   "staleness_mean": statistics.mean(r["staleness/mean"] for r in m),
                   "staleness_max": max(r["staleness"] for r in m),
                   "mixed_samples": statistics.mean(r.get("partial/mixed_samples", 0.0) for r in m),
                   "generate_s": busy("producer", "generate") + busy("trainer", "generate"),
                   "train_s": busy("trainer", "train"), "sync_s": busy("trainer", "sync") + busy("producer", "sync"),
                   "trainer_wait_s": busy("trainer", "wait"), "producer_wait_s": busy("producer", "wait")}
            rows.append(row)
            if seed == args.seeds[0]:
                timelines[mode] = spans
            print(json.dumps(row), flush=True)
            meta = write(out, started, args, rows, timelines)  # after every run: a stopped benchmark keeps what it measured
    print(f"\n# {started} - {meta['ended_utc']} UTC, {meta['host']}, {platform.machine()}, load {os.getloadavg()[0]:.1f}")
    print("| mode | seed | steps/min | held-out avg | staleness mean / max | trainer waits s | producer waits s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['seed']} | {r['steps_per_min']:.1f} | {100 * r['heldout']:.1f} | "
              f"{r['staleness_mean']:.2f} / {r['staleness_max']} | {r['trainer_wait_s']:.1f} | {r['producer_wait_s']:.1f} |")


if __name__ == "__main__":
    main()

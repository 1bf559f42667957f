"""Throughput and held-out accuracy of synchronous, one-step-off and fully asynchronous GRPO, with
one core for sampling and one for training, and a timeline of where the wall time goes.

    OMP_NUM_THREADS=1 python benchmarks/async_speed.py [--seeds 0 1] [--rl-steps 20] [--modes ...] [key.sub=value ...]

For each seed: the demo's SFT stage once (recipes/tiny/demo.yaml), then its GRPO stage once per mode
from that checkpoint, each for --rl-steps steps on the same prompts:
  sync      cluster.off_policy_steps=0: sample, then train, one thread
  k1        cluster.off_policy_steps=1: the producer thread samples the next batch while this trains
  k2+partial  cluster.off_policy_steps=2, cluster.partial_rollouts=true: the producer up to two
            steps ahead, taking new weights mid-generation (k2: the same without partial rollouts,
            for engines other than the fast one)
  k1-ray, k2-ray  as k1 / k2 with the sampling in a Ray rollout actor (cluster.rollout_workers=1):
            a process of its own, so sampling and training share no interpreter lock
OMP_NUM_THREADS=1 makes each thread's torch work run on that thread alone, so the producer and the
trainer use one core each (the synchronous run uses one core). Writes results.json and
timeline.png (the runs of the first seed) to --out, and prints markdown tables: steps per minute
(60 / the mean time/step of steps 3..N, the trainer's period), where the time goes, and held-out
avg@n after the same number of steps (= the same number of samples) with its standard error over
the problems, and each mode's paired difference from the first mode.

`sft_once` and `rl_from_sft` are the SFT-then-RL block benchmarks/async_gain.py uses too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hostinfo import host  # noqa: E402
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
         "k2+partial": ["cluster.off_policy_steps=2", "cluster.partial_rollouts=true"],
         "k1-ray": ["cluster.off_policy_steps=1", "cluster.rollout_workers=1"],
         "k2-ray": ["cluster.off_policy_steps=2", "cluster.rollout_workers=1"]}


def heldout(cfg, model, tok, problems, desc: str) -> tuple[float, list[float]]:
    """avg@n on the held-out problems and each problem's own fraction correct (for standard errors)."""
    res = run_eval(cfg, model, tok, problems, None, desc, show_progress=False)
    return res.summary[f"avg@{cfg.eval.n}"], [r["avg"] for r in res.rows]


def sft_once(seed: int, overrides: list[str], runs: str, evaluate: bool) -> tuple[str, float, list[float]]:
    """The demo's SFT stage for `seed`: its checkpoint, and its held-out avg@n and per-problem
    scores when `evaluate` (nan and [] otherwise)."""
    cfg = load_config(DEMO, [*overrides, f"seed={seed}", f"out_dir={runs}", f"name=sft-s{seed}"])
    run = RunDir.create(cfg)
    data = prepare_data(cfg, run, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    run_sft(cfg, run, model, tok, data, show_progress=False)
    acc, per = heldout(cfg, model, tok, data.eval, "sft") if evaluate else (float("nan"), [])
    return str(run.checkpoint("sft")), acc, per


def rl_from_sft(sft_ckpt: str, seed: int, name: str, mode: list[str], overrides: list[str], runs: str,
                evaluate: bool) -> dict:
    """The demo's GRPO stage from `sft_ckpt` with the `mode` overrides (after `overrides`): its run
    directory, metrics of steps >= 1, wall seconds, held-out avg@n and per-problem scores."""
    cfg = load_config(DEMO, [*overrides, f"seed={seed}", f"out_dir={runs}", f"name={name}", f"init_from={sft_ckpt}",
                             "train.eval_every=0", "train.save_every=0", *mode])
    cfg = with_off_policy_correction(cfg)
    run = RunDir.create(cfg)
    data = prepare_data(cfg, run, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    t = time.time()
    run_rl(cfg, run, model, tok, data, show_progress=False)
    wall = time.time() - t
    metrics = [r for r in read_metrics(run.file("metrics.jsonl")) if r["step"] > 0]
    acc, per = heldout(cfg, model, tok, data.eval, name) if evaluate else (float("nan"), [])
    return {"run": run, "metrics": metrics, "wall_s": wall, "heldout": acc, "per_problem": per, "key": f"avg@{cfg.eval.n}"}


def se(xs: list[float]) -> float:
    return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")


def write(out: Path, started: str, args, rows: list[dict], timelines: dict[str, list[dict]]) -> dict:
    meta = {"started_utc": started, "ended_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "host": host(),
            "load_avg_end": os.getloadavg(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "rl_steps": args.rl_steps, "overrides": args.overrides}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    # a window from step 3 on: past the first batch, which every mode samples before training
    start = max(s["t0"] for sp in timelines.values() for s in sp if s["who"] == "trainer" and s["what"] == "train"
                and s["step"] == min(2, args.rl_steps - 1))
    plot_timeline({f"{m} (seed {args.seeds[0]})": sp for m, sp in timelines.items()}, out / "timeline.png",
                  f"GRPO, tiny demo recipe{''.join(' ' + o for o in args.overrides)}; {meta['host']}; {started} UTC",
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
        if args.sft_from:
            sft_ckpt, sft_acc, sft_per = args.sft_from.format(seed=seed), float("nan"), []
        else:
            sft_ckpt, sft_acc, sft_per = sft_once(seed, args.overrides, args.runs, evaluate=not args.no_eval)
        for mode in args.modes:
            r = rl_from_sft(sft_ckpt, seed, f"rl-{mode}-s{seed}", [f"train.steps={args.rl_steps}", *MODES[mode]],
                            args.overrides, args.runs, evaluate=not args.no_eval)
            m = r["metrics"]
            steady = [x["time/step"] for x in m[2:]]
            spans = read_timeline(r["run"].file("timeline.jsonl"))
            busy = lambda who, what: sum(s["t1"] - s["t0"] for s in spans if s["who"] == who and s["what"] == what)  # noqa: E731
            row = {"seed": seed, "mode": mode, "key": r["key"], "heldout": r["heldout"], "heldout_se": se(r["per_problem"]),
                   "per_problem": r["per_problem"], "sft": sft_acc, "sft_per_problem": sft_per,
                   "steps": len(m), "wall_s": r["wall_s"],
                   "step_s": statistics.mean(steady), "steps_per_min": 60 / statistics.mean(steady),
                   "staleness_mean": statistics.mean(x["staleness/mean"] for x in m),
                   "staleness_max": max(x["staleness"] for x in m),
                   "mixed_samples": statistics.mean(x.get("partial/mixed_samples", 0.0) for x in m),
                   "generate_s": busy("producer", "generate") + busy("trainer", "generate"),
                   "train_s": busy("trainer", "train"), "sync_s": busy("trainer", "sync") + busy("producer", "sync"),
                   "check_s": busy("producer", "check"),
                   # Ray rollout actors: the slowest actor's own engine time per call (the rest of `generate` is transfer)
                   "actor_generate_s": sum(x.get("cluster/generate_actor_s", 0.0) for x in m),
                   "trainer_wait_s": busy("trainer", "wait"), "producer_wait_s": busy("producer", "wait")}
            rows.append(row)
            if seed == args.seeds[0]:
                timelines[mode] = spans
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("per_problem")}), flush=True)
            meta = write(out, started, args, rows, timelines)  # after every run: a stopped benchmark keeps what it measured
    print(f"\n# {started} - {meta['ended_utc']} UTC, {meta['host']}, {platform.machine()}, load {os.getloadavg()[0]:.1f}")
    print("| mode | seed | steps/min | speed-up | staleness mean / max | generate s | train s | sync s | trainer waits s | producer waits s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = {r["seed"]: r for r in rows if r["mode"] == args.modes[0]}
    for r in rows:
        print(f"| {r['mode']} | {r['seed']} | {r['steps_per_min']:.1f} | {r['steps_per_min'] / base[r['seed']]['steps_per_min']:.2f} | "
              f"{r['staleness_mean']:.2f} / {r['staleness_max']} | {r['generate_s']:.1f} | {r['train_s']:.1f} | "
              f"{r['sync_s']:.1f} | {r['trainer_wait_s']:.1f} | {r['producer_wait_s']:.1f} |")
    if args.no_eval:
        return
    # held-out: avg@n +- its standard error over the problems; the difference from the first mode is
    # paired (same problems, same SFT start), its standard error that of the per-problem differences
    print(f"\n| mode | seed | SFT {rows[0]['key']} | GRPO {rows[0]['key']} (+- se) | vs {args.modes[0]} (+- paired se) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        d = [a - b for a, b in zip(r["per_problem"], base[r["seed"]]["per_problem"])]
        print(f"| {r['mode']} | {r['seed']} | {100 * r['sft']:.1f} | {100 * r['heldout']:.1f} +- {100 * r['heldout_se']:.1f} | "
              f"{100 * statistics.mean(d):+.1f} +- {100 * se(d):.1f} |")


if __name__ == "__main__":
    main()

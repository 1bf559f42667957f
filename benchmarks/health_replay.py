"""Replay a finished RL run's metrics.jsonl (and the decoded samples of samples.jsonl) through the
run-health monitor, and print how close each check came to firing: the margins behind the
health.* defaults.

    python benchmarks/health_replay.py runs/<run> [health.window=5 ...]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from r1lab.config import load_config
from r1lab.health import HealthMonitor, History, is_garbled
from r1lab.runs import read_metrics


def rolling(h: History, key: str, fn) -> float | None:
    """fn over every (baseline, window) pair the checks saw as the run went on."""
    xs = h.values(key)
    b, w = h.cfg.baseline_steps, h.cfg.window
    if len(xs) < b + w:
        return None
    base = sum(xs[:b]) / b
    return fn(sum(xs[i - w : i]) / w / base if base else float("nan") for i in range(b + w, len(xs) + 1))


def window_max(h: History, key: str) -> float | None:
    xs, w = h.values(key), h.cfg.window
    return max(sum(xs[i - w : i]) / w for i in range(w, len(xs) + 1)) if len(xs) >= w else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load_config(None, [f"health.{o}" if not o.startswith("health.") else o for o in args.overrides]).health
    rows = [r for r in read_metrics(run / "metrics.jsonl") if r.get("step", 0) > 0]
    samples: dict[int, list[str]] = defaultdict(list)
    for s in read_metrics(run / "samples.jsonl"):
        samples[s["step"]].append(s["text"])
    monitor = HealthMonitor(cfg, log=lambda s: print(s))
    for r in rows:
        monitor.observe(r["step"], {k: v for k, v in r.items() if k not in ("step", "time")}, samples.get(r["step"]))
    h = monitor.history
    garbled = [sum(is_garbled(t, cfg) for t in ts) / len(ts) for ts in samples.values() if ts]
    margins = {
        "steps": len(rows),
        "findings": [f"{f.check}@{f.step}" for f in monitor.findings],
        "entropy: min window/start (collapse below)": [rolling(h, "policy/entropy", min), cfg.entropy_collapse],
        "entropy: max window/start (explosion above)": [rolling(h, "policy/entropy", max), cfg.entropy_explosion],
        "length: min window/start (collapse below)": [rolling(h, "response/length", min), cfg.length_collapse],
        "length: max window/start (runaway above)": [rolling(h, "response/length", max), cfg.length_runaway],
        "truncated: max window mean": [window_max(h, "response/truncated"), cfg.truncated_max],
        "zero-variance groups: max window mean": [window_max(h, "batch/zero_variance_groups"), cfg.no_signal_max],
        "KL: max window mean": [window_max(h, "policy/kl"), cfg.kl_max],
        "log-prob gap: max window mean": [window_max(h, "rollout/logprob_diff_mean"), cfg.logprob_gap_max],
        "garbled samples: max step fraction": [max(garbled) if garbled else None, cfg.garbled_max],
        "eval/avg": [v for _, v in h.series("eval/avg")],
    }
    print(json.dumps(margins, indent=1))


if __name__ == "__main__":
    main()

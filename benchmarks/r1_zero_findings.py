"""R1-Zero on SmolLM2-135M-Instruct and the replication studies' findings, at CPU scale.

Every run is `r1lab rl recipes/real/smollm2_r1_zero.yaml` (GRPO, accuracy + format rewards, no SFT)
with one method changed on the command line, for each seed:

  grpo     the recipe as it is                         finding 1 (format, held-out accuracy, length)
  grpo_kl  + R1-Zero's KL term (beta 0.001, k3)        finding 2: the no-KL ablation (grpo is "no KL")
  dr_grpo  Dr. GRPO: no std division, token sum / L    finding 2: length of wrong answers
  dapo_ds  + DAPO's dynamic sampling                   finding 3: held-out accuracy per generated sample
  pass@k   base model and each grpo run, 64 samples    finding 4: does RL move pass@64?

    python benchmarks/r1_zero_findings.py run --configs grpo,grpo_kl --seeds 0,1 --jobs 2
    python benchmarks/r1_zero_findings.py passk --seeds 0,1 --limit 50
    python benchmarks/r1_zero_findings.py report          # findings.md + four PNGs in the output dir

`run` starts `--jobs` runs at a time, each with cores / jobs threads (one thread each on 2 cores),
and skips runs that finished. Each run's own plots and report are in its directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "recipes/real/smollm2_r1_zero.yaml"
CONFIGS = {
    "grpo": [],
    "grpo_kl": ["algo.kl_coef=0.001", "algo.kl_estimator=k3"],
    "dr_grpo": ["algo.advantage=dr_grpo", "algo.loss_agg=seq-mean-token-sum-norm"],
    "dapo_ds": ["train.dynamic_sampling=true"],
}
LABELS = {"grpo": "GRPO (no KL)", "grpo_kl": "GRPO + KL 0.001", "dr_grpo": "Dr. GRPO", "dapo_ds": "GRPO + dynamic sampling"}
KS = [1, 2, 4, 8, 16, 32, 64]


def r1lab() -> str:
    venv = Path(".venv/bin/r1lab")
    return str(venv) if venv.exists() else "r1lab"


def run_dir(out: Path, config: str, seed: int) -> Path:
    return out / f"{config}-s{seed}"


def finished(path: Path) -> bool:
    return (path / "checkpoints" / "rl").is_dir() and (path / "report.md").exists()


def launch(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print("+", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def run_queue(jobs: list[tuple[list[str], Path]], parallel: int) -> int:
    """Run the commands, `parallel` at a time; the number that failed."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    waiting, running, failed = list(jobs), [], 0
    while waiting or running:
        while waiting and len(running) < parallel:
            cmd, log = waiting.pop(0)
            running.append((launch(cmd, log, threads), log, time.time()))
        time.sleep(5)
        for proc, log, t0 in list(running):
            if proc.poll() is not None:
                running.remove((proc, log, t0))
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log})"
                failed += proc.returncode != 0
                print(f"{log.stem}: {status} in {time.time() - t0:.0f} s", flush=True)
    return failed


def cmd_run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for config in args.configs.split(","):
        if config not in CONFIGS:
            sys.exit(f"unknown config {config!r}; known: {', '.join(CONFIGS)}")
        for seed in _seeds(args.seeds):
            path = run_dir(out, config, seed)
            if finished(path):
                print(f"{path.name}: finished earlier, skipped")
                continue
            cmd = [r1lab(), "rl", args.recipe, f"seed={seed}", f"name={path.name}", f"out_dir={out}", "--quiet",
                   *CONFIGS[config], *args.overrides]
            jobs.append((cmd, out / f"{path.name}.log"))
    return 1 if run_queue(jobs, args.jobs) else 0


def cmd_passk(args) -> int:
    out = Path(args.out)
    models = {"base": "smollm2-135m-instruct"}
    for seed in _seeds(args.seeds):
        ckpt = run_dir(out, args.config, seed) / "checkpoints" / "rl"
        if not ckpt.is_dir():
            sys.exit(f"{ckpt} is missing: run `run --configs {args.config}` first")
        models[f"{args.config}-s{seed}"] = str(ckpt)
    jobs = []
    for label, model in models.items():
        cmd = [r1lab(), "eval", model, "--recipe", args.recipe, "--n", str(args.n), "--temperature", str(args.temperature),
               "--limit", str(args.limit), "--out", str(out / f"passk-{label}"), "--quiet",
               f"eval.ks=[{','.join(str(k) for k in KS if k <= args.n)}]"]
        jobs.append((cmd, out / f"passk-{label}.log"))
    return 1 if run_queue(jobs, args.jobs) else 0


def _seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _metrics(path: Path) -> list[dict]:
    f = path / "metrics.jsonl"
    return [json.loads(line) for line in f.open()] if f.exists() else []


def _eval_avg(path: Path, name: str) -> float | None:
    f = path / "eval" / f"{name}.jsonl"
    rows = [json.loads(line) for line in f.open()] if f.exists() else []
    return sum(r["avg"] for r in rows) / len(rows) if rows else None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _last_number_hits(results: Path) -> list[tuple[int, int]] | None:
    """Per problem of an eval JSONL: (samples, samples whose last number is the gold answer), or None
    when the file is missing. The response's format does not matter: arithmetic apart from the
    answer format the verifier needs."""
    if not results.exists():
        return None
    out = []
    for line in results.open():
        row = json.loads(line)
        hits = 0
        for sample in row.get("samples", []):
            numbers = _NUMBER.findall(sample["text"])
            hits += bool(numbers) and numbers[-1] == str(row["answer"])
        out.append((len(row.get("samples", [])), hits))
    return out


def last_number_share(path: Path, name: str) -> float | None:
    """Share of a run's held-out samples (eval/NAME.jsonl) whose last number is the gold answer."""
    per_problem = _last_number_hits(path / "eval" / f"{name}.jsonl")
    total = sum(n for n, _ in per_problem or [])
    return sum(h for _, h in per_problem) / total if total else None


def last_number_pass_at_k(results: Path) -> dict[int, float]:
    """pass@k (unbiased, from n samples) counting a sample right when its last number is the gold answer."""
    from r1lab.eval.metrics import pass_at_k

    per_problem = _last_number_hits(results)
    if not per_problem:
        return {}
    n = min(m for m, _ in per_problem)
    return {k: sum(pass_at_k(m, c, k) for m, c in per_problem) / len(per_problem) for k in KS if k <= n}


def _heldout(path: Path, rows: list[dict]) -> list[tuple[int, int, float]]:
    """(step, samples generated so far, held-out accuracy) at the start, each in-run eval and the end."""
    generated, out = 0, []
    start = _eval_avg(path, "start")
    if start is not None:
        out.append((0, 0, start))
    for r in rows:
        generated += r.get("sampling/generated", 0)
        if "eval/avg" in r:
            out.append((r["step"], generated, r["eval/avg"]))
    end = _eval_avg(path, "rl")
    if end is not None and rows:
        out.append((rows[-1]["step"], generated, end))
    return out


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def _smooth(ys: list[float], w: int = 3) -> list[float]:
    return [sum(ys[max(0, i - w + 1): i + 1]) / len(ys[max(0, i - w + 1): i + 1]) for i in range(len(ys))]


def _mean_last(rows: list[dict], key: str, n: int = 4) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))][-n:]
    return sum(vals) / len(vals) if vals else None


def _mean_first(rows: list[dict], key: str, n: int = 4) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))][:n]
    return sum(vals) / len(vals) if vals else None


def _save(fig, axes, xlabel: str, title: str, path: Path) -> None:
    """Label, legend and write one figure."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cmd_report(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    runs = {}
    for config in CONFIGS:
        for seed in _seeds(args.seeds):
            path = run_dir(out, config, seed)
            rows = _metrics(path)
            if rows:
                runs[(config, seed)] = (path, rows, _heldout(path, rows))
    if not runs:
        sys.exit(f"no runs under {out}: run `run` first")
    colors = {"grpo": "tab:blue", "grpo_kl": "tab:green", "dr_grpo": "tab:red", "dapo_ds": "tab:purple"}
    styles = {0: "-", 1: "--", 2: ":"}
    host = args.host or "host not given (--host)"

    def lines(ax, configs, key, smooth=True):
        for (config, seed), (_, rows, _) in runs.items():
            if config in configs:
                xs, ys = _series(rows, key)
                if xs:
                    ax.plot(xs, _smooth(ys) if smooth else ys, styles.get(seed, "-"), color=colors[config],
                            label=f"{LABELS[config]}, seed {seed}")

    # 1. R1-Zero: format, held-out accuracy, length
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    lines(axes[0], ["grpo"], "reward/format")
    axes[0].set_title("R1 format (share of samples, 3-step mean)")
    lines(axes[1], ["grpo"], "accuracy")
    axes[1].set_title("training accuracy (3-step mean)")
    for (config, seed), (path, rows, pts) in runs.items():
        if config == "grpo":
            axes[2].plot([p[0] for p in pts], [p[2] for p in pts], "o" + styles.get(seed, "-"), color=colors[config],
                         label=f"seed {seed}")
            loose = [(0, last_number_share(path, "start")), (rows[-1]["step"], last_number_share(path, "rl"))]
            loose = [(x, y) for x, y in loose if y is not None]
            axes[2].plot([x for x, _ in loose], [y for _, y in loose], "x" + styles.get(seed, "-"), color="tab:gray",
                         label=f"seed {seed}: last number right, any format")
    axes[2].set_title("held-out accuracy (greedy, 100 problems)")
    lines(axes[3], ["grpo"], "response/length")
    axes[3].set_title("response length (tokens, 3-step mean)")
    _save(fig, axes, "step", f"R1-Zero on SmolLM2-135M-Instruct, two-step arithmetic ({host})", out / "r1_zero.png")

    # 2. length: wrong answers under GRPO vs Dr. GRPO; all answers with and without KL
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    lines(axes[0], ["grpo", "dr_grpo"], "response/length_wrong")
    axes[0].set_title("length of wrong answers (tokens)")
    lines(axes[1], ["grpo", "dr_grpo"], "response/length_correct")
    axes[1].set_title("length of correct answers (tokens)")
    lines(axes[2], ["grpo", "grpo_kl"], "response/length")
    axes[2].set_title("response length, with and without KL")
    _save(fig, axes, "step", f"Length under GRPO, Dr. GRPO and the KL term ({host})", out / "length.png")

    # 3. dynamic sampling: held-out and training accuracy against generated samples
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (config, seed), (path, rows, pts) in runs.items():
        if config in ("grpo", "dapo_ds"):
            axes[0].plot([p[1] for p in pts], [p[2] for p in pts], "o" + styles.get(seed, "-"), color=colors[config],
                         label=f"{LABELS[config]}, seed {seed}")
            gen, xs, ys = 0, [], []
            for r in rows:
                gen += r.get("sampling/generated", 0)
                if "accuracy" in r:
                    xs.append(gen)
                    ys.append(r["accuracy"])
            axes[1].plot(xs, _smooth(ys), styles.get(seed, "-"), color=colors[config], label=f"{LABELS[config]}, seed {seed}")
    axes[0].set_title("held-out accuracy vs generated samples")
    axes[1].set_title("accuracy of the trained-on groups vs generated samples")
    _save(fig, axes, "samples generated", f"DAPO dynamic sampling against plain GRPO ({host})", out / "sampling.png")

    # 4. pass@k
    passk = {}
    for d in sorted(out.glob("passk-*")):
        f = d / "eval" / "summary.json"
        if f.exists():
            summary = json.loads(f.read_text())
            passk[d.name.removeprefix("passk-")] = summary["held-out"]
    loose = {label: last_number_pass_at_k(out / f"passk-{label}" / "eval" / "results.jsonl") for label in passk}
    if passk:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, (label, block) in enumerate(passk.items()):
            ks = [k for k in KS if f"pass@{k}" in block]
            axes[0].plot(ks, [100 * block[f"pass@{k}"] for k in ks], "o-", color=f"C{i}", label=label)
            axes[1].plot(ks, [100 * loose[label].get(k, float("nan")) for k in ks], "o--", color=f"C{i}", label=label)
        axes[0].set_title("pass@k, verifier (answer format required)")
        axes[1].set_title("pass@k, last number of the response")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_ylabel("pass@k (%)")
        _save(fig, axes, "k", f"pass@k on held-out problems, T=0.7 ({host})", out / "passk.png")

    # the table: first and last steps of each run, held-out start -> end
    lines_md = [f"Host: {host}. Runs under {out}.", "",
                "| run | steps | samples generated | held-out start → end | last number right, start → end | "
                "format step 1 → last 4 steps | "
                "train accuracy first 4 → last 4 | length first 4 → last 4 | wrong-answer length first 4 → last 4 | "
                "s/step |", "|---|---:|---:|---|---|---|---|---|---|---:|"]
    f = lambda x, pct=True: "-" if x is None else (f"{100 * x:.1f}" if pct else f"{x:.0f}")  # noqa: E731
    for (config, seed), (path, rows, pts) in runs.items():
        held = f"{f(pts[0][2])} → {f(pts[-1][2])}" if pts else "-"
        gen = sum(r.get("sampling/generated", 0) for r in rows)
        step_s = _mean_last(rows, "time/step", n=len(rows))
        lines_md.append(
            f"| {path.name} | {rows[-1]['step']} | {gen} | {held} | "
            f"{f(last_number_share(path, 'start'))} → {f(last_number_share(path, 'rl'))} | {f(_mean_first(rows, 'reward/format', 1))} → "
            f"{f(_mean_last(rows, 'reward/format'))} | {f(_mean_first(rows, 'accuracy'))} → {f(_mean_last(rows, 'accuracy'))} | "
            f"{f(_mean_first(rows, 'response/length'), False)} → {f(_mean_last(rows, 'response/length'), False)} | "
            f"{f(_mean_first(rows, 'response/length_wrong'), False)} → {f(_mean_last(rows, 'response/length_wrong'), False)} | "
            f"{step_s:.0f} |")
    if passk:
        lines_md += ["", "| model | " + " | ".join(f"pass@{k}" for k in KS) + " |", "|---|" + "---:|" * len(KS)]
        for label, block in passk.items():
            lines_md.append(f"| {label} | " + " | ".join(f(block.get(f"pass@{k}")) for k in KS) + " |")
        for label in passk:
            lines_md.append(f"| {label}, last number | " + " | ".join(f(loose[label].get(k)) for k in KS) + " |")
    (out / "findings.md").write_text("\n".join(lines_md) + "\n")
    print("\n".join(lines_md))
    print(f"plots: {out}/r1_zero.png, length.png, sampling.png" + (", passk.png" if passk else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/r1z", help="where the runs go (default runs/r1z)")
    ap.add_argument("--recipe", default=RECIPE)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="the RL runs")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    p.add_argument("overrides", nargs="*", help="recipe overrides for every run, e.g. train.steps=40")
    p = sub.add_parser("passk", help="pass@k of the base model and each run of --config, n samples per problem")
    p.add_argument("--config", default="grpo")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--limit", type=int, default=50, help="held-out problems (the first LIMIT)")
    p.add_argument("--jobs", type=int, default=2)
    p = sub.add_parser("report", help="findings.md and the four plots")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--host", default="", help="the machine, written on every plot and the table")
    args = ap.parse_args(argv)
    return {"run": cmd_run, "passk": cmd_passk, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

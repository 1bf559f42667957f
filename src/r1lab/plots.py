"""PNG plots of a run: training curves per step and the stage-by-stage evaluation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write the PNG (creating its directory) and free the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def _smooth(ys: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(
    rows: Sequence[dict[str, Any]], panels: dict[str, list[str]], path: str | Path, title: str = ""
) -> Path | None:
    """One subplot per panel title, each with the listed metric keys against step (raw, faint,
    and a moving average). Panels without any data are left out."""
    panels = {t: ks for t, ks in panels.items() if any(_series(rows, k)[0] for k in ks)}
    if not panels:
        return None
    n = len(panels)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            xs, ys = _series(rows, key)
            if not xs:
                continue
            window = max(1, len(ys) // 15)
            line, = ax.plot(xs, ys, alpha=0.3 if window > 1 else 1.0, linewidth=1)
            if window > 1:
                ax.plot(xs, _smooth(ys, window), color=line.get_color(), linewidth=2, label=key)
            else:
                line.set_label(key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_stages(stages: dict[str, dict[str, float]], metrics: list[str], path: str | Path, title: str = "") -> Path:
    """Grouped bars: one group per metric, one bar per stage (untrained / SFT / RL)."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics) * max(1, len(stages)) / 2, 3.8))
    width = 0.8 / max(1, len(stages))
    for i, (stage, summary) in enumerate(stages.items()):
        vals = [100 * summary.get(m, 0.0) for m in metrics]
        xs = [j + i * width for j in range(len(metrics))]
        bars = ax.bar(xs, vals, width, label=stage)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks([j + width * (len(stages) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics)
    ax.set_ylabel("% of held-out problems")
    ax.set_ylim(0, 105)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_benchmark_accuracy(results: dict[str, tuple[int, dict[str, float]]], path: str | Path, model: str = "") -> Path:
    """Grouped bars per benchmark: avg@n (accuracy), pass@n and maj@n in percent, each labelled.
    `results[name] = (n, summary)` as evaluate_benchmarks returns."""
    metrics = [("avg@n (accuracy)", "avg"), ("pass@n", "pass"), ("maj@n", "maj")]
    names = list(results)
    fig, ax = plt.subplots(figsize=(max(4.8, 1.9 * len(names) + 1.5), 4.0))
    width = 0.8 / len(metrics)
    table = []
    for _, key in metrics:
        vals = []
        for name in names:
            n, s = results[name]
            v = s.get(f"{key}@{n}")
            vals.append(100 * v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0)
        table.append(vals)
    top = max((v for vals in table for v in vals), default=0.0)
    ymax = min(105.0, max(10.0, top * 1.25 + 2))
    for i, ((label, _), vals) in enumerate(zip(metrics, table)):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, vals, width, label=label)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01 * ymax, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{nm}\n(n={results[nm][0]}, {results[nm][1].get('problems', 0):.0f} problems)" for nm in names],
                       fontsize=8)
    ax.set_ylabel("% of problems")
    ax.set_ylim(0, ymax)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Benchmark accuracy: {model}" if model else "Benchmark accuracy", fontsize=10)
    return save_figure(fig, path)


def plot_breakdown(groups: dict[str, dict[str, float]], path: str | Path, title: str, key: str) -> Path:
    """Accuracy per group (e.g. MATH500 by level or subject), with each group's problem count.
    Numeric group names (levels) are sorted as numbers; long names get horizontal bars."""
    names = sorted(groups, key=lambda g: (0, float(g), g) if g.replace(".", "", 1).isdigit() else (1, 0.0, g))
    vals = [100 * groups[g]["accuracy"] for g in names]
    vmax = min(105.0, max(10.0, max(vals, default=0) * 1.25 + 2))
    horizontal = max((len(g) for g in names), default=0) > 6
    if horizontal:
        fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.3))
        bars = ax.barh(range(len(names)), vals, color="tab:blue")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{g} ({groups[g]['problems']})" for g in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("accuracy (%)")
        ax.set_xlim(0, vmax)
        for b, v in zip(bars, vals):
            ax.text(v + 0.01 * vmax, b.get_y() + b.get_height() / 2, f"{v:.1f}", va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.6))
        bars = ax.bar(range(len(names)), vals, color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{g}\n({groups[g]['problems']})" for g in names], fontsize=8)
        ax.set_xlabel(f"{key} (problems)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, vmax)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01 * vmax, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


RL_PANELS = {
    "reward": ["reward/total"],
    "accuracy (train samples)": ["accuracy", "eval/avg"],
    "response length (tokens)": ["response/length", "response/length_correct", "response/length_wrong"],
    "KL to reference": ["policy/kl"],
    "entropy": ["policy/entropy"],
    "zero-variance groups / clip": ["batch/zero_variance_groups", "batch/same_correctness_groups", "policy/clip_frac"],
}
SFT_PANELS = {"SFT loss": ["sft/loss"], "SFT grad norm": ["sft/grad_norm"], "SFT lr": ["sft/lr"]}
CPT_PANELS = {"CPT loss (train, held out)": ["cpt/loss", "cpt/heldout_loss"], "held-out perplexity": ["cpt/heldout_ppl"],
              "CPT lr": ["cpt/lr"], "tokens / s": ["cpt/tokens_per_s"]}
DPO_PANELS = {
    "preference loss": ["dpo/loss"],
    "implicit rewards": ["dpo/reward_chosen", "dpo/reward_rejected"],
    "reward margin": ["dpo/margin"],
    "pair accuracy (margin > 0)": ["dpo/accuracy"],
    "log-prob per token": ["dpo/logp_chosen", "dpo/logp_rejected"],
    "round: pass rate of samples / held-out": ["round/pass_rate", "eval/avg"],
}


def plot_search(points: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test-time search: accuracy against generated tokens per problem (log scale) for majority
    voting (the baseline), PRM best-of-N, PRM-weighted voting, PRM beam search where measured, and
    the share of problems with any correct sample among the N; each point labelled with its N."""
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    series = [("majority vote (baseline)", "majority", "tokens_per_problem", "o--", "tab:gray"),
              ("best-of-N (PRM)", "best_of_n", "tokens_per_problem", "s-", "tab:blue"),
              ("PRM-weighted vote", "weighted_vote", "tokens_per_problem", "^-", "tab:green"),
              ("beam search (PRM)", "beam", "beam_tokens_per_problem", "D-", "tab:red"),
              ("any of N correct", "any_correct", "tokens_per_problem", ":", "tab:orange")]
    top = 10.0
    for name, key, xkey, style, color in series:
        pts = sorted((p for p in points if key in p), key=lambda p: p[xkey])
        if not pts:
            continue
        xs, ys = [max(p[xkey], 1e-9) for p in pts], [100 * p[key] for p in pts]
        ax.plot(xs, ys, style, color=color, label=name, alpha=0.6 if key == "any_correct" else 1.0)
        top = max(top, *ys)
        if key in ("majority", "beam"):  # majority's labels below its points, beam's above
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(f"N={p['n']}", (x, y), textcoords="offset points", xytext=(3, -11 if key == "majority" else 5),
                            fontsize=7, color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem (all samples / candidates)")
    ax.set_ylabel("% correct")
    ax.set_ylim(0, min(105.0, top * 1.15 + 2))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_scaling(points: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test-time scaling: accuracy (avg@n, solid; maj@n, dashed) against the mean thinking tokens each
    budget gave. Budgets with only a maximum form one series, budgets with a minimum ("Wait") another;
    each point is labelled with its budget (budgets that gave the same point share a label)."""
    fig, ax = plt.subplots(figsize=(5.8, 4.0))
    series = [("maximum only", [p for p in points if not p["min_think"]], "o"),
              ("minimum and maximum (Wait)", [p for p in points if p["min_think"]], "^")]
    for (name, pts, marker), color in zip(series, ("tab:blue", "tab:red")):
        if not pts:
            continue
        pts = sorted(pts, key=lambda p: (p["think_mean"], p["max_think"]))
        xs = [p["think_mean"] for p in pts]
        ax.plot(xs, [100 * p["accuracy"] for p in pts], marker + "-", color=color, label=f"avg@n, {name}")
        ax.plot(xs, [100 * p["maj"] for p in pts], marker + "--", color=color, alpha=0.45, label=f"maj@n, {name}")
        labels: dict[tuple[float, float], list[str]] = {}
        for p in pts:
            key = (round(p["think_mean"], 3), round(100 * p["accuracy"], 3))
            labels.setdefault(key, []).append(f"{p['min_think']}..{p['max_think']}" if p["min_think"] else f"≤{p['max_think']}")
        for (x, y), names in labels.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7, color=color)
    ax.set_xlabel("mean thinking tokens per sample")
    ax.set_ylabel("% correct")
    top = max([100 * max(p["accuracy"], p["maj"]) for p in points] + [10.0])
    ax.set_ylim(0, min(105.0, top * 1.2 + 2))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


TIMELINE_COLORS = {"generate": "tab:blue", "train": "tab:orange", "sync": "tab:red", "check": "tab:green", "wait": "0.85"}


def plot_timeline(runs: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "",
                  window: tuple[float, float] | None = None) -> Path:
    """One panel per run (train/timeline.py spans): a row per thread (trainer, producer), a bar per
    span coloured by what it was (generate, train, sync, check, wait), against wall time. `window`
    (t0, t1) shows that part of each run's time."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 1.25 + 1.0 * len(runs)), squeeze=False, sharex=True)
    for ax, (name, spans) in zip(axes[:, 0], runs.items()):
        rows = [w for w in ("trainer", "producer") if any(s["who"] == w for s in spans)]
        for y, who in enumerate(rows):
            for s in spans:
                if s["who"] != who or (window and (s["t1"] < window[0] or s["t0"] > window[1])):
                    continue
                ax.barh(y, s["t1"] - s["t0"], left=s["t0"], height=0.7 if s["what"] != "sync" else 0.9,
                        color=TIMELINE_COLORS.get(s["what"], "0.5"), edgecolor="none")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    if window:
        axes[-1, 0].set_xlim(*window)
    axes[-1, 0].set_xlabel("wall time (s)")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in TIMELINE_COLORS.items()]
    fig.legend(handles=handles, loc="lower right", ncol=4, fontsize=8, bbox_to_anchor=(1.0, 0.0))
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return save_figure(fig, path)

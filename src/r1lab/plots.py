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


RL_PANELS = {
    "reward": ["reward/total"],
    "accuracy (train samples)": ["accuracy", "eval/avg"],
    "response length (tokens)": ["response/length", "response/length_correct", "response/length_wrong"],
    "KL to reference": ["policy/kl"],
    "entropy": ["policy/entropy"],
    "zero-variance groups / clip": ["batch/zero_variance_groups", "policy/clip_frac"],
}
SFT_PANELS = {"SFT loss": ["sft/loss"], "SFT grad norm": ["sft/grad_norm"], "SFT lr": ["sft/lr"]}

"""Multi-turn against single-turn rollouts: the same engine, the same model, the same problems, side
by side in one process, interleaved rounds.

The model is an SFT checkpoint of recipes/tiny/tool_calc.yaml (benchmarks/tool_use.py writes one):
about half its answers call the calculator. Single-turn, `engine.generate` samples each answer in
one call and the model writes the calculator's `<output>` block itself; multi-turn, `run_episodes`
stops each turn at `</calc>`, runs the calculator, appends the output ids and continues the episode
from its ids. Both generate about the same number of tokens per answer (the counts are printed):
the figure of merit is model tokens generated per second of wall time.

Multi-turn runs three ways, which sample the same episodes (checked every round):
- per-row: every prompt row of a turn prefilled on its own and no KV kept between turns (the fast
  engine before the first turn shared prompt prefills; reproduced here by switching both off);
- shared: equal prompt rows of a call prefilled once (the first turn: a problem's 8 episodes),
  each later turn's whole context prefilled again;
- kept: shared, and each episode's KV cache kept from one turn to the next (FastEngine.session),
  so a later turn prefills only the ids the turn added.

    OMP_NUM_THREADS=1 /work/bin/heavy --exclusive python benchmarks/episode_speed.py --model RUN/checkpoints/sft

Writes benchmarks/results/episode_speed/episode_speed.json and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTI = ("per-row", "shared", "kept")


@contextmanager
def multi_path(kind: str):
    """The fast engine's prefill as it was before each saving (see the module docstring)."""
    import r1lab.rollout.fast as fast
    from r1lab.rollout.base import IdSession

    first_equal, session = fast._first_equal, fast.FastEngine.session
    if kind in ("per-row", "shared"):
        fast.FastEngine.session = lambda self: IdSession(self)
    if kind == "per-row":
        fast._first_equal = lambda prompts: None
    try:
        yield
    finally:
        fast._first_equal, fast.FastEngine.session = first_equal, session


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="an SFT checkpoint of tool_calc (HF directory)")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="samples (episodes) per problem")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "episode_speed"))
    args = ap.parse_args()

    import torch

    from r1lab.models import load_model
    from r1lab.rollout import FastEngine, SamplingParams
    from r1lab.rollout.episodes import EpisodeLimits, episode_metrics, run_episodes
    from r1lab.tasks import generate_splits

    model, tok = load_model(args.model, "float32")
    engine = FastEngine(model, tok, batch_size=args.batch_size, dtype="float32")
    _, problems = generate_splits(["multiply"], 1, args.problems, 2, seed=123)
    params = SamplingParams(temperature=1.0, max_new_tokens=40)
    settings = {"tools": ["calculator"], "call_format": "tags", "instructions": False, "max_tool_calls": 2}
    limits = EpisodeLimits(max_turns=3, max_tokens=96)

    calls: list[dict] = []  # each generate_ids call of a multi-turn rollout: the turn's engine work
    run_ids = engine._continue

    def timed(prompts, *a, **k):
        t0 = time.perf_counter()
        out = run_ids(prompts, *a, **k)
        s = engine.stats
        calls.append({"rows": len(prompts), "seconds": time.perf_counter() - t0, "prefilled_tokens": s["prefilled_tokens"],
                      "kept_tokens": s.get("kept_tokens", 0), "decoded_tokens": s["decoded_tokens"]})
        return out

    engine._continue = timed

    def single(seed: int) -> dict:
        t0 = time.perf_counter()
        cs = engine.generate(problems, params, n=args.n, seed=seed)
        s = time.perf_counter() - t0
        return {"seconds": s, "model_tokens": sum(len(c.response_ids) for c in cs), "calls": 1,
                "prefilled_tokens": engine.stats["prefilled_tokens"]}

    def multi(kind: str, seed: int) -> tuple[dict, list]:
        calls.clear()
        with multi_path(kind):
            t0 = time.perf_counter()
            eps = run_episodes(engine, problems, params, n=args.n, seed=seed, env="tools", env_settings=settings,
                               limits=limits)
            s = time.perf_counter() - t0
        m = episode_metrics(eps)
        return {"seconds": s, "model_tokens": sum(t.model_tokens for ep in eps for t in ep.turns),
                "env_tokens": sum(t.env_tokens for ep in eps for t in ep.turns),
                "env_seconds": sum(t.env_seconds for ep in eps for t in ep.turns),
                "turns_per_episode": m["env/turns"], "tool_calls_per_episode": m["env/tool_calls"],
                "turns": [dict(c) for c in calls]}, [(ep.ids, ep.mask) for ep in eps]

    single(0)  # warm-up: packed weights, kernels, the calculator
    for kind in MULTI:
        multi(kind, 0)
    rounds = []
    for r in range(args.rounds):
        row = {"single": single(r + 1)}
        episodes = {}
        for kind in MULTI:
            row[kind], episodes[kind] = multi(kind, r + 1)
        row["same_episodes"] = episodes["per-row"] == episodes["shared"] == episodes["kept"]
        for kind in ("single", *MULTI):
            row[kind]["tokens_per_s"] = row[kind]["model_tokens"] / row[kind]["seconds"]
        rounds.append(row)
        print(f"round {r}: single {row['single']['model_tokens']} tokens in {row['single']['seconds']:.2f} s "
              f"({row['single']['tokens_per_s']:.0f}/s); multi {row['kept']['model_tokens']} model + "
              f"{row['kept']['env_tokens']} env tokens, {row['kept']['turns_per_episode']:.2f} turns/episode: "
              + ", ".join(f"{k} {row[k]['seconds']:.2f} s ({row[k]['tokens_per_s']:.0f}/s)" for k in MULTI)
              + f"; same episodes: {row['same_episodes']}", flush=True)
        for k in MULTI:
            print(f"  {k}: " + "; ".join(f"turn {t + 1}: {c['rows']} rows {c['seconds']:.2f} s, prefilled "
                                         f"{c['prefilled_tokens']}, kept {c['kept_tokens']}, decoded {c['decoded_tokens']}"
                                         for t, c in enumerate(row[k]["turns"])), flush=True)
    med = lambda kind, key: statistics.median(r[kind][key] for r in rounds)  # noqa: E731
    summary = {f"{k}_tokens_per_s": med(k, "tokens_per_s") for k in ("single", *MULTI)}
    summary.update({f"{k}_over_single": summary[f"{k}_tokens_per_s"] / summary["single_tokens_per_s"] for k in MULTI})
    summary["same_episodes_every_round"] = all(r["same_episodes"] for r in rounds)
    print(json.dumps(summary, indent=1))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {"host": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "episodes": args.problems * args.n, "args": vars(args), "rounds": rounds, "summary": summary}
    (out_dir / "episode_speed.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(rounds, summary, args.problems * args.n, out_dir / "episode_speed.png")
    print(f"wrote {out_dir}")


def plot(rounds: list[dict], summary: dict, episodes: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("single", *MULTI)
    labels = ["single-turn\ngenerate", "multi-turn\nper-row", "multi-turn\nshared", "multi-turn\nshared + kept KV"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    rates = [summary[f"{k}_tokens_per_s"] for k in kinds]
    bars = a.bar(labels, rates, color=["#888888", "#d62728", "#ff7f0e", "#2ca02c"])
    for bar, r in zip(bars, rates):
        a.text(bar.get_x() + bar.get_width() / 2, r, f"{r:,.0f}", ha="center", va="bottom", fontsize=9)
    a.set_ylabel("model tokens / s (median of rounds)")
    a.set_title(f"Rollout speed, {episodes} answers / episodes")
    a.set_ylim(0, max(rates) * 1.12)
    a.tick_params(axis="x", labelsize=9)
    # the seconds of one round (the median multi-turn one), split by turn and the rest (environment, Python)
    mid = sorted(rounds, key=lambda r: r["kept"]["seconds"])[len(rounds) // 2]
    colors = ["#1f77b4", "#9467bd", "#8c564b"]
    for x, k in enumerate(MULTI):
        bottom = 0.0
        for t, c in enumerate(mid[k]["turns"]):
            b.bar(x, c["seconds"], bottom=bottom, color=colors[t % 3], label=f"turn {t + 1} (engine)" if x == 0 else None)
            bottom += c["seconds"]
        b.bar(x, mid[k]["seconds"] - bottom, bottom=bottom, color="#cccccc",
              label="environment and episode code" if x == 0 else None)
    b.set_xticks(range(len(MULTI)), labels[1:], fontsize=9)
    b.set_ylabel("seconds (the median round)")
    b.set_title("Where a multi-turn rollout's time goes")
    b.set_ylim(0, max(mid[k]["seconds"] for k in MULTI) * 1.35)
    b.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

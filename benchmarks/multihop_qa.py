"""Multi-hop QA with the search tool on the tiny model: recipes/tiny/multihop_qa.yaml.

SFT on teacher episodes (three in four search twice, one in four once; the search outputs masked
out of the loss), then GRPO over multi-turn episodes with exact-match + token-F1 rewards; per
seed. Held-out episodes (eval.n per problem at eval.temperature) after SFT and after GRPO: exact
match, token F1, search calls per episode, the share of episodes that search twice, of those whose
first query is the question's entity (hop1) and whose first two are the entity and the bridge
(hop2), each with its standard error over problems (the n samples of a problem are not
independent, so the unit is the problem's mean), and the paired standard error of the change.

    OMP_NUM_THREADS=1 /work/bin/heavy python benchmarks/multihop_qa.py [--seeds 0 1] [key.sub=value ...]

Writes benchmarks/results/multihop_qa/{multihop_qa.png, results.json}; run directories go to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from hostinfo import cpu_model, isa_flags

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "multihop_qa.yaml"
METRICS = ("em", "f1", "searches", "two_searches", "hop1", "hop2")
SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)


def held_out(cfg, model, tok, problems, seed: int) -> dict:
    """Per problem, the means over its cfg.eval.n episodes of each metric; and their summary."""
    from r1lab.rollout import build_engine
    from r1lab.rollout.base import SamplingParams
    from r1lab.rollout.episodes import limits_of, run_episodes, score_episodes

    e = cfg.eval
    params = SamplingParams(temperature=e.temperature, top_p=e.top_p,
                            max_new_tokens=e.max_new_tokens or cfg.sampling.max_new_tokens)
    eps = run_episodes(build_engine(model, tok, cfg.rollout), problems, params, n=e.n, seed=seed,
                       env=cfg.env.name, env_settings=cfg.env.settings, limits=limits_of(cfg))
    scores = score_episodes(eps, {"exact_match": 1.0, "token_f1": 1.0}, workers=1)
    rows = []
    for i in range(len(problems)):
        part = range(i * e.n, (i + 1) * e.n)
        calls = [sum(t.tool_calls for t in eps[j].turns) for j in part]
        # the hops: the first query is the question's entity; the second the bridge the first output names
        queries = [[q.strip() for t, w in zip(eps[j].texts, eps[j].who) if w == "model" for q in SEARCH.findall(t)]
                   for j in part]
        meta = problems[i].metadata
        rows.append({"em": sum(scores["exact_match"][j] for j in part) / e.n,
                     "f1": sum(scores["token_f1"][j] for j in part) / e.n,
                     "searches": sum(calls) / e.n, "two_searches": sum(c >= 2 for c in calls) / e.n,
                     "hop1": sum(q[:1] == [meta["entity"]] for q in queries) / e.n,
                     "hop2": sum(q[:2] == [meta["entity"], meta["bridge"]] for q in queries) / e.n})
    sample = next((ep for ep in eps if sum(t.tool_calls for t in ep.turns) >= 2), eps[0])
    return {"per_problem": rows, **summary(rows), "example": sample.completion.transcript}


def summary(rows: list[dict]) -> dict:
    out = {}
    for k in METRICS:
        xs = [r[k] for r in rows]
        m = sum(xs) / len(xs)
        out[k] = m
        out[f"{k}_se"] = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    return out


def paired(before: list[dict], after: list[dict]) -> dict:
    """The change after - before of each metric, with the standard error of the per-problem differences."""
    return summary([{m: a[m] - b[m] for m in METRICS} for b, a in zip(before, after)])


def run(seed: int, out: Path, overrides: list[str], sft_only: bool = False) -> dict:
    import torch

    from r1lab.config import load_config
    from r1lab.runs import RunDir, read_metrics
    from r1lab.stages import check_run_config, load_policy, prepare_data, run_rl, run_sft

    torch.manual_seed(seed)
    cfg = check_run_config(load_config(str(RECIPE), [f"out_dir={out}", f"name=multihop_qa-s{seed}", f"seed={seed}",
                                                     f"data.seed={seed}", *overrides]))
    run_dir = RunDir.create(cfg)
    t0 = time.time()
    data = prepare_data(cfg, run_dir)
    model, tok = load_policy(cfg, data)
    run_sft(cfg, run_dir, model, tok, data, show_progress=False)
    t_sft = time.time() - t0
    sft = held_out(cfg, model, tok, data.eval, seed=cfg.seed)
    print(f"seed {seed}: after SFT ({t_sft:.0f} s) " + " ".join(f"{k}={sft[k]:.3f}" for k in METRICS), flush=True)
    if sft_only:
        return {"seed": seed, "sft_seconds": round(t_sft, 1), "sft": {k: v for k, v in sft.items() if k != "per_problem"}}
    t1 = time.time()
    run_rl(cfg, run_dir, model, tok, data, show_progress=True)
    t_rl = time.time() - t1
    rl = held_out(cfg, model, tok, data.eval, seed=cfg.seed)
    print(f"seed {seed}: after GRPO " + " ".join(f"{k}={rl[k]:.3f}" for k in METRICS), flush=True)
    rows = [r for r in read_metrics(run_dir.file("metrics.jsonl")) if r["step"] > 0]
    train = [{k: r.get(k) for k in ("step", "reward/total", "reward/exact_match", "reward/token_f1", "env/tool_calls",
                                    "env/turns", "env/tool_errors", "response/length")} for r in rows]
    evals = [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("eval/")}} for r in rows if "eval/avg" in r]
    return {"seed": seed, "seconds": round(time.time() - t0, 1), "sft_seconds": round(t_sft, 1),
            "rl_seconds": round(t_rl, 1), "sft_traces": len(data.sft),
            "sft": {k: v for k, v in sft.items() if k != "per_problem"},
            "grpo": {k: v for k, v in rl.items() if k != "per_problem"},
            "change": paired(sft["per_problem"], rl["per_problem"]), "evals": evals, "train": train}


def host() -> dict:
    return {"cpu": cpu_model(), "flags": " ".join(isa_flags()), "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    labels = [("em", "exact match"), ("f1", "token F1"), ("two_searches", "episodes that\nsearch twice"),
              ("hop2", "both queries right\n(entity, bridge)")]
    width = 0.8 / (2 * len(runs))
    for i, r in enumerate(runs):
        for j, (stage, name) in enumerate((("sft", "SFT"), ("grpo", "GRPO"))):
            x = [k + (2 * i + j - len(runs) + 0.5) * width for k in range(len(labels))]
            c = r["change"]
            extra = f" (EM {100 * c['em']:+.1f} ± {100 * c['em_se']:.1f} paired)" if stage == "grpo" else ""
            axes[0].bar(x, [r[stage][k] for k, _ in labels], width, yerr=[2 * r[stage][f"{k}_se"] for k, _ in labels],
                        capsize=3, color=f"C{i}", alpha=0.45 if stage == "sft" else 0.95,
                        label=f"seed {r['seed']} {name}{extra}")
    axes[0].set_xticks(range(len(labels)), [n for _, n in labels])
    axes[0].set(title="held-out (100 problems x 4), after SFT and after GRPO\n(error bars: 2 standard errors over problems)",
                ylim=(0, 1))
    for i, r in enumerate(runs):
        steps = [t["step"] for t in r["train"]]
        em = [t["reward/exact_match"] for t in r["train"]]
        smooth = [sum(em[max(0, j - 4): j + 1]) / len(em[max(0, j - 4): j + 1]) for j in range(len(em))]
        axes[1].plot(steps, em, color=f"C{i}", alpha=0.3, lw=0.8)
        axes[1].plot(steps, smooth, color=f"C{i}", label=f"seed {r['seed']} training EM (mean of 5 steps)")
        held = [(0, r["sft"]["em"])] + [(e["step"], e["eval/avg"]) for e in r["evals"]] + [(steps[-1], r["grpo"]["em"])]
        axes[1].plot(*zip(*held), "o--", color=f"C{i}", ms=5, label=f"seed {r['seed']} held-out EM")
        axes[2].plot(steps, [t["env/tool_calls"] for t in r["train"]], color=f"C{i}", label=f"seed {r['seed']}")
    axes[1].set(title="exact match: training rollouts and held-out", xlabel="GRPO step", ylim=(0, 1))
    axes[2].set(title="training rollouts: search calls per episode", xlabel="GRPO step", ylim=(0, 3.1))
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    h = res["host"]
    fig.suptitle(f"multihop_qa: tiny model, SFT on search episodes (outputs masked) then GRPO (EM + 0.5 F1). "
                 f"{h['cpu']} ({h['flags'].strip()}), {h['date']}, one shared CPU slot, 1 thread", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--out", default="/tmp/r1lab-multihop")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from results.json")
    ap.add_argument("--part", default="", help="write results-PART.json instead (seeds run as separate jobs)")
    ap.add_argument("--merge", nargs="*", default=[], help="parts to merge into results.json and the figure")
    ap.add_argument("--sft-only", action="store_true", help="stop after SFT and its held-out episodes (a diagnostic)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value settings on top of the recipe")
    args = ap.parse_args()
    results_dir = ROOT / "benchmarks" / "results" / "multihop_qa"
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = [json.loads((results_dir / f"results-{p}.json").read_text()) for p in args.merge]
        merged = {**parts[0], "runs": [r for p in parts for r in p["runs"]], "hosts": [p["host"] for p in parts]}
        (results_dir / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
        args.replot = True
    if args.replot:
        plot(json.loads((results_dir / "results.json").read_text()), results_dir / "multihop_qa.png")
        return
    res = {"host": host(), "overrides": args.overrides, "runs": []}
    for seed in args.seeds:
        res["runs"].append(run(seed, Path(args.out), args.overrides, args.sft_only))
        if args.sft_only:
            print(json.dumps(res["runs"][-1], indent=1))
            continue
        tmp = results_dir / "results.json.tmp"
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        tmp.replace(results_dir / (f"results-{args.part}.json" if args.part else "results.json"))
    if args.sft_only:
        return
    plot(res, results_dir / (f"multihop_qa-{args.part}.png" if args.part else "multihop_qa.png"))
    print("| seed | stage | exact match | token F1 | searches / episode | searches twice | first query right | "
          "both queries right | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in res["runs"]:
        for stage, secs in (("sft", r["sft_seconds"]), ("grpo", r["rl_seconds"])):
            s = r[stage]
            print(f"| {r['seed']} | {stage} | {s['em']:.3f} ± {s['em_se']:.3f} | {s['f1']:.3f} ± {s['f1_se']:.3f} | "
                  f"{s['searches']:.2f} | {s['two_searches']:.3f} | {s['hop1']:.3f} | {s['hop2']:.3f} | {secs:.0f} |")
        c = r["change"]
        print(f"| {r['seed']} | change | {c['em']:+.3f} ± {c['em_se']:.3f} | {c['f1']:+.3f} ± {c['f1_se']:.3f} | "
              f"{c['searches']:+.2f} | {c['two_searches']:+.3f} ± {c['two_searches_se']:.3f} | "
              f"{c['hop1']:+.3f} ± {c['hop1_se']:.3f} | {c['hop2']:+.3f} ± {c['hop2_se']:.3f} | |")


if __name__ == "__main__":
    main()

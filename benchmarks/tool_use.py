"""Tool use on the tiny model: recipes/tiny/tool_calc.yaml (2-digit by 2-digit multiplication, 4-digit
products, with a calculator),
SFT on verified traces (half call the calculator, half answer from memory), then GRPO over
multi-turn episodes; two seeds. Held-out episodes (eval.n samples per problem at eval.temperature)
after SFT (step 0), every train.eval_every steps and at the end: accuracy and the share of episodes
that call the tool.

    OMP_NUM_THREADS=1 /work/bin/heavy python benchmarks/tool_use.py [--seeds 0 1] [key.sub=value ...]

Writes benchmarks/results/tool_use/{tool_use.png, results.json}; run directories go to --out.
`--recipe` runs another tool recipe the same way (recipes/real/smollm2_python_tool.yaml: SmolLM2
with the Python tool), its results under benchmarks/results/<recipe name>/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "tool_calc.yaml"


def run(seed: int, out: Path, overrides: list[str], recipe: Path = RECIPE, base_eval: bool = False) -> dict:
    import torch

    from r1lab.config import load_config
    from r1lab.rollout import build_engine
    from r1lab.runs import RunDir, read_metrics
    from r1lab.stages import check_run_config, load_policy, prepare_data, run_rl, run_sft
    from r1lab.train.episodes import episode_eval

    torch.manual_seed(seed)
    cfg = check_run_config(load_config(str(recipe), [f"out_dir={out}", f"name={recipe.stem}-s{seed}", f"seed={seed}",
                                                     f"data.seed={seed}", *overrides]))
    run_dir = RunDir.create(cfg)
    t0 = time.time()
    data = prepare_data(cfg, run_dir)
    model, tok = load_policy(cfg, data)
    base = None
    if base_eval:  # the model before any training, the same held-out episodes
        base = episode_eval(cfg, build_engine(model, tok, cfg.rollout), data.eval, seed=cfg.seed)
        print(f"seed {seed}: before SFT {base}", flush=True)
    sft_summary = run_sft(cfg, run_dir, model, tok, data, show_progress=False)
    t_sft = time.time() - t0

    def held_out(step: int) -> dict:
        return {"step": step, **episode_eval(cfg, build_engine(model, tok, cfg.rollout), data.eval, seed=cfg.seed)}

    evals = [held_out(0)]
    print(f"seed {seed}: after SFT {evals[0]}", flush=True)
    run_rl(cfg, run_dir, model, tok, data, show_progress=True)
    rows = [r for r in read_metrics(run_dir.file("metrics.jsonl")) if r["step"] > 0]
    evals += [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("eval/")}} for r in rows if "eval/avg" in r]
    evals.append(held_out(cfg.train.steps))
    print(f"seed {seed}: after RL {evals[-1]}", flush=True)
    return {"seed": seed, "seconds": round(time.time() - t0, 1), "sft_seconds": round(t_sft, 1), "evals": evals,
            "sft_summary": {k: v for k, v in sft_summary.items() if isinstance(v, (int, float))}, "base": base,
            "train": [{k: r.get(k) for k in ("step", "reward/total", "accuracy", "env/tool_calls", "env/turns",
                                            "env/tool_errors", "response/length")} for r in rows]}


def split_by_tool(run_dir: Path) -> dict:
    """The held-out episodes of a finished run's SFT and GRPO checkpoints (the recipe's eval
    settings), split by whether the episode called a tool: how many, and how many were right."""
    from statistics import mean

    from r1lab.config import load_config
    from r1lab.models import load_model
    from r1lab.records import load_problems
    from r1lab.rollout import build_engine
    from r1lab.rollout.episodes import run_episodes, score_episodes
    from r1lab.rollout.base import SamplingParams
    from r1lab.train.episodes import limits_of

    cfg = load_config(str(run_dir / "config.yaml"))
    problems = load_problems(run_dir / "data" / "eval.jsonl")
    out = {}
    for ck in ("sft", "rl"):
        model, tok = load_model(str(run_dir / "checkpoints" / ck), "float32")
        params = SamplingParams(temperature=cfg.eval.temperature, max_new_tokens=cfg.sampling.max_new_tokens)
        eps = run_episodes(build_engine(model, tok, cfg.rollout), problems, params, n=cfg.eval.n, seed=0,
                           env=cfg.env.name, env_settings=cfg.env.settings, limits=limits_of(cfg))
        score_episodes(eps, {"accuracy": 1.0}, workers=1)
        calls = [ep.completion.verdict.correct for ep in eps if any(t.tool_calls for t in ep.turns)]
        none = [ep.completion.verdict.correct for ep in eps if not any(t.tool_calls for t in ep.turns)]
        out[ck] = {"with_call": len(calls), "acc_with_call": mean(calls) if calls else None,
                   "without": len(none), "acc_without": mean(none) if none else None}
        print(run_dir.name, ck, out[ck], flush=True)
    return out


def plot(runs: list[dict], path: Path, title: str = "tool_calc: 2-digit x 2-digit multiplication with a calculator, "
                                                     "tiny model, SFT then GRPO") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for r in runs:
        steps = [e["step"] for e in r["evals"]]
        axes[0].plot(steps, [e["eval/avg"] for e in r["evals"]], marker="o", label=f"seed {r['seed']}")
        axes[1].plot(steps, [e["eval/used_tool"] for e in r["evals"]], marker="o", label=f"seed {r['seed']}")
        axes[2].plot([t["step"] for t in r["train"]], [t["accuracy"] for t in r["train"]], label=f"seed {r['seed']} accuracy")
        axes[2].plot([t["step"] for t in r["train"]], [t["env/tool_calls"] for t in r["train"]], ls="--",
                     label=f"seed {r['seed']} tool calls / episode")
    axes[0].set(title="held-out accuracy (episodes, avg@n)", xlabel="GRPO step (0 = after SFT)", ylim=(0, 1))
    axes[1].set(title="held-out episodes that call a tool", xlabel="GRPO step (0 = after SFT)", ylim=(0, 1))
    axes[2].set(title="training rollouts", xlabel="GRPO step")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def kept_runs(path: Path, recipe: str, overrides: list[str], seeds: list[int], fresh: bool) -> list[dict]:
    """The runs of other seeds already in `path`, so seeds can run as separate jobs; none when `fresh`, and
    an error when the file is of another recipe or other overrides (its runs would not be comparable)."""
    if fresh or not path.exists():
        return []
    old = json.loads(path.read_text())
    if (Path(old["recipe"]).name, old["overrides"]) != (Path(recipe).name, overrides):
        raise SystemExit(f"{path} holds runs of {old['recipe']} {old['overrides']}, not of {recipe} {overrides}: "
                         "pass --fresh to replace them")
    return [r for r in old["runs"] if r["seed"] not in seeds]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--recipe", type=Path, default=RECIPE, help="a recipe with an env section, an SFT and an RL stage")
    ap.add_argument("--base-eval", action="store_true", help="also the held-out episodes of the model before SFT")
    ap.add_argument("--title", default="", help="the figure's title (default: tool_calc's, or the recipe's name)")
    ap.add_argument("--out", default="/tmp/r1lab-tool-use")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from results.json")
    ap.add_argument("--split", nargs="*", type=Path, default=[],
                    help="finished run directories: held-out accuracy with and without a tool call, SFT and GRPO")
    ap.add_argument("--fresh", action="store_true",
                    help="drop the other seeds' runs from results.json (default: a run of some seeds keeps the rest)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value settings on top of the recipe")
    args = ap.parse_args()
    name = "tool_use" if args.recipe.resolve() == RECIPE else args.recipe.stem
    results_dir = ROOT / "benchmarks" / "results" / name
    results_dir.mkdir(parents=True, exist_ok=True)
    figure = results_dir / f"{name}.png"
    titled = {"title": args.title} if args.title else {} if name == "tool_use" else {"title": name}
    if args.split:
        for run_dir in args.split:
            split_by_tool(run_dir)
        return
    if args.replot:
        plot(json.loads((results_dir / "results.json").read_text())["runs"], figure, **titled)
        return
    runs = [run(seed, Path(args.out), args.overrides, args.recipe.resolve(), args.base_eval) for seed in args.seeds]
    runs = kept_runs(results_dir / "results.json", str(args.recipe), args.overrides, args.seeds, args.fresh) + runs
    runs.sort(key=lambda r: r["seed"])
    (results_dir / "results.json").write_text(json.dumps({"recipe": str(args.recipe), "overrides": args.overrides,
                                                          "runs": runs}, indent=1) + "\n")
    plot(runs, figure, **titled)
    print("| seed | held-out acc after SFT | after GRPO | tool use after SFT | after GRPO | seconds |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        a, b = r["evals"][0], r["evals"][-1]
        print(f"| {r['seed']} | {a['eval/avg']:.3f} | {b['eval/avg']:.3f} | {a['eval/used_tool']:.3f} | "
              f"{b['eval/used_tool']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()

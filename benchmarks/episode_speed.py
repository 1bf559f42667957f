"""Multi-turn against single-turn rollouts: the same engine, the same model, the same problems, side
by side in one process, interleaved rounds.

The model is an SFT checkpoint of recipes/tiny/tool_calc.yaml (benchmarks/tool_use.py writes one):
about half its answers call the calculator. Single-turn, `engine.generate` samples each answer in
one call and the model writes the calculator's `<output>` block itself; multi-turn, `run_episodes`
stops each turn at `</calc>`, runs the calculator, appends the output ids and continues the episode
from its ids. Both generate about the same number of tokens per answer (the counts are printed):
the figure of merit is model tokens generated per second of wall time.

    OMP_NUM_THREADS=1 /work/bin/heavy --exclusive python benchmarks/episode_speed.py --model RUN/checkpoints/sft

Writes benchmarks/results/episode_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="an SFT checkpoint of tool_calc (HF directory)")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="samples (episodes) per problem")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "episode_speed.json"))
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

    def single(seed: int) -> dict:
        t0 = time.perf_counter()
        cs = engine.generate(problems, params, n=args.n, seed=seed)
        s = time.perf_counter() - t0
        return {"seconds": s, "model_tokens": sum(len(c.response_ids) for c in cs), "calls": 1}

    def multi(seed: int) -> dict:
        t0 = time.perf_counter()
        eps = run_episodes(engine, problems, params, n=args.n, seed=seed, env="tools", env_settings=settings,
                           limits=limits)
        s = time.perf_counter() - t0
        m = episode_metrics(eps)
        return {"seconds": s, "model_tokens": sum(t.model_tokens for ep in eps for t in ep.turns),
                "env_tokens": sum(t.env_tokens for ep in eps for t in ep.turns),
                "env_seconds": sum(t.env_seconds for ep in eps for t in ep.turns),
                "turns_per_episode": m["env/turns"], "tool_calls_per_episode": m["env/tool_calls"]}

    single(0), multi(0)  # warm-up: packed weights, kernels, the calculator
    rounds = []
    for r in range(args.rounds):
        a, b = single(r + 1), multi(r + 1)
        a["tokens_per_s"], b["tokens_per_s"] = a["model_tokens"] / a["seconds"], b["model_tokens"] / b["seconds"]
        rounds.append({"single": a, "multi": b})
        print(f"round {r}: single {a['model_tokens']} tokens in {a['seconds']:.2f} s ({a['tokens_per_s']:.0f}/s); "
              f"multi {b['model_tokens']} model + {b['env_tokens']} env tokens in {b['seconds']:.2f} s "
              f"({b['tokens_per_s']:.0f}/s, {b['turns_per_episode']:.2f} turns/episode, "
              f"{b['env_seconds']:.2f} s in the calculator)", flush=True)
    med = lambda kind, key: statistics.median(r[kind][key] for r in rounds)  # noqa: E731
    summary = {"single_tokens_per_s": med("single", "tokens_per_s"), "multi_tokens_per_s": med("multi", "tokens_per_s"),
               "single_model_tokens": med("single", "model_tokens"), "multi_model_tokens": med("multi", "model_tokens"),
               "multi_over_single": med("multi", "tokens_per_s") / med("single", "tokens_per_s")}
    print(json.dumps(summary, indent=1))
    out = {"host": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "episodes": args.problems * args.n, "args": vars(args), "rounds": rounds, "summary": summary}
    path = Path(args.out)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

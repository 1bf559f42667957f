"""What the Ray rollout group and one-step-off sampling cost and save, on one machine.

1. One generate call of the same work (prompts x samples) on a tiny model: the fast engine in this
   process against a RayRolloutGroup of 1 and 2 actors, each running the same fast engine. For the
   group, the call's wall time is split into the slowest actor's sampling and the rest
   (orchestration and transfer: pickling prompts and completions through the object store,
   scheduling); and the weights sync (one ray.put, every actor loading it) is timed on its own.
2. Short GRPO runs, synchronous against one-step-off (cluster.off_policy_steps=1), with the engine
   in this process and with 2 rollout actors: wall time per step and where it goes.

    OMP_NUM_THREADS=1 python benchmarks/cluster_overhead.py [--repeats 5] [--steps 6]

On a 2-core host the actors compete with the controller for the same cores: the figures show the
overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ray  # noqa: E402
import torch  # noqa: E402

from r1lab.cluster import with_off_policy_correction  # noqa: E402
from r1lab.cluster.rollout_group import RayRolloutGroup  # noqa: E402
from r1lab.cluster.runtime import get  # noqa: E402
from r1lab.config import ClusterConfig, RunConfig, TinyModelConfig  # noqa: E402
from r1lab.models import build_tiny_model, build_tiny_tokenizer, merged_weights  # noqa: E402
from r1lab.records import Problem  # noqa: E402
from r1lab.rollout import FastEngine, SamplingParams  # noqa: E402
from r1lab.train.rl import rl_engine, train_rl  # noqa: E402

CORPUS = ["<|im_start|>user\nCompute ((7 + 3) * 4) - 5.<|im_end|>\n<|im_start|>assistant\n",
          "<think>7 + 3 = 10\n10 * 4 = 40\n40 - 5 = 35</think>\n<answer>35</answer>"] * 20
PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute 6 * 7."]
SIZE = TinyModelConfig(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768)


def problems(k: int) -> list[Problem]:
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer="1") for i in range(k)]


def cfg_with(**cluster) -> RunConfig:
    cfg = RunConfig()
    cfg.rollout.engine, cfg.rollout.dtype = "fast", "float32"
    cfg.cluster = ClusterConfig(**{"timeout_s": 600.0, **cluster})
    cfg.sampling.max_new_tokens = 32
    cfg.train.prompts_per_step, cfg.train.group_size = 4, 8
    cfg.reward.verify_workers = 1
    cfg.reward.terms = {"accuracy": 1.0, "repetition": 1.0}
    cfg.reward.settings = {"repetition_ngram": 1, "repetition_penalty": 0.1}
    return cfg


def med(xs) -> str:
    return f"{statistics.median(xs):.3f}"


def generate_calls(model, tok, repeats: int) -> None:
    params, P, G = SamplingParams(max_new_tokens=32), 4, 8
    print(f"\n## one generate call: {P} prompts x {G} samples, 32 new tokens, h256-L4 fp32, median of {repeats}")
    print("| engine | wall s | slowest actor sampling s | orchestration + transfer s | weights sync s |")
    print("|---|---:|---:|---:|---:|")
    local = FastEngine(model, tok, dtype="float32")
    local.generate(problems(P), params, n=G, seed=0)  # warm-up: weights packed, kernels loaded
    walls = []
    for r in range(repeats):
        t = time.perf_counter()
        local.generate(problems(P), params, n=G, seed=r)
        walls.append(time.perf_counter() - t)
    print(f"| fast engine in the controller | {med(walls)} | - | - | - |")
    for actors in (1, 2):
        group = RayRolloutGroup(cfg_with(rollout_workers=actors), model, tok)
        group.generate(problems(P), params, n=G, seed=0)
        walls, inside, syncs = [], [], []
        for r in range(repeats):
            t = time.perf_counter()
            group.generate(problems(P), params, n=G, seed=r)
            walls.append(time.perf_counter() - t)
            inside.append(group.stats["cluster/generate_actor_s"])
            t = time.perf_counter()  # weights sync: put once, every actor loads it, all confirmed
            group.load_weights(merged_weights(model), group.policy_version)
            for k, a in enumerate(group.actors):
                get(a.version_held.remote(), 600, f"rollout worker {k}")
            syncs.append(time.perf_counter() - t)
        group.close()
        print(f"| Ray group, {actors} actor{'s' * (actors > 1)} | {med(walls)} | {med(inside)} | "
              f"{med([w - i for w, i in zip(walls, inside)])} | {med(syncs)} |")


def steps(model, tok, n_steps: int) -> None:
    print(f"\n## GRPO steps (4 prompts x 8 samples, 32 new tokens, h256-L4 fp32): mean of steps 2..{n_steps}")
    print("| rollout | mode | s/step | collect wait s | estimate + update s | of it: waiting for the next batch s |")
    print("|---|---|---:|---:|---:|---:|")
    for workers in (0, 2):
        for off in (0, 1):
            cfg = with_off_policy_correction(cfg_with(rollout_workers=workers, off_policy_steps=off))
            cfg.train.steps = n_steps
            m = copy.deepcopy(model)
            engine = rl_engine(cfg, m, tok)  # the fast engine, or the Ray group of cluster.rollout_workers
            try:
                hist = train_rl(cfg, m, tok, engine, problems(16), show_progress=False)[1:]
            finally:
                engine.close()
            mean = lambda k: statistics.mean(h.get(k, 0.0) for h in hist)  # noqa: E731
            print(f"| {'2 Ray actors' if workers else 'fast engine in the controller'} | {'async' if off else 'sync'} | "
                  f"{mean('time/step'):.2f} | {mean('time/collect'):.2f} | {mean('time/step') - mean('time/collect'):.2f} | "
                  f"{mean('time/sample_wait'):.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = build_tiny_tokenizer(CORPUS, vocab_size=300)
    model = build_tiny_model(tok, SIZE, seed=0).eval()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print(f"# cluster overhead, {time.strftime('%Y-%m-%d %H:%M')} UTC, {platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")
    try:
        generate_calls(model, tok, args.repeats)
        steps(model, tok, args.steps)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

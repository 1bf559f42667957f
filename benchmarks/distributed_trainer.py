"""The sharded trainer group against the local trainer on the same work: one RL step's trainer
side (old-policy pass, policy update, weights for the engine) on one sampled batch, for two tiny
models. For the group, each call's round trip is split into the slowest worker's time inside the
call and the rest (pickling the batch and results through the pipes, waking the workers, loading
the gathered weights into the controller's copy).

    OMP_NUM_THREADS=1 python benchmarks/distributed_trainer.py [--workers 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from r1lab.config import RunConfig, TinyModelConfig
from r1lab.models import build_tiny_model, build_tiny_tokenizer
from r1lab.records import Problem
from r1lab.rollout import HFEngine
from r1lab.train.distributed import PolicyWorkerGroup
from r1lab.train.policy import LocalPolicyWorker
from r1lab.train.rl import RLTrainer

CORPUS = ["<|im_start|>user\nCompute ((7 + 3) * 4) - 5.<|im_end|>\n<|im_start|>assistant\n",
          "<think>7 + 3 = 10\n10 * 4 = 40\n40 - 5 = 35</think>\n<answer>35</answer>"] * 20
SIZES = {"h64-L2 (the tests' model)": TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                                      intermediate_size=128),
         "h256-L4": TinyModelConfig(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768)}
CALLS = ("logprobs", "update_policy", "engine_weights")


def step(worker, batch) -> dict[str, float]:
    """Seconds of each trainer call of one step; for a group also its workers' share."""
    out = {}
    for name in CALLS:
        t = time.perf_counter()
        if name == "logprobs":
            worker.logprobs(batch, "policy")
        elif name == "update_policy":
            worker.update_policy(batch)
        else:
            dict(worker.engine_weights())
        out[name] = time.perf_counter() - t
        if isinstance(worker, PolicyWorkerGroup):
            out[name + ":workers"] = worker.last_call[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tok = build_tiny_tokenizer(CORPUS, vocab_size=300)
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 32
    cfg.train.group_size = 4
    cfg.train.mini_batches = 2
    cfg.train.micro_batch_size = 4
    cfg.train.shared_prefix = False  # the group runs whole rows: the same kernels on both sides
    problems = [Problem(id=f"p{i}", prompt=f"Compute {i} + {i + 3}.", answer="1") for i in range(4)]
    print(f"{args.workers} workers, torch threads per process {torch.get_num_threads()}, "
          f"16 rows x up to 32 new tokens, 2 mini-batches of 2 micro-batches of 4; median of {args.repeats}")
    for label, size in SIZES.items():
        model = build_tiny_model(tok, size, seed=0)
        trainer = RLTrainer(cfg, copy.deepcopy(model), tok, HFEngine(model, tok))
        cs = trainer.rollout(problems, seed=0)
        batch = trainer.make_batch(cs, torch.tensor([float(i % 3 == 0) for i in range(len(cs))]),
                                   torch.arange(4).repeat_interleave(4))
        t = time.perf_counter()
        group = PolicyWorkerGroup(cfg, copy.deepcopy(model), trainer.method, workers=args.workers)
        start = time.perf_counter() - t
        local = LocalPolicyWorker(cfg, copy.deepcopy(model), trainer.method)
        rows = {}
        for name, worker in (("local", local), ("group", group)):
            step(worker, batch)  # warm-up
            runs = [step(worker, batch) for _ in range(args.repeats)]
            rows[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        group.close()
        n = sum(p.numel() for p in model.parameters())
        print(f"\n{label}: {n / 1e6:.2f} M parameters; group start-up {start:.1f} s")
        print(f"  {'call':<16}{'local s':>10}{'group s':>10}{'in workers':>12}{'outside':>10}")
        for c in CALLS:
            g, w = rows["group"][c], rows["group"][c + ":workers"]
            print(f"  {c:<16}{rows['local'][c]:>10.3f}{g:>10.3f}{w:>12.3f}{g - w:>10.3f}")
        tl, tg = sum(rows["local"][c] for c in CALLS), sum(rows["group"][c] for c in CALLS)
        tw = sum(rows["group"][c + ":workers"] for c in CALLS)
        print(f"  {'step':<16}{tl:>10.3f}{tg:>10.3f}{tw:>12.3f}{tg - tw:>10.3f}")


if __name__ == "__main__":
    main()

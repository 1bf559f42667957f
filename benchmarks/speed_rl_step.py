"""One GRPO step, r1lab against TRL's GRPOTrainer, at identical settings on this CPU.

Each contender runs in its own subprocess (so its peak RSS, read from ru_maxrss, is its own) on the
same prompts in the same order, with the same reward (r1lab's math verifier: 1 if the answer is
right), the same sampling (T=1, no top-k / top-p), the same group size, max new tokens, learning
rate (constant), no gradient checkpointing (TRL's default is on; off is its faster setting), loss aggregation (token mean = TRL's default "dapo"), no KL (beta 0: no reference
model), one update per rollout batch. Settings:

- smollm2: SmolLM2-135M-Instruct, 2 prompts x 8 completions, max 96 new tokens, fp32 and bf16
  (TRL: bf16=True, autocast over fp32 weights; r1lab: FastEngine bf16 + train.bf16 autocast);
- tiny: the tiny Qwen2 (hidden 128, 4 layers), 4 prompts x 8 = 32 completions, max 48 new tokens, fp32;
- tiny-sft: the same model first fine-tuned (r1lab SFT) on sums so that it answers ~20% of them: its
  rewards are not all 0 (the equal-results check), its answers are short (~9 tokens).

r1lab trains on length-sorted micro-batches of 4 rows on SmolLM2 (its recipes' setting; the same
gradient as one 16-row batch, less padding); TRL on its one 16-row batch (smaller per-device
batches would also shrink its generation batch). Contenders run interleaved (r1lab, TRL, r1lab,
[TRL]); the speed-up is the ratio of their mean seconds per step.

Reported: seconds per step (median over the steps after `--warmup`), r1lab's breakdown into
generate / score / reference / train, peak RSS, r1lab's reward trajectory from two runs with the
same seed (identical), r1lab's mean reward against TRL's (a z-score: the samplers differ, so equal
results means agreement within sampling noise), and the engine/trainer log-prob mismatch. TRL is a benchmark-only extra (`pip install
r1lab[bench]`). Run under the shared lock:

    flock /tmp/r1lab-cpu.lock .venv/bin/python benchmarks/speed_rl_step.py

Writes benchmarks/results/speed_rl_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "smollm2": {"prompts_per_step": 2, "group_size": 8, "max_new_tokens": 96, "r1lab_micro_batch": 4},
    "tiny": {"prompts_per_step": 4, "group_size": 8, "max_new_tokens": 48, "r1lab_micro_batch": 64},
}
SETTINGS["tiny-sft"] = SETTINGS["tiny"]
LR = 1e-6


def problems(k: int, seed: int):
    """k arithmetic word problems with numeric answers, the same list for both contenders."""
    import random

    from r1lab.records import Problem

    rng = random.Random(seed)
    out = []
    for i in range(k):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        out.append(Problem(id=f"b{i}", prompt=f"What is {a} + {b}? Give the final answer as a number.",
                           answer=str(a + b), task="math"))
    return out


def tiny_model_dir(root: Path, sft: bool = False) -> Path:
    """The tiny Qwen2 (h128, 4 layers) and its tokenizer, saved once so both contenders load it.
    Untrained (`sft=False`, the issue's speed setting: its answers run to the token limit and are
    never right), or fine-tuned (r1lab SFT, ~50 s) on sums of the same kind until it answers ~20%
    of them, so both contenders' rewards carry signal for the equal-results check (a speed
    benchmark, not an evaluation: overlap with its prompts does not matter)."""
    from r1lab.config import SFTConfig, TinyModelConfig
    from r1lab.models import build_tiny_model, build_tiny_tokenizer, save_model
    from r1lab.train.sft import sft_examples, train_sft

    path = root / ("tiny-h128-l4-sft" if sft else "tiny-h128-l4")
    if not (path / "config.json").exists():
        train = problems(3000, 99)
        answer = lambda p: f"<think>{p.answer}</think><answer>{p.answer}</answer>"  # noqa: E731
        corpus = [f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n{answer(p)}" for p in train[:400]]
        tok = build_tiny_tokenizer(corpus, vocab_size=512)
        model = build_tiny_model(tok, TinyModelConfig(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                                                      intermediate_size=384, max_positions=512), seed=0)
        if sft:
            train_sft(model, tok, sft_examples(tok, [(p, answer(p)) for p in train]),
                      SFTConfig(epochs=TINY_SFT_EPOCHS, batch_size=32, lr=2e-3, warmup_steps=20), seed=0,
                      show_progress=False)
        save_model(model, tok, path)
    return path


TINY_SFT_EPOCHS = 6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


# ------------------------------------------------------------------------------------------------
# contenders (each runs in its own process)


def run_r1lab(model_path: str, precision: str, steps: int, seed: int, s: dict) -> dict:
    import torch

    from r1lab.config import RunConfig
    from r1lab.models import load_model
    from r1lab.rollout import make_engine
    from r1lab.train.rl import RLTrainer
    from r1lab.train.sampler import PromptSampler

    class FixedOrder(PromptSampler):
        """The prompts in list order, exactly as TRL's unshuffled dataloader hands them out."""

        def next(self, k):
            out = self.pools[0][:k]
            self.pools[0] = self.pools[0][k:]
            return out

    cfg = RunConfig()
    cfg.seed = seed
    cfg.sampling.temperature, cfg.sampling.max_new_tokens = 1.0, s["max_new_tokens"]
    cfg.train.prompts_per_step, cfg.train.group_size = s["prompts_per_step"], s["group_size"]
    # micro-batches of 4 length-sorted rows (r1lab's recipes' setting): the gradient is the same as
    # one 16-row forward, the padding is not (the rows' lengths differ by up to ~2x)
    cfg.train.lr, cfg.train.warmup_steps, cfg.train.micro_batch_size = LR, 1, s["r1lab_micro_batch"]
    cfg.train.bf16 = precision == "bf16"
    cfg.algo.loss_agg = "token-mean"
    cfg.reward.terms = {"accuracy": 1.0}
    model, tok = load_model(model_path)
    engine = make_engine(model, tok, "fast", dtype="bfloat16" if precision == "bf16" else "float32")
    trainer = RLTrainer(cfg, model, tok, engine)
    sampler = FixedOrder(problems(steps * s["prompts_per_step"], seed=1), seed=seed)
    history = []
    for _ in range(steps):
        m, _ = trainer.train_step(sampler)
        history.append(m)
    keys = ("time/step", "time/generate", "time/score", "time/reference", "time/train", "reward/total",
            "rollout/logprob_diff_mean", "rollout/logprob_diff_max", "response/length", "loss/policy")
    return {"steps": [{k: m.get(k) for k in keys} for m in history], "peak_rss_mb": peak_rss_mb(),
            "engine": type(engine).__name__, "threads": torch.get_num_threads()}


def run_trl(model_path: str, precision: str, steps: int, seed: int, s: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lab.models import load_model
    from r1lab.verify import verify_batch

    ps = problems(steps * s["prompts_per_step"], seed=1)
    by_prompt = {p.prompt: p for p in ps}
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}], "question": p.prompt} for p in ps])

    def accuracy(completions, question, **_):  # the same verifier r1lab's accuracy term uses
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if v.correct else 0.0 for v in verify_batch([by_prompt[q] for q in question], texts)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    model, tok = load_model(model_path)  # fp32 weights; bf16 = autocast, as TRL's bf16=True does
    G = s["group_size"]
    out_dir = tempfile.mkdtemp(prefix="trl_bench_")
    args = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=precision == "bf16", seed=seed,
        per_device_train_batch_size=s["prompts_per_step"] * G, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=s["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=LR, lr_scheduler_type="constant", beta=0.0, num_iterations=1, loss_type="dapo",
        max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", shuffle_dataset=False,
        dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=False,  # TRL turns it on by default; off is faster here (memory is no issue)
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy], args=args, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"steps": [{"time/step": t, "reward/total": l.get("reward"),
                       "response/length": l.get("completions/mean_length")} for t, l in zip(timer.times, logs)],
            "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------
# orchestration


def contender(impl: str, model: str, precision: str, steps: int, seed: int, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--run", impl, "--model", model, "--precision", precision,
           "--steps", str(steps), "--seed", str(seed), "--root", str(root)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{impl} {model} {precision} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["wall_s"] = time.time() - t0
    return res


def summarise(res: dict, warmup: int) -> dict:
    timed = res["steps"][warmup:]
    out = {"s_per_step": statistics.median(m["time/step"] for m in timed), "peak_rss_mb": res["peak_rss_mb"],
           "timed_steps": len(timed), "rewards": [m["reward/total"] for m in res["steps"]]}
    for k in ("time/generate", "time/score", "time/reference", "time/train"):
        if timed[0].get(k) is not None:
            out[k] = statistics.median(m[k] for m in timed)
    for k in ("rollout/logprob_diff_mean", "rollout/logprob_diff_max"):
        if timed[0].get(k) is not None:
            out[k] = statistics.mean(m[k] for m in res["steps"])
    out["mean_response_length"] = statistics.mean(m["response/length"] for m in timed if m["response/length"] is not None)
    return out


def reward_agreement(r1lab: list[float], trl: list[float], per_step: int) -> dict[str, float]:
    """Mean 0/1 reward of each toolkit over all its completions and the z-score of their difference
    (binomial standard errors): the samplers differ, so equal results means |z| below ~2."""
    import math

    out = {}
    for name, rewards in (("r1lab", r1lab), ("trl", trl)):
        n = per_step * len(rewards)
        mean = sum(rewards) / len(rewards)
        out[f"{name}_mean"], out[f"{name}_n"] = mean, n
        out[f"{name}_se"] = math.sqrt(max(mean * (1 - mean), 1e-12) / n)
    out["z"] = (out["r1lab_mean"] - out["trl_mean"]) / math.hypot(out["r1lab_se"], out["trl_se"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", choices=["r1lab", "trl"])
    ap.add_argument("--model", default="smollm2", choices=sorted(SETTINGS))
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tiny-steps", type=int, default=12, help="steps of the (cheap) tiny-model runs")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="")
    ap.add_argument("--trl-twice", action="store_true", help="a second TRL run after the second r1lab run")
    ap.add_argument("--only", default="", help="comma list of smollm2-fp32, smollm2-bf16, tiny-fp32, tiny-sft-fp32")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="r1lab_speed_"))
    if args.run:
        path = "smollm2-135m-instruct" if args.model == "smollm2" else str(tiny_model_dir(root, sft=args.model == "tiny-sft"))
        fn = run_r1lab if args.run == "r1lab" else run_trl
        res = fn(path, args.precision, args.steps, args.seed, SETTINGS[args.model])
        print("RESULT " + json.dumps(res), flush=True)
        return
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                            f"torch {torch.__version__}",
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": SETTINGS, "lr": LR,
                 "steps": args.steps, "warmup": args.warmup, "runs": {}}
    try:
        import trl

        out["trl_version"] = trl.__version__
    except ImportError:
        raise SystemExit("TRL is not installed: pip install 'r1lab[bench]'")
    from r1lab.rollout.fast import cpu_has_native_bf16

    out["native_bf16"] = cpu_has_native_bf16()
    configs = [("smollm2", "fp32"), ("smollm2", "bf16"), ("tiny", "fp32"), ("tiny-sft", "fp32")]
    if args.only:
        configs = [c for c in configs if f"{c[0]}-{c[1]}" in args.only.split(",")]
    elif not out["native_bf16"]:  # emulated bf16 is far slower than fp32 for both contenders: not a setting anyone runs
        configs = [c for c in configs if c[1] != "bf16"]
        print("this CPU has no native bf16 matmuls: measuring fp32 only (--only smollm2-bf16 forces it)", flush=True)
    for model, _ in configs:  # once, before the contenders' processes look for them
        if model.startswith("tiny"):
            tiny_model_dir(root, sft=model == "tiny-sft")
    for model, precision in configs:
        key = f"{model}-{precision}"
        steps = args.steps if model == "smollm2" else args.tiny_steps
        # interleaved (r1lab, TRL, r1lab again, TRL again): this VM's speed drifts by up to 2x within
        # minutes, so each contender gets an early and a late slot and the ratio uses both
        runs = {"r1lab": contender("r1lab", model, precision, steps, args.seed, root)}
        runs["trl"] = contender("trl", model, precision, steps, args.seed, root)
        runs["r1lab_same_seed"] = contender("r1lab", model, precision, steps, args.seed, root)
        if args.trl_twice:
            runs["trl_again"] = contender("trl", model, precision, steps, args.seed, root)
        out["runs"][key] = {name: {"summary": summarise(r, args.warmup), "raw": r} for name, r in runs.items()}
        s = {name: out["runs"][key][name]["summary"] for name in runs}
        s_r = statistics.mean([s["r1lab"]["s_per_step"], s["r1lab_same_seed"]["s_per_step"]])
        s_t = statistics.mean([s[k]["s_per_step"] for k in ("trl", "trl_again") if k in s])
        out["runs"][key]["r1lab_s_per_step"], out["runs"][key]["trl_s_per_step"] = s_r, s_t
        out["runs"][key]["speedup_vs_trl"] = s_t / s_r
        out["runs"][key]["same_seed_rewards_equal"] = s["r1lab"]["rewards"] == s["r1lab_same_seed"]["rewards"]
        n = SETTINGS[model]["prompts_per_step"] * SETTINGS[model]["group_size"]
        agree = out["runs"][key]["reward_agreement"] = reward_agreement(s["r1lab"]["rewards"], s["trl"]["rewards"], n)
        print(f"{key}: r1lab {s_r:.2f} s/step, TRL {s_t:.2f} s/step -> {s_t / s_r:.2f}x; "
              f"RSS {s['r1lab']['peak_rss_mb']:.0f} vs {s['trl']['peak_rss_mb']:.0f} MB; "
              f"rewards {s['r1lab']['rewards']} / {s['r1lab_same_seed']['rewards']} (TRL {s['trl']['rewards']}); "
              f"mean reward r1lab {agree['r1lab_mean']:.3f} vs TRL {agree['trl_mean']:.3f}, z = {agree['z']:.2f}",
              flush=True)
        (RESULTS / "speed_rl_step.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'speed_rl_step.json'}")


if __name__ == "__main__":
    main()

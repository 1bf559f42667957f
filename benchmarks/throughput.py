"""Throughput of the demo model: rollout (generated tokens/s) and training (tokens/s).

    .venv/bin/python benchmarks/throughput.py [--batch 128] [--new-tokens 64] [--repeats 3]

Builds the demo's tiny model (random weights; speed does not depend on them), then times
HFEngine.generate with every sequence forced to run the full budget (no stop token can end it
early, so the count is exact) and one SFT-style forward+backward+AdamW step on batches of
prompt+response sequences of the demo's shape. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from r1lab.config import RunConfig  # noqa: E402
from r1lab.models import build_tiny_model, build_tiny_tokenizer, count_parameters  # noqa: E402
from r1lab.rollout import HFEngine, SamplingParams  # noqa: E402
from r1lab.tasks import generate_splits, get_task  # noqa: E402
from r1lab.train.common import make_optimizer, pad_sequences, token_logprobs  # noqa: E402
from r1lab.train.sft import sft_examples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cfg = RunConfig()
    train, held = generate_splits(cfg.data.tasks, 600, 50, cfg.data.difficulty, cfg.data.seed)
    pairs = [(p, get_task(p.metadata["family"]).teacher_trace(p)) for p in train[:512]]
    corpus = [f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n" for p in train] + [r for _, r in pairs]
    tok = build_tiny_tokenizer(corpus)
    model = build_tiny_model(tok, cfg.model.tiny).eval()

    # rollout: disable stopping so every row decodes exactly new_tokens tokens
    engine = HFEngine(model, tok, batch_size=args.batch)
    engine.stop_ids = [len(tok) + 10]  # an id the model can never emit
    prompts = (train * ((args.batch // len(train)) + 1))[: args.batch]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
    engine.generate(prompts[:8], params, seed=0)  # warm-up
    gen_rates = []
    for r in range(args.repeats):
        t = time.perf_counter()
        cs = engine.generate(prompts, params, seed=r)
        gen_rates.append(sum(len(c.response_ids) for c in cs) / (time.perf_counter() - t))

    # training: forward + backward + optimizer step on teacher-trace sequences
    examples = sft_examples(tok, pairs)
    opt = make_optimizer(model, 1e-4, 0.0)
    model.train()
    train_rates = []
    for r in range(args.repeats + 1):
        chunk = examples[(r * args.train_batch) % len(examples):][: args.train_batch]
        batch = pad_sequences([p for p, _ in chunk], [q for _, q in chunk], tok.pad_token_id)
        t = time.perf_counter()
        lp, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"])
        loss = -(lp * batch["response_mask"]).sum() / batch["response_mask"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if r:  # the first step is warm-up
            train_rates.append(int(batch["attention_mask"].sum()) / (time.perf_counter() - t))

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"# r1lab throughput, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: tiny Qwen2, {count_parameters(model) / 1e6:.2f}M parameters, vocab {len(tok)}, fp32")
    print("| what | setting | tokens/s (median of %d) |" % args.repeats)
    print("|---|---|---:|")
    print(f"| rollout (HFEngine, sampling) | batch {args.batch}, {args.new_tokens} new tokens | {med(gen_rates):,.0f} |")
    print(f"| training (fwd+bwd+AdamW) | batch {args.train_batch} sequences of ~{sum(len(p) + len(q) for p, q in examples) / len(examples):.0f} tokens | {med(train_rates):,.0f} |")


if __name__ == "__main__":
    main()

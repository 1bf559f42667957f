"""Supervised fine-tuning on reasoning traces: NLL of the response tokens only (prompt masked),
token-mean over the batch, AdamW with warmup + cosine decay and gradient clipping."""

from __future__ import annotations

import random
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from r1lab.config import SFTConfig
from r1lab.records import Problem
from r1lab.rollout.base import encode_prompts
from r1lab.runs import MetricsWriter
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.common import grad_norm_clip, make_optimizer, pad_sequences, token_logprobs, warmup_cosine


def sft_examples(tokenizer, pairs: Sequence[tuple[Problem, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + end-of-turn) per (problem, response text) pair. A response that
    repeats a template pre-fill (e.g. "<think>\\n") has it stripped: it is already in the prompt."""
    encoded = encode_prompts(tokenizer, [p for p, _ in pairs])
    eos = tokenizer.eos_token_id
    out = []
    for enc, (_, response) in zip(encoded, pairs):
        if enc.prefill and response.startswith(enc.prefill):
            response = response[len(enc.prefill):]
        ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
        out.append((enc.ids, ids))
    return out


def sft_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Token-mean NLL over response tokens; returns (loss, number of response tokens)."""
    with trainer_attention():
        logprobs, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"])
    mask = batch["response_mask"]
    n = int(mask.sum().item())
    return -(logprobs * mask).sum() / max(n, 1), n


def train_sft(
    model,
    tokenizer,
    examples: list[tuple[list[int], list[int]]],
    cfg: SFTConfig,
    metrics: MetricsWriter | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, float]:
    if not examples:
        raise ValueError("SFT needs at least one example")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    steps_per_epoch = (len(examples) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    use_cpu_training_attention(model)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, total)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    step, tokens_seen, t0 = 0, 0, time.time()
    last = {}
    bar = tqdm(total=total, desc="sft", unit="step", disable=not show_progress, dynamic_ncols=True)
    while step < total:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            chunk = [examples[i] for i in order[b : b + cfg.batch_size]]
            batch = pad_sequences([p for p, _ in chunk], [r for _, r in chunk], pad_id)
            loss, n_tok = sft_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = grad_norm_clip(model, cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            tokens_seen += int(batch["attention_mask"].sum())
            elapsed = time.time() - t0
            last = {
                "sft/loss": float(loss.item()),
                "sft/grad_norm": gnorm,
                "sft/lr": sched.get_last_lr()[0],
                "sft/tokens_per_s": tokens_seen / max(elapsed, 1e-9),
            }
            if metrics:
                metrics.write(step, last)
            bar.update(1)
            bar.set_postfix(loss=f"{last['sft/loss']:.3f}")
    bar.close()
    model.eval()
    return {**last, "sft/steps": step, "sft/seconds": time.time() - t0}

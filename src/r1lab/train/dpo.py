"""Preference optimisation on (prompt, chosen, rejected) pairs: the loss is a registered function of
per-pair sequence log-probs (algos/preference.py); this module computes those sums and runs the
optimizer, as sft.py does for the NLL.

The reference policy is the model this training starts from, so its log-probs are computed once,
up front and without a graph, from the same weights: no second copy of the model is held. Each
optimizer step takes `batch_size` pairs, split into micro-batches of `micro_batch_size` pairs whose
losses are summed and divided by the step's pair count (micro-batching does not change the gradient).
"""

from __future__ import annotations

import random
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from r1lab.algos.preference import PREFERENCE_LOSSES
from r1lab.config import DPOConfig
from r1lab.errors import ConfigError
from r1lab.records import Problem
from r1lab.runs import MetricsWriter
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.models import token_logprobs
from r1lab.train.common import grad_norm_clip, make_optimizer, pad_sequences, warmup_cosine
from r1lab.train.sft import sft_examples

Example = tuple[list[int], list[int], list[int]]  # prompt ids, chosen ids, rejected ids (each response + eos)


def dpo_examples(tokenizer, pairs: Sequence) -> list[Example]:
    """Token ids of each pair (objects with .id, .prompt, .chosen, .rejected), encoded as SFT encodes
    a (prompt, response): chat template, template pre-fill stripped, end-of-turn appended."""
    problems = [Problem(id=p.id, prompt=p.prompt, answer="") for p in pairs]
    chosen = sft_examples(tokenizer, [(q, p.chosen) for q, p in zip(problems, pairs)])
    rejected = sft_examples(tokenizer, [(q, p.rejected) for q, p in zip(problems, pairs)])
    return [(c[0], c[1], r[1]) for c, r in zip(chosen, rejected)]


def sequence_logprobs(model, examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of response-token log-probs and response length, chosen rows then rejected rows: [2B], [2B]."""
    prompts = [e[0] for e in examples] * 2
    responses = [e[1] for e in examples] + [e[2] for e in examples]
    batch = pad_sequences(prompts, responses, pad_id)
    start = min(len(p) for p in prompts) - 1  # no position before the shortest prompt's end carries loss
    with trainer_attention():
        logprobs, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], start=start)
    mask = batch["response_mask"]
    return (logprobs * mask).sum(-1), mask.sum(-1)


@torch.no_grad()
def reference_logprobs(model, examples: Sequence[Example], pad_id: int, micro_batch_size: int) -> torch.Tensor:
    """[N, 2] (chosen, rejected) summed log-probs of every pair under `model` as it is now."""
    was_training = model.training
    model.eval()
    out = []
    for b in range(0, len(examples), micro_batch_size):
        chunk = examples[b : b + micro_batch_size]
        sums, _ = sequence_logprobs(model, chunk, pad_id)
        out.append(torch.stack([sums[: len(chunk)], sums[len(chunk):]], dim=-1))
    model.train(was_training)
    return torch.cat(out)


def train_dpo(
    model,
    tokenizer,
    examples: list[Example],
    cfg: DPOConfig,
    metrics: MetricsWriter | None = None,
    seed: int = 0,
    show_progress: bool = True,
    step_offset: int = 0,
    tag: dict[str, float] | None = None,
) -> dict[str, float]:
    """Train on the pairs for cfg.epochs (or cfg.max_steps); metrics rows are numbered from
    step_offset + 1 and carry `tag` (e.g. the round). Returns the loss, reward, margin and accuracy
    means over the last pass (each pair measured before its own update), the last step's grad norm
    and lr, and totals."""
    if not examples:
        raise ValueError("DPO needs at least one pair")
    if cfg.batch_size < 1 or cfg.micro_batch_size < 1:
        raise ConfigError(f"dpo.batch_size and dpo.micro_batch_size must be >= 1, got {cfg.batch_size}, "
                          f"{cfg.micro_batch_size}")
    method = PREFERENCE_LOSSES.method(cfg.loss)
    loss_fn = PREFERENCE_LOSSES.bind(cfg.loss, cfg.loss_args, "dpo.loss_args")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    use_cpu_training_attention(model)
    mb = min(cfg.micro_batch_size, cfg.batch_size)
    ref = (torch.zeros(len(examples), 2) if method.trait("reference_free")
           else reference_logprobs(model, examples, pad_id, mb))
    steps_per_epoch = (len(examples) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, total)
    model.train()
    step, tokens_seen, t0 = 0, 0, time.time()
    last: dict[str, float] = {}
    epoch: dict[str, float] = {}  # sums over the current pass, for the summary
    bar = tqdm(total=total, desc="dpo", unit="step", disable=not show_progress, dynamic_ncols=True)
    while step < total:
        order = list(range(len(examples)))
        rng.shuffle(order)
        epoch = {"pairs": 0.0}
        for b in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            idx = order[b : b + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for m in range(0, len(idx), mb):
                part = idx[m : m + mb]
                chunk = [examples[i] for i in part]
                logps, lengths = sequence_logprobs(model, chunk, pad_id)
                n = len(chunk)
                context = {"ref_chosen": ref[part, 0], "ref_rejected": ref[part, 1], "chosen_tokens": lengths[:n],
                           "rejected_tokens": lengths[n:]}
                loss, stats = loss_fn(logps[:n], logps[n:], **{k: context[k] for k in method.context})
                (loss.sum() / len(idx)).backward()
                margin = stats["reward_chosen"] - stats["reward_rejected"]
                values = {
                    "loss": loss.detach(), "reward_chosen": stats["reward_chosen"], "reward_rejected": stats["reward_rejected"],
                    "margin": margin, "accuracy": (margin > 0).float(),
                    "logp_chosen": logps[:n].detach() / lengths[:n].clamp(min=1),
                    "logp_rejected": logps[n:].detach() / lengths[n:].clamp(min=1),
                    "nll": stats["nll"] if "nll" in stats else -logps[:n].detach() / lengths[:n].clamp(min=1),
                }
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + float(v.sum())
                tokens_seen += int(lengths.sum())
            gnorm = grad_norm_clip(model, cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            for k, v in sums.items():
                epoch[k] = epoch.get(k, 0.0) + v
            epoch["pairs"] += len(idx)
            last = {f"dpo/{k}": v / len(idx) for k, v in sums.items()}
            last.update({"dpo/grad_norm": gnorm, "dpo/lr": sched.get_last_lr()[0],
                         "dpo/response_tokens_per_s": tokens_seen / max(time.time() - t0, 1e-9), **(tag or {})})
            if metrics:
                metrics.write(step_offset + step, last)
            bar.update(1)
            bar.set_postfix(loss=f"{last['dpo/loss']:.3f}", margin=f"{last['dpo/margin']:.2f}")
    bar.close()
    model.eval()
    means = {f"dpo/{k}": v / epoch["pairs"] for k, v in epoch.items() if k != "pairs" and epoch["pairs"]}
    return {**last, **means, "dpo/steps": step, "dpo/seconds": time.time() - t0}

"""Supervised fine-tuning on reasoning traces: NLL of the response tokens only (prompt masked),
token-mean over the batch, AdamW with warmup + cosine decay and gradient clipping.

Under an environment (env.name other than one_turn) a trace is a whole episode: it is replayed
through the environment (rollout/episodes.trace_episode) into the ids a rollout would hold, and
only the model's turns carry loss; the tool outputs between them are context, never targets.

With a run directory, a resumable checkpoint (train/checkpoint.py, `checkpoints/sft-state/`) is
written every `save_every` steps and at the end. It holds the step, the model's weights (the LoRA
adapters and the frozen weights under them when adapters are trained), the optimizer and scheduler,
the shuffling stream, the current epoch's order and the position in it, the tokens and seconds so
far, the last logged metrics, and the process's Python and torch random streams; a run resumed from
it logs and computes what the uninterrupted run does.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from r1lab.config import SFTConfig
from r1lab.models import token_logprobs
from r1lab.records import Problem
from r1lab.rollout.base import encode_prompts
from r1lab.runs import MetricsWriter
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.checkpoint import SFT_STATE_DIR, save_state
from r1lab.train.common import grad_norm_clip, make_optimizer, pad_sequences, scatter_response_values, warmup_cosine


class SFTExample(tuple):
    """(prompt ids, response ids), the pixel inputs of the prompt's images as `.vision` (None for a
    text prompt) and, for an episode, per response id 1 (the model's, a target) or 0 (the
    environment's, context only) as `.mask` (None: every response id is a target): a pair wherever
    one is unpacked."""

    vision: Any = None
    mask: list[int] | None = None

    def __new__(cls, prompt_ids: list[int], response_ids: list[int], vision: Any = None,
                mask: list[int] | None = None) -> "SFTExample":
        example = super().__new__(cls, (prompt_ids, response_ids))
        example.vision, example.mask = vision, mask
        return example


def sft_examples(tokenizer, pairs: Sequence[tuple[Problem, str]], env: str = "one_turn",
                 env_settings: dict[str, Any] | None = None, limits: Any = None) -> list[SFTExample]:
    """(prompt ids, response ids + end-of-turn) per (problem, response text) pair. A response that
    repeats a template pre-fill (e.g. "<think>\\n") has it stripped: it is already in the prompt.
    With `env` other than one_turn, each trace is replayed as that environment's episode (its
    `env_settings`, within `limits`, an EpisodeLimits): the episode's ids, the observations masked."""
    if env != "one_turn":
        from r1lab.rollout.episodes import EpisodeLimits, trace_episode

        out = []
        for p, response in pairs:
            ep = trace_episode(tokenizer, p, response, env, env_settings, limits or EpisodeLimits())
            out.append(SFTExample(ep.prompt_ids, ep.ids, None, None if all(ep.mask) else ep.mask))
        return out
    encoded = encode_prompts(tokenizer, [p for p, _ in pairs])
    eos = tokenizer.eos_token_id
    out = []
    for enc, (_, response) in zip(encoded, pairs):
        if enc.prefill and response.startswith(enc.prefill):
            response = response[len(enc.prefill):]
        ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
        out.append(SFTExample(enc.ids, ids, enc.vision))
    return out


def sft_batch(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """The examples right-padded (train/common.pad_sequences); an example's `.mask` takes its
    environment tokens out of `response_mask`, so they are read but never predicted."""
    batch = pad_sequences([p for p, _ in examples], [r for _, r in examples], pad_id)
    masks = [getattr(e, "mask", None) for e in examples]
    if any(m is not None for m in masks):
        targets = [m if m is not None else [1] * len(r) for m, (_, r) in zip(masks, examples)]
        batch["response_mask"] = batch["response_mask"] * scatter_response_values(targets, batch["response_mask"])
    return batch


def sft_loss(model, batch: dict[str, torch.Tensor], vision: list | None = None) -> tuple[torch.Tensor, int]:
    """Token-mean NLL over the target tokens (`response_mask`); returns (loss, number of target
    tokens). `vision`: each row's pixel inputs (or None), for a vision-language model."""
    with trainer_attention():
        logprobs, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], vision=vision)
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
    run_path: Path | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train on `examples` for cfg.epochs (at most cfg.max_steps steps). With `run_path`, resumable
    checkpoints are written there; `resume` (train/checkpoint.load_latest with SFT_STATE_DIR)
    continues from one, its random streams already restored."""
    if not examples:
        raise ValueError("SFT needs at least one example")
    rng = random.Random(seed)
    torch_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    steps_per_epoch = (len(examples) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    use_cpu_training_attention(model)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, total)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    step, tokens_seen, seconds_before, order, start = 0, 0, 0.0, None, 0
    last: dict[str, float] = {}
    if resume is not None:
        if resume["total"] != total or resume["examples"] != len(examples):
            raise ValueError(f"the SFT checkpoint is of {resume['total']} steps over {resume['examples']} examples, "
                             f"this run has {total} over {len(examples)}")
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        rng.setstate(resume["shuffle_rng"])
        torch.set_rng_state(torch_rng)  # the stream load_latest restored, not the fresh seed's
        step, tokens_seen, seconds_before = resume["step"], resume["tokens_seen"], resume["seconds"]
        order, start, last = resume["order"], resume["position"], resume["last"]
    save_every = cfg.save_every if run_path is not None else 0
    model.train()
    t0 = time.time()
    bar = tqdm(total=total, desc="sft", unit="step", disable=not show_progress, dynamic_ncols=True, initial=step)
    while step < total:
        if order is None:  # a new epoch
            order = list(range(len(examples)))
            rng.shuffle(order)
            start = 0
        for b in range(start, len(order), cfg.batch_size):
            if step >= total:
                break
            chunk = [examples[i] for i in order[b : b + cfg.batch_size]]
            batch = sft_batch(chunk, pad_id)
            vision = [getattr(e, "vision", None) for e in chunk]
            loss, n_tok = sft_loss(model, batch, vision if any(v is not None for v in vision) else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = grad_norm_clip(model, cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            tokens_seen += int(batch["attention_mask"].sum())
            elapsed = seconds_before + time.time() - t0
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
            if save_every and (step % save_every == 0 or step == total):
                epoch_done = b + cfg.batch_size >= len(order)
                save_state(run_path, step, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "shuffle_rng": rng.getstate(), "order": None if epoch_done else order,
                    "position": b + cfg.batch_size, "tokens_seen": tokens_seen, "seconds": elapsed, "last": last,
                    "total": total, "examples": len(examples)}, cfg.keep_checkpoints, SFT_STATE_DIR)
        order = None
    bar.close()
    model.eval()
    return {**last, "sft/steps": step, "sft/seconds": seconds_before + time.time() - t0}

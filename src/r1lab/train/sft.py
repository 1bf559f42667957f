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

from pathlib import Path
from typing import Any, Sequence

import torch

from r1lab.config import SFTConfig
from r1lab.models import token_logprobs
from r1lab.records import Problem
from r1lab.rollout.base import encode_prompts
from r1lab.runs import MetricsWriter
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.checkpoint import SFT_STATE_DIR
from r1lab.train.common import make_optimizer, pad_sequences, scatter_response_values, warmup_cosine
from r1lab.train.epochs import BatchResult, EpochLoop, planned_steps


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
    loop = EpochLoop("sft", "examples", SFT_STATE_DIR, cfg.batch_size,
                     planned_steps(len(examples), cfg.batch_size, cfg.epochs, cfg.max_steps), cfg.grad_clip,
                     cfg.save_every, cfg.keep_checkpoints)
    use_cpu_training_attention(model)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, loop.total)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def batch_step(index: list[int]) -> BatchResult:
        chunk = [examples[i] for i in index]
        batch = sft_batch(chunk, pad_id)
        vision = [getattr(e, "vision", None) for e in chunk]
        loss, _ = sft_loss(model, batch, vision if any(v is not None for v in vision) else None)
        return BatchResult(loss, int(batch["attention_mask"].sum()))

    step, last, seconds = loop.run(model, opt, sched, len(examples), batch_step, seed, metrics=metrics,
                                   show_progress=show_progress, run_path=run_path, resume=resume)
    return {**last, "sft/steps": step, "sft/seconds": seconds}

"""Rollout engines: turn prompts into `Completion` records (text, token ids, per-token log-probs,
finish reason). The engine and the trainer share one `SamplingParams` so log-probs agree."""

from __future__ import annotations

import logging

from r1lab.rollout.base import Engine, SamplingParams, encode_prompts
from r1lab.rollout.fast import FastEngine, unsupported_reason
from r1lab.rollout.hf import HFEngine

__all__ = ["Engine", "FastEngine", "HFEngine", "SamplingParams", "encode_prompts", "make_engine"]

ENGINES = ("fast", "hf")
log = logging.getLogger("r1lab.rollout")


def make_engine(model, tokenizer, engine: str = "fast", batch_size: int = 256, dtype: str = "auto",
                kv_cache_gb: float = 4.0) -> Engine:
    """The engine `rollout.engine` names. `fast` runs r1lab's own decode loop where the model's
    architecture is supported and otherwise falls back to the HF engine, saying why."""
    if engine not in ENGINES:
        from r1lab.errors import ConfigError

        raise ConfigError(f"rollout.engine: unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    if engine == "fast":
        reason = unsupported_reason(model)
        if reason is None:
            return FastEngine(model, tokenizer, batch_size=batch_size, dtype=dtype, kv_cache_gb=kv_cache_gb)
        log.warning("rollout: the fast engine cannot run this model (%s); using the hf engine", reason)
    return HFEngine(model, tokenizer, batch_size=batch_size)

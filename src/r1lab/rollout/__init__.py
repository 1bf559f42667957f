"""Rollout engines: turn prompts into `Completion` records (text, token ids, per-token log-probs,
finish reason). The engine and the trainer share one `SamplingParams` so log-probs agree."""

from r1lab.rollout.base import SamplingParams, encode_prompts
from r1lab.rollout.hf import HFEngine

__all__ = ["HFEngine", "SamplingParams", "encode_prompts"]

"""One RL step's data in the trainer's layout, and the plan of the updates over it.

Every [B, L-1] tensor is aligned with the log-probs `token_logprobs` returns: column t is about
token t+1 of the row. The update plan (which rows go into which mini-batch and micro-batch) is drawn
once per step, so the old-policy and reference passes run the exact micro-batches the first update
runs: identical inputs, identical kernels, a first ratio of exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from r1lab.records import Completion
from r1lab.train.common import pad_sequences, scatter_response_values

# for each epoch, its mini-batches (one optimizer step each), each a list of micro-batches of row indices
UpdatePlan = list[list[list[torch.Tensor]]]


@dataclass
class RolloutBatch:
    """Every tensor is [B, L-1] unless noted."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # which positions are response tokens
    loss_mask: torch.Tensor  # response_mask minus what carries no loss (overlong filtering)
    advantages: torch.Tensor
    engine_logprobs: torch.Tensor  # what the engine reported when it sampled
    temperature: float = 1.0  # the sampling temperature the trainer's log-probs are computed at
    max_new_tokens: int = 0  # this step's generation limit (the constant L of Dr. GRPO's aggregation)
    old_logprobs: torch.Tensor | None = None  # the policy before this step's updates (when it changes in between)
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None  # critic targets
    correct: torch.Tensor | None = None  # [B] bool
    plan: UpdatePlan = field(default_factory=list, repr=False)
    vision: list | None = None  # [B] each row's pixel inputs (vision.VisionInputs) or None; None: no images

    _ROWS = ("response_mask", "loss_mask", "advantages", "engine_logprobs", "old_logprobs", "ref_logprobs",
             "old_values", "returns")

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, idx: torch.Tensor) -> "RolloutBatch":
        """Select rows and trim the padding columns they do not need."""
        L = int(self.attention_mask[idx].sum(-1).max())
        trimmed = {name: None if getattr(self, name) is None else getattr(self, name)[idx, : L - 1] for name in self._ROWS}
        return RolloutBatch(self.input_ids[idx, :L], self.attention_mask[idx, :L], temperature=self.temperature,
                            max_new_tokens=self.max_new_tokens,
                            correct=None if self.correct is None else self.correct[idx],
                            vision=None if self.vision is None else [self.vision[i] for i in idx.tolist()], **trimmed)


def rollout_batch(completions: list[Completion], pad_id: int, *, overlong_filter: bool, temperature: float,
                  max_new_tokens: int, plan: UpdatePlan) -> RolloutBatch:
    """The completions right-padded into one batch. Under `overlong_filter` (DAPO) a truncated
    response carries no loss: it is no evidence either way. A completion's `loss_mask` (multi-turn
    episodes) takes the environment's tokens out of the response mask, so only the model's own
    tokens carry loss, KL and advantage."""
    t = pad_sequences([c.prompt_ids for c in completions], [c.response_ids for c in completions], pad_id)
    mask = t["response_mask"]
    engine_logprobs = scatter_response_values([c.logprobs for c in completions], mask)
    if any(c.loss_mask is not None for c in completions):
        model_tokens = [c.loss_mask if c.loss_mask is not None else [1] * len(c.response_ids) for c in completions]
        mask = mask * scatter_response_values(model_tokens, mask)
    loss_mask = mask
    if overlong_filter:
        keep = torch.tensor([not c.truncated for c in completions], dtype=mask.dtype)
        loss_mask = mask * keep.unsqueeze(-1)
    return RolloutBatch(
        t["input_ids"], t["attention_mask"], mask, loss_mask, torch.zeros_like(mask), engine_logprobs,
        temperature=temperature, max_new_tokens=max_new_tokens,
        correct=torch.tensor([bool(c.verdict and c.verdict.correct) for c in completions]), plan=plan,
        vision=[c.vision for c in completions] if any(c.vision is not None for c in completions) else None,
    )


def micro_batches(idx: torch.Tensor, size: int, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Split one mini-batch into micro-batches of `size` rows; with `lengths`, rows of similar length
    go together (length bucketing), so each micro-batch is trimmed to little padding. The gradient
    is a sum over micro-batches and does not change."""
    if lengths is not None:
        idx = idx[torch.sort(lengths[idx], stable=True).indices]
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def update_plan(B: int, epochs: int, mini_batches: int, micro: int, gen: torch.Generator,
                lengths: torch.Tensor | None = None) -> UpdatePlan:
    """For each epoch, a random split of the B rows into `mini_batches` mini-batches, each split into
    length-bucketed micro-batches of `micro` rows."""
    plan = []
    for _ in range(epochs):
        perm = torch.randperm(B, generator=gen)
        plan.append([micro_batches(mb, micro, lengths) for mb in torch.tensor_split(perm, mini_batches) if len(mb)])
    return plan


def first_response_col(response_mask: torch.Tensor) -> int:
    """The first log-prob column any row needs: the trainer's LM head skips the prompt before it."""
    cols = response_mask.any(0).nonzero()
    return int(cols[0]) if len(cols) else 0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return float((x * mask).sum() / n) if n > 0 else 0.0

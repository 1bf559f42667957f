"""What SFT and RL share: batching token sequences, the optimizer and its schedules (log-probs under the
model: models.token_logprobs)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

# tests and benchmarks read the log-probs of a model's own tokens from here; they live with the model
from r1lab.models import logprobs_of_targets, token_logprobs  # noqa: F401


def pad_sequences(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Concatenate prompt + response per row, right-padded.

    Returns input_ids [B, L], attention_mask [B, L] and response_mask [B, L-1], where
    response_mask[:, t] marks that token input_ids[:, t+1] is a response token: it is aligned with
    the log-probs `token_logprobs` returns. Pad positions are 0 in both masks.
    """
    B = len(prompts)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    response_mask = torch.zeros((B, L - 1), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, len(p) - 1 : n - 1] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def scatter_response_values(values: Sequence[Sequence[float]], response_mask: torch.Tensor) -> torch.Tensor:
    """Place per-response-token values (e.g. the engine's log-probs) into the [B, L-1] layout."""
    out = torch.zeros_like(response_mask)
    for i, v in enumerate(values):
        pos = response_mask[i].nonzero().squeeze(-1)
        out[i, pos] = torch.tensor(list(v), dtype=out.dtype)[: len(pos)]
    return out


class EmbeddingGradInPlace:
    """For one optimizer step: the input embedding's backward adds its rows straight into the
    float32 `.grad` of the embedding weight (index_add_), instead of building a dense [vocab, hidden]
    gradient per micro-batch that autograd then sums with the LM head's (for a tied weight) and
    accumulates.

    For a large tied vocabulary (SmolLM2: 49,152 x 576) the dense form is ~100 MB of zero-fill, sum
    and accumulation per micro-batch; here `.grad` is created once per step and only the touched
    rows are written. Gradient contributions are additive, so the order in which
    this and autograd's accumulation of the LM head's gradient run does not matter (Megatron's fused
    weight-gradient accumulation writes into its main grads from the backward the same way). The
    padding index gets no gradient, as in nn.Embedding. Tested against the plain backward.
    """

    def __init__(self, model: torch.nn.Module, enabled: bool = True):
        self.module = model.get_input_embeddings() if enabled and hasattr(model, "get_input_embeddings") else None
        w = getattr(self.module, "weight", None)
        if (type(self.module) is not torch.nn.Embedding or w is None or not w.requires_grad or w.is_sparse
                or self.module.sparse or self.module.max_norm is not None or self.module.scale_grad_by_freq):
            self.module = None

    def __enter__(self) -> "EmbeddingGradInPlace":
        if self.module is not None:
            module = self.module
            module.forward = lambda ids: _EmbeddingIntoGrad.apply(ids, module.weight, module.padding_idx)
        return self

    def __exit__(self, *exc) -> None:
        if self.module is not None:
            del self.module.forward  # back to the class's forward


class _EmbeddingIntoGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        rows, g = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx is not None:
            keep = rows != ctx.padding_idx
            rows, g = rows[keep], g[keep]
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, rows, g.to(weight.grad.dtype))
        return None, None, None


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel per parameter for the whole update instead of ~10 elementwise passes over
    # all parameters
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                for p in params)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, fused=fused or None)
    # the fused kernel updates parameters without bumping their autograd version counters, so each
    # step bumps an explicit counter that caches of the weights (the fast engine's packed copy) key on
    opt.register_step_post_hook(lambda *_: note_weights_changed(model))
    return opt


def note_weights_changed(model: torch.nn.Module) -> None:
    """Tell caches of `model`'s weights (the fast engine's packed copy) that they changed."""
    model._r1lab_weights_version = getattr(model, "_r1lab_weights_version", 0) + 1


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr over `warmup_steps`, then constant (the RL recipes' schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to floor * lr at total_steps (the SFT schedule)."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / max(1, warmup_steps)
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def grad_norm_clip(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm and max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.norm() for p in params])))

"""Shared-prompt forwards: each distinct prompt of a training batch runs through the model once.

Group sampling (GRPO and its kin) puts every prompt into the batch G times, once per completion,
and a plain forward runs all G copies: with prompts about as long as the responses and G = 8, that
is close to half the tokens of every trainer forward and backward.
A prompt's keys and values are the same in every copy, so here each distinct prompt prefix (the
prompt without its last token) runs once, its per-layer K/V is kept, and each row runs only its
suffix (the last prompt token, whose logits predict the first response token, then the response)
on top of its prompt's K/V, through the model's own cache interface.

With gradients, the kept K/V are leaf tensors of the suffix forwards: their gradients accumulate
over all the micro-batches of one optimizer step, and `backward()` sends them through the prompt
forwards once, so the gradient is exactly that of the full forward (tested in float64 against it,
with prompts of different lengths and several micro-batches).

The prompts of a mini-batch run as one right-padded batch, built the same way for the same
mini-batch in the old-policy pass and in the first update: identical numbers, a ratio of exactly 1.
Used for a mini-batch whose rows repeat a prompt, on models whose attention takes a 4-D boolean
mask (SDPA, and r1lab's CPU training attention); anything else takes the plain forward.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from r1lab.models import logprobs_of_targets, model_device

MASKED_ATTENTION = ("sdpa", "r1lab_cpu")


def prompt_lengths(attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B] prompt length of each row of a `pad_sequences` batch (the whole row when it has no response)."""
    has_response = response_mask.any(-1)
    first = response_mask.float().argmax(-1)  # the first response column: its log-prob is predicted by the last prompt token
    return torch.where(has_response, first + 1, attention_mask.sum(-1))


def _cache_kwarg(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def supports_shared_prefix(model) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in MASKED_ATTENTION:
        return False
    if getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window_pattern", None):
        return False
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x's name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:  # HF turns the cache off under checkpointing
        return False
    return getattr(config, "is_encoder_decoder", False) is False


class SharedPrefix:
    """The distinct prompt prefixes of batch rows `rows`, run once, as one batch (see the module docstring).

    `input_ids`, `attention_mask` and `response_mask` (to `build`) are the whole batch in
    `pad_sequences` layout; `rows` indexes the rows this object serves (one mini-batch). Use
    `build`, which returns None when sharing cannot help or the model cannot take it.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 q: torch.Tensor, prompt_of: torch.Tensor, prefixes: list[list[int]]):
        self.model = model
        self.input_ids = input_ids
        self.lengths = attention_mask.sum(-1)
        self.q = q  # prefix length of each batch row (its prompt minus the last token)
        self.prompt_of = prompt_of  # batch row -> index into `prefixes` (-1 for rows not served)
        self.grad = torch.is_grad_enabled()
        self._cache_kw = _cache_kwarg(model)
        device = model_device(model)
        # all distinct prompts in one right-padded causal forward: a real token never sees the pads
        # after it, and the suffix forwards mask the pads' K/V out (their gradient is exactly 0)
        Q = max(len(ids) for ids in prefixes)
        ids = torch.zeros((len(prefixes), Q), dtype=torch.long)
        for r, p in enumerate(prefixes):
            ids[r, : len(p)] = torch.tensor(p, dtype=torch.long)
        out = model(input_ids=ids.to(device), use_cache=True, logits_to_keep=1)
        self.kv_out: list[torch.Tensor] = []  # per layer: K [U, KV, Q, hd], V [U, KV, Q, hd]
        for layer in _returned_cache(out).layers:
            self.kv_out += [layer.keys, layer.values]
        # the suffix forwards take leaves, so each micro-batch's backward stops at the prompt's K/V
        # (K/V that need no gradient, e.g. below the first LoRA-adapted layer, stay as they are)
        self.kv = [t.detach().requires_grad_() if self.grad and t.requires_grad else t for t in self.kv_out]

    @classmethod
    def build(cls, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
              rows: torch.Tensor, agree: Callable[[bool], bool] | None = None) -> "SharedPrefix | None":
        """A SharedPrefix for `rows`, or None when no prompt repeats among them (nothing to share)
        or the model's attention cannot take the mask the suffix forwards need.

        `agree` (a worker of a sharded group): given whether these rows have a prompt prefix at
        all, returns whether every worker's rows do; all build one or none, repeats or not, since
        each prompt forward and its backward are collectives of the whole group."""
        if not supports_shared_prefix(model):
            return None
        q = prompt_lengths(attention_mask, response_mask) - 1
        index: dict[tuple[int, ...], int] = {}
        prompt_of = torch.full((input_ids.shape[0],), -1, dtype=torch.long)
        for i in rows.tolist():
            prompt_of[i] = index.setdefault(tuple(input_ids[i, : int(q[i])].tolist()), len(index))
        prefixes = [list(k) for k in index]
        if agree is not None:
            if not agree(any(prefixes)):
                return None
        elif len(index) == len(rows) or not any(prefixes):
            return None
        return cls(model, input_ids, attention_mask, q, prompt_of, prefixes)

    def logprobs(self, idx: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
                 entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`token_logprobs` for batch rows `idx`, in the layout of `batch.rows(idx)`: [m, L-1] with
        L the longest of these rows; prompt columns are 0, as there."""
        from transformers import DynamicCache

        model = self.model
        device = model_device(model)
        u, q, n = self.prompt_of[idx], self.q[idx], self.lengths[idx]
        if bool((u < 0).any()):
            raise ValueError("SharedPrefix.logprobs: rows outside the ones it was built for")
        m, S, Q = len(idx), int((n - q).max()), int(q.max())
        width = int(n.max()) - 1
        steps = torch.arange(S)
        cols = q.unsqueeze(1) + steps  # each row's suffix: its last prompt token, then the response
        valid = steps < (n - q).unsqueeze(1)
        ids = self.input_ids[idx].gather(1, cols.clamp(max=self.input_ids.shape[1] - 1)) * valid
        # keys: the row's own prompt prefix (not the padding after a shorter one), then causal
        prefix_keys = (torch.arange(Q) < q.unsqueeze(1)).view(m, 1, 1, Q).expand(m, 1, S, Q)
        suffix_keys = torch.ones(S, S, dtype=torch.bool).tril().expand(m, 1, S, S)
        mask = torch.cat([prefix_keys, suffix_keys], dim=-1)
        rows_kv = u.to(device)
        cache = DynamicCache(ddp_cache_data=[(self.kv[2 * l].index_select(0, rows_kv)[:, :, :Q],
                                              self.kv[2 * l + 1].index_select(0, rows_kv)[:, :, :Q])
                                             for l in range(len(self.kv) // 2)])
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=cols.to(device),
                       use_cache=True, logits_to_keep=torch.arange(S - 1, device=device),
                       **{self._cache_kw: cache}).logits  # [m, S-1]: predictions of suffix tokens 1..S-1
        logprobs, entropy = logprobs_of_targets(logits, ids[:, 1:].to(device), temperature, with_entropy, entropy_grad)
        # suffix position j predicts input token q + j + 1, whose log-prob column is q + j
        place = lambda v: torch.zeros(m, width + S, dtype=v.dtype).scatter(1, cols[:, : S - 1], v.cpu())[:, :width]  # noqa: E731
        return place(logprobs), None if entropy is None else place(entropy)

    def backward(self) -> None:
        """Send the K/V gradients the micro-batches accumulated through the prompt forwards (once)."""
        if self.grad:
            pairs = [(out, leaf.grad) for out, leaf in zip(self.kv_out, self.kv) if out is not leaf and leaf.grad is not None]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        self.kv_out = self.kv = []

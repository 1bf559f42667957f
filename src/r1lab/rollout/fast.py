"""The fast CPU engine: r1lab's own decode loop over a Hugging Face Llama/Qwen2-family model's weights.

Why not `model.generate` / the HF engine: on a CPU the HF path spends most of a decode step outside
the matrix multiplies (per-module Python, a DynamicCache that grows by `torch.cat` every step,
fp32 matmuls, padding rows decoded after they finished). This engine keeps the arithmetic and
drops the rest:

- weights are packed once per policy version (q/k/v fused into one matrix, gate/up into one) in
  the compute dtype, bf16 by default on CPUs with native bf16 matmuls, and, in bf16, reordered
  once into oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`): a plain bf16
  `F.linear` re-blocks its weight on every call (BENCHMARKS.md has the cost on SmolLM2 shapes).
  The LM head runs in the compute dtype too, with float32 accumulation and the logits rounded to
  it, as the trainer's bf16 autocast and vLLM do; the residual stream, the RMSNorm
  statistics, RoPE, the softmax and the log-probs stay float32;
- one KV cache [layers, 2, slots, kv_heads, max_len, head_dim] is allocated per `generate` call and
  written in place; no tensor grows during decoding;
- continuous batching: live sequences always occupy slots 0..n-1; a finished sequence's slot is
  filled by moving the last live one into it, and free slots are refilled from the waiting prompts
  (whose prompt is prefilled once and its KV copied to each of its `n` samples);
- the token choice and its log-prob come from `rollout.base.sample_next`, the same function the HF
  engine uses (or, for plain temperature sampling, its one-pass C twin, which draws the same
  uniforms), so both engines report the quantity the trainer recomputes;
- a decode step's non-matmul work runs in r1lab's fused C kernels (`rollout/kernels.py`) where they
  build: five calls per layer instead of ~45 torch operators and a flash-attention call set up for
  one query token (`_decode_fused`); `_decode` is the same step in torch operators, the fallback
  and the reference the kernels are tested against.

Supported: decoder-only models whose blocks are RMSNorm -> attention (RoPE from the model's own
rotary module, so its rope config is honoured; grouped-query heads; optional q/k/v/o biases as in
Qwen2) -> RMSNorm -> SiLU-gated MLP, with a tied or untied LM head: `model_type` llama and qwen2
(without sliding windows). `unsupported_reason` says why another model is not; `make_engine` then
falls back to the HF engine with a logged note.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from typing import Callable

import torch
import torch.nn.functional as F

from r1lab.models import cpu_has_native_bf16, stop_token_ids
from r1lab.records import Completion, Problem
from r1lab.rollout.base import (EncodedPrompt, IdSession, LiveModelEngine, SamplingParams, encode_prompts,
                                sample_next, sample_uniforms, stop_string_end, untruncated)
from r1lab.rollout.kernels import load as load_kernels
from r1lab.vision import is_vision_model

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def unsupported_reason(model) -> str | None:
    """None when FastEngine can run `model`, else a one-line reason."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if is_vision_model(model):
        return f"a vision-language model ({mtype}): the fast engine decodes text only, no images"
    if mtype not in SUPPORTED_MODEL_TYPES:
        return f"model_type {mtype!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    if getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention is not implemented"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "model has no .model.layers / .model.rotary_emb"
    for layer in inner.layers:
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                  layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            if type(m) is not torch.nn.Linear and not _is_plain_lora(m):
                return f"projection {type(m).__name__} is neither a Linear nor a LoRA-wrapped Linear"
    if any(p.device.type != "cpu" for p in model.parameters()):
        return "FastEngine runs on CPU; the model is on another device"
    return None


def _resolve_dtype(dtype: str, model) -> torch.dtype:
    if dtype in ("bfloat16", "bf16"):
        return torch.bfloat16
    if dtype in ("float32", "fp32"):
        return torch.float32
    if dtype != "auto":
        raise ValueError(f"rollout dtype must be auto, float32 or bfloat16, got {dtype!r}")
    # auto: bf16 where the CPU multiplies bf16 natively and the matrices are big enough to gain;
    # tiny models are bound by per-op overhead, where fp32 is as fast and exact
    return torch.bfloat16 if cpu_has_native_bf16() and model.config.hidden_size >= 512 else torch.float32


class _Packed:
    """The model's weights in the engine's layout and compute dtype, for one policy version."""

    def __init__(self, model, dtype: torch.dtype):
        cfg = model.config
        self.dtype = dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        pack = _weight_packer(dtype)
        cast = lambda t: t.detach().to(dtype).contiguous()  # noqa: E731
        f32 = lambda t: t.detach().float()  # noqa: E731
        self.layers = []
        for layer in model.model.layers:
            at, mlp = layer.self_attn, layer.mlp
            W = _effective_weight
            qkv_b = [_bias(m) for m in (at.q_proj, at.k_proj, at.v_proj)]
            self.layers.append({
                "ln1": f32(layer.input_layernorm.weight),
                "ln2": f32(layer.post_attention_layernorm.weight),
                "wqkv": pack(cast(torch.cat([W(at.q_proj), W(at.k_proj), W(at.v_proj)]))),
                "bqkv": None if all(b is None for b in qkv_b) else cast(torch.cat(
                    [b if b is not None else torch.zeros(W(m).shape[0]) for b, m in zip(qkv_b, (at.q_proj, at.k_proj, at.v_proj))])),
                "wo": pack(cast(W(at.o_proj))),
                "bo": None if _bias(at.o_proj) is None else cast(_bias(at.o_proj)),
                "wgu": pack(cast(torch.cat([W(mlp.gate_proj), W(mlp.up_proj)]))),
                "bgu": None if _bias(mlp.gate_proj) is None else cast(torch.cat([_bias(mlp.gate_proj), _bias(mlp.up_proj)])),
                "wd": pack(cast(W(mlp.down_proj))),
                "bd": None if _bias(mlp.down_proj) is None else cast(_bias(mlp.down_proj)),
            })
        self.inter = _effective_weight(model.model.layers[0].mlp.gate_proj).shape[0]
        self.norm = f32(model.model.norm.weight)
        # embedding rows stay float32: the model's own parameter, no copy for fp32 models
        self.embed = f32(model.get_input_embeddings().weight)
        head = model.get_output_embeddings()
        self.vocab = head.weight.shape[0]
        self.lm_head = pack(cast(head.weight))
        self.lm_bias = None if getattr(head, "bias", None) is None else cast(head.bias)


def _weight_packer(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """bf16 weights -> oneDNN's prepacked layout (`linear` recognises it), where the CPU has native
    bf16 and torch has the op; otherwise weights stay as they are (fp32 keeps plain F.linear, so the
    fp32 engine's numbers are exactly those of the model)."""
    if dtype is not torch.bfloat16 or not _can_prepack_bf16():
        return lambda w: w
    return lambda w: torch.ops.mkldnn._reorder_linear_weight(w, PACK_BATCH_HINT)


PACK_BATCH_HINT = 16  # oneDNN picks its blocking for this many rows; any row count works (tested 1..128)


@functools.cache
def _can_prepack_bf16() -> bool:
    if not (cpu_has_native_bf16() and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:  # one trial: an op that exists but rejects this CPU must not break generation
        w = torch.randn(8, 16, dtype=torch.bfloat16)
        x = torch.randn(2, 16, dtype=torch.bfloat16)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 2), None, "none", [], "")
        return bool(torch.allclose(y.float(), F.linear(x, w).float()))
    except (RuntimeError, NotImplementedError):
        return False


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear over a plain or a oneDNN-prepacked weight (see `_weight_packer`)."""
    if w.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def _is_plain_lora(m) -> bool:
    """A peft LoRA layer over a Linear, without DoRA or other variants: W + sum_a s_a B_a A_a."""
    base = getattr(m, "base_layer", None)
    return (type(base) is torch.nn.Linear and hasattr(m, "lora_A") and hasattr(m, "lora_B")
            and not any(getattr(m, "use_dora", {}).get(a, False) for a in m.active_adapters))


def _bias(m) -> torch.Tensor | None:
    return m.bias if type(m) is torch.nn.Linear else m.base_layer.bias


def _effective_weight(m) -> torch.Tensor:
    """The weight the module applies: a Linear's own, or a LoRA layer's base plus its active adapters'
    scaled low-rank updates (unless already merged in). Dropout on the adapters' input is a training
    device; generation uses the deterministic update, as peft's eval mode does."""
    if type(m) is torch.nn.Linear:
        return m.weight
    w = m.base_layer.weight
    if getattr(m, "merged", False):
        return w
    w = w.detach().float()
    for a in m.active_adapters:
        if a in m.lora_A:
            w = w + m.scaling[a] * (m.lora_B[a].weight.detach().float() @ m.lora_A[a].weight.detach().float())
    return w


def version_key(model) -> tuple:
    """Changes whenever any parameter is replaced or modified in place, so packed weights are rebuilt
    exactly when the policy changed: autograd's version counters catch in-place ops, and
    `_r1lab_weights_version` the optimizers r1lab makes (fused AdamW's kernel does not bump the
    counters: found by a demo run whose engine/trainer log-prob gap grew to 2.9 while the policy moved)."""
    return (getattr(model, "_r1lab_weights_version", 0), tuple((p.data_ptr(), p._version) for p in model.parameters()))


def _first_equal(prompts: list[list[int]]) -> list[int]:
    """For each prompt, the index of the first prompt with the same ids."""
    first: dict[tuple[int, ...], int] = {}
    return [first.setdefault(tuple(p), i) for i, p in enumerate(prompts)]


def _seed(seed: int | None) -> int:
    """The call's seed; without one, a fresh one from torch's global generator."""
    return int(seed) if seed is not None else int(torch.randint(0, 2**62, ()))


class FastEngine(LiveModelEngine):
    def __init__(self, model, tokenizer, batch_size: int = 256, dtype: str = "auto",
                 kv_cache_gb: float = 4.0, refill_fraction: float = 0.25, kernels: str = "auto"):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"FastEngine cannot run this model: {reason}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dtype = _resolve_dtype(dtype, model)
        self.kv_cache_gb = kv_cache_gb
        self.refill_fraction = refill_fraction
        if kernels not in ("auto", "torch"):
            raise ValueError(f"rollout kernels must be auto or torch, got {kernels!r}")
        # "auto": the fused C decode kernels where they build (rollout/kernels.py), else torch operators
        self._kernels = load_kernels(self.dtype) if kernels == "auto" else None
        self._buffers_key: tuple | None = None
        self._buffers_cache: tuple[torch.Tensor, ...] = ()
        self.stop_ids = stop_token_ids(tokenizer)
        self._packed: _Packed | None = None
        self._packed_key: tuple | None = None
        self._rope_len = 0
        self.stats: dict[str, float] = {}
        self._fallback = None
        # partial rollouts: called at every token boundary of a `generate`; when it has put newer
        # weights into `model` it returns their version, and the sequences in flight continue under
        # them (their caches recomputed), each token recording the version that sampled it
        self.interrupt: Callable[[], int | None] | None = None

    # -- weights and rope tables --------------------------------------------------------------------

    def _weights(self) -> _Packed:
        key = version_key(self.model)
        if self._packed is None or key != self._packed_key:
            with torch.no_grad():
                self._packed = _Packed(self.model, self.dtype)
            self._packed_key = key
        return self._packed

    def _rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [length, head_dim] float32 from the model's own rotary module (its rope type,
        scaling and attention factor), computed for positions 0..length-1."""
        if length > self._rope_len:
            rot = self.model.model.rotary_emb
            pos = torch.arange(length).unsqueeze(0)
            with torch.no_grad():
                cos, sin = rot(torch.zeros(1, dtype=torch.float32), pos)
            self._cos, self._sin, self._rope_len = cos[0].float(), sin[0].float(), length
        return self._cos, self._sin

    # -- the model, one layer at a time ------------------------------------------------------------

    def _norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm with float32 statistics; x float32."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def _mlp(self, W: _Packed, L: dict, x: torch.Tensor) -> torch.Tensor:
        h = self._norm(x, L["ln2"], W.eps).to(W.dtype)
        gu = linear(h, L["wgu"], L["bgu"])
        act = F.silu(gu[..., : W.inter]) * gu[..., W.inter:]
        return x.add_(linear(act, L["wd"], L["bd"]))  # in place, the compute dtype promoted to float32

    def _qkv(self, W: _Packed, L: dict, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [..., T, D] float32 -> q [..., H, T, hd], k/v [..., KV, T, hd] in the compute dtype,
        RoPE applied in float32. cos/sin broadcast over [..., 1, T, hd]."""
        H, KV, hd = W.n_heads, W.n_kv, W.head_dim
        h = self._norm(x, L["ln1"], W.eps).to(W.dtype)
        qkv = linear(h, L["wqkv"], L["bqkv"])
        lead = qkv.shape[:-1]
        # q and k heads rotated together (one set of elementwise ops instead of two)
        qk = qkv[..., : (H + KV) * hd].reshape(*lead, H + KV, hd).transpose(-2, -3)
        qk = self._rotate(qk.float(), cos, sin).to(W.dtype)
        q, k = qk[..., :H, :, :], qk[..., H:, :, :]
        v = qkv[..., (H + KV) * hd:].reshape(*lead, KV, hd).transpose(-2, -3)
        return q, k, v

    def _logits(self, W: _Packed, x: torch.Tensor) -> torch.Tensor:
        h = self._norm(x, W.norm, W.eps).to(W.dtype)
        return linear(h, W.lm_head, W.lm_bias).float()  # [N, V]

    def _prefill(self, W: _Packed, cache: torch.Tensor, prompts: list[list[int]], slots: torch.Tensor,
                 src: torch.Tensor) -> torch.Tensor:
        """Run the distinct `prompts` (right-padded, causal), write their K/V into cache slots
        `slots` (slot i gets prompt src[i]) and return the last-position logits of each slot."""
        U, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros((U, P), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, : len(p)] = torch.tensor(p)
        lens = torch.tensor([len(p) for p in prompts])
        cos, sin = self._rope(P)
        cos, sin = cos[:P], sin[:P]
        x = F.embedding(ids, W.embed)  # [U, P, D] float32
        for li, L in enumerate(W.layers):
            q, k, v = self._qkv(W, L, x, cos, sin)  # q [U, H, P, hd]
            cache[li, 0, slots, :, :P] = k[src]
            cache[li, 1, slots, :, :P] = v[src]
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=W.n_kv != W.n_heads)
            x = x.add_(linear(a.transpose(1, 2).reshape(U, P, -1), L["wo"], L["bo"]))
            x = self._mlp(W, L, x)
        last = x[torch.arange(U), lens - 1]  # [U, D]
        return self._logits(W, last)[src]

    def _extend(self, W: _Packed, cache: torch.Tensor, suffixes: list[list[int]], slots: torch.Tensor,
                starts: torch.Tensor) -> torch.Tensor:
        """Prefill `suffixes[r]` into cache slot slots[r] (consecutive), after the starts[r] tokens
        the slot already holds: the K/V of positions starts[r] .. starts[r] + len - 1 are written,
        each query attends to the slot's cache up to its own position. Returns the last-position
        logits of each slot [U, V]."""
        U, P = len(suffixes), max(len(p) for p in suffixes)
        S, KV, max_len, hd = cache.shape[2], W.n_kv, cache.shape[4], W.head_dim
        ids = torch.zeros((U, P), dtype=torch.long)
        for r, p in enumerate(suffixes):
            ids[r, : len(p)] = torch.tensor(p)
        lens = torch.tensor([len(p) for p in suffixes])
        pos = starts.unsqueeze(1) + torch.arange(P)  # [U, P]
        span = int((starts + lens).max())
        # a padding query (past its row's suffix) may sit past the cache: its rotation is never used
        cos, sin = self._rope(max_len)
        at_pos = pos.clamp(max=max_len - 1)
        cos, sin = cos[at_pos].unsqueeze(1), sin[at_pos].unsqueeze(1)  # [U, 1, P, hd]
        mask = (torch.arange(span) <= pos.unsqueeze(-1)).unsqueeze(1)  # [U, 1, P, span]
        # only the real tokens' K/V are written (padding would overwrite nothing useful, but could
        # run past max_len); rows of a layer's [S * KV * max_len, hd] cache view, as in `_decode`
        r_idx, j_idx = (torch.arange(P) < lens.unsqueeze(1)).nonzero(as_tuple=True)
        at = ((slots[r_idx].unsqueeze(1) * KV + torch.arange(KV)) * max_len + pos[r_idx, j_idx].unsqueeze(1)).reshape(-1)
        s0 = int(slots[0])
        x = F.embedding(ids, W.embed)  # [U, P, D] float32
        for li, L in enumerate(W.layers):
            q, k, v = self._qkv(W, L, x, cos, sin)  # q [U, H, P, hd], k/v [U, KV, P, hd]
            kc, vc = cache[li, 0], cache[li, 1]
            kc.view(S * KV * max_len, hd).index_copy_(0, at, k[r_idx, :, j_idx].reshape(-1, hd))
            vc.view(S * KV * max_len, hd).index_copy_(0, at, v[r_idx, :, j_idx].reshape(-1, hd))
            a = F.scaled_dot_product_attention(q, kc[s0: s0 + U, :, :span], vc[s0: s0 + U, :, :span], attn_mask=mask,
                                               enable_gqa=W.n_kv != W.n_heads)
            x = x.add_(linear(a.transpose(1, 2).reshape(U, P, -1), L["wo"], L["bo"]))
            x = self._mlp(W, L, x)
        return self._logits(W, x[torch.arange(U), lens - 1])

    def _decode(self, W: _Packed, cache: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token for each of the n live slots 0..n-1: tok [n], pos [n] (where it goes in the
        cache). Returns logits [n, V] float32."""
        n = tok.shape[0]
        S, KV, max_len, hd = cache.shape[2], W.n_kv, cache.shape[4], W.head_dim
        span = int(pos.max()) + 1
        cos, sin = self._rope(span)
        cos, sin = cos[pos].unsqueeze(1).unsqueeze(1), sin[pos].unsqueeze(1).unsqueeze(1)  # [n, 1, 1, hd]
        mask = (torch.arange(span).unsqueeze(0) <= pos.unsqueeze(1)).view(n, 1, 1, span)
        # where each (slot, kv head)'s new K/V row goes in a layer's [S * KV * max_len, hd] cache view:
        # one index_copy_ per tensor instead of an advanced-indexing write
        at = ((torch.arange(n).unsqueeze(1) * KV + torch.arange(KV)) * max_len + pos.unsqueeze(1)).reshape(-1)
        x = F.embedding(tok, W.embed).unsqueeze(1)  # [n, 1, D]
        for li, L in enumerate(W.layers):
            q, k, v = self._qkv(W, L, x, cos, sin)  # q [n, H, 1, hd], k/v [n, KV, 1, hd]
            kc, vc = cache[li, 0], cache[li, 1]
            kc.view(S * KV * max_len, hd).index_copy_(0, at, k.reshape(n * KV, hd))
            vc.view(S * KV * max_len, hd).index_copy_(0, at, v.reshape(n * KV, hd))
            a = F.scaled_dot_product_attention(q, kc[:n, :, :span], vc[:n, :, :span], attn_mask=mask,
                                               enable_gqa=W.n_kv != W.n_heads)
            x = x.add_(linear(a.reshape(n, 1, -1), L["wo"], L["bo"]))
            x = self._mlp(W, L, x)
        return self._logits(W, x[:, 0])

    def _decode_fused(self, W: _Packed, cache: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """`_decode` with the non-matmul work of each layer in five calls of the C kernels
        (rollout/kernels.c): the same computation, up to float rounding (tested against `_decode`).
        The kernels take raw pointers to contiguous arrays: the scratch buffers, the cache, and the
        outputs of `linear` (fresh, contiguous tensors)."""
        K, n = self._kernels, tok.shape[0]
        H, KV, hd, D = W.n_heads, W.n_kv, W.head_dim, W.embed.shape[1]
        max_len, eps = cache.shape[4], W.eps
        cos, sin = self._rope(max_len)
        buf = self._buffers(W, cache.shape[2])
        h, q, att, act = (b[:n] for b in buf)
        pos = pos.contiguous()
        p_pos, p_cos, p_sin = pos.data_ptr(), cos.data_ptr(), sin.data_ptr()
        p_h, p_q, p_att, p_act = h.data_ptr(), q.data_ptr(), att.data_ptr(), act.data_ptr()
        # cache [layers, 2, slots, KV, max_len, hd]: layer li's K at li * 2 * per, its V one `per` later
        per, base = cache[0, 0].numel() * cache.element_size(), cache.data_ptr()
        scale = hd ** -0.5
        x = F.embedding(tok, W.embed)  # [n, D] float32, the residual stream
        p_x = x.data_ptr()
        K.add_rmsnorm(p_x, None, W.layers[0]["ln1"].data_ptr(), p_h, n, D, eps)
        for li, L in enumerate(W.layers):
            qkv = linear(h, L["wqkv"], L["bqkv"])
            kc, vc = base + 2 * li * per, base + (2 * li + 1) * per
            K.rope_kv(qkv.data_ptr(), n, H, KV, hd, p_cos, p_sin, p_pos, p_q, kc, vc, max_len)
            K.decode_attention(p_q, kc, vc, p_pos, n, H, KV, hd, max_len, scale, p_att)
            o = linear(att, L["wo"], L["bo"])
            K.add_rmsnorm(p_x, o.data_ptr(), L["ln2"].data_ptr(), p_h, n, D, eps)
            gu = linear(h, L["wgu"], L["bgu"])
            K.silu_mul(gu.data_ptr(), n, W.inter, p_act)
            d = linear(act, L["wd"], L["bd"])
            nxt = W.layers[li + 1]["ln1"] if li + 1 < len(W.layers) else W.norm  # the next norm, fused here
            K.add_rmsnorm(p_x, d.data_ptr(), nxt.data_ptr(), p_h, n, D, eps)
        return linear(h, W.lm_head, W.lm_bias).float()

    def _buffers(self, W: _Packed, slots: int) -> tuple[torch.Tensor, ...]:
        """Scratch for `_decode_fused`, [slots, ...] in the compute dtype, kept between steps:
        normed hidden states, rotated queries, attention output, gated MLP activations."""
        shapes = ((W.embed.shape[1],), (W.n_heads, W.head_dim), (W.n_heads * W.head_dim,), (W.inter,))
        key = (W.dtype, slots, shapes)
        if self._buffers_key != key:
            self._buffers_cache = tuple(torch.empty((slots, *s), dtype=W.dtype) for s in shapes)
            self._buffers_key = key
        return self._buffers_cache

    # -- the public interface ------------------------------------------------------------------------

    def generate(
        self,
        problems: list[Problem],
        params: SamplingParams,
        n: int = 1,
        seed: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        first_sample: int = 0,
    ) -> list[Completion]:
        """Sample `n` completions per problem; returns len(problems) * n completions, the n samples
        of problem i at positions i*n .. i*n+n-1 (the same contract as HFEngine.generate).

        Sample k of problem i is number first_sample + i*n + k of the call: its random draws depend
        on the seed and that number only, not on the batch it was decoded in, so a call split into
        parts (each with the first_sample of its first problem) samples what the whole call does."""
        reason = unsupported_reason(self.model)
        if reason is not None:  # the model changed under us (e.g. adapters were added): stay correct
            if self._fallback is None:
                from r1lab.rollout.hf import HFEngine

                log.warning("rollout: the fast engine cannot run this model (%s); using the hf engine", reason)
                self._fallback = HFEngine(self.model, self.tokenizer, batch_size=self.batch_size)
            return self._fallback.generate(problems, params, n=n, seed=seed, on_batch=on_batch)
        encoded = encode_prompts(self.tokenizer, problems)
        if not encoded:
            return []
        with torch.inference_mode():
            return self._run(encoded, n, params, _seed(seed), on_batch, first_sample)

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None,
                     on_batch: Callable[[int], None] | None = None, first_sample: int = 0) -> list[Completion]:
        """One completion per prompt given as token ids, used as they are (no chat template): the
        continuation of a prefix the caller built, e.g. a thinking trace it extended. The
        completions' problem_id is the prompt's index as text."""
        return self._continue(prompts, params, seed, on_batch, first_sample)

    def session(self) -> "KVSession":
        """Keeps each key's KV cache between calls: a turn prefills only the ids after what the
        cache of its episode's last turn holds (see KVSession)."""
        return KVSession(self)

    def _continue(self, prompts: list[list[int]], params: SamplingParams, seed: int | None, on_batch=None,
                  first_sample: int = 0, kept: "KVSession | None" = None, keys=None) -> list[Completion]:
        reason = unsupported_reason(self.model)
        if reason is not None:
            if self._fallback is None:
                from r1lab.rollout.hf import HFEngine

                log.warning("rollout: the fast engine cannot run this model (%s); using the hf engine", reason)
                self._fallback = HFEngine(self.model, self.tokenizer, batch_size=self.batch_size)
            return self._fallback.generate_ids(prompts, params, seed=seed, on_batch=on_batch, first_sample=first_sample)
        if not prompts:
            return []
        encoded = [EncodedPrompt(str(i), list(ids), "") for i, ids in enumerate(prompts)]
        with torch.inference_mode():
            return self._run(encoded, 1, params, _seed(seed), on_batch, first_sample, same=_first_equal(prompts),
                             kept=kept, keys=keys)

    def _slots(self, W: _Packed, jobs: int, max_len: int) -> int:
        per_slot = len(W.layers) * 2 * W.n_kv * max_len * W.head_dim * torch.finfo(W.dtype).bits // 8
        by_memory = max(1, int(self.kv_cache_gb * 2**30 // per_slot))
        return max(1, min(self.batch_size, jobs, by_memory))

    def _run(self, encoded: list[EncodedPrompt], n: int, params: SamplingParams, seed: int, on_batch,
             first_sample: int = 0, same: list[int] | None = None, kept: "KVSession | None" = None,
             keys=None) -> list[Completion]:
        """`same[i]`: the first prompt whose ids equal prompt i's (default: i); prompts that are the
        same are prefilled once in a refill, as the n samples of one prompt are. With `kept` (and n
        = 1), prompt i is the context of key keys[i]: the KV the session holds for a prefix of it is
        copied into its slot and only the rest is prefilled; a finished row's KV goes back to it."""
        W = self._weights()
        max_new = params.max_new_tokens
        max_len = max(len(e.ids) for e in encoded) + max_new
        same = same if same is not None else list(range(len(encoded)))
        # the longest prompts first: the batch shrinks towards the end where prompts are short;
        # equal prompts next to each other, so they enter the same refill
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].ids), same[i]))
        waiting = deque((i, s) for i in order for s in range(n))  # (prompt index, sample index)
        S = self._slots(W, len(waiting), max_len)
        cache = torch.zeros((len(W.layers), 2, S, W.n_kv, max_len, W.head_dim), dtype=W.dtype)
        stop = torch.tensor(self.stop_ids + list(params.stop_token_ids), dtype=torch.long)
        stop_strings = params.stop

        slot_job: list[tuple[int, int]] = []  # live slot -> (prompt, sample)
        pos = torch.zeros(0, dtype=torch.long)  # live slot -> cache position of its next token
        sample_no = torch.zeros(0, dtype=torch.long)  # live slot -> its sample's number in the call
        start = torch.zeros(0, dtype=torch.long)  # live slot -> its prompt length (pos - start = tokens so far)
        logits = torch.zeros((0, W.vocab))
        out_tok: dict[tuple[int, int], list[int]] = {}
        out_lp: dict[tuple[int, int], list[float]] = {}
        out_ver: dict[tuple[int, int], list[int]] = {}  # the policy version that sampled each token
        version = self.policy_version
        swaps = 0
        finish: dict[tuple[int, int], str] = {}
        stop_cut: dict[tuple[int, int], int] = {}  # text length to keep for a stop-string finish
        refill_min = max(1, int(S * self.refill_fraction))
        decode = self._decode_fused if self._kernels is not None else self._decode
        c_sampler = self._kernels is not None and untruncated(params, W.vocab)  # fixed for the call
        decoded_tokens = prefilled_tokens = kept_tokens = 0
        while True:
            free = S - len(slot_job)
            if waiting and free and (free >= min(refill_min, len(waiting)) or not slot_job):
                new = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                new, new_logits, prefilled, reused = self._admit(W, cache, encoded, same, new, len(slot_job), kept, keys)
                prefilled_tokens, kept_tokens = prefilled_tokens + prefilled, kept_tokens + reused
                logits = torch.cat([logits, new_logits])
                pos = torch.cat([pos, torch.tensor([len(encoded[i].ids) for i, _ in new])])
                start = torch.cat([start, torch.tensor([len(encoded[i].ids) for i, _ in new])])
                sample_no = torch.cat([sample_no, torch.tensor([first_sample + i * n + s for i, s in new])])
                slot_job += new
                for j in new:
                    out_tok[j], out_lp[j], out_ver[j] = [], [], []
            if not slot_job:
                break
            u = sample_uniforms(seed, sample_no, pos - start) if params.temperature > 0 else None
            if c_sampler:
                tok, lp = self._kernels.sample(logits, params.temperature, None, u)
            else:
                tok, lp = sample_next(logits, params, None, u)
            done = torch.isin(tok, stop)
            for s, (j, t, l, d) in enumerate(zip(slot_job, tok.tolist(), lp.tolist(), done.tolist())):
                out_tok[j].append(t)
                out_lp[j].append(l)
                out_ver[j].append(version)
                if d:
                    finish[j] = "stop"
                elif stop_strings and (cut := stop_string_end(self.tokenizer, out_tok[j], stop_strings)) is not None:
                    finish[j], stop_cut[j] = "stop", cut
                    done[s] = True
                if not done[s] and len(out_tok[j]) >= max_new:
                    finish[j] = "length"
                    done[s] = True
            if bool(done.any()):
                if kept is not None:  # the cache holds positions 0..pos-1: all but the last sampled id
                    for s in done.nonzero().squeeze(-1).tolist():
                        (i, k), p = slot_job[s], int(pos[s])
                        kept.put(keys[i], (encoded[i].ids + out_tok[(i, k)])[:p], cache[:, :, s, :, :p])
                keep = self._compact(cache, done)
                slot_job = [slot_job[s] for s in keep.tolist()]
                tok, pos, start, sample_no = tok[keep], pos[keep], start[keep], sample_no[keep]
                if on_batch:
                    on_batch(int(done.sum()))
            if not slot_job and not waiting:
                break
            if slot_job and self.interrupt is not None and (newer := self.interrupt()) is not None:
                W, version, swaps = self._weights(), newer, swaps + 1
                self.policy_version = newer
                self._recompute_cache(W, cache, encoded, slot_job, out_tok)
            if slot_job:
                logits = decode(W, cache, tok, pos)
                decoded_tokens += len(slot_job)
                pos = pos + 1
            else:
                logits = logits[:0]
        self.stats = {"slots": S, "decoded_tokens": decoded_tokens, "prefilled_tokens": prefilled_tokens,
                      **({"kept_tokens": kept_tokens} if kept is not None else {}), "kernels": "c" if self._kernels is not None else "torch",
                      **({"weight_swaps": swaps} if self.interrupt is not None else {})}
        return self._completions(encoded, n, out_tok, out_lp, finish, stop_cut,
                                 out_ver if self.interrupt is not None else None)

    def _admit(self, W: _Packed, cache: torch.Tensor, encoded: list[EncodedPrompt], same: list[int], new: list,
               base: int, kept: "KVSession | None", keys) -> tuple[list, torch.Tensor, int, int]:
        """Prefill the jobs `new` ((prompt, sample) pairs) into cache slots base, base + 1, ...
        Returns the jobs in their slots' order, their next-token logits [len(new), V], and the
        tokens prefilled and taken from kept caches. A job whose key has kept K/V of a prefix of its
        prompt starts from them; the others' distinct prompts are prefilled whole, once each."""
        held = {} if kept is None else {j: kv for j in new if (kv := kept.take(keys[j[0]], encoded[j[0]].ids)) is not None}
        # a held job whose ids and kept length equal an earlier one's copies that one's slot once it
        # is extended (episodes that sampled the same turn and got the same answer)
        first: dict[tuple[int, int], int] = {}
        reps, dups, dup_src = [], [], []
        for j, kv in held.items():
            r = first.setdefault((same[j[0]], kv.shape[3]), len(reps))
            if r == len(reps):
                reps.append(j)
            else:
                dups.append(j)
                dup_src.append(r)
        fresh = [j for j in new if j not in held]
        parts, prefilled = [], 0
        if reps:
            slots = torch.arange(base, base + len(reps))
            for s, j in zip(slots.tolist(), reps):
                cache[:, :, s, :, : held[j].shape[3]] = held[j]
            starts = [held[j].shape[3] for j in reps]
            rep_logits = self._extend(W, cache, [encoded[i].ids[c:] for (i, _), c in zip(reps, starts)],
                                      slots, torch.tensor(starts))
            src = torch.tensor(dup_src, dtype=torch.long)
            if dups:
                cache[:, :, base + len(reps): base + len(held)] = cache[:, :, base + src]
            parts += [rep_logits, rep_logits[src]]
            prefilled += sum(len(encoded[i].ids) - c for (i, _), c in zip(reps, starts))
        if fresh:
            distinct = sorted({same[i] for i, _ in fresh})
            row = {i: r for r, i in enumerate(distinct)}
            src = torch.tensor([row[same[i]] for i, _ in fresh])
            slots = torch.arange(base + len(held), base + len(new))
            parts.append(self._prefill(W, cache, [encoded[i].ids for i in distinct], slots, src))
            prefilled += sum(len(encoded[i].ids) for i in distinct)
        return reps + dups + fresh, torch.cat(parts), prefilled, sum(kv.shape[3] for kv in held.values())

    def _recompute_cache(self, W: _Packed, cache: torch.Tensor, encoded, slot_job, out_tok) -> None:
        """The K/V of every live slot's prompt and tokens so far but the last (which the next decode
        step writes), under the weights W: each later token is then sampled from exactly the new
        version's distribution given its prefix, as the trainer recomputes it."""
        seqs = [encoded[i].ids + out_tok[(i, s)][:-1] for i, s in slot_job]
        idx = torch.arange(len(seqs))
        self._prefill(W, cache, seqs, idx, idx)

    @staticmethod
    def _compact(cache: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Move the surviving sequences of the last slots into the holes the finished ones left, so
        live slots stay 0..m-1. Returns, for each new slot, the old slot it came from."""
        alive = (~done).nonzero().squeeze(-1)
        m = len(alive)
        holes = done[:m].nonzero().squeeze(-1)  # finished slots inside the new live range
        movers = alive[alive >= m]  # survivors outside it
        keep = torch.arange(m)
        if len(holes):
            cache[:, :, holes] = cache[:, :, movers]
            keep[holes] = movers
        return keep

    def _completions(self, encoded, n, out_tok, out_lp, finish, stop_cut, out_ver=None) -> list[Completion]:
        completions = []
        for i, e in enumerate(encoded):
            for s in range(n):
                ids, reason = out_tok[(i, s)], finish[(i, s)]
                if (i, s) in stop_cut:  # a stop string: the text ends right after it
                    text = self.tokenizer.decode(ids, skip_special_tokens=False)[: stop_cut[(i, s)]]
                else:
                    body = ids[:-1] if reason == "stop" else ids
                    text = self.tokenizer.decode(body, skip_special_tokens=False)
                completions.append(Completion(
                    problem_id=e.problem_id, prompt_ids=list(e.ids), response_ids=ids, text=e.prefill + text,
                    logprobs=out_lp[(i, s)], finish_reason=reason,
                    token_versions=out_ver[(i, s)] if out_ver is not None else None,
                ))
        return completions


class KVSession(IdSession):
    """FastEngine's `session()`: between calls, the KV cache of each key's context is kept here
    (copied out of its decode slot when the row finishes, [layers, 2, kv heads, length, head dim]
    in the compute dtype), and the key's next prompt, if it extends that context, starts from it:
    its slot gets the kept K/V and only the new ids (the turn's last sampled id, the observation)
    are prefilled. What is kept is dropped when it is used, when the caller drops the key, when
    the weights change (it was computed under the old ones) and when it would take the store past
    `kv_gb` (that key's next prompt is prefilled whole, as without a session).

    The sampled ids and their seeded draws are those of `engine.generate_ids`; the log-probs equal
    its to float32 rounding: the kept K/V were computed by decode steps, not by one prefill."""

    def __init__(self, engine: FastEngine, kv_gb: float | None = None):
        super().__init__(engine)
        self.limit = int((engine.kv_cache_gb if kv_gb is None else kv_gb) * 2**30)
        self.kept: dict = {}  # key -> (ids whose K/V are kept, K/V, weights key they were computed under)
        self.bytes = 0

    def generate_ids(self, keys, prompts, params, seed=None):
        if len(keys) != len(prompts):
            raise ValueError(f"KVSession.generate_ids: {len(keys)} keys for {len(prompts)} prompts")
        return self.engine._continue(prompts, params, seed, kept=self, keys=list(keys))

    def take(self, key, ids: list[int]) -> torch.Tensor | None:
        """The K/V kept for `key` if they are of a proper prefix of `ids` under the current
        weights, else None; either way the key's entry is gone."""
        entry = self.kept.get(key)
        self.drop([key])
        if entry is None:
            return None
        held, kv, weights = entry
        if weights != self.engine._packed_key or len(held) >= len(ids) or ids[: len(held)] != held:
            return None
        return kv

    def put(self, key, ids: list[int], kv: torch.Tensor) -> None:
        self.drop([key])
        size = kv.numel() * kv.element_size()
        if self.bytes + size <= self.limit:
            self.kept[key] = (ids, kv.clone(), self.engine._packed_key)
            self.bytes += size

    def drop(self, keys) -> None:
        for key in keys:
            if (entry := self.kept.pop(key, None)) is not None:
                self.bytes -= entry[1].numel() * entry[1].element_size()

    def close(self) -> None:
        self.kept.clear()
        self.bytes = 0

"""What every rollout engine shares: the Engine interface, the sampling spec, the prompt encoding
and the sampler."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from r1lab.errors import EngineError
from r1lab.models import render_prompt, response_prefill
from r1lab.records import Completion, Problem, prompt_messages
from r1lab.vision import VisionInputs, expand_image_tokens, pixel_inputs, with_image_placeholders


class Engine:
    """What the RL loop, eval and the data steps need of a rollout engine; every engine subclasses it.

    `generate` returns len(problems) * n completions, the n samples of problem i at positions
    i*n .. i*n+n-1, each with prompt and response token ids, the per-token log-probs of the sampled
    tokens at the sampling temperature (before top-k / top-p truncation: what the trainer recomputes),
    its finish reason ("stop" | "length"), and stop strings / stop ids / max_new_tokens / seed honoured.
    Sample k of problem i is number first_sample + i*n + k of the call; its random draws depend on the
    seed and that number alone, so a call split in parts (each with the first_sample of its first
    problem) samples what the whole call does.
    After `load_weights(weights, version)` every sample comes from those weights and the engine
    reports `policy_version == version`; `weights` is a lazily produced iterator of (Hugging Face
    parameter name, tensor), adapters merged, that an engine sampling the live model never reads.

    `generate_ids` continues prompts given as token ids (budget forcing and beam search build such
    prefixes); an engine that cannot (an endpoint) says so with `continues_ids = False`."""

    policy_version: int = 0
    batch_size: int = 64  # sequences decoded together: callers size their calls by it
    stop_ids: Sequence[int] = ()  # ids that end every response (EOS, end of turn), besides params.stop_token_ids
    stats: Mapping[str, float] = MappingProxyType({})  # what the last call measured (an engine's own keys)
    continues_ids: bool = False  # whether generate_ids works
    tokenizer = None  # an engine of a local model: its tokenizer

    def generate(self, problems: list[Problem], params: "SamplingParams", n: int = 1, seed: int | None = None,
                 on_batch: Callable[[int], None] | None = None, first_sample: int = 0) -> list[Completion]:
        raise NotImplementedError

    def generate_ids(self, prompts: list[list[int]], params: "SamplingParams", seed: int | None = None,
                     on_batch: Callable[[int], None] | None = None, first_sample: int = 0) -> list[Completion]:
        """One completion per prompt given as token ids, used as they are (no chat template); the
        completions' problem_id is the prompt's index as text. Prompt i is sample number
        first_sample + i of the call (as in `generate`), so a call split in parts samples what the
        whole call does."""
        raise EngineError(f"{type(self).__name__} cannot continue token-id prefixes (a local model's engine can)")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        raise NotImplementedError

    def session(self) -> "IdSession":
        """A series of `generate_ids` calls whose prompts grow from call to call (the turns of
        multi-turn episodes); this engine keeps nothing between them, FastEngine keeps KV caches."""
        return IdSession(self)

    def close(self) -> None:
        pass


class IdSession:
    """`generate_ids` over contexts that continue from call to call, each named by a key (an
    episode): the same completions as `engine.generate_ids(prompts, params, seed=seed)`. An engine
    may keep what it computed for a key's context and reuse it when the key's next prompt extends
    that context; `drop(keys)` says those contexts will not come back. This one keeps nothing."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def generate_ids(self, keys: Sequence, prompts: list[list[int]], params: "SamplingParams",
                     seed: int | None = None) -> list[Completion]:
        return self.engine.generate_ids(prompts, params, seed=seed)

    def drop(self, keys: Iterable) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "IdSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LiveModelEngine(Engine):
    """The weight handling of an engine that samples the trainer's own model object (fast, hf): the
    weights it samples are always the current ones, so loading a version only records it (the fast
    engine repacks its copy when the model's weights version changes)."""

    continues_ids = True

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.policy_version = version


@dataclass(frozen=True)
class SamplingParams:
    """One object for the engine and the trainer, so the trainer recomputes log-probs at the
    temperature the engine sampled at (docs/pitfalls.md, "One sampling spec"). temperature 0 = greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()  # stop strings: the response ends right after the first one (finish "stop")
    stop_token_ids: tuple[int, ...] = ()  # extra ids that end a response, besides the tokenizer's EOS / end of turn

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")

    @property
    def logprob_temperature(self) -> float:
        """The temperature log-probs are computed at (greedy decoding reports the T=1 distribution)."""
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class EncodedPrompt:
    problem_id: str
    ids: list[int]
    prefill: str  # text the chat template already put in the assistant turn (e.g. "<think>\n")
    vision: VisionInputs | None = None  # the pixel inputs of the prompt's images (their tokens are in ids)


def _template_prefill(rendered: str) -> str:
    """If the template opens the assistant turn with a pre-filled think tag, return that text: it is
    part of the response for scoring, or the format reward is 0 for every sample (docs/pitfalls.md,
    "Verifier bugs")."""
    tail = rendered.rstrip()
    if tail.endswith("<think>"):
        return rendered[rendered.rfind("<think>"):]
    return ""


def encode_prompts(tokenizer, problems: list[Problem]) -> list[EncodedPrompt]:
    """Each problem's prompt rendered and tokenized; a problem's images become image tokens at the
    start of its first user message and the pixel inputs that go with them (vision.py)."""
    out = []
    for p in problems:
        vision = pixel_inputs(tokenizer, p.images, f"problem {p.id}") if p.images else None
        prompt = with_image_placeholders(prompt_messages(p.prompt), len(p.images)) if p.images else p.prompt
        rendered = render_prompt(tokenizer, prompt)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if vision is not None:
            ids = expand_image_tokens(ids, tokenizer, vision)
        # the prompt's own prefilled assistant text, else what the chat template put there
        out.append(EncodedPrompt(p.id, ids, response_prefill(p.prompt) or _template_prefill(rendered), vision))
    return out


_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """An unsigned 64-bit constant as the int64 torch stores."""
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 lanes (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 lanes (products wrap modulo 2**64)."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def sample_uniforms(seed: int, samples: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One float64 in [0, 1) per row, a hash of (seed, the row's sample index, its token index) alone:
    a sample draws the same uniforms whatever else shares its batch, so a call split across engines
    (or decoded with another batch size) samples the same tokens. samples, steps: [B] int64."""
    key = _mix64(torch.tensor(_signed(seed & _MASK64), dtype=torch.int64) + _GOLDEN)
    h = _mix64(_mix64(key + samples.long() * _GOLDEN) + steps.long() * _MIX2)
    return _shr(h, 11).double() * 2.0**-53


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token for each row. logits: [B, V] float32. `uniforms` [B] float64 in [0, 1),
    one per row, replace the draws from `generator` when given.

    Returns (tokens [B], logprobs [B]) where the log-prob is log softmax(logits / T) at the chosen
    token, before top-k/top-p truncation: the same quantity the trainer recomputes.
    """
    if untruncated(params, logits.shape[-1]):
        return _sample_untruncated(logits, params.temperature, generator, uniforms)
    V = logits.shape[-1]
    logp = torch.log_softmax(logits / params.logprob_temperature, dim=-1)
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
    else:
        filtered = logp
        if params.top_k and params.top_k < V:
            kth = torch.topk(filtered, params.top_k, dim=-1).values[:, -1:]
            filtered = filtered.masked_fill(filtered < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_logp, order = torch.sort(filtered, dim=-1, descending=True)
            cum = sorted_logp.softmax(dim=-1).cumsum(dim=-1)
            # drop a token once the mass before it already reaches top_p (the first always stays)
            drop_sorted = (cum - sorted_logp.softmax(dim=-1)) >= params.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            filtered = filtered.masked_fill(drop, float("-inf"))
        tokens = inverse_cdf_sample(filtered.softmax(dim=-1), generator, uniforms)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def untruncated(params: SamplingParams, vocab_size: int) -> bool:
    """Plain sampling at a positive temperature: no top-k below the vocabulary, no top-p."""
    return params.temperature > 0 and not (params.top_k and params.top_k < vocab_size) and params.top_p >= 1.0


def _sample_untruncated(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                        uniforms: torch.Tensor | None = None):
    """Plain sampling at temperature T (no top-k / top-p), the RL default, in three passes over the
    [B, V] logits (max, exp, chunk sums) instead of a log-softmax, a softmax and a full cumulative
    sum, each a pass over a large vocabulary at every decode step."""
    z = logits if temperature == 1.0 else logits / temperature
    m = z.amax(dim=-1, keepdim=True)
    e = (z - m).exp_()  # unnormalised probabilities; the sampler does not need them to sum to 1
    tokens = inverse_cdf_sample(e, generator, uniforms)
    lse = m.squeeze(-1) + e.sum(dim=-1).log()
    return tokens, z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse


# torch.multinomial draws one exponential per vocabulary entry per row, a large share of a decode
# step over a 49k vocabulary; one uniform per row against the cumulative distribution samples the
# same distribution.
_CDF_CHUNK = 1024


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None,
                       uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of probs [B, V] (rows need not be normalised, entries >= 0): the first index
    whose cumulative mass exceeds u * total, u ~ U[0, 1) from `generator` or the given `uniforms` [B];
    `right=True` never lands on a zero-mass entry.

    Two levels, so no [B, V] cumulative sum is built: float64 sums of 1,024-entry chunks pick the
    chunk, then a float64 cumulative sum inside that one chunk picks the entry (float64: 49k float32
    partial sums would drift by ~1e-5)."""
    B, V = probs.shape
    C = min(_CDF_CHUNK, V)
    pad = -V % C
    chunks = (F.pad(probs, (0, pad)) if pad else probs).view(B, -1, C)
    chunk_cdf = chunks.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)  # [B, V/C]
    if uniforms is None:
        uniforms = torch.rand((B,), generator=generator, dtype=torch.float64, device=probs.device)
    u = uniforms.to(device=probs.device, dtype=torch.float64).view(B, 1) * chunk_cdf[:, -1:]
    ci = torch.searchsorted(chunk_cdf, u, right=True).clamp_(max=chunk_cdf.shape[1] - 1)  # [B, 1]
    before = torch.where(ci > 0, chunk_cdf.gather(1, (ci - 1).clamp_(min=0)), torch.zeros_like(u))
    rows = torch.arange(B, device=probs.device)
    within = chunks[rows, ci.squeeze(1)].double().cumsum(dim=-1)  # [B, C]
    # rounding between the two levels must not push the target past the chunk's last positive entry
    target = torch.minimum(u - before, within[:, -1:] * (1 - 1e-12))
    ti = torch.searchsorted(within, target, right=True).clamp_(max=C - 1)
    return (ci * C + ti).squeeze(1).clamp_(max=V - 1)


def stop_string_end(tokenizer, ids: list[int], stops: tuple[str, ...]) -> int | None:
    """Where the response text must end if it contains one of the stop strings: the character
    length up to and including the earliest one, else None. Only the tail of `ids` is decoded unless
    the tail already holds a stop string, so calling it every decode step stays cheap."""
    if not stops:
        return None
    tail = tokenizer.decode(ids[-(max(len(s) for s in stops) + 2):], skip_special_tokens=False)
    if not any(s in tail for s in stops):
        return None
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return min(text.find(s) + len(s) for s in stops if s in text)

"""What every rollout engine shares: the sampling spec and the prompt encoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1lab.models import render_prompt
from r1lab.records import Problem


@dataclass(frozen=True)
class SamplingParams:
    """One object for the engine and the trainer (PITFALLS #7: temperature forgotten when the
    trainer recomputes log-probs). temperature 0 = greedy."""

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


def _template_prefill(rendered: str) -> str:
    """If the template opens the assistant turn with a pre-filled think tag, return that text: it is
    part of the response for scoring (PITFALLS #2: a pre-filled <think> made format rewards 0)."""
    tail = rendered.rstrip()
    if tail.endswith("<think>"):
        return rendered[rendered.rfind("<think>"):]
    return ""


def encode_prompts(tokenizer, problems: list[Problem]) -> list[EncodedPrompt]:
    out = []
    for p in problems:
        rendered = render_prompt(tokenizer, p.prompt)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        out.append(EncodedPrompt(p.id, ids, _template_prefill(rendered)))
    return out


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token for each row. logits: [B, V] float32.

    Returns (tokens [B], logprobs [B]) where the log-prob is log softmax(logits / T) at the chosen
    token, before top-k/top-p truncation: the same quantity the trainer recomputes.
    """
    logp = torch.log_softmax(logits / params.logprob_temperature, dim=-1)
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
    else:
        filtered = logp
        if params.top_k and params.top_k < logits.shape[-1]:
            kth = torch.topk(filtered, params.top_k, dim=-1).values[:, -1:]
            filtered = filtered.masked_fill(filtered < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_logp, order = torch.sort(filtered, dim=-1, descending=True)
            cum = sorted_logp.softmax(dim=-1).cumsum(dim=-1)
            # drop a token once the mass before it already reaches top_p (the first always stays)
            drop_sorted = (cum - sorted_logp.softmax(dim=-1)) >= params.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            filtered = filtered.masked_fill(drop, float("-inf"))
        probs = filtered.softmax(dim=-1)
        if probs.shape[-1] >= INVERSE_CDF_MIN_VOCAB:
            tokens = inverse_cdf_sample(probs, generator)
        else:
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# torch.multinomial draws one exponential per vocabulary entry per row: with SmolLM2's 49,152 entries
# that was 38% of a batch-64 decode step on CPU (benchmarks, torch.profiler). One uniform per row
# against the cumulative distribution samples the same distribution. Small vocabularies (the tiny
# model) keep multinomial, so their seeded streams, and the figures measured with them, stay the same.
INVERSE_CDF_MIN_VOCAB = 4096


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs [B, V] (rows need not be normalised): the first index whose
    cumulative mass exceeds u * total, u ~ U[0, 1). `right=True` never lands on a zero-mass entry."""
    cdf = probs.double().cumsum(dim=-1)  # float64: 49k float32 partial sums would drift by ~1e-5
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64, device=probs.device)
    tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return tokens.clamp_(max=probs.shape[-1] - 1)


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

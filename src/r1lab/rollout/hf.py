"""The reference engine: any Hugging Face causal LM (or Qwen2-VL vision-language model), batched,
with a KV cache.

Prompts are left-padded into a batch; each decode step feeds one token per live row. Rows that
finish leave the batch (their KV-cache rows are dropped), so no step decodes padding for
sequences that are already done. Output order always matches input order.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from transformers import DynamicCache

from r1lab.models import model_device, stop_token_ids
from r1lab.vision import forward_inputs, is_vision_model, suppress_vision_tokens
from r1lab.records import Completion, Problem
from r1lab.rollout.base import (EncodedPrompt, LiveModelEngine, SamplingParams, encode_prompts, sample_next,
                                sample_uniforms, stop_string_end)


class HFEngine(LiveModelEngine):
    def __init__(self, model, tokenizer, batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        # transformers renamed `past_key_values` to `cache` in 5.x; use whichever this model takes
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.vision = is_vision_model(model)

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
        of problem i at positions i*n .. i*n+n-1. Sample k of problem i draws its randomness from
        the seed and its number first_sample + i*n + k alone (as FastEngine.generate)."""
        encoded = encode_prompts(self.tokenizer, problems)
        return self._generate_jobs([e for e in encoded for _ in range(n)], params, seed, on_batch, first_sample)

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None,
                     on_batch: Callable[[int], None] | None = None, first_sample: int = 0) -> list[Completion]:
        """One completion per prompt given as token ids, used as they are (no chat template): the
        continuation of a prefix the caller built, e.g. a thinking trace it extended. The
        completions' problem_id is the prompt's index as text."""
        jobs = [EncodedPrompt(str(i), list(ids), "") for i, ids in enumerate(prompts)]
        return self._generate_jobs(jobs, params, seed, on_batch, first_sample) if jobs else []

    def _generate_jobs(self, jobs: list[EncodedPrompt], params: SamplingParams, seed: int | None,
                       on_batch: Callable[[int], None] | None, first_sample: int = 0) -> list[Completion]:
        seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, ()))
        # sort by prompt length so each batch pads little; restore the order at the end
        order = sorted(range(len(jobs)), key=lambda i: len(jobs[i].ids))
        results: list[Completion | None] = [None] * len(jobs)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                numbers = torch.tensor([first_sample + i for i in idx])
                for i, c in zip(idx, self._generate_batch([jobs[i] for i in idx], params, seed, numbers)):
                    results[i] = c
                if on_batch:
                    on_batch(len(idx))
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(
        self, jobs: list[EncodedPrompt], params: SamplingParams, seed: int, numbers: torch.Tensor
    ) -> list[Completion]:
        """Decode `jobs` together; row r draws its uniforms from (seed, numbers[r], token index)."""
        B = len(jobs)
        P = max(len(j.ids) for j in jobs)
        input_ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for r, j in enumerate(jobs):
            input_ids[r, P - len(j.ids) :] = torch.tensor(j.ids)
            attn[r, P - len(j.ids) :] = 1
        device = model_device(self.model)
        input_ids, attn = input_ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(self.stop_ids + list(params.stop_token_ids), dtype=torch.long, device=device)

        cache = DynamicCache()
        extra, rope_deltas = {}, None
        if self.vision:  # images: multimodal rotary positions, and the pixels in the prompt's forward
            extra = forward_inputs(self.model, input_ids, attn, [j.vision for j in jobs])
            rope_deltas = extra.pop("rope_deltas")
            positions = extra.pop("position_ids")
        out = self.model(
            input_ids=input_ids, attention_mask=attn, position_ids=positions,
            use_cache=True, logits_to_keep=1, **{self._cache_kw: cache}, **extra,
        )
        next_pos = (attn.cumsum(-1) - 1).clamp(min=0)[:, -1] + 1  # tokens so far: the next plain position
        live = torch.arange(B, device=device)  # original row of each live batch row
        tokens_out: list[list[int]] = [[] for _ in range(B)]
        logps_out: list[list[float]] = [[] for _ in range(B)]
        finish = ["length"] * B
        cuts: dict[int, int] = {}  # row -> text length, for rows that ended on a stop string
        for step in range(params.max_new_tokens):
            logits = out.logits[:, -1, :].float()
            if self.vision:
                logits = suppress_vision_tokens(logits, self.model)
            u = sample_uniforms(seed, numbers[live.cpu()], torch.full((len(live),), step)) if params.temperature > 0 else None
            tok, logp = sample_next(logits, params, None, u)
            for r, t, lp in zip(live.tolist(), tok.tolist(), logp.tolist()):
                tokens_out[r].append(t)
                logps_out[r].append(lp)
            done = torch.isin(tok, stop)
            for k, r in enumerate(live.tolist()):
                if params.stop and not done[k] and (cut := stop_string_end(self.tokenizer, tokens_out[r], params.stop)) is not None:
                    cuts[r] = cut
                    done[k] = True
            for r in live[done].tolist():
                finish[r] = "stop"
            if done.all() or len(tokens_out[int(live[0])]) >= params.max_new_tokens:
                break
            if done.any():  # finished rows leave the batch and the cache
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                live, tok, attn, next_pos = live[keep], tok[keep], attn[keep], next_pos[keep]
                rope_deltas = None if rope_deltas is None else rope_deltas[keep]
            attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype, device=device)], dim=-1)
            step_pos = next_pos.unsqueeze(-1)
            if rope_deltas is not None:  # after the prompt every rotary section advances as plain text
                step_pos = (step_pos + rope_deltas).unsqueeze(0).expand(3, -1, -1)
            out = self.model(
                input_ids=tok.unsqueeze(-1), attention_mask=attn, position_ids=step_pos,
                use_cache=True, **{self._cache_kw: cache},
            )
            next_pos = next_pos + 1

        completions = []
        for r, j in enumerate(jobs):
            ids = tokens_out[r]
            if r in cuts:  # a stop string: the text ends right after it
                text = j.prefill + self.tokenizer.decode(ids, skip_special_tokens=False)[: cuts[r]]
            else:
                body = ids[:-1] if finish[r] == "stop" else ids
                text = j.prefill + self.tokenizer.decode(body, skip_special_tokens=False)
            completions.append(
                Completion(
                    problem_id=j.problem_id, prompt_ids=list(j.ids), response_ids=ids, text=text,
                    logprobs=logps_out[r], finish_reason=finish[r], vision=j.vision,
                )
            )
        return completions

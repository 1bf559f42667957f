"""The fast engine's prefill savings for token-id continuations: equal prompts of one call prefilled
once, and a multi-turn episode's KV cache kept from turn to turn. Either way the sampled ids are
those of the plain path, the log-probs equal to float32 rounding."""

import pytest
import torch

from helpers_numerics import logprob_bound

from r1lab.records import Problem
from r1lab.rollout import FastEngine, SamplingParams
from r1lab.rollout.base import encode_prompts
from r1lab.train.common import pad_sequences

pytestmark = pytest.mark.numerics  # float comparisons across batch shapes and prefill/decode splits: tests/numerics.py

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2."]


def _bound(model, tok, cs, temperature):
    """Two float32 computations of these completions' log-probs (helpers_numerics)."""
    batch = pad_sequences([c.prompt_ids for c in cs], [c.response_ids for c in cs], tok.pad_token_id)
    return logprob_bound(model, batch["input_ids"], batch["attention_mask"], temperature)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_equal_prompts_of_a_call_are_prefilled_once_and_sample_what_separate_rows_do(lively, temperature):
    model, tok = lively
    enc = [e.ids for e in encode_prompts(tok, [Problem(f"p{i}", p, "1") for i, p in enumerate(PROMPTS)])]
    prompts = [enc[0]] * 3 + [enc[1]] * 3 + [enc[2]] * 2
    params = SamplingParams(temperature=temperature, max_new_tokens=12)
    engine = FastEngine(model, tok, dtype="float32")
    together = engine.generate_ids(prompts, params, seed=4)
    assert engine.stats["prefilled_tokens"] == sum(map(len, enc))  # each distinct prompt once
    # one row per call: nothing to share, each prompt prefilled on its own (the path before sharing)
    apart = [FastEngine(model, tok, dtype="float32").generate_ids([p], params, seed=4, first_sample=i)[0]
             for i, p in enumerate(prompts)]
    assert [c.response_ids for c in together] == [c.response_ids for c in apart]
    if temperature > 0:
        assert len({tuple(c.response_ids) for c in together}) > 3  # the rows of one prompt sample apart
    bound = _bound(model, tok, together, max(temperature, 1.0))
    assert [x for c in together for x in c.logprobs] == pytest.approx([x for c in apart for x in c.logprobs], abs=bound)

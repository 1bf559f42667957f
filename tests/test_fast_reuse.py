"""The fast engine's prefill savings for token-id continuations: equal prompts of one call prefilled
once, and a multi-turn episode's KV cache kept from turn to turn. Either way the sampled ids are
those of the plain path, the log-probs equal to float32 rounding."""

import copy

import helpers_episodes  # noqa: F401  (registers the chatter environment)
import pytest
import torch
from helpers_numerics import logprob_bound

from r1lab.records import Problem
from r1lab.rollout import FastEngine, HFEngine, SamplingParams
from r1lab.rollout.base import Engine, IdSession, encode_prompts
from r1lab.rollout.episodes import EpisodeLimits, run_episodes
from r1lab.rollout.fast import KVSession
from r1lab.rollout.snapshot import SnapshotEngine
from r1lab.train.common import pad_sequences, scatter_response_values, token_logprobs

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


class Whole(Engine):
    """The fast engine without its session: every turn prefills each episode's whole context."""

    continues_ids = True

    def __init__(self, engine):
        self.engine, self.tokenizer, self.stop_ids = engine, engine.tokenizer, engine.stop_ids

    def generate_ids(self, prompts, params, seed=None, on_batch=None, first_sample=0):
        return self.engine.generate_ids(prompts, params, seed=seed)


def _problems():
    return [Problem(f"p{i}", p, "1", task="math") for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_episodes_keep_their_kv_across_turns_and_sample_what_whole_prefills_do(lively, temperature):
    """Multi-turn episodes (the chatter environment: turns end within a few tokens, each answered
    with an observation) through the fast engine's session, in 3 slots (rows wait and refill):
    the same ids, mask and finish reasons as prefilling every turn's whole context, greedy and
    seeded; the log-probs equal those and the trainer's forward over the episode to float32
    rounding."""
    model, tok = lively
    params = SamplingParams(temperature=temperature, max_new_tokens=16)
    limits = EpisodeLimits(max_turns=4, max_tokens=96)
    engine = FastEngine(model, tok, dtype="float32", batch_size=3)
    kept = run_episodes(engine, _problems(), params, n=2, seed=5, env="chatter", limits=limits)
    assert engine.stats["kept_tokens"] > engine.stats["prefilled_tokens"] > 0  # the last turn started from kept K/V
    whole = run_episodes(Whole(FastEngine(model, tok, dtype="float32")), _problems(), params, n=2, seed=5,
                         env="chatter", limits=limits)
    assert sum(len(ep.turns) >= 3 for ep in kept) >= 2
    for a, b in zip(kept, whole):
        assert (a.ids, a.mask, a.finish_reason, a.texts) == (b.ids, b.mask, b.finish_reason, b.texts)
    cs = [ep.completion for ep in kept]
    batch = pad_sequences([c.prompt_ids for c in cs], [c.response_ids for c in cs], tok.pad_token_id)
    bound = logprob_bound(model, batch["input_ids"], batch["attention_mask"], max(temperature, 1.0))
    assert [x for ep in kept for x in ep.logprobs] == pytest.approx([x for ep in whole for x in ep.logprobs], abs=bound)
    with torch.no_grad():
        lp, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], temperature=max(temperature, 1.0))
    model_tokens = batch["response_mask"].clone()
    for r, c in enumerate(cs):  # the environment's ids carry no log-prob
        at = batch["response_mask"][r].nonzero().squeeze(-1)
        model_tokens[r, at] = torch.tensor(c.loss_mask or [1] * len(at), dtype=model_tokens.dtype)
    engine_lp = scatter_response_values([c.logprobs for c in cs], batch["response_mask"])
    assert float(((lp - engine_lp).abs() * model_tokens).max()) < bound


def test_kept_kv_serves_only_the_context_it_starts_and_only_under_the_weights_it_was_computed_with(lively):
    model, tok = copy.deepcopy(lively[0]), lively[1]
    enc = [e.ids for e in encode_prompts(tok, _problems())]
    obs = tok("<output>ok</output>", add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=0.0, max_new_tokens=5)
    fresh = lambda prompts: FastEngine(model, tok, dtype="float32").generate_ids(prompts, params)  # noqa: E731
    engine = FastEngine(model, tok, dtype="float32")
    with engine.session() as session:
        first = session.generate_ids(["a", "b", "c"], enc, params)
        ctx = [p + c.response_ids + obs for p, c in zip(enc, first)]
        # key c is handed key a's context, which does not extend c's own: prefilled whole
        second = session.generate_ids(["a", "b", "c"], [ctx[0], ctx[1], ctx[0]], params)
        assert engine.stats["kept_tokens"] == sum(len(p) + len(c.response_ids) - 1 for p, c in zip(enc[:2], first[:2]))
        assert [c.response_ids for c in second] == [c.response_ids for c in fresh([ctx[0], ctx[1], ctx[0]])]
        third_ctx = [p + c.response_ids + obs for p, c in zip([ctx[0], ctx[1], ctx[0]], second)]
        with torch.no_grad():  # a policy update: what was kept belongs to the old weights
            for p in model.parameters():
                p.mul_(1.05)
        third = session.generate_ids(["a", "b", "c"], third_ctx, params)
        assert engine.stats["kept_tokens"] == 0
        assert [c.response_ids for c in third] == [c.response_ids for c in fresh(third_ctx)]
        assert session.bytes > 0
        session.drop(["a", "b", "c"])
        assert session.bytes == 0 and not session.kept
    # no room to keep anything: every turn is prefilled whole, with the same result
    small = KVSession(engine, kv_gb=0)
    small.generate_ids([0], enc[:1], params)
    assert not small.kept
    with pytest.raises(ValueError, match="2 keys for 1 prompts"):
        small.generate_ids([0, 1], enc[:1], params)


def test_engines_without_a_kv_session_fall_back_to_generate_ids(lively):
    model, tok = lively
    assert type(HFEngine(model, tok).session()) is IdSession
    snap = SnapshotEngine(model, lambda m: FastEngine(m, tok, dtype="float32"))
    assert isinstance(snap.session(), KVSession) and snap.session().engine is snap.engine

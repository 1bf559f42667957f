"""The engine and the trainer agree: log-probs, padding, stop tokens, micro-batching, ratios."""

import copy

import pytest
import torch

from r1lab.config import RunConfig
from r1lab.models import load_model, save_model, stop_token_ids
from r1lab.records import Problem
from r1lab.rollout import HFEngine, SamplingParams
from r1lab.rollout.base import sample_next
from r1lab.train.common import pad_sequences, scatter_response_values, token_logprobs
from r1lab.train.rl import RLTrainer

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute ((1 + 2) * 3) - 4 + 12 * 5."]


def problems(k=4):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer="1") for i in range(k)]


def test_tokenizer_and_model_round_trip(tiny, tmp_path):
    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    model2, tok2 = load_model(tmp_path / "m")
    text = "<think>7 + 3 = 10</think>\n<answer>10</answer>"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.decode(tok2(text)["input_ids"]) == text
    for t in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(tok2(t, add_special_tokens=False)["input_ids"]) == 1
    assert tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tok("Compute 1 + 2.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)


def test_engine_logprobs_match_the_trainer(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok, batch_size=16)
    params = SamplingParams(temperature=0.7, max_new_tokens=24)
    cs = engine.generate(problems(), params, n=3, seed=1)
    assert len(cs) == 12 and all(c.finish_reason in ("stop", "length") for c in cs)
    batch = pad_sequences([c.prompt_ids for c in cs], [c.response_ids for c in cs], tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], temperature=0.7)
    engine_lp = scatter_response_values([c.logprobs for c in cs], batch["response_mask"])
    diff = ((lp - engine_lp).abs() * batch["response_mask"]).max().item()
    assert diff < 1e-4
    for c in cs:
        assert len(c.logprobs) == len(c.response_ids)
        if c.finish_reason == "stop":
            assert c.response_ids[-1] in stop_token_ids(tok)
        else:
            assert len(c.response_ids) == 24


def test_left_padding_does_not_change_greedy_output(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok, batch_size=16)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    batched = engine.generate(problems(), params, seed=0)
    for p, c in zip(problems(), batched):
        alone = engine.generate([p], params, seed=0)[0]
        assert alone.response_ids == c.response_ids
        assert alone.logprobs == pytest.approx(c.logprobs, abs=1e-4)


def test_generation_is_seeded(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    a = engine.generate(problems(), SamplingParams(max_new_tokens=12), n=2, seed=5)
    b = engine.generate(problems(), SamplingParams(max_new_tokens=12), n=2, seed=5)
    assert [c.response_ids for c in a] == [c.response_ids for c in b]


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    toks, lp = sample_next(logits, SamplingParams(top_k=2), g)
    assert set(toks.tolist()) <= {0, 1}
    toks, lp = sample_next(logits, SamplingParams(top_p=0.5), g)
    assert set(toks.tolist()) == {0}  # token 0 alone holds 66% of the mass
    # the reported log-prob is of the untruncated tempered distribution (what the trainer recomputes)
    assert lp[0].item() == pytest.approx(torch.log_softmax(logits[0], -1)[toks[0]].item())


def test_pad_equal_to_eos_still_trains_the_eos():
    # pad id 2 is also the EOS: the response's final EOS must stay inside the response mask
    batch = pad_sequences([[5, 6, 7], [5]], [[8, 2], [9, 9, 9, 9, 9, 2]], pad_id=2)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 2, 2, 2]
    mask = batch["response_mask"]
    assert mask[0].tolist() == [0, 0, 1, 1, 0, 0]  # predicts 8 and the EOS; the pads after it are out
    assert mask[1].tolist() == [1, 1, 1, 1, 1, 1]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0, 0]


def _trainer(tiny, **train):
    model, tok = tiny
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 16
    cfg.train.group_size = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    model = copy.deepcopy(model)
    return RLTrainer(cfg, model, tok, HFEngine(model, tok)), model


def _batch(trainer, seed=0):
    cs = trainer.rollout(problems(4), seed=seed)
    rewards = torch.tensor([float(i % 3 == 0) for i in range(len(cs))])
    groups = torch.arange(4).repeat_interleave(4)
    return trainer.make_batch(cs, rewards, groups)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_size_does_not_change_the_update(tiny, mode):
    results = []
    for micro in (3, 16):
        trainer, model = _trainer(tiny, micro_batch_size=micro, lr=1e-2, warmup_steps=1)
        trainer.cfg.algo.loss_agg = mode
        batch = _batch(trainer)
        trainer.update(batch)
        # compare the accumulated gradient of the optimizer step (Adam's first step is about
        # sign(g) * lr, which would hide the gradient's scale)
        results.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert results[0].abs().max() > 0
    assert torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-7)


def test_on_policy_ratio_is_exactly_one(tiny):
    # two mini-batches force a separate old-policy forward; with lr 0 every ratio must be exactly 1
    trainer, _ = _trainer(tiny, mini_batches=2, micro_batch_size=3, lr=0.0)
    batch = _batch(trainer)
    assert batch.old_logprobs is not None
    stats = trainer.update(batch)
    assert stats["policy/ratio"] == 1.0
    assert stats["policy/clip_frac"] == 0.0


def test_no_reference_model_without_kl(tiny):
    trainer, _ = _trainer(tiny)
    assert trainer.policy.ref_model is None
    batch = _batch(trainer)
    assert batch.ref_logprobs is None and batch.old_logprobs is None
    stats = trainer.update(batch)
    assert stats["rollout/logprob_diff_max"] < 1e-4  # fp32 engine == fp32 trainer


def test_inverse_cdf_sampler_draws_the_distribution_and_never_a_zero_mass_token():
    from r1lab.rollout.base import inverse_cdf_sample

    p = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0]]).repeat(100_000, 1)
    tokens = inverse_cdf_sample(p, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=6).double() / len(tokens)
    assert freq[[0, 2, 5]].sum() == 0  # zero mass is never drawn, also at the edges
    assert torch.allclose(freq[[1, 3, 4]], torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), atol=0.006)  # ~4 sigma
    again = inverse_cdf_sample(p[:50], torch.Generator().manual_seed(0))
    assert torch.equal(again, tokens[:50])  # seeded: the same draws
    # sample_next draws through it, top-k truncation included
    V = 5000
    logits = torch.randn(256, V)
    tok, logp = sample_next(logits, SamplingParams(temperature=1.0, top_k=3), torch.Generator().manual_seed(1))
    top3 = logits.topk(3, dim=-1).indices
    assert bool((top3 == tok.unsqueeze(-1)).any(-1).all())
    assert torch.allclose(logp, torch.log_softmax(logits, -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1))


def test_two_level_inverse_cdf_over_many_chunks_keeps_the_distribution_and_skips_zero_mass():
    """Mass placed at chunk edges (1023, 1024, 2047), in a ragged last chunk, and zero-mass entries
    right next to them: frequencies within 4 sigma, zero mass never drawn."""
    from r1lab.rollout.base import inverse_cdf_sample

    V = 3 * 1024 + 100  # ragged: the last chunk is padded
    support = torch.tensor([0, 1023, 1024, 2047, 3000, V - 1])
    mass = torch.tensor([0.05, 0.25, 0.1, 0.3, 0.2, 0.1], dtype=torch.float64)
    p = torch.zeros(V)
    p[support] = mass.float() * 7.0  # unnormalised rows are fine
    draws = inverse_cdf_sample(p.repeat(200_000, 1), torch.Generator().manual_seed(3))
    freq = torch.bincount(draws, minlength=V).double() / len(draws)
    assert freq.sum() == pytest.approx(1.0) and set(draws.unique().tolist()) <= set(support.tolist())
    sigma = (mass * (1 - mass) / len(draws)).sqrt()
    assert bool(((freq[support] - mass).abs() < 4 * sigma).all()), (freq[support], mass)


def test_untruncated_sampling_reports_the_log_softmax_at_the_drawn_token_at_any_temperature():
    logits = torch.randn(64, 8192) * 4
    for T in (1.0, 0.6):
        tok, logp = sample_next(logits, SamplingParams(temperature=T), torch.Generator().manual_seed(0))
        ref = torch.log_softmax(logits.double() / T, -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(logp.double(), ref, atol=1e-5)
    # one dominant token is always drawn; a -inf logit never is
    peaked = torch.full((8, 4096), -30.0)
    peaked[:, 5] = 30.0
    peaked[:, 6] = float("-inf")
    tok, logp = sample_next(peaked, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert tok.tolist() == [5] * 8 and torch.allclose(logp, torch.zeros(8), atol=1e-6)


def test_engines_share_one_interface_and_samples_record_the_policy_version(tiny):
    from r1lab.rollout import FastEngine
    from r1lab.rollout.base import Engine
    from r1lab.rollout.openai import EndpointError, OpenAIEngine

    for engine in (HFEngine(*tiny), FastEngine(*tiny)):
        assert isinstance(engine, Engine)
    with pytest.raises(EndpointError, match="cannot load a policy's"):
        OpenAIEngine("http://127.0.0.1:9").load_weights(iter(()), 1)
    trainer, _ = _trainer(tiny, mini_batches=2)
    batch = _batch(trainer)
    assert all(c.policy_version == 0 for c in trainer.rollout(problems(1), seed=0))
    trainer.update(batch)  # two optimizer steps
    assert trainer.policy.version == 2 and trainer.engine.policy_version == 2
    assert all(c.policy_version == 2 for c in trainer.rollout(problems(1), seed=0))


def test_engine_weights_fold_lora_in_and_leave_the_model_as_it_is(tiny):
    from r1lab.config import LoRAConfig
    from r1lab.train.lora import apply_lora, merged_weights

    plain = {n: p.detach() for n, p in tiny[0].named_parameters()}
    model = copy.deepcopy(tiny[0])
    apply_lora(model, LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    params = dict(model.named_parameters())
    got = dict(merged_weights(model))
    assert set(got) == set(plain)  # the plain model's parameter names, no adapter tensors
    assert any("lora_" in n for n in params)  # the model keeps its adapters
    for name, tensor in plain.items():
        stem = name.removesuffix(".weight")
        if stem.endswith(("q_proj", "v_proj")):  # W + (alpha / r) B A, in float64
            a, b = params[f"{stem}.lora_A.default.weight"].double(), params[f"{stem}.lora_B.default.weight"].double()
            expected = tensor.double() + (8.0 / 4) * b @ a
            assert not torch.allclose(expected, tensor.double())
        else:
            expected = tensor.double()
        assert torch.allclose(got[name].double(), expected, atol=1e-6), name

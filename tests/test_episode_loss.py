"""The trainer learns only from the model's tokens of an episode: a Completion's loss_mask takes the
environment's tokens out of the rollout batch's masks, the masked loss matches a float64 hand
computation, and the gradient equals that of the same batch with those tokens' loss removed."""

import math

import pytest
import torch

from r1lab.algos.advantages import grpo_advantage
from r1lab.algos.losses import aggregate, kl_k3, ppo_clip_loss
from r1lab.records import Completion
from r1lab.train.batch import rollout_batch
from r1lab.train.common import token_logprobs

pytestmark = pytest.mark.numerics  # float comparisons against float64: tests/numerics.py


def completions():
    """Row 0: a plain one-turn completion; row 1: model 3 tokens, environment 2, model 2; row 2:
    model 2, environment 3, model 1 (shorter prompt, so the rows are padded differently)."""
    return [
        Completion("a", [5, 6, 7], [10, 11, 12, 13], "", [-0.1, -0.2, -0.3, -0.4], "stop"),
        Completion("b", [5, 6, 7], [20, 21, 22, 30, 31, 23, 24], "", [-0.5, -0.6, -0.7, 0.0, 0.0, -0.8, -0.9], "stop",
                   loss_mask=[1, 1, 1, 0, 0, 1, 1]),
        Completion("c", [5, 6], [40, 41, 50, 51, 52, 42], "", [-1.0, -1.1, 0.0, 0.0, 0.0, -1.2], "stop",
                   loss_mask=[1, 1, 0, 0, 0, 1]),
    ]


def batch_of(comps):
    return rollout_batch(comps, pad_id=0, overlong_filter=False, temperature=1.0, max_new_tokens=8, plan=[])


def test_loss_mask_leaves_only_the_models_tokens_in_the_masks():
    b = batch_of(completions())
    # column t is about token t+1: row 1's response starts at column 2 (prompt of 3)
    assert b.response_mask[0].tolist()[:7] == [0, 0, 1, 1, 1, 1, 0]
    assert b.response_mask[1].tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 1]
    assert b.response_mask[2].tolist() == [0, 1, 1, 0, 0, 0, 1, 0, 0]
    assert torch.equal(b.loss_mask, b.response_mask)
    # the engine's log-probs stay on their own tokens; environment tokens hold none
    assert b.engine_logprobs[1].tolist() == pytest.approx([0, 0, -0.5, -0.6, -0.7, 0, 0, -0.8, -0.9])
    # single-turn batches are unchanged (no loss_mask anywhere)
    plain = batch_of(completions()[:1])
    assert plain.response_mask[0].tolist() == [0, 0, 1, 1, 1, 1]
    # overlong filtering still applies on top
    comps = completions()
    comps[1].finish_reason = "length"
    b = rollout_batch(comps, pad_id=0, overlong_filter=True, temperature=1.0, max_new_tokens=8, plan=[])
    assert b.loss_mask[1].sum() == 0 and b.response_mask[1].sum() == 5


def test_masked_loss_matches_a_float64_hand_computation():
    b = batch_of(completions())
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(b.response_mask.shape, generator=g) * 2  # [B, T]: the trainer's log-probs
    old = lp + 0.3 * torch.randn(lp.shape, generator=g)
    ref = lp + 0.5 * torch.randn(lp.shape, generator=g)
    rewards = torch.tensor([1.0, 0.0, 0.5])
    adv = grpo_advantage(rewards, b.response_mask, torch.zeros(3, dtype=torch.long))
    per_token, _ = ppo_clip_loss(lp, old, adv, clip_eps_low=0.2, clip_eps_high=0.28)
    beta = 0.05
    got = aggregate(per_token, b.loss_mask, "token-mean") + beta * aggregate(kl_k3(lp, ref), b.loss_mask, "token-mean")

    mean, std = sum(rewards.tolist()) / 3, torch.tensor(rewards.tolist(), dtype=torch.float64).std().item()
    total, count = 0.0, 0
    for i in range(3):
        a = (rewards[i].item() - mean) / (std + 1e-6)
        for t in range(lp.shape[1]):
            if b.loss_mask[i, t] == 0:
                continue
            x, o, r = float(lp[i, t]), float(old[i, t]), float(ref[i, t])
            ratio = math.exp(x - o)
            pg = -min(ratio * a, min(max(ratio, 0.8), 1.28) * a)
            d = min(max(r - x, -20.0), 20.0)
            total += pg + beta * min(math.exp(d) - d - 1.0, 10.0)
            count += 1
    assert count == 4 + 5 + 3
    assert float(got) == pytest.approx(total / count, rel=1e-6, abs=1e-7)


def test_observation_tokens_get_exactly_no_gradient(tiny):
    """The batch's loss gives the gradient of the loss summed over the model's tokens alone."""
    model, tok = tiny
    model = model.double()
    try:
        b = batch_of(completions())
        adv = torch.tensor([[1.0], [-0.5], [2.0]], dtype=torch.float64) * torch.ones_like(b.response_mask, dtype=torch.float64)

        def grads(loss_fn):
            model.zero_grad(set_to_none=True)
            lp, _ = token_logprobs(model, b.input_ids, b.attention_mask)
            loss_fn(lp).backward()
            return [p.grad.clone() for p in model.parameters() if p.grad is not None]

        masked = grads(lambda lp: aggregate(ppo_clip_loss(lp, lp.detach(), adv)[0], b.loss_mask, "token-mean"))
        model_tokens = b.loss_mask.bool()
        alone = grads(lambda lp: ppo_clip_loss(lp[model_tokens], lp.detach()[model_tokens], adv[model_tokens])[0].sum()
                      / model_tokens.sum())
        assert len(masked) == len(alone) > 0
        for x, y in zip(masked, alone):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)
        # and the environment's tokens do matter when they are not masked: the check can fail
        full = grads(lambda lp: aggregate(ppo_clip_loss(lp, lp.detach(), adv)[0], b.response_mask.clone().fill_(1)
                                          * (b.attention_mask[:, 1:] > 0), "token-mean"))
        assert any(not torch.allclose(x, y) for x, y in zip(full, alone))
    finally:
        model.float()

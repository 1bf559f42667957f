"""The methods of the replication studies, each against numbers computed by hand."""

import math

import pytest
import torch

from r1lab.algos import get_advantage, get_policy_loss
from r1lab.algos.advantages import discounted_returns, gae, last_token_rewards, masked_whiten, vapo_lambda
from r1lab.algos.losses import adaptive_entropy_coef, positive_nll, value_loss

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py


def adv(name, rewards, groups, mask=None, **kw):
    r = torch.tensor(rewards, dtype=torch.float32)
    mask = torch.ones(len(rewards), 2) if mask is None else torch.tensor(mask, dtype=torch.float32)
    return get_advantage(name)(r, mask, torch.tensor(groups), **kw)


def whiten64(values):
    x = torch.tensor(values, dtype=torch.float64)
    return ((x - x.mean()) / (x.std() + 1e-8)).tolist()


def test_dr_grpo_drops_the_std():
    assert adv("dr_grpo", [1, 0, 1, 0], [0] * 4)[:, 0].tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5])
    assert torch.count_nonzero(adv("dr_grpo", [0.3, 0.3], [0, 0])) == 0


def test_rloo_leave_one_out_baseline():
    # 1 - mean(0, 0, 1) = 2/3 ; 0 - mean(1, 0, 1) = -2/3
    a = adv("rloo", [1, 0, 0, 1], [0] * 4)[:, 0]
    assert a.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert adv("rloo", [1.0], [0]).abs().sum() == 0  # no baseline for a group of one


def test_reinforce_pp_return_and_global_whitening():
    mask = [[1, 1, 1], [1, 1, 0]]
    a = adv("reinforce_pp", [1, 0], [0, 1], mask=mask)
    # returns: row 0 [1, 1, 1], row 1 [0, 0]; whitened over the 5 valid tokens
    w = whiten64([1, 1, 1, 0, 0])
    assert a[0].tolist() == pytest.approx(w[:3], rel=1e-5)
    assert a[1, :2].tolist() == pytest.approx(w[3:], rel=1e-5) and a[1, 2] == 0


def test_reinforce_pp_kl_in_the_reward():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float32)
    penalty = torch.full((2, 3), 0.1)  # beta * KL_t on every token
    a = get_advantage("reinforce_pp")(torch.tensor([1.0, 0.0]), mask, torch.tensor([0, 1]), token_penalty=penalty)
    # token rewards [-.1, -.1, .9] and [-.1, -.1]; returns [.7, .8, .9] and [-.2, -.1]
    w = whiten64([0.7, 0.8, 0.9, -0.2, -0.1])
    assert a[0].tolist() == pytest.approx(w[:3], rel=1e-5)
    assert a[1, :2].tolist() == pytest.approx(w[3:], rel=1e-5)


def test_reinforce_pp_baseline_centres_on_the_group():
    a = adv("reinforce_pp_baseline", [1, 0, 3, 3], [0, 0, 1, 1])
    # centred [0.5, -0.5, 0, 0] on every token, whitened over all 8 tokens
    w = whiten64([0.5, 0.5, -0.5, -0.5, 0, 0, 0, 0])
    assert a.flatten().tolist() == pytest.approx(w, rel=1e-5)


def test_gpg_rescales_by_the_informative_fraction():
    # group 1 has zero variance: M = 2 of B = 4, alpha = 2; group 0: 2 * (1 - 0.5) = 1
    a = adv("gpg", [1, 0, 1, 1], [0, 0, 1, 1])[:, 0]
    assert a.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])


def test_last_token_rewards_and_returns():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    tr = last_token_rewards(torch.tensor([2.0, 3.0]), mask)
    assert tr.tolist() == [[0, 2, 0], [0, 0, 3]]
    assert discounted_returns(tr, mask, gamma=0.5).tolist() == [[1.0, 2.0, 0.0], [0.75, 1.5, 3.0]]


def test_gae_by_hand():
    mask = torch.tensor([[1, 1, 1]], dtype=torch.float32)
    values = torch.tensor([[0.5, 0.5, 0.5]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    a, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert a[0].tolist() == pytest.approx([0.5, 0.5, 0.5]) and ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # lambda 0.5: delta = [0, 0, 0.5]; A_2 = .5, A_1 = .25, A_0 = .125
    a, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert a[0].tolist() == pytest.approx([0.125, 0.25, 0.5])
    assert ret[0].tolist() == pytest.approx([0.625, 0.75, 1.0])
    # gamma 0.9, lambda 1 with values [1, 2, 0]: delta = [0.8, -2, 1]; A = [0.8 + .9(-2 + .9), -2 + .9, 1]
    a, _ = gae(rewards, torch.tensor([[1.0, 2.0, 0.0]]), mask, gamma=0.9, lam=1.0)
    assert a[0].tolist() == pytest.approx([0.8 + 0.9 * (-2 + 0.9), -2 + 0.9, 1.0])


def test_gae_ignores_padding_and_takes_per_sequence_lambda():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    values = torch.tensor([[0.5, 0.5, 9.0], [0.5, 0.5, 0.5]])
    rewards = last_token_rewards(torch.tensor([1.0, 1.0]), mask)
    a, ret = gae(rewards, values, mask, lam=torch.tensor([0.5, 1.0]))
    assert a[0].tolist() == pytest.approx([0.25, 0.5, 0.0])  # the 9.0 under padding never leaks in
    assert a[1].tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_vapo_length_adaptive_lambda():
    mask = torch.zeros(3, 100)
    mask[0, :100] = 1
    mask[1, :40] = 1
    mask[2, :10] = 1
    # 1 - 1/(0.05 l): l=100 -> 0.8, l=40 -> 0.5, l=10 -> -1 -> clamped to 0
    assert vapo_lambda(mask, 0.05).tolist() == pytest.approx([0.8, 0.5, 0.0])


def test_gae_estimator_needs_a_critic():
    with pytest.raises(ValueError, match="critic"):
        adv("gae", [1, 0], [0, 0])
    a = adv("gae", [1, 0], [0, 1], values=torch.zeros(2, 2), whiten=False)
    assert a.tolist() == [[1.0, 1.0], [0.0, 0.0]]


def ppo(ratio, advantage, **kw):
    lp = torch.tensor([[math.log(ratio)]])
    return get_policy_loss("ppo_clip")(lp, torch.zeros(1, 1), torch.tensor([[advantage]]), **kw)[0].item()


def test_dual_clip_caps_negative_advantages():
    assert ppo(5.0, -1.0) == pytest.approx(5.0)  # plain PPO: -min(-5, -1.2) = 5
    assert ppo(5.0, -1.0, dual_clip_c=3.0) == pytest.approx(3.0)  # capped at c|A|
    assert ppo(5.0, 1.0, dual_clip_c=3.0) == pytest.approx(-1.2)  # positive advantages unchanged


def test_gpg_loss_is_the_plain_policy_gradient():
    lp = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    loss, _ = get_policy_loss("gpg")(lp, lp.detach() + 3.0, torch.tensor([[2.0, -1.0]]))
    assert loss[0].tolist() == pytest.approx([1.0, -2.0])  # no ratio, whatever the old log-probs
    loss.sum().backward()
    assert lp.grad[0].tolist() == pytest.approx([-2.0, 1.0])


def test_gspo_sequence_level_ratio():
    lp = torch.tensor([[0.1, 0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = get_policy_loss("gspo")(lp, torch.zeros(1, 3), torch.ones(1, 3) * mask, response_mask=mask,
                                          clip_eps_low=0.1, clip_eps_high=0.1)
    # s = exp(mean(0.1, 0.3)) = exp(0.2) = 1.2214 > 1.1: clipped, loss -1.1 on each token
    assert loss[0, :2].tolist() == pytest.approx([-1.1, -1.1])
    assert stats["ratio"][0, 0].item() == pytest.approx(math.exp(0.2))
    loss, _ = get_policy_loss("gspo")(lp, torch.zeros(1, 3), torch.ones(1, 3) * mask, response_mask=mask,
                                      clip_eps_low=0.3, clip_eps_high=0.3)
    assert loss[0, 0].item() == pytest.approx(-math.exp(0.2))


def test_value_loss_clipping():
    v = torch.tensor([2.0, 0.2])
    old = torch.tensor([1.0, 1.0])
    ret = torch.tensor([0.0, 1.0])
    # (2-0)^2 = 4 vs (1.5-0)^2 = 2.25 -> 0.5 * 4 ; (0.2-1)^2 = .64 vs (0.5-1)^2 = .25 -> 0.5 * .64
    assert value_loss(v, old, ret, clip=0.5).tolist() == pytest.approx([2.0, 0.32])
    assert value_loss(v, old, ret).tolist() == pytest.approx([2.0, 0.32])
    # when clipping makes it worse it is the max that counts: V=1.2 from old 2, R=2 -> clipped 1.5
    assert value_loss(torch.tensor([1.2]), torch.tensor([2.0]), torch.tensor([2.0]), clip=0.5).tolist() == pytest.approx([0.32])


def test_adaptive_entropy_control():
    assert adaptive_entropy_coef(0.0, 0.1, 0.2, 1e-4, 0.005) == pytest.approx(1e-4)
    assert adaptive_entropy_coef(0.005, 0.1, 0.2, 1e-4, 0.005) == pytest.approx(0.005)  # capped
    assert adaptive_entropy_coef(0.0, 0.3, 0.2, 1e-4, 0.005) == 0.0  # floored
    assert adaptive_entropy_coef(0.002, 0.3, 0.2, 1e-4, 0.005) == pytest.approx(0.0019)


def test_positive_nll_only_on_correct_responses():
    lp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    out = positive_nll(lp, torch.ones(2, 2), torch.tensor([True, False]))
    assert out.tolist() == [[1.0, 2.0], [0.0, 0.0]]


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.float32)
    w = masked_whiten(x, mask)
    assert w[:, :2].flatten().tolist() == pytest.approx(whiten64([1, 2, 3, 4]), rel=1e-5)
    assert w[:, 2].tolist() == [0.0, 0.0]

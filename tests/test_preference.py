"""The preference losses against numbers computed by hand, in float64.

Two pairs throughout. Sequence log-prob sums (policy, reference):
  pair 1: chosen -10 vs ref -11, rejected -12 vs ref -11, lengths 4 and 3 tokens
  pair 2: chosen  -5 vs ref  -5, rejected  -4 vs ref  -5, lengths 2 and 4 tokens
With beta 0.5 the DPO implicit rewards are (0.5, -0.5) and (0, 0.5): margins 1 and -0.5.
"""

import math

import pytest
import torch

from r1lab.algos import PREFERENCE_LOSSES
from r1lab.errors import ConfigError

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py


def inputs(**over):
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    kw = dict(policy_chosen=t(-10.0, -5.0), policy_rejected=t(-12.0, -4.0), ref_chosen=t(-11.0, -5.0),
              ref_rejected=t(-11.0, -5.0), chosen_tokens=t(4.0, 2.0), rejected_tokens=t(3.0, 4.0))
    kw.update(over)
    return kw


def get_preference_loss(name):
    """The loss, called as the trainer calls it: the inputs it declares, and the settings given."""
    method = PREFERENCE_LOSSES.method(name)

    def call(policy_chosen, policy_rejected, **kw):
        return method.fn(policy_chosen, policy_rejected, **{k: v for k, v in kw.items() if k in method.context
                                                            or k in method.hparams})
    return call


def softplus(x):  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def test_dpo_hand_computed():
    loss, stats = get_preference_loss("dpo")(**inputs(), beta=0.5)
    # -log sigmoid(1) = log(1 + e^-1); -log sigmoid(-0.5) = log(1 + e^0.5)
    assert loss.tolist() == pytest.approx([0.31326168751822286, 0.9740769841801067], abs=1e-12)
    assert loss.tolist() == pytest.approx([softplus(-1.0), softplus(0.5)], abs=1e-12)
    assert stats["reward_chosen"].tolist() == [0.5, 0.0]
    assert stats["reward_rejected"].tolist() == [-0.5, 0.5]


def test_dpo_gradient_is_beta_times_sigmoid_of_minus_margin():
    kw = inputs()
    pc = kw["policy_chosen"].clone().requires_grad_(True)
    pr = kw["policy_rejected"].clone().requires_grad_(True)
    loss, _ = get_preference_loss("dpo")(**{**kw, "policy_chosen": pc, "policy_rejected": pr}, beta=0.5)
    loss.sum().backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # dl/dpc = -beta * sigmoid(-margin), dl/dpr = +beta * sigmoid(-margin)
    assert pc.grad.tolist() == pytest.approx([-0.5 * sig(-1.0), -0.5 * sig(0.5)], abs=1e-12)
    assert pc.grad[0].item() == pytest.approx(-0.13447071068499755, abs=1e-12)
    assert pr.grad.tolist() == pytest.approx([0.5 * sig(-1.0), 0.5 * sig(0.5)], abs=1e-12)


def test_dpo_stays_finite_at_huge_margins():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    loss, _ = get_preference_loss("dpo")(**inputs(policy_chosen=t(5000.0, -5000.0), policy_rejected=t(-5000.0, 5000.0)),
                                         beta=0.1)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-12)
    assert loss[1].item() == pytest.approx(1000.0, rel=1e-9)  # margin 0.1 * (-4995 - 5005) = -1000


def test_rpo_adds_the_per_token_nll_of_the_chosen_response():
    loss, stats = get_preference_loss("rpo")(**inputs(), beta=0.5, nll_coef=1.0)
    # NLL per token of the chosen responses: 10 / 4 = 2.5 and 5 / 2 = 2.5
    assert stats["nll"].tolist() == [2.5, 2.5]
    assert loss.tolist() == pytest.approx([0.31326168751822286 + 2.5, 0.9740769841801067 + 2.5], abs=1e-12)
    half, _ = get_preference_loss("rpo")(**inputs(), beta=0.5, nll_coef=0.5)
    assert half.tolist() == pytest.approx([0.31326168751822286 + 1.25, 0.9740769841801067 + 1.25], abs=1e-12)
    zero, _ = get_preference_loss("rpo")(**inputs(), beta=0.5, nll_coef=0.0)
    dpo, _ = get_preference_loss("dpo")(**inputs(), beta=0.5)
    assert torch.equal(zero, dpo)


def test_rpo_nll_gradient_reaches_only_the_chosen_response():
    kw = inputs()
    pc = kw["policy_chosen"].clone().requires_grad_(True)
    pr = kw["policy_rejected"].clone().requires_grad_(True)
    loss, _ = get_preference_loss("rpo")(**{**kw, "policy_chosen": pc, "policy_rejected": pr}, beta=0.5, nll_coef=1.0)
    loss.sum().backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert pc.grad.tolist() == pytest.approx([-0.5 * sig(-1.0) - 1 / 4, -0.5 * sig(0.5) - 1 / 2], abs=1e-12)
    assert pr.grad.tolist() == pytest.approx([0.5 * sig(-1.0), 0.5 * sig(0.5)], abs=1e-12)


def test_ipo_regresses_the_log_ratio_gap_to_one_over_two_beta():
    loss, stats = get_preference_loss("ipo")(**inputs(), beta=0.5)
    # h = 1 - (-1) = 2 and 0 - 1 = -1; target 1 / (2 * 0.5) = 1: (2 - 1)^2 = 1, (-1 - 1)^2 = 4
    assert loss.tolist() == [1.0, 4.0]
    assert stats["reward_chosen"].tolist() == [0.5, 0.0]
    at_target, _ = get_preference_loss("ipo")(**inputs(), beta=1.0)  # target 0.5
    assert at_target.tolist() == pytest.approx([(2 - 0.5) ** 2, (-1 - 0.5) ** 2], abs=1e-12)


def test_simpo_is_reference_free_and_length_normalised():
    loss, stats = get_preference_loss("simpo")(**inputs(), beta=2.0, gamma=0.5)
    # rewards 2 * (-10 / 4) = -5 vs 2 * (-12 / 3) = -8: z = 3 - 0.5 = 2.5;
    #         2 * (-5 / 2)  = -5 vs 2 * (-4 / 4)  = -2: z = -3 - 0.5 = -3.5
    assert stats["reward_chosen"].tolist() == [-5.0, -5.0]
    assert stats["reward_rejected"].tolist() == [-8.0, -2.0]
    assert loss.tolist() == pytest.approx([0.07888973429254963, 3.5297504182726205], abs=1e-12)
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    other_ref, _ = get_preference_loss("simpo")(**inputs(ref_chosen=t(0.0, 0.0), ref_rejected=t(7.0, 7.0)), beta=2.0, gamma=0.5)
    assert torch.equal(loss, other_ref)
    assert {n for n, m in PREFERENCE_LOSSES.methods.items() if m.trait("reference_free")} == {"simpo", "simper"}


def test_simper_is_the_inverse_perplexity_gap_and_needs_no_reference():
    loss, stats = get_preference_loss("simper")(**inputs())
    # pair 1: exp(-10 / 4) = 0.0820850 chosen, exp(-12 / 3) = 0.0183156 rejected
    # pair 2: exp(-5 / 2)  = 0.0820850 chosen, exp(-4 / 4)  = 0.3678794 rejected
    assert stats["reward_chosen"].tolist() == pytest.approx([math.exp(-2.5)] * 2, abs=1e-15)
    assert stats["reward_rejected"].tolist() == pytest.approx([math.exp(-4.0), math.exp(-1.0)], abs=1e-15)
    # loss: 0.0183156 - 0.0820850 = -0.0637694 and 0.3678794 - 0.0820850 = 0.2857944
    assert loss.tolist() == pytest.approx([-0.06376935973516462, 0.28579444254754355], abs=1e-12)
    t = lambda *v: torch.tensor(v, dtype=torch.float64, requires_grad=True)  # noqa: E731
    chosen, rejected = t(-10.0, -5.0), t(-12.0, -4.0)
    loss, _ = get_preference_loss("simper")(**inputs(policy_chosen=chosen, policy_rejected=rejected))
    loss.sum().backward()
    # d/dc of -exp(c / n) is -exp(c / n) / n: the chosen log-likelihood is pushed up, the rejected down
    assert chosen.grad.tolist() == pytest.approx([-math.exp(-2.5) / 4, -math.exp(-2.5) / 2], abs=1e-15)
    assert rejected.grad.tolist() == pytest.approx([math.exp(-4.0) / 3, math.exp(-1.0) / 4], abs=1e-15)
    other_ref, _ = get_preference_loss("simper")(**inputs(ref_chosen=t(0.0, 0.0), ref_rejected=t(7.0, 7.0)))
    assert torch.equal(loss.detach(), other_ref.detach())


def test_policy_equal_to_reference_gives_log_two_and_zero_margin():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    same = inputs(policy_chosen=t(-11.0, -5.0), policy_rejected=t(-11.0, -5.0))
    for name in ("dpo", "rpo"):
        loss, stats = get_preference_loss(name)(**same, beta=0.3, nll_coef=0.0)
        assert loss.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-12)
        assert (stats["reward_chosen"] - stats["reward_rejected"]).abs().max() == 0


def test_unknown_loss_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preference loss 'dpoo'.*dpo, ipo, rpo, simper, simpo"):
        PREFERENCE_LOSSES.method("dpoo")


def test_a_setting_the_loss_does_not_take_is_refused():
    with pytest.raises(ConfigError, match="dpo.loss_args.gamma: preference loss 'dpo' does not take 'gamma'"):
        PREFERENCE_LOSSES.bind("dpo", {"gamma": 0.5}, "dpo.loss_args")
    assert PREFERENCE_LOSSES.bind("simpo", {}, "dpo.loss_args") is PREFERENCE_LOSSES["simpo"]  # simpo keeps its own beta 2.0

"""The RL math against numbers computed by hand (or in float64 from the paper's formula)."""

import math

import pytest
import torch

from r1lab.algos import ADVANTAGES, POLICY_LOSSES, aggregate, get_advantage, get_kl_estimator, get_policy_loss
from r1lab.errors import ConfigError

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py


def grpo(rewards, groups, **kw):
    r = torch.tensor(rewards, dtype=torch.float32)
    mask = torch.ones(len(rewards), 3)
    return get_advantage("grpo")(r, mask, torch.tensor(groups), **kw)


class TestGRPOAdvantage:
    def test_hand_computed_group(self):
        # group [1, 0, 1, 0]: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350
        adv = grpo([1, 0, 1, 0], [0, 0, 0, 0])
        expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
        assert adv[:, 0].tolist() == pytest.approx([expected, -expected, expected, -expected], rel=1e-6)
        assert torch.equal(adv[:, 0], adv[:, 2])  # the same advantage on every token

    def test_seven_vs_one_stays_bounded(self):
        # mean 1/8, unbiased std sqrt(0.125) = 0.353553: the lone success gets 2.4749, the rest -0.3536
        adv = grpo([1, 0, 0, 0, 0, 0, 0, 0], [0] * 8)[:, 0]
        assert adv[0].item() == pytest.approx(0.875 / math.sqrt(0.125), rel=1e-5)
        assert adv[1:].tolist() == pytest.approx([-0.125 / math.sqrt(0.125)] * 7, rel=1e-5)
        assert adv.abs().max() < 3

    def test_all_equal_group_is_exactly_zero(self):
        # 0.1 cannot be averaged without float residue; the estimator must still return exact 0
        adv = grpo([0.1, 0.1, 0.1, 1.0, 1.0], [0, 0, 0, 1, 1])
        assert torch.count_nonzero(adv) == 0

    def test_group_of_one_is_zero(self):
        adv = grpo([5.0, 1.0, 0.0], [0, 1, 1])
        assert adv[0].abs().sum() == 0
        assert adv[1, 0] > 0 > adv[2, 0]

    def test_nan_reward_masked(self):
        # [1, nan, 0]: the NaN sample gets 0 and is left out of the stats (mean 0.5, std sqrt(0.5))
        adv = grpo([1.0, float("nan"), 0.0], [0, 0, 0])[:, 0]
        assert torch.isfinite(adv).all()
        assert adv.tolist() == pytest.approx([0.5 / math.sqrt(0.5), 0.0, -0.5 / math.sqrt(0.5)], rel=1e-5)

    def test_groups_are_independent_of_order(self):
        a = grpo([1, 0, 3, 2], [7, 9, 7, 9])[:, 0]
        b = grpo([1, 3, 0, 2], [7, 7, 9, 9])[:, 0]
        assert a[[0, 2, 1, 3]].tolist() == pytest.approx(b.tolist())

    def test_mask_zeroes_padding(self):
        mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float32)
        adv = get_advantage("grpo")(torch.tensor([1.0, 0.0]), mask, torch.tensor([0, 0]))
        assert adv[0, 2] == 0 and adv[1, 1] == 0 and adv[1, 2] == 0

    def test_unknown_name_is_a_config_error(self):
        with pytest.raises(ConfigError, match="grpo"):
            get_advantage("grpoo")
        assert "grpo" in ADVANTAGES


class TestPPOClip:
    def loss(self, ratio, adv, lo=0.2, hi=0.2):
        lp = torch.tensor([[math.log(ratio)]])
        loss, stats = get_policy_loss("ppo_clip")(lp, torch.zeros(1, 1), torch.tensor([[adv]]), clip_eps_low=lo, clip_eps_high=hi)
        return loss.item(), stats

    def test_hand_computed(self):
        assert self.loss(1.5, 1.0)[0] == pytest.approx(-1.2)  # min(1.5, 1.2) = 1.2
        assert self.loss(1.5, -1.0)[0] == pytest.approx(1.5)  # min(-1.5, -1.2) = -1.5
        assert self.loss(0.5, 1.0)[0] == pytest.approx(-0.5)  # min(0.5, 0.8) = 0.5
        assert self.loss(0.5, -1.0)[0] == pytest.approx(0.8)  # min(-0.5, -0.8) = -0.8
        assert self.loss(1.0, 2.0)[0] == pytest.approx(-2.0)

    def test_clip_higher_uses_the_upper_bound(self):
        loss, stats = self.loss(1.5, 1.0, lo=0.2, hi=0.28)
        assert loss == pytest.approx(-1.28)
        assert stats["clip_frac_high"].item() == 1.0
        assert self.loss(0.5, -1.0, lo=0.2, hi=0.28)[0] == pytest.approx(0.8)  # lower bound unchanged

    def test_gradient_vanishes_once_clipped(self):
        lp = torch.tensor([[math.log(1.5)]], requires_grad=True)
        loss, _ = get_policy_loss("ppo_clip")(lp, torch.zeros(1, 1), torch.tensor([[1.0]]))
        loss.sum().backward()
        assert lp.grad.item() == 0.0

    def test_on_policy_gradient_is_the_policy_gradient(self):
        # ratio 1: d/dlogp of -(rho * A) = -A
        lp = torch.tensor([[0.3, -1.2]], requires_grad=True)
        loss, _ = get_policy_loss("ppo_clip")(lp, lp.detach(), torch.tensor([[2.0, -0.5]]))
        loss.sum().backward()
        assert lp.grad[0].tolist() == pytest.approx([-2.0, 0.5])
        assert "ppo_clip" in POLICY_LOSSES


class TestKL:
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])

    def test_hand_computed(self):
        assert get_kl_estimator("k1")(self.logp, self.ref).item() == pytest.approx(math.log(2))
        assert get_kl_estimator("k2")(self.logp, self.ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
        # x = log(0.25/0.5): k3 = 0.5 + log 2 - 1
        assert get_kl_estimator("k3")(self.logp, self.ref).item() == pytest.approx(0.5 + math.log(2) - 1)

    def test_k3_is_nonnegative_and_bounded_in_value_and_gradient(self):
        k3 = get_kl_estimator("k3")
        x = torch.linspace(-50, 50, 1001, dtype=torch.float64)  # x = log ref - log pi
        logp = torch.zeros_like(x, requires_grad=True)
        vals = k3(logp, x)
        assert (vals >= 0).all() and torch.isfinite(vals).all()
        assert vals.max().item() == 10.0
        (grad,) = torch.autograd.grad(vals.sum(), logp)
        exact = -(torch.exp(x) - 1)  # d/dlogp of exp(x) - x - 1
        inside = torch.exp(x) - x - 1 < 10
        assert torch.allclose(grad[inside], exact[inside], atol=1e-12)  # exact below the cap
        assert grad[~inside].abs().max() == 0  # no gradient past it
        # the largest gradient is at the cap's edge: exp(x*) - 1 = 12.61 with exp(x*) - x* - 1 = 10, x* = 2.611
        assert grad.abs().max().item() < 12.62 and math.isfinite(grad.abs().max().item())
        assert k3(torch.zeros(1), torch.tensor([1.0])).item() == pytest.approx(math.e - 2)  # normal range unchanged

    def test_estimators_are_unbiased_in_value(self):
        # E_{x~pi}[k1] = E[k3] = KL(pi || ref) exactly, on a small categorical (float64)
        pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
        ref = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
        kl = (pi * (pi.log() - ref.log())).sum()
        for name in ("k1", "k3"):
            est = (pi * get_kl_estimator(name)(pi.log(), ref.log())).sum()
            assert est.item() == pytest.approx(kl.item(), rel=1e-12)

    def test_loss_gradients_on_a_categorical(self):
        """Differentiated as a loss through log pi (the sample held fixed), in exact expectation:
        k2 gives the gradient of KL(pi || ref); k3 gives that of KL(ref || pi); k1 gives zero.
        This is why the estimator choice is spelled out in the config (docs/pitfalls.md, "KL estimators")."""
        theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
        ref_logp = torch.log(torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64))

        def expected_grad(name):
            logp = torch.log_softmax(theta, 0)
            pi = logp.exp().detach()
            loss = (pi * get_kl_estimator(name)(logp, ref_logp)).sum()
            return torch.autograd.grad(loss, theta)[0]

        logp = torch.log_softmax(theta, 0)
        fwd = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta)[0]
        logp = torch.log_softmax(theta, 0)
        rev = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta)[0]
        assert expected_grad("k2").tolist() == pytest.approx(fwd.tolist(), abs=1e-12)
        assert expected_grad("k3").tolist() == pytest.approx(rev.tolist(), abs=1e-12)
        assert expected_grad("k1").tolist() == pytest.approx([0, 0, 0], abs=1e-12)


class TestAggregation:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])

    @pytest.mark.parametrize(
        "mode,expected",
        [
            ("token-mean", (1 + 2 + 3 + 4) / 4),
            ("seq-mean-token-mean", (2 + 4) / 2),
            ("seq-mean-token-sum", (6 + 4) / 2),
            ("seq-mean-token-sum-norm", (6 + 4) / (2 * 10)),
        ],
    )
    def test_hand_computed(self, mode, expected):
        assert aggregate(self.loss, self.mask, mode, norm_len=10).item() == pytest.approx(expected)

    @pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
    def test_micro_batches_add_up_to_the_full_batch(self, mode):
        g = torch.Generator().manual_seed(0)
        loss = torch.randn(6, 5, generator=g)
        mask = (torch.rand(6, 5, generator=g) > 0.3).float()
        full = aggregate(loss, mask, mode, norm_len=7)
        n_seq, n_tok = 6, int(mask.sum())
        parts = sum(aggregate(loss[i : i + 2], mask[i : i + 2], mode, n_seq, n_tok, norm_len=7) for i in range(0, 6, 2))
        assert parts.item() == pytest.approx(full.item(), rel=1e-6)

    def test_unknown_mode(self):
        with pytest.raises(ConfigError, match="token-mean"):
            aggregate(self.loss, self.mask, "mean")

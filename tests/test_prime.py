"""PRIME: the implicit process reward and its cross-entropy update against float64, the combined
leave-one-out advantage against numbers worked out by hand, the PRM component on a tiny model, and
the settings only PRIME takes."""

import copy
from pathlib import Path

import pytest
import torch

from r1lab.algos import get_advantage
from r1lab.algos.prm import implicit_outcome_logits, implicit_process_rewards, outcome_hits, prm_ce_loss
from r1lab.config import load_config
from r1lab.errors import ConfigError
from r1lab.records import Completion
from r1lab.train.batch import rollout_batch, update_plan
from r1lab.train.common import token_logprobs
from r1lab.train.methods import bind_method
from r1lab.train.prm import ImplicitPRM

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

ROOT = Path(__file__).resolve().parents[1]


def _logprobs(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    prm = -3 * torch.rand(B, T, generator=g)
    ref = -3 * torch.rand(B, T, generator=g)
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, :2] = 0  # a prompt column before the response
    mask[3, 5:] = 0
    return prm, ref, mask


def test_implicit_process_rewards_match_float64():
    prm, ref, mask = _logprobs()
    beta = 0.05
    got = implicit_process_rewards(prm, ref, mask, beta)
    expected = beta * (prm.double() - ref.double()) * mask.double()
    assert torch.allclose(got.double(), expected, atol=1e-7, rtol=0)
    assert (got[mask == 0] == 0).all()
    assert torch.allclose(implicit_outcome_logits(prm, ref, mask, beta).double(), expected.sum(1), atol=1e-6, rtol=0)


def test_outcome_hits_threshold_the_logit_at_zero():
    z = torch.tensor([2.0, -0.5, 0.0, 0.0, 1e-30, -1e-30])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert outcome_hits(z, labels).tolist() == [True, True, True, False, True, False]


def test_prm_ce_loss_and_its_gradient_match_float64():
    prm, ref, mask = _logprobs()
    beta = 0.05
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    prm64 = prm.double().requires_grad_(True)
    loss = prm_ce_loss(prm64, ref.double(), mask, labels, beta)
    z = beta * ((prm.double() - ref.double()) * mask.double()).sum(1)
    p = 1 / (1 + torch.exp(-z))
    expected = -(labels.double() * torch.log(p) + (1 - labels.double()) * torch.log(1 - p))
    assert torch.allclose(loss, expected, atol=1e-12, rtol=0)
    assert torch.allclose(prm_ce_loss(prm, ref, mask, labels, beta).double(), expected, atol=1e-6, rtol=0)
    # d loss_i / d log pi_phi(y_t) = beta (sigmoid(z_i) - y_i) on response tokens, 0 elsewhere
    loss.sum().backward()
    grad = beta * (p - labels.double()).unsqueeze(1) * mask.double()
    assert torch.allclose(prm64.grad, grad, atol=1e-12, rtol=0)


def test_prm_ce_loss_is_finite_for_huge_log_ratios():
    # log-ratios summing to +-4000: z = +-200, far past where sigmoid rounds to 0 or 1
    prm = torch.tensor([[400.0] * 10, [-400.0] * 10])
    ref, mask = torch.zeros(2, 10), torch.ones(2, 10)
    right = prm_ce_loss(prm, ref, mask, torch.tensor([1.0, 0.0]), 0.05)
    wrong = prm_ce_loss(prm, ref, mask, torch.tensor([0.0, 1.0]), 0.05)
    assert right.tolist() == pytest.approx([0.0, 0.0], abs=1e-30)
    assert wrong.tolist() == pytest.approx([200.0, 200.0])


def _hand_example():
    """Group 0 of three responses (2, 3 and 1 tokens), a singleton group 7."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    process = torch.tensor([[0.2, 0.4, 0.0], [0.1, -0.1, 0.3], [0.5, 0.0, 0.0], [0.9, 0.9, 0.0]])
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    groups = torch.tensor([0, 0, 0, 7])
    return rewards, process, mask, groups


def test_prime_advantage_by_hand():
    rewards, process, mask, groups = _hand_example()
    prime = get_advantage("prime")
    # outcome, leave-one-out: 1 - (0 + 0)/2 = 1; 0 - (1 + 0)/2 = -0.5; -0.5; the singleton 0
    # mean process reward per response: 0.3, 0.1, 0.5; baselines (mean of the other two): 0.3, 0.4, 0.2
    # centred rewards: [-0.1, 0.1], [-0.3, -0.5, -0.1], [0.3]; returns-to-go (gamma 1):
    # [0.0, 0.1], [-0.9, -0.6, -0.1], [0.3]
    got = prime(rewards, mask, groups, process_rewards=process, whiten=False)
    expected = torch.tensor([[1.0, 1.1, 0.0], [-1.4, -1.1, -0.6], [-0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # process_coef 0.5 and gamma 0.5: response 1's returns -0.1, -0.5 - 0.05 = -0.55, -0.3 - 0.275 = -0.575
    got = prime(rewards, mask, groups, process_rewards=process, whiten=False, gamma=0.5, process_coef=0.5)
    expected = torch.tensor([[1.0 - 0.025, 1.05, 0.0], [-0.5 - 0.2875, -0.5 - 0.275, -0.55], [-0.35, 0.0, 0.0],
                             [0.0, 0.0, 0.0]])
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # whitened (the default): the hand values standardised over the 8 response tokens
    hand = torch.tensor([1.0, 1.1, -1.4, -1.1, -0.6, -0.2, 0.0, 0.0], dtype=torch.float64)
    white = (hand - hand.mean()) / (hand.std() + 1e-8)
    got = prime(rewards, mask, groups, process_rewards=process)
    assert torch.allclose(got[mask.bool()].double(), white, atol=1e-6, rtol=0)
    assert (got[mask == 0] == 0).all()


def test_prime_advantage_without_process_signal_is_rloo():
    rewards, _, mask, groups = _hand_example()
    zero = torch.zeros_like(mask)
    got = get_advantage("prime")(rewards, mask, groups, process_rewards=zero, whiten=False)
    assert torch.allclose(got, get_advantage("rloo")(rewards, mask, groups), atol=1e-7, rtol=0)
    # equal process rewards on every token of a group cancel against their baseline
    flat = torch.full_like(mask, 0.3) * mask
    assert torch.allclose(get_advantage("prime")(rewards, mask, groups, process_rewards=flat, whiten=False), got,
                          atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="needs process rewards"):
        get_advantage("prime")(rewards, mask, groups)


def _tiny_batch(tok, micro=2):
    prompts = [tok.encode("1+2=")[:4], tok.encode("3*4=")[:4]]
    responses = [tok.encode(t) for t in ("3", "12 is it", "5", "12")]
    completions = [Completion(problem_id=str(i // 2), prompt_ids=prompts[i // 2], response_ids=r, text="",
                              logprobs=[-1.0] * len(r), finish_reason="stop") for i, r in enumerate(responses)]
    lengths = torch.tensor([len(c.prompt_ids) + len(c.response_ids) for c in completions])
    plan = update_plan(4, 1, 1, micro, torch.Generator().manual_seed(0), lengths)
    return rollout_batch(completions, tok.pad_token_id or 0, overlong_filter=False, temperature=1.0,
                         max_new_tokens=8, plan=plan)


def test_implicit_prm_update_matches_a_float64_gradient(tiny):
    """One update of the PRM component over two micro-batches: its gradient is that of the mean
    cross-entropy computed in float64 on a float64 copy of the starting model; the reference stays
    frozen and the policy untouched."""
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    cfg = load_config(None, ["algo.advantage=prime", "algo.prm_lr=1e-3", "algo.prm_grad_clip=0"])
    start = copy.deepcopy(model.state_dict())
    prm = ImplicitPRM(cfg, model)
    batch = _tiny_batch(tok)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    rewards0 = prm.token_rewards(batch)
    assert torch.allclose(rewards0, torch.zeros_like(rewards0), atol=1e-6)  # PRM = reference at the start
    stats = prm.update(batch, labels)

    m64 = copy.deepcopy(tiny[0]).double()
    lp = token_logprobs(m64, batch.input_ids, batch.attention_mask)[0]
    with torch.no_grad():
        ref = token_logprobs(m64, batch.input_ids, batch.attention_mask)[0]
    loss = prm_ce_loss(lp, ref, batch.response_mask, labels, cfg.algo.prm_beta).mean()
    loss.backward()
    assert stats["prm/loss"] == pytest.approx(float(loss.detach()), abs=1e-6)  # log 2: z = 0 before the step
    # no exact accuracy here: z is 0 only in exact arithmetic. Two copies of one model can round
    # differently (the GEMM's path depends on the weights' memory alignment), so each z is a few
    # ulps either side of 0 and its sign is noise; the accuracy is checked below, where |z| is large
    for (name, p), p64 in zip(prm.model.named_parameters(), m64.parameters()):
        assert torch.allclose(p.grad.double(), p64.grad, atol=1e-7, rtol=1e-3), name
    assert all(torch.equal(v, start[k]) for k, v in prm.ref_model.state_dict().items())
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in prm.model.state_dict().items())
    # a few more steps on the same labels: the implicit outcome logits move toward them
    for _ in range(5):
        prm.update(batch, labels)
    z = prm.token_rewards(batch).sum(1)
    assert bool(((z > 0) == (labels > 0.5)).all()), z
    # now far from 0 (|z| >> rounding), the update's accuracy (of the forwards before its step)
    # counts every sequence against its label, over the whole batch
    assert float(z.abs().min()) > 1e-3, z
    assert prm.update(batch, labels)["prm/accuracy"] == 1.0
    assert copy.deepcopy(prm).update(batch, 1 - labels)["prm/accuracy"] == 0.0


@pytest.mark.parametrize("order", ["before", "after"])
def test_score_and_update_order(tiny, order):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    cfg = load_config(None, ["algo.advantage=prime", "algo.prm_lr=1e-3", f"algo.prm_update={order}"])
    prm = ImplicitPRM(cfg, model)
    batch = _tiny_batch(tok)
    rewards, stats = prm.score_and_update(batch, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    moved = rewards.abs().max() > 1e-6
    assert bool(moved) == (order == "before")  # "after" scores with the PRM as it started (= the reference)
    assert torch.allclose(prm.token_rewards(batch), rewards) == (order == "before")
    assert set(stats) >= {"prm/loss", "prm/accuracy", "prm/grad_norm", "prm/reward_mean"}


@pytest.mark.parametrize("overrides,message", [
    (["algo.prm_lr=1e-5"], "algo.prm_lr is a process reward model setting, but advantage 'grpo' uses none"),
    (["algo.advantage=rloo", "algo.prm_beta=0.1"], "algo.prm_beta is a process reward model setting"),
    (["algo.advantage=prime", "algo.prm_beta=0"], "algo.prm_beta=0.0: expected a number > 0"),
    (["algo.advantage=dr_grpo", "algo.prm_grad_clip=1"], "algo.prm_grad_clip is a process reward model setting"),
    (["algo.advantage=prime", "algo.prm_update=during"], "algo.prm_update='during': expected 'before' or 'after'"),
    (["algo.advantage=prime", "algo.advantage_args.std_eps=1e-6"], "advantage estimator 'prime' does not take 'std_eps'"),
])
def test_prm_settings_belong_to_prime(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bind_method(load_config(None, overrides).algo)


def test_prime_binds_with_its_flag():
    m = bind_method(load_config(None, ["algo.advantage=prime", "algo.gamma=0.99"]).algo)
    assert m.needs_prm and "process_rewards" in m.advantage_context and not m.needs_reference
    assert not bind_method(load_config(None).algo).needs_prm


ARGS = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "data.train_size=200", "data.sft_size=10", "data.eval_size=4", "reward.verify_workers=1",
        "train.prompts_per_step=3", "train.group_size=4", "train.micro_batch_size=8", "train.mini_batches=2",
        "train.eval_every=0", "train.save_every=1", "sampling.max_new_tokens=12", "algo.prm_lr=1e-3"]


def _prime_run(tmp_path, name, steps, resume=None):
    import random

    from r1lab.rollout import HFEngine
    from r1lab.stages import load_policy, prepare_data
    from r1lab.train.rl import train_rl

    cfg = load_config(ROOT / "recipes" / "tiny" / "prime.yaml", [*ARGS, f"train.steps={steps}", f"out_dir={tmp_path}"])
    data = prepare_data(cfg, None, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    if resume is None:
        torch.manual_seed(0)
        random.seed(0)
    return train_rl(cfg, model, tok, HFEngine(model, tok), data.rl_prompts, show_progress=False,
                    run_path=tmp_path / name, resume=resume)


def test_a_resumed_prime_run_restores_its_prm(tmp_path):
    """Two steps, stop, resume for the third: the third step logs what the uninterrupted run logs
    (the PRM's loss and rewards among them) and leaves the same PRM weights."""
    from r1lab.train.checkpoint import checkpoints, load_latest

    whole = _prime_run(tmp_path, "whole", 3)
    _prime_run(tmp_path, "stopped", 2)
    resumed = _prime_run(tmp_path, "stopped", 3, resume=load_latest(tmp_path / "stopped"))
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))}  # noqa: E731
    assert len(resumed) == 1 and strip(resumed[0]) == strip(whole[2])
    assert whole[2]["prm/loss"] != whole[0]["prm/loss"]
    a = torch.load(checkpoints(tmp_path / "whole")[-1], weights_only=False)["prm"]["model"]
    b = torch.load(checkpoints(tmp_path / "stopped")[-1], weights_only=False)["prm"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

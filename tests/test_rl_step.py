"""The RL step does no redundant work and its speed features keep the math: forwards counted,
length-bucketed micro-batches, bf16 autocast with fp32 master weights, and the truncated
importance-sampling correction for the engine/trainer log-prob mismatch."""

import copy
import math

import pytest
import torch

from r1lab.algos import aggregate, get_correction
from r1lab.algos.corrections import icepop_weight, masked_is_weight, sequence_masked_is_weight, truncated_is_weight
from r1lab.config import RunConfig
from r1lab.records import Problem
from r1lab.rollout import FastEngine, HFEngine
from r1lab.train.common import token_logprobs
from r1lab.train.batch import micro_batches, update_plan
from r1lab.train.rl import RLTrainer
from r1lab.train.sampler import PromptSampler

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute ((1 + 2) * 3) - 4 + 12 * 5."]


def problems(k=4):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer="1") for i in range(k)]


def _trainer(tiny, engine="hf", algo=None, **train):
    model, tok = tiny
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 16
    cfg.train.group_size = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    for k, v in (algo or {}).items():
        setattr(cfg.algo, k, v)
    model = copy.deepcopy(model)
    eng = HFEngine(model, tok) if engine == "hf" else FastEngine(model, tok, dtype=engine)
    return RLTrainer(cfg, model, tok, eng), model


def _batch(trainer, seed=0, before_make_batch=lambda: None):
    cs = trainer.rollout(problems(4), seed=seed)
    rewards = torch.tensor([float(i % 3 == 0) for i in range(len(cs))])
    before_make_batch()  # after sampling: the engine's own forwards are not counted
    return trainer.make_batch(cs, rewards, torch.arange(4).repeat_interleave(4))


def _count_forwards(module, calls: list[int] | None = None) -> list[int]:
    """calls[0] counts module's forward calls from now on."""
    calls = calls if calls is not None else [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_no_reference_and_no_old_policy_forward_when_not_needed(tiny):
    # kl_coef 0, one update per rollout; whole rows (the shared-prompt forwards are counted below)
    trainer, model = _trainer(tiny, micro_batch_size=6, shared_prefix=False)
    calls = [0]
    batch = _batch(trainer, before_make_batch=lambda: _count_forwards(model, calls))
    assert calls[0] == 0 and trainer.policy.ref_model is None
    assert batch.old_logprobs is None and batch.ref_logprobs is None
    trainer.update(batch)
    assert calls[0] == 3  # 16 rows in micro-batches of 6: exactly one forward each, for the update


def test_reference_forward_only_with_kl_and_old_forward_only_with_several_updates(tiny):
    trainer, model = _trainer(tiny, micro_batch_size=6, algo={"kl_coef": 0.1}, shared_prefix=False)
    policy, ref = [0], _count_forwards(trainer.policy.ref_model)
    batch = _batch(trainer, before_make_batch=lambda: _count_forwards(model, policy))
    assert (policy[0], ref[0]) == (0, 3) and batch.ref_logprobs is not None and batch.old_logprobs is None
    trainer, model = _trainer(tiny, micro_batch_size=6, mini_batches=2, shared_prefix=False)
    policy = [0]
    batch = _batch(trainer, before_make_batch=lambda: _count_forwards(model, policy))
    assert policy[0] == 4 and batch.old_logprobs is not None  # 2 mini-batches of 8 -> 2 + 2 micro-batches
    trainer.update(batch)
    assert policy[0] == 8


def test_shared_prefix_runs_each_prompt_once_per_mini_batch_and_keeps_the_update(tiny):
    shared, model = _trainer(tiny, micro_batch_size=6)
    plain, plain_model = _trainer(tiny, micro_batch_size=6, shared_prefix=False)
    batch = _batch(shared)
    calls = _count_forwards(model)
    stats = shared.update(copy.deepcopy(batch))
    assert calls[0] == 3 + 1  # 3 micro-batches of responses + one forward of the 4 distinct prompts
    want = plain.update(copy.deepcopy(batch))
    for k in ("loss/policy", "policy/entropy", "policy/grad_norm"):
        assert stats[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
    for (n, p), q in zip(model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


def test_micro_batches_are_length_bucketed():
    lengths = torch.tensor([5, 50, 6, 49, 7, 48, 8, 47])
    idx = torch.arange(8)
    bucketed = micro_batches(idx, 2, lengths)
    assert [sorted(lengths[m].tolist()) for m in bucketed] == [[5, 6], [7, 8], [47, 48], [49, 50]]
    padded = lambda parts: sum(len(m) * int(lengths[m].max()) for m in parts)  # noqa: E731
    assert padded(bucketed) == 2 * (6 + 8 + 48 + 50) == 224
    assert padded(micro_batches(idx, 2)) == 2 * (50 + 49 + 48 + 47) == 388
    # mini-batches are still drawn at random; only their split into micro-batches is sorted
    plan = update_plan(8, 1, 2, 2, torch.Generator().manual_seed(0), lengths)
    for mini in plan[0]:
        flat = torch.cat(mini)
        assert lengths[flat].tolist() == sorted(lengths[flat].tolist())


def test_bf16_autocast_keeps_fp32_master_weights_and_a_step_lowers_the_loss(tiny):
    trainer, model = _trainer(tiny, bf16=True, lr=1e-2, warmup_steps=1, micro_batch_size=5)
    batch = _batch(trainer)
    T = trainer.params.logprob_temperature

    def surrogate() -> float:  # the policy-gradient objective of this batch, evaluated in fp32
        with torch.no_grad():
            lp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, T)
        return float(aggregate(-batch.advantages * lp, batch.loss_mask, "seq-mean-token-mean"))

    with torch.no_grad():
        lp32 = trainer.policy.logprobs(batch)
        trainer.cfg.train.bf16 = False
        lp_fp32 = trainer.policy.logprobs(batch)
        trainer.cfg.train.bf16 = True
    gap = ((lp32 - lp_fp32).abs() * batch.response_mask).max().item()
    assert 0 < gap < 0.1  # the forward really ran in bf16, and stayed close
    before = surrogate()
    stats = trainer.update(batch)
    assert math.isfinite(stats["loss/total"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = [s for s in trainer.policy.optimizer.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in state)
    assert surrogate() < before - 1e-3


def test_tis_weight_against_hand_computed_float64():
    trainer_lp = torch.tensor([[-1.0, -2.0, -0.5, -0.1, -3.0]], dtype=torch.float64)
    engine_lp = torch.tensor([[-1.5, -1.0, -0.5, -1.3, -0.2]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.float64)
    w = truncated_is_weight(trainer_lp, engine_lp, cap=2.0, mask=mask)
    # exp(0.5), exp(-1), exp(0), min(exp(1.2), 2), masked
    expected = [1.6487212707001282, 0.36787944117144233, 1.0, 2.0, 0.0]
    assert w[0].tolist() == pytest.approx(expected, abs=1e-15)
    assert get_correction("tis") is truncated_is_weight
    x = trainer_lp.clone().requires_grad_(True)
    assert not truncated_is_weight(x, engine_lp, cap=2.0).requires_grad  # detached: a weight, not a gradient path
    assert truncated_is_weight(torch.tensor([0.0]), torch.tensor([-1000.0]), cap=2.0).item() == 2.0  # no overflow
    with pytest.raises(ValueError):
        truncated_is_weight(trainer_lp, engine_lp, cap=0.0)


def test_masked_is_weight_against_hand_computed_float64():
    trainer_lp = torch.tensor([[-1.0, -2.0, -0.5, -0.1, -3.0, -1.0]], dtype=torch.float64)
    engine_lp = torch.tensor([[-1.5, -1.0, -0.5, -1.3, -0.2, -1.69]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 1]], dtype=torch.float64)
    w = masked_is_weight(trainer_lp, engine_lp, cap=2.0, mask=mask)
    # ratios exp(0.5) kept, exp(-1) < 1/2 dropped, 1 kept, exp(1.2) > 2 dropped, masked, exp(0.69) < 2 kept
    expected = [1.6487212707001282, 0.0, 1.0, 0.0, 0.0, 1.9937155332430823]
    assert w[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert get_correction("masked_is") is masked_is_weight
    x = trainer_lp.clone().requires_grad_(True)
    assert not masked_is_weight(x, engine_lp, cap=2.0).requires_grad
    # extreme ratios either way are dropped, never inf or nan
    assert masked_is_weight(torch.tensor([0.0, -1000.0]), torch.tensor([-1000.0, 0.0]), cap=2.0).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        masked_is_weight(trainer_lp, engine_lp, cap=1.0)


def test_icepop_weight_against_hand_computed_float64():
    trainer_lp = torch.tensor([[-1.0, -2.0, -0.5, -0.1, -3.0, -1.0, 0.0]], dtype=torch.float64)
    engine_lp = torch.tensor([[-1.5, -1.0, -0.5, -1.3, -0.2, -1.69, -1.7]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 1, 1]], dtype=torch.float64)
    w = icepop_weight(trainer_lp, engine_lp, mask)  # band [0.5, 5]
    # exp(0.5) kept; exp(-1) = 0.368 < 0.5 dropped; 1 kept; exp(1.2) = 3.320 kept (masked_is at C=2 drops it);
    # masked; exp(0.69) kept; exp(1.7) = 5.474 > 5 dropped
    expected = [1.6487212707001282, 0.0, 1.0, 3.3201169227365472, 0.0, 1.9937155332430823, 0.0]
    assert w[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert get_correction("icepop") is icepop_weight
    assert icepop_weight(trainer_lp, engine_lp, mask, low=0.3, high=2.0)[0, 1].item() == pytest.approx(math.exp(-1.0), abs=1e-15)
    assert not icepop_weight(trainer_lp.clone().requires_grad_(True), engine_lp).requires_grad
    assert icepop_weight(torch.tensor([0.0, -1000.0]), torch.tensor([-1000.0, 0.0])).tolist() == [0.0, 0.0]
    for low, high in ((1.0, 5.0), (0.5, 1.0), (0.0, 5.0)):
        with pytest.raises(ValueError):
            icepop_weight(trainer_lp, engine_lp, low=low, high=high)


def test_sequence_masked_is_weight_against_hand_computed_float64():
    # row 0: log ratios 0.5, -1, 0, 1.2, (masked 2.8), 0.69 -> sum 1.39, rho = exp(1.39) = 4.0149
    # row 1: 0.1, -0.3, 0.05 -> sum -0.15, rho = 0.8607 (kept: one-sided); row 2: padding only
    trainer_lp = torch.tensor([[-1.0, -2.0, -0.5, -0.1, -3.0, -1.0],
                               [-1.0, -1.3, -0.95, 0.0, 0.0, 0.0],
                               [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    engine_lp = torch.tensor([[-1.5, -1.0, -0.5, -1.3, -5.8, -1.69],
                              [-1.1, -1.0, -1.0, 0.0, 0.0, 0.0],
                              [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    rho0, rho1 = math.exp(1.39), math.exp(-0.15)
    w = sequence_masked_is_weight(trainer_lp, engine_lp, mask, cap=5.0)
    f64 = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    # float64: a five-term sum and one exp, each within a few ulps of 4 (1e-15): 1e-12 is loose
    torch.testing.assert_close(w, f64([[rho0, rho0, rho0, rho0, 0.0, rho0], [rho1] * 3 + [0.0] * 3, [0.0] * 6]),
                               rtol=0, atol=1e-12)
    w = sequence_masked_is_weight(trainer_lp, engine_lp, mask, cap=2.0)  # rho0 > 2: the whole response dropped
    torch.testing.assert_close(w, f64([[0.0] * 6, [rho1] * 3 + [0.0] * 3, [0.0] * 6]), rtol=0, atol=1e-12)
    assert get_correction("seq_masked_is") is sequence_masked_is_weight
    # a long response whose tiny per-token gaps multiply past exp's range: dropped, never inf or nan
    long_t, long_e = torch.zeros(1, 4000, dtype=torch.float64), torch.full((1, 4000), -0.5, dtype=torch.float64)
    assert float(sequence_masked_is_weight(long_t, long_e, cap=2.0).abs().sum()) == 0.0
    assert float(sequence_masked_is_weight(long_e, long_t, cap=2.0)[0, 0]) == 0.0  # exp(-2000) underflows to 0
    assert not sequence_masked_is_weight(trainer_lp.clone().requires_grad_(True), engine_lp).requires_grad
    with pytest.raises(ValueError):
        sequence_masked_is_weight(trainer_lp, engine_lp, cap=1.0)


def test_masked_correction_drops_out_of_bound_tokens_from_the_loss(tiny):
    trainer, model = _trainer(tiny, lr=0.0, algo={"correction": "masked_is", "correction_args": {"cap": 1.5}, "loss_agg": "token-mean"})
    batch = _batch(trainer)
    g = torch.Generator().manual_seed(0)
    batch.engine_logprobs = (batch.engine_logprobs + torch.randn(batch.engine_logprobs.shape, generator=g)) * batch.response_mask
    stats = trainer.update(batch)
    with torch.no_grad():
        lp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, 1.0)
    r = torch.exp(lp.double() - batch.engine_logprobs.double())
    keep = ((r >= 1 / 1.5) & (r <= 1.5)).double() * batch.response_mask
    expected = float((-batch.advantages * (r * keep) * batch.loss_mask).sum() / batch.loss_mask.sum())
    assert stats["loss/policy"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    dropped = float(((1 - keep) * batch.loss_mask).sum() / batch.loss_mask.sum())
    assert 0 < stats["policy/tis_dropped"] == pytest.approx(dropped, abs=1e-6)


def test_tis_multiplies_the_policy_gradient_term_exactly(tiny):
    results = {}
    for cap in (0.0, 2.0):
        correction = {"correction": "tis", "correction_args": {"cap": cap}} if cap else {}
        trainer, model = _trainer(tiny, lr=0.0, algo={**correction, "loss_agg": "token-mean"})
        batch = _batch(trainer)
        # pretend the engine disagreed with the trainer: shift its log-probs by a known pattern
        g = torch.Generator().manual_seed(0)
        batch.engine_logprobs = (batch.engine_logprobs + torch.randn(batch.engine_logprobs.shape, generator=g)) * batch.response_mask
        stats = trainer.update(batch)
        with torch.no_grad():
            lp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, 1.0)
        results[cap] = (stats, lp, batch)
    stats, lp, batch = results[2.0]
    w = torch.exp(lp - batch.engine_logprobs).clamp(max=2.0) * batch.response_mask
    # on-policy ratio 1: per-token loss -A, times the weight
    expected = float((-batch.advantages * w * batch.loss_mask).sum() / batch.loss_mask.sum())
    assert stats["loss/policy"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert stats["policy/tis_weight"] == pytest.approx(float(w.sum() / batch.response_mask.sum()), rel=1e-5)
    assert 0 < stats["policy/tis_capped"] < 1
    plain = results[0.0][0]
    assert "policy/tis_weight" not in plain
    expected_plain = float((-batch.advantages * batch.loss_mask).sum() / batch.loss_mask.sum())
    assert plain["loss/policy"] == pytest.approx(expected_plain, rel=1e-5, abs=1e-7)
    assert abs(stats["loss/policy"] - plain["loss/policy"]) > 1e-4


def test_logprob_mismatch_is_logged_every_step(tiny):
    for dtype, low, high in (("float32", 0.0, 1e-5), ("bfloat16", 1e-5, 0.01)):
        trainer, _ = _trainer(tiny, engine=dtype)
        stats = trainer.update(_batch(trainer))
        assert low <= stats["rollout/logprob_diff_mean"] < high
        assert stats["rollout/logprob_diff_max"] >= stats["rollout/logprob_diff_mean"]
    trainer, _ = _trainer(tiny, engine="bfloat16", mini_batches=2)  # measured against the old-policy forward
    stats = trainer.update(_batch(trainer))
    assert 1e-5 < stats["rollout/logprob_diff_mean"] < 0.01


def test_group_signal_separates_equal_rewards_from_equal_correctness():
    """Group 1: all wrong, but one sample is well formatted (accuracy 1.0 + format 0.1 weights): the
    rewards differ, so it carries signal although dynamic sampling would drop it. Group 2: all right
    and all formatted: no signal at all. Group 3: mixed correctness."""
    from r1lab.train.step_metrics import group_signal

    rewards = torch.tensor([0.0, 0.1, 0.0, 0.0, 1.1, 1.1, 1.1, 1.1, 1.1, 0.0, 0.1, 1.0])
    correct = [False] * 4 + [True] * 4 + [True, False, False, True]
    zero_variance, same_correctness = group_signal(rewards, correct, 4)
    assert zero_variance == pytest.approx(1 / 3)
    assert same_correctness == pytest.approx(2 / 3)


def test_value_pretraining_samples_each_batch_with_its_own_seeds(tiny):
    """Every value-pretraining batch is a fresh draw: no seed repeats across its steps, nor is one of
    them the first RL step's (the critic would be fitted to, and checked on, correlated samples)."""
    trainer, _ = _trainer(tiny, prompts_per_step=2, algo={"critic": True, "advantage": "gae", "value_pretrain_steps": 3})
    trainer.cfg.reward.verify_workers = 0
    seeds = []
    generate = trainer.engine.generate
    trainer.engine.generate = lambda *a, seed=None, **kw: seeds.append(seed) or generate(*a, seed=seed, **kw)
    sampler = PromptSampler(problems(4), seed=0)
    history = trainer.pretrain_critic(sampler)
    trainer.collect(sampler)  # RL step 0
    assert len(history) == 3 and all(math.isfinite(h["critic/value_loss"]) for h in history)
    assert len(seeds) == 4 and len(set(seeds)) == 4 and all(s >= 0 for s in seeds), seeds


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_rl_lr_schedule_warms_up_then_holds_or_decays_to_a_tenth(schedule):
    from r1lab.train.policy import rl_scheduler

    train = RunConfig().train
    train.steps, train.mini_batches, train.warmup_steps, train.lr, train.schedule = 10, 2, 4, 1.0, schedule
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.lr)
    sched = rl_scheduler(opt, train)
    lrs = []
    for _ in range(train.steps * train.mini_batches):  # 20 optimizer steps
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    if schedule == "constant":
        assert lrs[4:] == pytest.approx([1.0] * 16)
    else:  # cosine over optimizer steps 4..20: 0.1 + 0.9 * (1 + cos(pi * (s - 4) / 16)) / 2
        assert lrs[4:] == pytest.approx([0.1 + 0.45 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(4, 20)])
        assert lrs[12] == pytest.approx(0.55) and lrs[-1] > 0.1

"""Every recipe loads; every tiny variant runs a few RL steps with finite losses, and the piece
that makes the method what it is visibly did its job."""

import math
from pathlib import Path

import pytest
import torch

from r1lab.config import load_config
from r1lab.recipes import list_recipes
from r1lab.runs import RunDir
from r1lab.stages import load_policy, prepare_data, run_sft
from r1lab.train.rl import train_rl
from r1lab.train.sampler import PromptSampler

ROOT = Path(__file__).resolve().parents[1] / "recipes"
METHODS = ["r1_zero_grpo", "dapo", "dr_grpo", "reinforce_pp", "reinforce_pp_baseline", "orz_ppo", "vc_ppo", "vapo",
           "deepscaler", "skywork_or1", "srpo", "gpg", "mimo", "logic_rl", "prime"]
SMALL = ["model.tiny.hidden_size=96", "model.tiny.num_layers=2", "model.tiny.intermediate_size=288",
         "data.difficulty=1", "data.train_size=230", "data.sft_size=150", "data.eval_size=8",
         "reward.verify_workers=1"]
# a few steps of everything, small enough for the whole list to run in about a minute
STEPS = ["train.steps=4", "train.prompts_per_step=6", "train.group_size=4", "train.eval_every=0",
         "train.micro_batch_size=32", "sampling.max_new_tokens=24"]


def test_every_method_has_a_published_and_a_tiny_recipe():
    names = {r["name"] for r in list_recipes(ROOT)}
    for m in METHODS:
        assert m in names and f"tiny/{m}" in names, m
        full = load_config(ROOT / f"{m}.yaml")
        assert full.model.path != "tiny"  # published settings are for a real model
    assert all(r["description"] for r in list_recipes(ROOT))


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory):
    """A tiny model fine-tuned on single-operation arithmetic: right often enough, wrong often
    enough, that groups have mixed outcomes."""
    cfg = load_config(None, [*SMALL, "sft.epochs=50", "sft.batch_size=16", "sft.lr=3e-3",
                             f"out_dir={tmp_path_factory.mktemp('runs')}", "name=sft"])
    run = RunDir.create(cfg)
    data = prepare_data(cfg, run, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    run_sft(cfg, run, model, tok, data, show_progress=False)
    return run.checkpoint("sft")


def run_recipe(name, ckpt, tmp_path, *extra):
    cfg = load_config(ROOT / "tiny" / f"{name}.yaml", [*SMALL, *STEPS, f"init_from={ckpt}", f"out_dir={tmp_path}", *extra])
    data = prepare_data(cfg, None, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    from r1lab.rollout import HFEngine

    history = train_rl(cfg, model, tok, HFEngine(model, tok), data.rl_prompts, show_progress=False)
    for h in history:
        for key in ("loss/total", "loss/policy", "policy/entropy", "reward/total"):
            assert math.isfinite(h[key]), (name, key, h[key])
    return cfg, history


def col(history, key):
    return [h.get(key) for h in history]


def test_r1_zero_grpo_puts_k3_kl_in_the_loss(sft_checkpoint, tmp_path):
    _, h = run_recipe("r1_zero_grpo", sft_checkpoint, tmp_path)
    assert all(k is not None and k >= 0 for k in col(h, "policy/kl"))
    assert h[-1]["policy/kl"] > 0  # the policy moved away from the reference


def test_dapo_drops_all_equal_groups_and_uses_the_upper_clip(sft_checkpoint, tmp_path):
    _, h = run_recipe("dapo", sft_checkpoint, tmp_path)
    assert sum(col(h, "sampling/dropped_groups")) > 0
    assert max(col(h, "sampling/rounds")) > 1
    assert all(g <= 6 for g in col(h, "sampling/groups"))
    # the second mini-batch is off-policy: the ratio moved, and the asymmetric bound was in force
    assert all(math.isfinite(x) for x in col(h, "policy/clip_frac_high"))
    assert "reward/soft_overlong" in h[0] and "reward/accuracy_pm1" in h[0]


def test_dr_grpo_advantages_are_unscaled(sft_checkpoint, tmp_path):
    cfg, h = run_recipe("dr_grpo", sft_checkpoint, tmp_path)
    assert cfg.algo.loss_agg == "seq-mean-token-sum-norm"
    # r - mean(r) with 0/1 rewards never exceeds 1 in size; the std-normalised GRPO one does
    assert all(a <= 1.0 + 1e-6 for a in col(h, "adv/abs_max"))


def test_reinforce_pp_whitens_and_puts_kl_in_the_reward(sft_checkpoint, tmp_path):
    _, h = run_recipe("reinforce_pp", sft_checkpoint, tmp_path)
    assert all(abs(m) < 1e-4 for m in col(h, "adv/mean"))  # globally whitened
    assert all(k is not None for k in col(h, "policy/kl"))


def test_reinforce_pp_baseline(sft_checkpoint, tmp_path):
    _, h = run_recipe("reinforce_pp_baseline", sft_checkpoint, tmp_path)
    assert all(abs(m) < 1e-4 for m in col(h, "adv/mean"))


def test_orz_ppo_trains_a_critic(sft_checkpoint, tmp_path):
    _, h = run_recipe("orz_ppo", sft_checkpoint, tmp_path)
    assert all(math.isfinite(v) for v in col(h, "critic/value_loss"))


@pytest.mark.parametrize("name", ["vc_ppo", "vapo"])
def test_value_pretraining_lowers_the_value_error(sft_checkpoint, tmp_path, name):
    """The value error of the pretrained critic against that of the critic RL would start with (V = 0),
    pooled over several fresh batches: one batch of a few groups is too small to judge by (a VAPO
    batch whose groups are each 1-of-4 right is predicted about as well by V = 0 as by the mean)."""
    from r1lab.rollout import HFEngine
    from r1lab.train.rl import RLTrainer

    cfg = load_config(ROOT / "tiny" / f"{name}.yaml", [*SMALL, *STEPS, f"init_from={sft_checkpoint}", "algo.value_pretrain_steps=15"])
    data = prepare_data(cfg, None, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    trainer = RLTrainer(cfg, model, tok, HFEngine(model, tok))
    sampler = PromptSampler(data.train, seed=0)
    assert cfg.algo.gamma == 1 and cfg.algo.lam_critic == 1 and cfg.algo.kl_coef == 0
    held_out, returns = [], []
    for step in range(1, 5):  # seeds of RL steps 1-4, which value pretraining never samples with
        trainer.step = step
        c = trainer.collect(sampler)
        held_out.append(trainer.make_batch(c.completions, c.rewards, c.group_index))
        # the Monte-Carlo return of every response token: its sequence's reward (gamma 1, no KL penalty)
        returns.append((c.rewards.unsqueeze(1) * held_out[-1].response_mask).flatten())
    trainer.step = 0
    mask = torch.cat([b.response_mask.flatten() for b in held_out])
    returns = torch.cat(returns)

    def error(predict) -> float:  # token-mean squared error over every held-out batch
        with torch.no_grad():
            v = torch.cat([predict(b).flatten() for b in held_out])
        return float(((v - returns) ** 2 * mask).sum() / mask.sum())

    critic = lambda b: trainer.policy.critic(b.input_ids, b.attention_mask)  # noqa: E731
    before = error(critic)
    assert before == error(lambda b: torch.zeros_like(b.response_mask)) > 0  # the untrained critic is V = 0
    mean_return = float((returns * mask).sum() / mask.sum())
    oracle = error(lambda b: torch.full_like(b.response_mask, mean_return))  # the best constant, known in hindsight
    trainer.pretrain_critic(sampler)
    after = error(critic)
    # A critic that predicts a constant c errs by oracle + (c - mean)^2, so V = 0 gives up mean^2 to the
    # oracle. Pretraining must win back at least half of that, i.e. |c - mean| <= 0.71 mean: a critic
    # that did not move, moved the wrong way or only a little fails; one that learnt the mean return of
    # the starting policy passes whatever the policy's accuracy (the tiny critic learns little more).
    assert before - after >= 0.5 * (before - oracle), (before, after, oracle)
    _, h = run_recipe(name, sft_checkpoint, tmp_path)
    if name == "vapo":
        assert any(v is not None for v in col(h, "loss/pos_nll"))


@pytest.mark.parametrize("name", ["deepscaler", "skywork_or1"])
def test_context_limit_grows_on_schedule(sft_checkpoint, tmp_path, name):
    _, h = run_recipe(name, sft_checkpoint, tmp_path, "train.max_new_tokens_schedule={0: 12, 2: 24}")
    assert col(h, "sampling/max_new_tokens") == [12, 12, 24, 24]
    assert max(col(h, "response/length")[:2]) <= 12


def test_skywork_adaptive_entropy_control(sft_checkpoint, tmp_path):
    _, h = run_recipe("skywork_or1", sft_checkpoint, tmp_path, "algo.entropy_target=10.0")
    # entropy below target every step: the coefficient climbs by delta per step from 0
    assert col(h, "policy/entropy_coef")[1:] == pytest.approx([1e-4, 2e-4, 3e-4])


def test_gpg_keeps_resampling_toward_valid_groups(sft_checkpoint, tmp_path):
    cfg, h = run_recipe("gpg", sft_checkpoint, tmp_path)
    assert cfg.algo.kl_coef == 0 and cfg.algo.policy_loss == "gpg"
    for step in h:
        valid = 1 - step["batch/same_correctness_groups"]  # GPG resamples on correctness, as DAPO does
        assert valid >= 0.6 - 1e-9 or step["sampling/rounds"] == cfg.train.max_sampling_rounds


@pytest.mark.parametrize("name,metric", [("srpo", "data/solved"), ("mimo", "data/easy_pool")])
def test_solved_problems_are_set_aside(sft_checkpoint, tmp_path, name, metric):
    _, h = run_recipe(name, sft_checkpoint, tmp_path, "train.steps=6", "train.group_size=2")
    assert h[-1][metric] > 0


def test_curriculum_moves_to_harder_problems(sft_checkpoint, tmp_path):
    _, h = run_recipe("r1_zero_grpo", sft_checkpoint, tmp_path, "train.curriculum={0: 1, 2: 2}", "algo.kl_coef=0")
    assert col(h, "data/stage") == [1, 1, 2, 2]


def test_history_resampling_and_easy_pool_sampler():
    from r1lab.records import Problem

    probs = [Problem(id=str(i), prompt=f"p{i}", answer="1") for i in range(4)]
    s = PromptSampler(probs, seed=0, history_resampling=True)
    first = s.next(4)
    s.record(first[0], True)
    s.record(first[1], True)
    s.record(first[1], False)  # solved once, then failed again: stays in
    second = s.next(3)
    assert first[0] not in second and len({p.id for p in second}) == 3
    assert s.dropped_last_epoch == 1
    easy = PromptSampler(probs, seed=0, easy_pool_prob=1.0)
    p = easy.next(1)[0]
    easy.record(p, True)
    assert all(q.id == p.id for q in easy.next(5))  # probability 1: always from the pool


def test_logic_rl_on_knights_and_knaves(tmp_path):
    """Knights and Knaves with a freshly built tiny model (no SFT: the rewards are the check)."""
    cfg, h = None, None
    cfg = load_config(ROOT / "tiny" / "logic_rl.yaml", [
        *SMALL[:3], "data.difficulty=2", "data.train_size=120", "data.sft_size=60", "data.eval_size=8",
        "reward.verify_workers=1", *STEPS, "train.curriculum={0: 2, 2: 3}", f"out_dir={tmp_path}"])
    data = prepare_data(cfg, None, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    from r1lab.rollout import HFEngine

    h = train_rl(cfg, model, tok, HFEngine(model, tok), data.rl_prompts, show_progress=False)
    assert col(h, "data/stage") == [2, 2, 3, 3]
    # an untrained model never has the strict format: format -1 and answer -2 on every sample
    assert all(r == pytest.approx(-3.0) for r in col(h, "reward/logic_rl"))
    assert all(math.isfinite(x) for x in col(h, "loss/total"))


def test_prime_trains_its_implicit_prm_online(sft_checkpoint, tmp_path):
    cfg, h = run_recipe("prime", sft_checkpoint, tmp_path)
    assert cfg.algo.advantage == "prime" and cfg.algo.kl_coef == 0 and cfg.train.dynamic_sampling
    for step in h:
        assert all(math.isfinite(step[k]) for k in ("prm/loss", "prm/accuracy", "prm/grad_norm", "prm/reward_mean"))
        assert step["prm/grad_norm"] > 0
    # updated before it scores: its process rewards are no longer zero, and they reach the advantages
    assert all(step["prm/reward_seq_abs_mean"] > 0 for step in h)
    assert all(abs(step["adv/mean"]) < 1e-4 for step in h)  # batch-whitened

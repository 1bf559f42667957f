"""Methods bound from the config: each piece receives exactly its own settings, and a setting the
chosen method does not take is an error, never silently dropped."""

import copy
import re
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from r1lab.algos import ADVANTAGES, POLICY_LOSSES, get_advantage
from r1lab.algos.registry import Registry
from r1lab.config import load_config
from r1lab.errors import ConfigError
from r1lab.recipes import list_recipes
from r1lab.train.methods import bind_method, describe_methods

ROOT = Path(__file__).resolve().parents[1]


def test_gspo_clip_range_from_the_recipe_reaches_the_loss():
    cfg = load_config(ROOT / "recipes" / "tiny" / "gspo.yaml")
    method = bind_method(cfg.algo)
    assert method.policy_loss.keywords == {"clip_eps_low": 3e-4, "clip_eps_high": 4e-4}
    # a sequence whose ratio is exp(0.001) ~ 1.001 with a positive advantage: inside PPO's 0.2 range,
    # outside GSPO's 4e-4, so it must be clipped (loss -(1 + 4e-4) A, clip fraction 1)
    logprobs = torch.full((1, 3), 0.001, dtype=torch.float64)
    old, adv, mask = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3)
    loss, stats = method.policy_loss(logprobs, old, adv, response_mask=mask)
    assert loss[0, 0].item() == pytest.approx(-(1 + 4e-4), abs=1e-12)
    assert stats["clip_frac"].min().item() == 1.0
    # and an override on the command line reaches it too
    wide = bind_method(load_config(ROOT / "recipes" / "tiny" / "gspo.yaml", ["algo.policy_loss_args.clip_eps_high=0.2"]).algo)
    loss, stats = wide.policy_loss(logprobs, old, adv, response_mask=mask)
    assert loss[0, 0].item() == pytest.approx(-torch.exp(torch.tensor(0.001, dtype=torch.float64)).item(), abs=1e-12)
    assert stats["clip_frac"].max().item() == 0.0


def test_the_trainer_uses_the_bound_loss(tiny):
    from r1lab.rollout import HFEngine
    from r1lab.train.rl import RLTrainer

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    cfg = load_config(None, ["algo.policy_loss=gspo", "algo.policy_loss_args={clip_eps_low: 0.001, clip_eps_high: 0.002}"])
    trainer = RLTrainer(cfg, model, tok, HFEngine(model, tok))
    assert trainer.method.policy_loss.keywords == {"clip_eps_low": 0.001, "clip_eps_high": 0.002}
    assert trainer.method.loss_takes_mask and trainer.method.needs_old_logprobs


@pytest.mark.parametrize("overrides,message", [
    (["algo.policy_loss=gspo", "algo.policy_loss_args.dual_clip_c=3"], "algo.policy_loss_args.dual_clip_c: policy loss 'gspo' does not take"),
    (["algo.advantage_args.lam_actor=0.9"], "advantage estimator 'grpo' does not take 'lam_actor'"),
    (["algo.policy_loss=gspo", "algo.loss_agg=token-mean"], "policy loss 'gspo' aggregates as seq-mean-token-mean"),
    (["algo.critic_lr=1e-4"], "algo.critic_lr is a critic setting, but algo.critic is false"),
    (["algo.critic=true"], "advantage 'grpo' does not use a value model"),
    (["algo.advantage=gae"], "needs a value model: set algo.critic=true"),
    (["algo.gamma=0.99"], "advantage 'grpo' does not discount"),
    (["algo.kl_coef=0.01", "algo.kl_in_reward=true"], "advantage 'grpo' takes no per-token reward penalty"),
    (["algo.kl_args.clamp=5"], "the KL term is off"),
    (["algo.kl_coef=0.01", "algo.kl_estimator=k1", "algo.kl_args.clamp=5"], "KL estimator 'k1' does not take 'clamp'"),
    (["algo.correction_args.cap=2"], "no correction is on"),
    (["algo.correction=tis", "algo.correction_args.cap=abc"], "algo.correction_args.cap: expected a number"),
    (["algo.policy_loss=ppo"], "algo.policy_loss='ppo': expected one of 'ppo_clip', 'gpg', 'gspo'"),
    (["algo.policy_loss_args.clip_eps_low=1.2"], "algo.policy_loss_args.clip_eps_low=1.2: expected a number in [0, 1)"),
    (["algo.policy_loss_args.dual_clip_c=0.5"], "algo.policy_loss_args.dual_clip_c=0.5: expected 0.0 (off) or a number > 1"),
    (["algo.correction=tis", "algo.correction_args.cap=0.5"], "algo.correction_args.cap=0.5: expected a number >= 1"),
])
def test_settings_the_method_does_not_take_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        bind_method(load_config(None, overrides).algo)


def test_moved_keys_name_their_new_place():
    with pytest.raises(ConfigError, match="'algo.clip_eps_high' is now 'algo.policy_loss_args.clip_eps_high'"):
        load_config(None, ["algo.clip_eps_high=0.28"])


@pytest.mark.parametrize("recipe", [r["path"] for r in list_recipes(ROOT / "recipes") if not r["stages"]],
                         ids=lambda p: Path(p).stem)
def test_every_recipe_binds(recipe):
    bind_method(load_config(recipe).algo)


def test_a_bad_method_setting_exits_2_before_anything_is_written(tmp_path):
    out = subprocess.run([sys.executable, "-m", "r1lab", "rl", str(ROOT / "recipes" / "tiny" / "grpo.yaml"),
                          f"out_dir={tmp_path}", "algo.policy_loss_args.clip_eps_hgh=0.3"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "clip_eps_hgh: policy loss 'ppo_clip' does not take" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_registered_functions_declare_every_setting():
    table = Registry("thing")
    with pytest.raises(TypeError, match="kwargs would hide unknown settings"):
        table.register("sloppy")(lambda x, **_: x)
    with pytest.raises(TypeError, match="need defaults"):
        table.register("nodefault")(lambda x, *, eps: x)
    for table in (ADVANTAGES, POLICY_LOSSES):
        for m in table.methods.values():
            assert set(m.context) <= set(table.context)
    text = describe_methods()
    assert "gspo" in text and "clip_eps_low=0.0003" in text and "needs_critic=True" in text


def test_reinforce_pp_with_equal_rewards_matches_float64():
    """Equal rewards: only the small per-token KL penalties differ; the whitened returns must
    match a float64 computation of the paper's formula."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 40
    mask = torch.ones(B, T)
    mask[1, 30:] = 0
    mask[4, 12:] = 0
    penalty64 = 1e-4 * torch.rand(B, T, generator=g, dtype=torch.float64) * mask.double()
    got = get_advantage("reinforce_pp")(torch.ones(B), mask, torch.arange(B), token_penalty=penalty64.float())
    # float64 reference: r_t = 1[t = last] - penalty_t, return-to-go, whitening over valid tokens
    rewards64 = -penalty64.clone()
    last = mask.sum(1).long() - 1
    rewards64[torch.arange(B), last] += 1.0
    returns = torch.flip(torch.cumsum(torch.flip(rewards64, [1]), 1), [1]) * mask.double()
    valid = mask.bool()
    mean, std = returns[valid].mean(), returns[valid].std()
    expected = (returns - mean) / (std + 1e-8) * mask.double()
    assert torch.allclose(got.double(), expected, atol=1e-5, rtol=0)


def test_kimi_length_groups_by_the_batch_group_not_the_problem():
    """A step that crosses an epoch boundary can hold the same problem twice: its two groups stay apart."""
    from r1lab.records import Problem, Verdict
    from r1lab.reward_shaping import kimi_length

    p = Problem(id="p", prompt="q", answer="1")
    C = namedtuple("C", "response_ids model_tokens")  # model_tokens: what the length terms count
    lengths = [10, 20, 100, 200]  # group 0: lengths 10, 20; group 1: 100, 200
    comps = [C([0] * n, n) for n in lengths]
    verdicts = [Verdict("correct")] * 4
    got = kimi_length([p] * 4, [""] * 4, verdicts, comps, group_size=2)
    assert got == [0.5, -0.5, 0.5, -0.5]  # each group from its own min and max
    merged = kimi_length([p] * 4, [""] * 4, verdicts, comps)  # no group size: one problem id, one group
    assert merged[0] == pytest.approx(0.5) and merged[3] == pytest.approx(-0.5)


def test_settings_named_in_advice_and_docs_exist():
    """Every `section.key=value` that the health advice, the README or a recipe comment tells a user
    to set is a real config key (a renamed setting must not leave stale advice behind)."""
    import re

    texts = [p.read_text() for p in (ROOT / "src" / "r1lab").rglob("*.py")] + [(ROOT / "README.md").read_text()]
    pattern = re.compile(r"\b((?:algo|train|sampling|rollout|reward|eval|data|model|health|sft)\.[a-z_]+(?:\.[a-z_]+)*)=")
    named = sorted({m for t in texts for m in pattern.findall(t)})
    assert len(named) > 20
    unknown = []
    for key in named:
        try:
            load_config(None, [f"{key}=0"])
        except ConfigError as e:
            if "unknown config key" in str(e) or "is now" in str(e):
                unknown.append(f"{key}: {e}")
    assert not unknown, "\n".join(unknown)

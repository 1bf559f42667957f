"""RL on environments: with env.name other than one_turn every rollout is a multi-turn episode, the
step logs env/* and keeps whole transcripts, only the model's tokens carry loss, and the length
rewards count the model's tokens. The advantage over an observation span is checked in float64."""

import copy
import json

import pytest
import torch

import helpers_episodes  # noqa: F401  (registers the "chatter" environment)
from r1lab.algos.advantages import gae
from r1lab.config import RunConfig
from r1lab.records import Completion, Problem, Verdict
from r1lab.reward_shaping import cosine_length, kimi_length, repetition, soft_overlong
from r1lab.rollout import FastEngine
from r1lab.runs import MetricsWriter
from r1lab.train.batch import rollout_batch
from r1lab.train.episodes import EpisodeRollout, response_budget
from r1lab.train.rl import RLTrainer, train_rl

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute 6 * 7."]


def problems(k=4):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer=str(i)) for i in range(k)]


def chatter_cfg(steps=2, **cluster) -> RunConfig:
    cfg = RunConfig()
    cfg.rollout.engine, cfg.rollout.dtype = "fast", "float32"
    cfg.env.name, cfg.env.max_turns, cfg.env.max_tokens = "chatter", 3, 64
    cfg.sampling.max_new_tokens = 12
    cfg.train.steps, cfg.train.prompts_per_step, cfg.train.group_size = steps, 2, 4
    cfg.train.lr = 1e-2
    cfg.reward.verify_workers = 1
    # the random model is never right: the cosine length term (on model tokens) and the
    # environment's own term weighted in give the groups distinct rewards
    cfg.reward.terms = {"accuracy": 1.0, "cosine_length": 1.0, "chatter_turns": 0.1}
    for k, v in cluster.items():
        setattr(cfg.cluster, k, v)
    if cfg.cluster.off_policy_steps:  # what check_run_config would set for a direct train_rl call
        cfg.algo.correction = "tis"
    return cfg


def test_an_rl_run_on_an_environment_logs_env_metrics_terms_and_transcripts(lively, tmp_path):
    model, tok = copy.deepcopy(lively[0]), lively[1]
    cfg = chatter_cfg()
    with MetricsWriter(tmp_path / "metrics.jsonl") as mw, MetricsWriter(tmp_path / "samples.jsonl") as sw:
        history = train_rl(cfg, model, tok, FastEngine(model, tok, dtype="float32"), problems(4), metrics=mw,
                           samples=sw, show_progress=False)
    for h in history:
        assert 1 < h["env/turns"] <= 3 and h["env/tool_calls"] == pytest.approx(h["env/turns"] - 1, abs=1.0)
        assert h["env/env_tokens_per_turn"] > 0 and h["env/model_tokens_per_turn"] > 0 and h["env/env_seconds"] >= 0
        assert sum(v for k, v in h.items() if k.startswith("env/finish/")) == pytest.approx(1.0)
        assert "reward/chatter_turns" in h and "reward/cosine_length" in h  # each term apart
        assert 0 <= h["env/tool_errors"] <= h["env/tool_calls"]
    assert any(h.get("env/finish/max_turns", 0) > 0 for h in history)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    long = next(s for s in samples if len(s["transcript"]) >= 3)
    assert [t["who"] for t in long["transcript"][:3]] == ["model", "env", "model"]
    assert long["transcript"][1]["text"] == "<output>ok</output>"
    assert "".join(t["text"] for t in long["transcript"]) == long["text"]


def test_the_step_trains_only_on_the_models_tokens_and_counts_only_them(lively):
    model, tok = copy.deepcopy(lively[0]), lively[1]
    cfg = chatter_cfg()
    trainer = RLTrainer(cfg, model, tok, FastEngine(model, tok, dtype="float32"))
    episodes = EpisodeRollout(trainer.cfg, trainer.engine, trainer.params)
    cs = trainer.rollout(problems(2), seed=5, episodes=episodes)
    episodes.score([p for p in problems(2) for _ in range(4)], cs, cfg.reward.terms, workers=1)
    multi = [c for c in cs if c.loss_mask is not None]
    assert multi, "the random model should take several turns in some episodes"
    batch = trainer.make_batch(cs, torch.tensor([c.reward for c in cs]), torch.arange(2).repeat_interleave(4))
    for i, c in enumerate(cs):
        assert int(batch.response_mask[i].sum()) == c.model_tokens == sum(c.loss_mask or [1] * len(c.response_ids))
        # no advantage on an observation token
        # column t is about token t+1: response token j sits at column len(prompt) - 1 + j
        env_cols = [len(c.prompt_ids) - 1 + j for j, m in enumerate(c.loss_mask or []) if m == 0]
        assert float(batch.advantages[i, env_cols].abs().sum()) == 0.0
        assert float(batch.response_mask[i, env_cols].sum()) == 0.0
    # cosine_length read the model's tokens against the episode's model-token budget
    budget = response_budget(trainer.cfg, trainer.params.max_new_tokens)
    assert budget == min(64, 3 * 12) == batch.max_new_tokens
    c = multi[0]
    expected = cosine_length([None], [""], [c.verdict], [Completion("x", [], [0] * c.model_tokens, "", [], c.finish_reason)],
                             max_new_tokens=budget)[0]
    assert c.rewards["cosine_length"] == pytest.approx(expected)
    trainer.close()


def test_episodes_work_with_off_policy_steps(lively):
    model, tok = copy.deepcopy(lively[0]), lively[1]
    history = train_rl(chatter_cfg(steps=3, off_policy_steps=1), model, tok, FastEngine(model, tok, dtype="float32"),
                       problems(4), show_progress=False)
    assert [h["staleness"] for h in history] == [0, 1, 1]
    assert all(h["env/turns"] > 1 and "policy/tis_weight" in h for h in history)


def _episode(model_ids: list[int], env_ids: list[int], mask: list[int], finish="stop") -> Completion:
    ids = [i for i in model_ids + env_ids]
    return Completion("e", [1, 2], ids, "", [0.0] * len(ids), finish, loss_mask=mask)


def test_length_rewards_count_the_models_tokens_not_the_observations():
    right = Verdict("correct")
    # 4 model tokens, then a 20-token observation, then 2 model tokens: length 6, not 26
    ep = Completion("e", [1], list(range(26)), "", [0.0] * 26, "stop", loss_mask=[1] * 4 + [0] * 20 + [1] * 2)
    plain6 = Completion("p", [1], list(range(6)), "", [0.0] * 6, "stop")
    kw = {"max_new_tokens": 8}
    assert soft_overlong([None], [""], [right], [ep], **kw) == soft_overlong([None], [""], [right], [plain6], **kw) == [0.0]
    assert cosine_length([None], [""], [right], [ep], **kw) == cosine_length([None], [""], [right], [plain6], **kw)
    # Kimi: within a group, the episode is the shorter (6 model tokens against 10)
    ten = Completion("q", [1], list(range(10)), "", [0.0] * 10, "stop")
    assert kimi_length([None, None], ["", ""], [right, right], [ep, ten], group_size=2) == pytest.approx([0.5, -0.5])
    # repetition: the observation repeats itself, the model's tokens do not
    obs = Completion("r", [1], [5, 6, 7] + [9, 9, 9, 9, 9, 9] + [8], "", [0.0] * 10, "stop",
                     loss_mask=[1, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    assert repetition([None], [""], [right], [obs], repetition_ngram=2, repetition_penalty=1.0) == [0.0]


def test_gae_over_an_observation_span_matches_a_float64_hand_computation():
    """Definition: the environment's tokens are not steps of the policy. GAE runs over the model's
    tokens alone, in order, as if the observation span were cut out: the last model token before
    an observation bootstraps from the value of the first model token after it (one gamma step,
    however long the observation), the values at observation positions are never read, and their
    advantages and returns are 0."""
    # row 0: model tokens at columns 0, 1, observation at 2, 3, 4, model at 5, 6; padding at 7
    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    values = torch.tensor([[0.5, -0.2, 9.0, -9.0, 7.0, 0.3, 0.8, 5.0],
                           [0.1, 0.2, 0.3, 0.4, 3.0, 3.0, 3.0, 3.0]])
    rewards = torch.zeros(2, 8)
    rewards[0, 6], rewards[1, 3] = 1.0, -1.0
    rewards[0, 3] = 4.0  # a reward placed on an observation token is never read either
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)

    def hand(vals: list[float], rs: list[float]) -> list[float]:
        out, nxt_v, nxt_a = [0.0] * len(vals), 0.0, 0.0
        for t in range(len(vals) - 1, -1, -1):
            delta = rs[t] + gamma * nxt_v - vals[t]
            out[t] = delta + gamma * lam * nxt_a
            nxt_v, nxt_a = vals[t], out[t]
        return out

    # row 0 with the observation cut out: values 0.5, -0.2, 0.3, 0.8 and reward 1 on the last
    a0 = hand([0.5, -0.2, 0.3, 0.8], [0.0, 0.0, 0.0, 1.0])
    a1 = hand([0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, -1.0])
    want0 = [a0[0], a0[1], 0.0, 0.0, 0.0, a0[2], a0[3], 0.0]
    want1 = a1 + [0.0] * 4
    assert adv.tolist()[0] == pytest.approx(want0, abs=1e-6)
    assert adv.tolist()[1] == pytest.approx(want1, abs=1e-6)
    # by hand, the step across the span: delta_1 = 0 + 0.9 * V(col 5) - V(col 1)
    d3 = 1.0 - 0.8
    d2 = 0.9 * 0.8 - 0.3
    d1 = 0.9 * 0.3 - (-0.2)
    assert adv[0, 1].item() == pytest.approx(d1 + gamma * lam * (d2 + gamma * lam * d3), abs=1e-6)
    want_ret0 = [a0[0] + 0.5, a0[1] - 0.2, 0, 0, 0, a0[2] + 0.3, a0[3] + 0.8, 0]
    assert ret.tolist()[0] == pytest.approx(want_ret0, abs=1e-6)
    # the observation's values cannot leak: changing them changes nothing
    values2 = values.clone()
    values2[0, 2:5] = torch.tensor([-100.0, 100.0, 3.0])
    adv2, ret2 = gae(rewards, values2, mask, gamma, lam)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_the_rollout_batch_of_an_episode_masks_the_observation_everywhere():
    """response_mask (advantages, KL, entropy, critic, shared prompt) and loss_mask hold exactly the
    model's tokens; the shared-prompt length is the prompt's, not the first observation's."""
    from r1lab.train.prefix import prompt_lengths

    c = Completion("e", [3, 4, 5], [10, 11, 20, 21, 22, 12], "", [-0.1, -0.2, 0, 0, 0, -0.3], "stop",
                   loss_mask=[1, 1, 0, 0, 0, 1])
    b = rollout_batch([c], pad_id=0, overlong_filter=False, temperature=1.0, max_new_tokens=8, plan=[])
    assert b.response_mask[0].tolist() == [0, 0, 1, 1, 0, 0, 0, 1]
    assert torch.equal(b.loss_mask, b.response_mask)
    assert prompt_lengths(b.attention_mask, b.response_mask).tolist() == [3]


@pytest.mark.slow
def test_a_multi_turn_run_killed_and_resumed_equals_the_uninterrupted_run(tmp_path):
    """SIGKILL after a checkpoint, resume from the run directory: every logged number of every
    step (env/* included) and the final weights equal the uninterrupted run's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from helpers_runs import run_and_kill_at

    root = Path(__file__).resolve().parents[1]
    # the CLI, with the test environment registered first
    boot = (f"import sys; sys.path.insert(0, {str(root / 'tests')!r}); import helpers_episodes; "
            "from r1lab.cli import main; sys.exit(main(sys.argv[1:]))")
    args = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
            "data.train_size=120", "data.sft_size=10", "data.eval_size=4", "reward.verify_workers=1",
            "reward.terms={accuracy: 1.0, cosine_length: 1.0, chatter_turns: 0.1}", "env.name=chatter",
            "env.max_turns=3", "env.max_tokens=64", "train.steps=6", "train.prompts_per_step=2", "train.group_size=4",
            "train.micro_batch_size=4", "train.mini_batches=2", "train.eval_every=0", "train.save_every=1",
            "sampling.max_new_tokens=12", "eval.at_start=false", "eval.n=1", "eval.ks=[1]", "train.lr=1e-3"]

    def rl(*extra):
        return [sys.executable, "-c", boot, "rl", str(root / "recipes" / "tiny" / "grpo.yaml"), f"out_dir={tmp_path}",
                "--quiet", *args, *extra]

    def rows(run):
        out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        # timings differ run to run: time/*, throughput/*, and the seconds spent in the environment
        return [{k: v for k, v in r.items() if not k.startswith(("time", "throughput/", "env/env_seconds"))} for r in out]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(rl("name=whole"), check=True, env=env, capture_output=True)
    state = tmp_path / "killed" / "checkpoints" / "state"
    run_and_kill_at(rl("name=killed"), env, state / "step-000003.pt")
    assert 3 <= len(rows(tmp_path / "killed")) < 6
    out = subprocess.run(rl(f"resume={tmp_path / 'killed'}"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    whole, resumed = rows(tmp_path / "whole"), rows(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert all(r["env/turns"] > 1 for r in whole)
    assert [{k: v for k, v in r.items() if w.get(k) != v} for r, w in zip(resumed, whole)] == [{}] * 6
    assert resumed == whole
    a = load_file(tmp_path / "whole" / "checkpoints" / "rl" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "rl" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_discounted_returns_cross_an_observation_span_with_one_gamma_in_float64():
    """REINFORCE++ / PRIME returns-to-go count the model's tokens only, as GAE does: gamma once
    across the observation, whatever its length; a reward inside the span is not read."""
    from r1lab.algos.advantages import discounted_returns

    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0]], dtype=torch.float64)
    r = torch.tensor([[0.5, 0.0, 7.0, 7.0, 7.0, 0.25, 1.0, 0.0]], dtype=torch.float64)
    g = 0.9
    want = [0.5 + g * 0.0 + g**2 * 0.25 + g**3 * 1.0, 0.0 + g * 0.25 + g**2 * 1.0, 0, 0, 0, 0.25 + g * 1.0, 1.0, 0]
    assert discounted_returns(r, mask, g).tolist()[0] == pytest.approx(want, abs=1e-15)
    # without holes the result is the plain return-to-go
    full = torch.ones(1, 4, dtype=torch.float64)
    assert discounted_returns(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), full, 0.5).tolist()[0] == \
        pytest.approx([1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0], abs=1e-15)


def test_the_tool_recipe_runs_rl_steps_on_calculator_episodes(tmp_path):
    """recipes/tiny/tool_calc.yaml, shrunk: its data, its environment and its checks hold; a few
    GRPO steps on episodes give finite losses and env/* metrics (the learning run is
    benchmarks/tool_use.py)."""
    import math
    from pathlib import Path

    from r1lab.config import load_config
    from r1lab.rollout import HFEngine
    from r1lab.stages import check_run_config, load_policy, prepare_data

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "tool_calc.yaml"
    cfg = check_run_config(load_config(recipe, [
        "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "data.train_size=100", "data.sft_size=20", "data.eval_size=4", "reward.verify_workers=1", "train.steps=2",
        "train.prompts_per_step=2", "train.group_size=4", "train.eval_every=0", f"out_dir={tmp_path}"]))
    assert cfg.env.name == "tools" and cfg.data.tasks == ["multiply"]
    data = prepare_data(cfg, None, log=lambda *_: None)
    tool_traces = [r for _, r in data.sft if "<calc>" in r]
    assert 0 < len(tool_traces) < len(data.sft)  # both habits in the SFT data, every trace verified
    model, tok = load_policy(cfg, data)
    history = train_rl(cfg, model, tok, HFEngine(model, tok), data.rl_prompts, show_progress=False)
    for h in history:
        assert all(math.isfinite(h[k]) for k in ("loss/total", "policy/entropy", "reward/total"))
        assert h["env/turns"] >= 1 and "env/tool_calls" in h

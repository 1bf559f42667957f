"""The sharded trainer group (train/distributed.py): two FSDP2 workers over gloo take the same
update as the single-process worker on the same batch, in float32, and drive a short GRPO run.

Bound: the two workers compute the same float32 numbers as one process except for the order of
additions (each rank's partial gradient summed by the reduce-scatter instead of accumulated in one
.grad; the gradient norm as a sum of shard sums). Such differences are a few ulps of the values
involved (float32 eps = 1.2e-7, weights and stats of order 1); after Adam, whose first step moves
every weight by about lr whatever the gradient's size, a few ulps of relative gradient change move
a weight by far less than lr * 1e-3. The tests allow 1e-5 absolute (weights and stats; about 20
ulps of the largest stat, the entropy near 5.7). Adam hides a wrong gradient scale from the weights
(its step is scale-free), not from the logged gradient norm: without the N x loss scaling the
reduce-scatter's average halves policy/grad_norm and the stats differ by ~0.9."""

import copy
import time

import pytest
import torch

from r1lab.config import LoRAConfig, RunConfig
from r1lab.errors import ConfigError, WorkerError
from r1lab.records import Problem
from r1lab.rollout import HFEngine
from r1lab.stages import check_run_config
from r1lab.train.distributed import PolicyWorkerGroup, share
from r1lab.train.lora import apply_lora, merged_weights
from r1lab.train.methods import bind_method
from r1lab.train.policy import LocalPolicyWorker
from r1lab.train.rl import RLTrainer, train_rl

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

BOUND = 1e-5
PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute ((1 + 2) * 3) - 4 + 12 * 5."]


def problems(k=4):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer="1") for i in range(k)]


def _cfg(algo=None, **train):
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 12
    cfg.train.group_size = 4
    cfg.train.shared_prefix = False  # the group runs whole rows; the local worker too, for the same kernels
    cfg.train.lr = 1e-2  # large steps: a wrong gradient scale or a missing share shows in the weights
    for k, v in train.items():
        setattr(cfg.train, k, v)
    for k, v in (algo or {}).items():
        setattr(cfg.algo, k, v)
    return cfg


def _batch(cfg, tiny):
    """A sampled batch with its old-policy / reference / value passes, made by a local trainer."""
    model, tok = tiny
    model = copy.deepcopy(model)
    trainer = RLTrainer(cfg, model, tok, HFEngine(model, tok))
    cs = trainer.rollout(problems(4), seed=0)
    rewards = torch.tensor([float(i % 3 == 0) for i in range(len(cs))])
    batch = trainer.make_batch(cs, rewards, torch.arange(4).repeat_interleave(4))
    # responses of 2 to 8 tokens (as if they had ended early): the random model runs every one to the
    # limit, and with equal lengths the aggregations token-mean and seq-mean-token-mean coincide
    for i in range(batch.size):
        drop = batch.response_mask[i].nonzero().flatten()[2 + i % 7:]
        batch.response_mask[i, drop] = batch.loss_mask[i, drop] = 0
        batch.attention_mask[i, drop + 1] = 0
    return batch


def _trained(model) -> dict:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _compare(cfg, tiny, passes: list[str], then=None) -> dict[str, float]:
    """Run the same passes and updates on a local worker and on a 2-worker group; the max abs
    differences of the passes, of the stats and of the updated weights (what the engine gets:
    adapters merged under train.lora). `then(local, group, batch, group_stats, group_weights)` runs before the group closes."""
    batch = _batch(cfg, tiny)
    method = bind_method(cfg.algo)
    start_model = copy.deepcopy(tiny[0])
    apply_lora(start_model, cfg.train.lora)  # adapters in place, as stages.run_rl does (none when r = 0)
    local_model, group_model = copy.deepcopy(start_model), copy.deepcopy(start_model)  # the same random A
    local = LocalPolicyWorker(cfg, local_model, method)
    group = PolicyWorkerGroup(cfg, group_model, method, workers=2)
    try:
        diffs = {}
        for name in passes:  # the forwards the controller asks for, before any update
            if name == "values":
                a, b = local.values(batch), group.values(batch)
            else:
                a, b = local.logprobs(batch, name), group.logprobs(batch, name)
            assert a.shape == b.shape and (name == "values" or bool((a != 0).any()))  # the value head starts at 0
            diffs[name] = float((a - b).abs().max())
        stats_l, stats_g = {}, {}
        if cfg.algo.critic:
            stats_l.update(local.update_critic(batch))
            stats_g.update(group.update_critic(batch))
        stats_l.update(local.update_policy(batch))
        stats_g.update(group.update_policy(batch))
        assert stats_l.keys() == stats_g.keys()
        diffs["stats"] = max(abs(stats_l[k] - stats_g[k]) for k in stats_l)
        assert group.version == local.version == cfg.train.mini_batches * cfg.train.ppo_epochs
        start = {n: p.detach() for n, p in tiny[0].named_parameters()}  # what engine_weights gives: parameters
        local_w = dict(local.engine_weights())
        group_w = dict(group.engine_weights())
        assert _max_diff(local_w, start) > 1e-3  # the update moved the weights
        diffs["weights"] = _max_diff(local_w, group_w)
        assert group_w.keys() == start.keys()  # plain names: the adapters merged in
        # the controller's copy is the gathered one
        assert _max_diff(dict(merged_weights(group_model)), group_w) == 0
        if cfg.train.lora.r:  # ... adapters and frozen base included
            diffs["adapters"] = _max_diff(_trained(local_model), _trained(group_model))
        if cfg.algo.critic:
            state = group.state_dict()
            diffs["critic"] = _max_diff(local.critic.state_dict(), state["critic"])
        print({k: f"{v:.2e}" for k, v in diffs.items()}, {k: round(v, 5) for k, v in stats_g.items()})
        if then is not None:
            then(local, group, batch, stats_g, group_w)
        return diffs
    finally:
        group.close()


@pytest.mark.slow
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_two_workers_give_the_single_process_grpo_update(tiny, loss_agg):
    # 8 rows per mini-batch in micro-batches of 3: 3 micro-batches, so worker 1 runs a padding one
    cfg = _cfg({"loss_agg": loss_agg, "kl_coef": 0.05}, mini_batches=2, micro_batch_size=3)
    diffs = _compare(cfg, tiny, ["policy", "reference"])
    assert max(diffs.values()) < BOUND, diffs


@pytest.mark.slow
def test_two_workers_give_the_single_process_ppo_update_with_a_critic(tiny):
    cfg = _cfg({"advantage": "gae", "critic": True, "loss_agg": "token-mean"}, mini_batches=2, micro_batch_size=2)
    diffs = _compare(cfg, tiny, ["policy", "values"])
    assert max(diffs.values()) < BOUND, diffs


@pytest.mark.slow
def test_grpo_run_with_two_trainer_workers(tiny):
    """A short GRPO run end to end: the HF engine in this process samples the controller's copy,
    which the group updates from the gathered weights after every step."""
    model, tok = tiny
    model = copy.deepcopy(model)
    cfg = _cfg(steps=3, mini_batches=2, micro_batch_size=4)
    cfg.cluster.trainer_workers = 2
    # the random model is never correct: a repeated-token penalty gives the groups distinct rewards
    cfg.reward.terms = {"accuracy": 1.0, "repetition": 1.0}
    cfg.reward.settings = {"repetition_ngram": 1, "repetition_penalty": 0.1}
    engine = HFEngine(model, tok)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    t = time.time()
    history = train_rl(cfg, model, tok, engine, problems(4), show_progress=False)
    print(f"3 steps with 2 trainer workers: {time.time() - t:.1f} s")
    assert len(history) == 3
    assert engine.policy_version == 3 * 2
    assert all(torch.isfinite(torch.tensor(h["loss/total"])) for h in history)
    assert any(h["policy/grad_norm"] > 0 for h in history)
    assert max(float((model.state_dict()[k] - start[k]).abs().max()) for k in start) > 1e-3


@pytest.mark.slow
def test_two_ray_actors_give_the_single_process_update(tiny):
    """The same workers launched as Ray actors (cluster.launcher: ray), the pipes replaced by actor
    calls: the same update as one process, within the same bound."""
    pytest.importorskip("ray")
    cfg = _cfg({"loss_agg": "token-mean", "kl_coef": 0.05}, mini_batches=2, micro_batch_size=3)
    cfg.cluster.launcher = "ray"
    diffs = _compare(cfg, tiny, ["policy", "reference"])
    assert max(diffs.values()) < BOUND, diffs


@pytest.mark.slow
def test_two_workers_train_lora_adapters_as_one_process_and_resume_from_their_shards(tiny, tmp_path):
    """train.lora under the group: adapters and frozen base weights are sharded like any weight;
    the update, the adapters and the merged weights the engine gets equal one process's within
    BOUND; the shards (adapters and their Adam state) saved, then read back after one more update,
    give that update again exactly."""
    cfg = _cfg({"loss_agg": "token-mean", "kl_coef": 0.05}, mini_batches=2, micro_batch_size=3)
    cfg.train.lora = LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])

    def resume(local, group, batch, *_):
        folder = tmp_path / "shards"
        scalars = group.save_shards(folder)
        stats = group.update_policy(batch)
        weights = {k: v.clone() for k, v in group.engine_weights()}
        group.load_state_dict({**scalars, "shards": str(folder)})
        assert group.update_policy(batch) == stats
        assert _max_diff(weights, dict(group.engine_weights())) == 0

    diffs = _compare(cfg, tiny, ["policy", "reference"], then=resume)
    assert max(diffs.values()) < BOUND, diffs


@pytest.mark.slow
def test_two_workers_in_bf16_give_the_single_process_update(tiny):
    """train.bf16 under the group: the same autocast over the gathered float32 weights. One
    optimizer step (six micro-batches, three per worker): the bf16 casts and matmuls of a
    micro-batch are the same on a worker as in one process, so the gradients differ only by the
    float32 summation order, as in the float32 tests: within BOUND. A second step is left out on
    purpose: weights one float32 ulp apart after the first step can round to bf16 values one bf16
    ulp (2**-8 relative) apart, and Adam turns that into weight differences of up to 7e-4 (measured,
    lr 1e-2), the precision of bf16 compute, not a fault of the group. (With torch.autocast's cast
    cache on, a worker's gradient was wrong: a two-worker step's gradient norm 9% off.)"""
    cfg = _cfg({"loss_agg": "token-mean", "kl_coef": 0.05}, mini_batches=1, micro_batch_size=3, bf16=True)
    diffs = _compare(cfg, tiny, ["policy", "reference"])
    assert max(diffs.values()) < BOUND, diffs


@pytest.mark.slow
def test_two_workers_with_shared_prompts_give_the_single_process_update_and_whole_rows(tiny):
    """train.shared_prefix under the group: each worker runs its rows' prompts once; against one
    process with shared prompts (the same prompt batches here: every worker's rows hold both
    prompts of a mini-batch) within BOUND, and against one process on whole rows: statistics
    (gradient norms included) within BOUND (the prompts' K/V come from a forward of another shape:
    float32 rounding), weights within 10 x BOUND (after two Adam steps, a few ulps of a near-zero
    gradient entry move its weight by more than they move the statistics; measured 1.1e-5)."""
    cfg = _cfg({"loss_agg": "token-mean", "kl_coef": 0.05}, mini_batches=2, micro_batch_size=3, shared_prefix=True)
    whole = {}

    def against_whole_rows(local, group, batch, group_stats, group_weights):
        rows = copy.deepcopy(cfg)
        rows.train.shared_prefix = False
        one = LocalPolicyWorker(rows, copy.deepcopy(tiny[0]), bind_method(rows.algo))
        stats = one.update_policy(batch)
        whole["stats"] = max(abs(stats[k] - group_stats[k]) for k in stats)
        whole["weights"] = _max_diff(dict(one.engine_weights()), group_weights)

    diffs = _compare(cfg, tiny, ["policy", "reference"], then=against_whole_rows)
    assert max(diffs.values()) < BOUND, diffs
    print("against whole rows", whole)
    assert whole["stats"] < BOUND and whole["weights"] < 10 * BOUND, whole


def test_share_splits_micro_batches_evenly_with_padding():
    micro = [torch.tensor([i]) for i in range(5)]
    assert [len(share(micro, r, 2)[0]) for r in range(2)] == [3, 2]
    assert [share(micro, r, 2)[1] for r in range(2)] == [0, 1]
    assert [int(m) for m in share(micro, 1, 2)[0]] == [1, 3]
    assert share(micro[:1], 1, 3) == ([], 1)


@pytest.mark.parametrize("field, value, message", [
    ("trainer_workers", -1, "cluster.trainer_workers=-1: expected an integer >= 0"),
    ("backend", "mpi", "cluster.backend='mpi': expected 'gloo' or 'nccl'"),
    ("timeout_s", 0.0, "cluster.timeout_s=0.0: expected a number > 0"),
    ("launcher", "slurm", "cluster.launcher='slurm': expected 'local' or 'ray'"),
])
def test_bad_cluster_settings_are_refused(field, value, message):
    cfg = RunConfig()
    setattr(cfg.cluster, field, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_run_config(cfg)


@pytest.mark.slow
def test_group_state_round_trips_into_a_fresh_group(tiny):
    """state_dict -> load_state_dict (what a resumed run does): a fresh group given the state of a
    trained one takes exactly the same next update (weights, Adam moments, scheduler, version)."""
    cfg = _cfg({"loss_agg": "token-mean"}, mini_batches=2, micro_batch_size=4)
    batch = _batch(cfg, tiny)
    method = bind_method(cfg.algo)
    a = PolicyWorkerGroup(cfg, copy.deepcopy(tiny[0]), method, workers=2)
    b = PolicyWorkerGroup(cfg, copy.deepcopy(tiny[0]), method, workers=2)
    try:
        a.update_policy(batch)
        state = a.state_dict()
        assert state["version"] == 2 and set(state["model"]) == set(tiny[0].state_dict())
        assert state["optimizer"]["state"]  # Adam's moments, full (unsharded)
        b.load_state_dict(state)
        assert b.version == 2
        stats_a, stats_b = a.update_policy(batch), b.update_policy(batch)
        assert stats_a == stats_b
        assert _max_diff(dict(a.engine_weights()), dict(b.engine_weights())) == 0
    finally:
        a.close()
        b.close()


@pytest.mark.slow  # the first group of a session starts the forkserver: 10-30 s on this host
def test_a_worker_failure_names_the_worker_and_the_call(tiny):
    cfg = _cfg()
    group = PolicyWorkerGroup(cfg, copy.deepcopy(tiny[0]), bind_method(cfg.algo), workers=2)
    with pytest.raises(ValueError, match="no reference model"):
        group.logprobs(None, "reference")  # refused in the controller: nothing sent
    # no critic in this run: the workers raise, the group stops with one line naming the first to answer
    with pytest.raises(WorkerError, match=r"^trainer worker [01] failed in 'update_critic': AttributeError: [^\n]*$"):
        group.update_critic(None)
    assert not any(p.is_alive() for p in group._workers.procs)


@pytest.mark.slow  # the first group of a session starts the forkserver: 10-30 s on this host
def test_a_worker_that_does_not_answer_in_time_is_named(tiny):
    cfg = _cfg()
    cfg.cluster.timeout_s = 1e-3
    # which comes first depends on the load: the group's wait running out, or the worker's own
    # connection to the group's store (it waits as long) timing out; either names the worker
    with pytest.raises(WorkerError, match=r"trainer worker \d (did not answer 'start-up .*' within cluster.timeout_s=0.001 s"
                                          r"|failed in 'start-up .*': .*timed out)"):
        PolicyWorkerGroup(cfg, copy.deepcopy(tiny[0]), bind_method(cfg.algo), workers=2)


@pytest.mark.slow
def test_a_run_resumed_through_the_group_ends_where_the_uninterrupted_run_ends(tiny, tmp_path):
    """train_rl's checkpoints with two trainer workers: 2 steps, then a resume to 3, against 3 steps
    in one go: the same last step's statistics and the same final weights, exactly."""
    from r1lab.train.checkpoint import load_latest

    def run(steps, path, resume=None):
        model = copy.deepcopy(tiny[0])
        cfg = _cfg(steps=steps, mini_batches=2, micro_batch_size=4, save_every=1)
        cfg.cluster.trainer_workers = 2
        cfg.reward.terms = {"accuracy": 1.0, "repetition": 1.0}
        cfg.reward.settings = {"repetition_ngram": 1, "repetition_penalty": 0.1}
        history = train_rl(cfg, model, tiny[1], HFEngine(model, tiny[1]), problems(4), show_progress=False,
                           run_path=path, resume=resume)
        return model, history

    whole, h_whole = run(3, tmp_path / "whole")
    run(2, tmp_path / "cut")
    resumed, h_resumed = run(3, tmp_path / "cut", resume=load_latest(tmp_path / "cut"))
    assert len(h_resumed) == 1 and h_resumed[0]["policy/grad_norm"] > 0
    keys = [k for k in h_whole[-1] if k.startswith(("loss/", "policy/", "reward/"))]
    assert {k: h_resumed[0][k] for k in keys} == {k: h_whole[-1][k] for k in keys}
    assert _max_diff(dict(whole.state_dict()), dict(resumed.state_dict())) == 0


@pytest.mark.slow
def test_the_cli_refuses_a_bad_cluster_setting_before_the_run_directory_exists(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "grpo.yaml"
    out = subprocess.run([sys.executable, "-m", "r1lab", "rl", str(recipe), f"out_dir={tmp_path}", "cluster.backend=mpi"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "cluster.backend='mpi': expected 'gloo' or 'nccl'" in out.stderr
    assert list(tmp_path.iterdir()) == []

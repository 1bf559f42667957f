"""A multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and three nodes, each
its own raylet with its own resources) running one whole `r1lab rl` job: the trainer group's two
actors on the node that offers `r1lab_trainer`, the rollout actor on the one that offers
`r1lab_rollout`, the reward actor on the one that offers `r1lab_reward` (cluster.*_resources), the
run joined through cluster.ray_address. Mid-run the rollout node is removed after a spare rollout
node joined: the lost actor is replaced there and the run finishes every step."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1lab.config import RunConfig
from r1lab.errors import ConfigError

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "grpo.yaml")
SMALL = ["--quiet", "model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.intermediate_size=64",
         "data.train_size=40", "data.eval_size=4", "data.difficulty=2", "train.prompts_per_step=2",
         "train.group_size=4", "train.eval_every=0", "train.samples_per_step=8", "sampling.max_new_tokens=16",
         "eval.n=1", "eval.ks=[1]", "reward.verify_workers=1", "train.shared_prefix=false"]


@pytest.mark.parametrize("overrides, message", [
    ({"rollout_resources": {"gpu_node": 1.0}}, "cluster.rollout_resources={'gpu_node': 1.0}: no rollout worker runs on Ray"),
    ({"trainer_workers": 2, "trainer_resources": {"big": 1.0}},
     "cluster.trainer_resources={'big': 1.0}: no trainer worker runs on Ray (needs cluster.launcher: ray"),
    ({"reward_workers": 1, "reward_resources": {"CPU": 2.0}}, "cluster.reward_resources: 'CPU' is Ray's own resource"),
])
def test_role_resources_without_that_role_on_ray_are_refused_in_one_line(overrides, message):
    pytest.importorskip("ray")
    from r1lab.cluster import check_cluster

    cfg = RunConfig()
    for k, v in overrides.items():
        setattr(cfg.cluster, k, v)
    with pytest.raises(ConfigError) as e:
        check_cluster(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_local_cluster_offers_the_custom_resources_the_roles_ask_for():
    from r1lab.cluster.runtime import custom_resources
    from r1lab.config import ClusterConfig

    c = ClusterConfig(launcher="ray", trainer_workers=2, rollout_workers=3, reward_workers=1,
                      trainer_resources={"big": 1.0}, rollout_resources={"fast": 0.5, "big": 0.25},
                      reward_resources={"cheap": 2.0})
    assert custom_resources(c) == {"big": 2.75, "fast": 1.5, "cheap": 2.0}
    assert custom_resources(ClusterConfig(trainer_workers=2, trainer_resources={"big": 1.0})) == {"big": 0.0}


@pytest.mark.slow
def test_one_rl_job_across_a_multi_node_cluster_survives_losing_its_rollout_node(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local cluster: this test's driver joins its own
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=2, resources={"r1lab_trainer": 2})
        rollout_node = nodes.add_node(num_cpus=1, resources={"r1lab_rollout": 1})
        nodes.add_node(num_cpus=1, resources={"r1lab_reward": 1})
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, log_to_driver=False, logging_level="ERROR")
        steps = 8
        run = subprocess.Popen(
            [sys.executable, "-m", "r1lab", "rl", RECIPE, f"out_dir={tmp_path}", "name=multi", *SMALL,
             f"train.steps={steps}", "cluster.launcher=ray", "cluster.trainer_workers=2", "cluster.rollout_workers=1",
             "cluster.reward_workers=1", f"cluster.ray_address={nodes.address}", "cluster.timeout_s=120",
             "cluster.trainer_resources={r1lab_trainer: 1}", "cluster.rollout_resources={r1lab_rollout: 1}",
             "cluster.reward_resources={r1lab_reward: 1}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        metrics = tmp_path / "multi" / "metrics.jsonl"
        used: dict[str, float] = {}
        deadline = time.time() + 240
        while time.time() < deadline and run.poll() is None and not (metrics.is_file() and metrics.read_text().strip()):
            free = ray.available_resources()
            for r in ("r1lab_trainer", "r1lab_rollout", "r1lab_reward"):
                used[r] = max(used.get(r, 0.0), ray.cluster_resources().get(r, 0.0) - free.get(r, 0.0))
            time.sleep(0.2)
        assert run.poll() is None, run.communicate()[1][-3000:]
        # every role placed where its resource is: each custom resource exists on one node only
        assert used == {"r1lab_trainer": 2.0, "r1lab_rollout": 1.0, "r1lab_reward": 1.0}
        # the controller paused while the node goes (SIGSTOP), so the loss lands mid-run however fast the steps are
        os.kill(run.pid, signal.SIGSTOP)
        lost_at = len(metrics.read_text().splitlines())
        nodes.add_node(num_cpus=1, resources={"r1lab_rollout": 1})  # the spare, then the loss
        nodes.wait_for_nodes()
        nodes.remove_node(rollout_node, allow_graceful=False)
        gone = time.time() + 60
        while time.time() < gone and any(n["NodeID"] == rollout_node.node_id and n["Alive"] for n in ray.nodes()):
            time.sleep(0.2)
        os.kill(run.pid, signal.SIGCONT)
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
        assert lost_at < steps, "the run ended before its rollout node was removed: nothing was tested"
        assert sum(r["cluster/rollout_retries"] for r in rows) >= 1
        assert "replacing rollout worker 0" in err
        assert (tmp_path / "multi" / "checkpoints" / "rl" / "model.safetensors").is_file()
    finally:
        ray.shutdown()
        nodes.shutdown()

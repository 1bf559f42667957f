"""The policy worker as a group of processes: the policy (and the reference and critic when the
method has them) sharded with torch FSDP2 over N workers, behind the `PolicyWorker` methods, so the
controller (train/rl.py) runs unchanged.

Each worker holds its FSDP2 shard of every model and its shard of the optimizer state. For each
mini-batch of the batch's update plan, worker r runs the micro-batches r, r + N, r + 2N, ...; each
micro-batch's loss is normalised by the counts of the WHOLE mini-batch (`aggregate`), so the
gradients of all workers sum to the single-process gradient. FSDP2's reduce-scatter averages over
the N workers (a divide factor of 1 needs a pre-multiplied sum, which gloo lacks), so each worker
backpropagates N times its loss: the average of N x the partial gradients is their sum. Every
collective needs every worker, so when a mini-batch's micro-batches do not divide evenly, the
workers with one fewer run a padding micro-batch whose loss is multiplied by 0 (no gradient, no
statistics). Forward passes (old policy, reference, values) are split the same way; each worker
returns its rows and the controller adds them up.

The controller keeps its own full copy of the policy (the one the HF / fast engines sample):
`engine_weights` gathers the full weights from the shards (FSDP2 full state dict, offloaded to the
CPU) and loads them into that copy before handing them to the engine.

Checkpoints: each worker saves and loads its own shards of the models and optimizers with
torch.distributed.checkpoint (`save_shards`, `load_state_dict` of a sharded state); train/checkpoint.py
puts them beside the controller's state.

The workers are a worker group of cluster/workers.py: processes of this machine (cluster.launcher
local) or Ray actors of the run's one Ray cluster (ray), driven by typed calls of the
ShardedPolicyWorker methods. The controller's wait for the workers' answers to a call is bounded by
cluster.timeout_s (one deadline for all of them), their collectives by the process group's timeout
(the same), and a worker that dies, fails or stays silent stops the group with a WorkerError naming
it and the call. A worker process between calls waits for the controller for as long as the
controller samples, and exits when the controller's end of its pipe closes.

train.shared_prefix: each worker runs the distinct prompts of its own rows of a mini-batch once and
its micro-batches (padding ones too) on top of their K/V; the prompts' gradient goes back through
that forward after its micro-batches, so the workers' gradients still sum to the whole rows'. Every
prompt forward and its backward are collectives of the whole group: the workers agree (one
all-reduce) to build one together or none. train.lora: the adapters are sharded like every other
weight of their decoder layer (FSDP2 shards frozen and trained parameters alike), so their Adam
state is split too; `engine_weights` merges them after the gather. train.bf16: the same autocast as
one process over the gathered float32 weights, without torch.autocast's cast cache (see
`autocast_cache`).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Concatenate, Iterator, ParamSpec, TypeVar

import torch

from r1lab.cluster.workers import ProcessWorkers, RayWorkers, WorkerFailed, WorkerGroup, WorkerLost, WorkerTimeout
from r1lab.config import RunConfig
from r1lab.errors import ConfigError, WorkerError
from r1lab.train.batch import RolloutBatch
from r1lab.train.common import note_weights_changed
from r1lab.train.methods import BoundMethod, bind_method
from r1lab.train.policy import LocalPolicyWorker

P = ParamSpec("P")
R = TypeVar("R")

def share(micro: list[torch.Tensor], rank: int, world: int) -> tuple[list[torch.Tensor], int]:
    """Worker `rank`'s micro-batches of one mini-batch (every world-th, from its rank) and how many
    padding micro-batches it runs so that every worker runs the same number."""
    mine = micro[rank::world]
    return mine, math.ceil(len(micro) / world) - len(mine)


def _shard(module: torch.nn.Module) -> None:
    """FSDP2 over `module`: each decoder layer its own unit (gathered only while it runs), the rest
    (embeddings, final norm, LM or value head) the root unit."""
    from torch.distributed.fsdp import fully_shard

    for m in list(module.modules()):
        if m is not module and type(m).__name__.endswith("DecoderLayer"):
            fully_shard(m)
    fully_shard(module)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


class ShardedPolicyWorker(LocalPolicyWorker):
    """One worker of the group, inside its own process: the local worker's passes and update loops
    over FSDP2-sharded models, on its share of each mini-batch (the hooks below)."""

    embedding_grad_in_place = False  # FSDP2's sharded parameters take their gradient from autograd
    # FSDP2 swaps each layer's parameters between shards and gathered tensors around every forward
    # and backward; with bf16 copies cached for the whole optimizer step, a worker's gradient was wrong
    # (a two-worker step's gradient norm 9% off one process's, measured): cast per forward instead
    autocast_cache = False

    def __init__(self, cfg: RunConfig, model, method: BoundMethod, rank: int, world: int):
        self.rank, self.world = rank, world
        super().__init__(cfg, model, method)  # the reference and critic copies are made from the full model

    def logprobs(self, batch: RolloutBatch, model: str = "policy") -> torch.Tensor:
        return super().logprobs(batch, model).cpu()  # the controller's device (from a GPU with nccl)

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        return super().values(batch).cpu()

    def _place_models(self) -> None:
        for m in (self.model, self.ref_model, self.critic):
            if m is not None:
                _shard(m)

    def _prefix_agreement(self) -> Callable[[bool], bool]:
        """Every worker's say, all-reduced: a prompt forward (and its backward) runs on every worker or on none."""
        import torch.distributed as dist

        def agree(mine: bool) -> bool:
            flag = torch.tensor(int(mine), device=self._comm_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            return bool(flag)

        return agree

    def _share(self, micro: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
        return share(micro, self.rank, self.world)

    def _prefix_backward(self, prefix) -> None:
        """The prompts' backward needs every layer's full weights: FSDP2 gathers a layer before its
        backward only when the layer's output gets a gradient, and the last layer's does not here
        (only the K/V inside it do). Gathered first, all of them; each is sharded again after its
        backward (or at the end of it), its gradient reduce-scattered as after any backward."""
        from torch.distributed.fsdp import FSDPModule

        for m in self.model.modules():
            if isinstance(m, FSDPModule):
                m.unshard()
        prefix.backward()

    def _backward(self, loss: torch.Tensor) -> None:
        (loss * self.world).backward()  # the reduce-scatter averages: N x the share sums to it

    def _clip_grads(self, model, max_norm: float) -> float:
        """The global gradient norm over all shards (and clipping to max_norm, as clip_grad_norm_ does)."""
        import torch.distributed as dist

        grads = [p.grad.to_local() for p in model.parameters() if p.grad is not None]
        sq = torch.stack([g.float().pow(2).sum() for g in grads]).sum() if grads else torch.zeros(())
        sq = sq.to(self._comm_device())
        dist.all_reduce(sq)
        total = sq.sqrt()
        if max_norm and max_norm > 0:
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef.to(g.device, g.dtype))
        return float(total)

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.cfg.cluster.backend == "nccl" else torch.device("cpu")

    def _sum_over_workers(self, sums: dict[str, float], tokens: float) -> tuple[dict[str, float], float]:
        """Every worker's sums added up (maxima for *_max, the global grad norms as they are)."""
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, (sums, tokens))
        merged: dict[str, float] = {}
        for part, _ in parts:
            for k, v in part.items():
                if k.endswith("_max"):
                    merged[k] = max(merged.get(k, v), v)
                elif k.endswith("grad_norm"):
                    merged[k] = v  # all_reduced already: the same on every worker
                else:
                    merged[k] = merged.get(k, 0.0) + v
        return merged, sum(t for _, t in parts)

    # -- weights and state ------------------------------------------------------------------------

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The policy's full state dict on worker 0 (CPU), {} on the others; every worker must call it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_full_options())

    def state_dict(self) -> dict[str, Any]:
        """Full (unsharded) model and optimizer states on worker 0, {} on the others."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.model, self.optimizer, options=_full_options())
        state = {"model": model, "optimizer": optim, **self._scalars()}
        if self.critic is not None:
            state["critic"], state["critic_optimizer"] = get_state_dict(self.critic, self.critic_optimizer,
                                                                        options=_full_options())
        return state if self.rank == 0 else {}

    def _scalars(self) -> dict[str, Any]:
        """The worker's state that is not a tensor shard: the same on every worker."""
        return {"scheduler": self.scheduler.state_dict(), "entropy_coef": self.entropy_coef,
                "last_entropy": self.last_entropy, "version": self.version}

    def _sharded_state(self) -> dict[str, Any]:
        """This worker's shards (DTensors) of the models and optimizers, as DCP saves and loads them."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        state = dict(zip(("model", "optimizer"), get_state_dict(self.model, self.optimizer)))
        if self.critic is not None:
            state.update(zip(("critic", "critic_optimizer"), get_state_dict(self.critic, self.critic_optimizer)))
        return state

    def save_shards(self, folder: str) -> dict[str, Any]:
        """Every worker writes its shards into `folder` (torch.distributed.checkpoint); worker 0
        returns the rest of the state, {} on the others."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(), checkpoint_id=folder)
        return {**self._scalars(), "trainer_workers": self.world} if self.rank == 0 else {}

    def load_shards(self, folder: str, scalars: dict[str, Any]) -> None:
        """Each worker reads its shards of the checkpoint in `folder` into its models and optimizers."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._sharded_state()  # the layout to fill (the optimizer's state initialised by it)
        dcp.load(state, checkpoint_id=folder)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        if self.critic is not None:
            set_state_dict(self.critic, self.critic_optimizer, model_state_dict=state["critic"],
                           optim_state_dict=state["critic_optimizer"])
        self._load_scalars(scalars)

    def _load_scalars(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.entropy_coef, self.last_entropy, self.version = state["entropy_coef"], state["last_entropy"], state["version"]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        # the tensors arrive in shared memory that every worker maps: copies, or the workers would
        # update the same replicated tensors (Adam's step counts) in place together
        state = copy.deepcopy(state)
        options = StateDictOptions(full_state_dict=True)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=options)
        self._load_scalars(state)
        if self.critic is not None:
            set_state_dict(self.critic, self.critic_optimizer, model_state_dict=state["critic"],
                           optim_state_dict=state["critic_optimizer"], options=options)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# -- the group ----------------------------------------------------------------------------------------


def _start_worker(rank: int, world: int, init_method: str, cfg: RunConfig, model_bytes: bytes, timeout_s: float,
                  cuda_index: int) -> ShardedPolicyWorker:
    """Worker `rank` of the group, in its process or actor: its own copy of the model, the process
    group joined, the models sharded."""
    import warnings

    import torch.distributed as dist

    model = torch.load(io.BytesIO(model_bytes), weights_only=False)
    # the value model returns a view ([B, L-1] squeezed from [B, L-1, 1]) that no code changes in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPValueModel\) returned a view tensor")
    if "OMP_NUM_THREADS" not in os.environ:  # the workers share the machine's cores
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    if cfg.cluster.backend == "nccl":
        torch.cuda.set_device(cuda_index)
        model = model.to(f"cuda:{cuda_index}")
    dist.init_process_group(cfg.cluster.backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    return ShardedPolicyWorker(cfg, model, bind_method(cfg.algo), rank, world)


def _model_bytes(model) -> bytes:
    """The model serialised: what a worker starts from. Passed as shared tensors, a model of more
    tensors than the forkserver passes file descriptors (256) could not start a worker process."""
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


class PolicyWorkerGroup:
    """The `PolicyWorker` methods over cfg.cluster.trainer_workers sharded workers: processes of
    this machine, or Ray actors (cluster.launcher). `model` is the controller's copy of the policy:
    the workers start from it, and `engine_weights` brings it up to date with the trained weights."""

    sharded = True  # a checkpoint is each worker's shards (save_shards) and the controller's state

    def __init__(self, cfg: RunConfig, model, method: BoundMethod, workers: int | None = None):
        self.cfg, self.model, self.method = cfg, model, method
        self.world = workers or cfg.cluster.trainer_workers
        if self.world < 1:
            raise ConfigError(f"cluster.trainer_workers={self.world}: a worker group needs at least one worker")
        self.timeout_s = cfg.cluster.timeout_s
        self.has_reference = method.needs_reference
        self.has_critic = bool(cfg.algo.critic)
        self.version = 0
        self.last_call: tuple = ("", 0.0)  # (call, slowest worker's seconds in it[, round-trip seconds])
        self._workers = self._launch(model)

    def _launch(self, model) -> WorkerGroup[ShardedPolicyWorker]:
        c = self.cfg.cluster
        what = "start-up (process group and FSDP2 sharding)"
        if c.launcher == "ray":
            import ray

            # this group's own size counts when it starts the local cluster (a caller may give `workers`)
            cluster = dataclasses.replace(c, trainer_workers=self.world)
            group: WorkerGroup[ShardedPolicyWorker] = RayWorkers(ShardedPolicyWorker, "trainer worker", self.world,
                                                                 cluster, gpus=1 if c.backend == "nccl" else 0,
                                                                 resources=c.trainer_resources)
            blob: Any = ray.put(_model_bytes(model))  # in the object store once for all the actors
            cuda = [0] * self.world  # Ray shows each actor only its own GPU
        else:
            group = ProcessWorkers(ShardedPolicyWorker, "trainer worker", self.world, self.timeout_s)
            blob, cuda = _model_bytes(model), list(range(self.world))
        self._workers = group
        self._stopping_on_error(what, lambda: self._start(group, blob, cuda))
        self.last_call = (what, max(group.last_seconds))
        return group

    def _start(self, group: WorkerGroup[ShardedPolicyWorker], blob: Any, cuda: list[int]) -> None:
        init_method = group.rendezvous()
        group.start([(rank, self.world, init_method, self.cfg, blob, self.timeout_s, cuda[rank])
                     for rank in range(self.world)], factory=_start_worker)

    def _stopping_on_error(self, what: str, run: Callable[[], Any], pending: list | None = None) -> Any:
        """run(); a worker that died, failed or stayed silent stops the whole group (every
        collective needs every worker), with one line naming it and `what` it was asked."""
        try:
            return run()
        except WorkerFailed as e:
            lost = self._workers.dead_other_than(e.rank, pending or [], f"'{what}'")
            message = self._lost_line(lost, what) if lost else f"trainer worker {e.rank} failed in '{what}': {e.cause}"
        except WorkerLost as e:
            message = self._lost_line(e, what)
        except WorkerTimeout as e:
            message = (f"trainer worker {e.rank} did not answer '{what}' within cluster.timeout_s={self.timeout_s:g} s "
                       f"({e.detail})")
        self._workers.close()
        raise WorkerError(message)

    @staticmethod
    def _lost_line(e: WorkerLost, what: str) -> str:
        pid = f" (pid {e.pid})" if e.pid is not None else ""
        return f"trainer worker {e.rank}{pid} died during '{what}' ({e.how})"

    def _call(self, method: Callable[Concatenate[ShardedPolicyWorker, P], R], *args: P.args) -> list[R]:
        """method(*args) on every worker; their results in rank order."""
        t = time.perf_counter()
        what = method.__name__
        pending: list = []

        def run():
            pending.extend(self._workers.broadcast(method, *args))
            return self._workers.results(pending, f"in '{what}'")

        results = self._stopping_on_error(what, run, pending)
        # the slowest worker's time inside the call, and the whole round trip seen from here
        self.last_call = (what, max(self._workers.last_seconds), time.perf_counter() - t)
        return results

    def close(self) -> None:
        self._workers.close()

    # -- PolicyWorker -------------------------------------------------------------------------------

    def logprobs(self, batch: RolloutBatch, model: str = "policy") -> torch.Tensor:
        if model not in ("policy", "reference") or (model == "reference" and not self.has_reference):
            raise ValueError(f"no {model} model in this run")
        # disjoint rows: the sum is exact
        return torch.stack(self._call(ShardedPolicyWorker.logprobs, batch, model)).sum(0)

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        return torch.stack(self._call(ShardedPolicyWorker.values, batch)).sum(0)

    def update_policy(self, batch: RolloutBatch) -> dict[str, float]:
        stats = self._call(ShardedPolicyWorker.update_policy, batch)[0]
        self.version += sum(len(epoch) for epoch in batch.plan)  # one optimizer step per mini-batch, as the workers
        return stats

    def update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        return self._call(ShardedPolicyWorker.update_critic, batch)[0]

    def engine_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The gathered full weights, loaded into the controller's copy (the model the HF and fast
        engines sample), then as LocalPolicyWorker gives them: adapters merged."""
        from r1lab.train.lora import merged_weights

        full = self._call(ShardedPolicyWorker.full_weights)[0]
        with torch.no_grad():
            self.model.load_state_dict(full)
        note_weights_changed(self.model)
        return merged_weights(self.model)

    def state_dict(self) -> dict[str, Any]:
        """The full states, gathered. Copied: tensors that come through a pipe share the worker's
        memory, and a replicated one (Adam's step count) is the worker's own live tensor."""
        return copy.deepcopy(self._call(ShardedPolicyWorker.state_dict)[0])

    def save_shards(self, folder: Path) -> dict[str, Any]:
        """Each worker writes its shards of the models and optimizers into `folder` (DCP); returns
        the rest of the policy state (scheduler, entropy coefficient, version, number of workers)."""
        return self._call(ShardedPolicyWorker.save_shards, str(Path(folder).resolve()))[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A full state (`state_dict`), or the state `save_shards` returned with "shards", the
        folder the shards are in: each worker reads its part of them, whatever number of workers
        wrote them (torch.distributed.checkpoint reshards)."""
        if "shards" not in state:
            self._call(ShardedPolicyWorker.load_state_dict, state)
        else:
            self._call(ShardedPolicyWorker.load_shards, state["shards"], {k: v for k, v in state.items() if k != "shards"})
        self.version = state["version"]


__all__ = ["PolicyWorkerGroup", "ShardedPolicyWorker", "share"]

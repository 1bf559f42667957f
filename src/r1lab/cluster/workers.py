"""Worker groups: `size` workers of one class, each in a process of this machine or in a Ray
actor, started once and driven by typed calls. Every role beside the controller is one: the
trainer's shards (train/distributed.py), the rollout actors (rollout_group.py), the reward actors
(reward_group.py).

A call names a method of the worker's class, not a string: `group.submit(k, RolloutWorker.generate,
...)` runs it on worker k, `group.broadcast(ShardedPolicyWorker.update_policy, batch)` on every
worker with the same arguments (shipped once). `results` gathers the answers within one deadline,
cluster.timeout_s, and raises one of three errors naming the worker and the call: WorkerTimeout (no
answer in time), WorkerLost (its process or actor is gone), WorkerFailed (the method raised; the
traceback is on the worker's stderr). `restart(k)` puts a fresh worker k in place, built with the
arguments it was first built with.

On Ray every group starts or joins the one Ray cluster of the run through `ensure_ray`."""

from __future__ import annotations

import dataclasses
import logging
import socket
import sys
import time
import traceback
import weakref
from typing import Any, Callable, Concatenate, Generic, ParamSpec, Sequence, TypeVar

from r1lab.cluster.runtime import ensure_ray
from r1lab.config import ClusterConfig
from r1lab.errors import WorkerError, one_line

log = logging.getLogger("r1lab.cluster")

W = TypeVar("W")
P = ParamSpec("P")
R = TypeVar("R")


class WorkerTimeout(WorkerError, TimeoutError):
    """A worker gave no answer within cluster.timeout_s; `detail` says what may be why."""

    def __init__(self, message: str, rank: int, detail: str):
        super().__init__(message)
        self.rank, self.detail = rank, detail


class WorkerLost(WorkerError):
    """A worker's process or actor is gone: `how` (exit code, signal, Ray's error), `pid` if known."""

    def __init__(self, message: str, rank: int, how: str, pid: int | None = None):
        super().__init__(message)
        self.rank, self.how, self.pid = rank, how, pid


class WorkerFailed(WorkerError):
    """A worker's method raised; `cause` is its one-line error."""

    def __init__(self, message: str, rank: int, cause: str):
        super().__init__(message)
        self.rank, self.cause = rank, cause


@dataclasses.dataclass(frozen=True)
class Pending(Generic[R]):
    """A submitted call: the worker that runs it, the handle of its answer, when it was sent."""

    rank: int
    handle: Any
    since: float = dataclasses.field(default_factory=time.monotonic)


def _run(role: str, rank: int, what: str, fn: Callable[[], Any]) -> tuple:
    """fn() as a worker answers it: ("ok", result, seconds), or ("error", one line, 0.0) with the
    traceback printed on the worker's stderr (the run's stderr for processes, Ray's log for actors)."""
    try:
        t = time.perf_counter()
        result = fn()
        return "ok", result, time.perf_counter() - t
    except BaseException as e:
        print(f"r1lab {role} {rank} in {what!r}:\n{traceback.format_exc()}", file=sys.stderr)
        return "error", one_line(e), 0.0


def _method_name(worker_class: type, method: Callable) -> str:
    name = getattr(method, "__name__", "")
    if getattr(worker_class, name, None) is not method:
        raise TypeError(f"{method!r} is not a method of {worker_class.__name__}")
    return name


class WorkerGroup(Generic[W]):
    """What both launchers offer (see the module's docstring). `role` names the workers in errors
    ("trainer worker" -> "trainer worker 1 ..."); `factory(*args[k])` builds worker k (default: the
    class itself)."""

    role: str
    size: int
    timeout_s: float
    last_seconds: list[float]  # each worker's seconds inside its last answered call

    def __init__(self, worker_class: type[W], role: str, size: int, timeout_s: float):
        self.worker_class, self.role, self.size, self.timeout_s = worker_class, role, size, timeout_s
        self.last_seconds = [0.0] * size
        self._factory: Callable[..., W] = worker_class
        self._args: list[tuple] = []

    def start(self, args: Sequence[tuple], factory: Callable[..., W] | None = None) -> None:
        """Build every worker, worker k as factory(*args[k]), and wait until all are built."""
        raise NotImplementedError

    def rendezvous(self) -> str:
        """A free tcp://address:port on worker 0's machine, for a process group's rendezvous."""
        raise NotImplementedError

    def submit(self, rank: int, method: Callable[Concatenate[W, P], R], *args: P.args, **kwargs: P.kwargs) -> Pending[R]:
        raise NotImplementedError

    def broadcast(self, method: Callable[Concatenate[W, P], R], *args: P.args, **kwargs: P.kwargs) -> list[Pending[R]]:
        raise NotImplementedError

    def results(self, pending: Sequence[Pending[R]], what: str) -> list[R]:
        """The answers of `pending`, in order, all within timeout_s of the first one's sending (once
        that has passed, the first worker still silent is named, whatever came in meanwhile); the
        first failure is raised as soon as it arrives (the others may wait for the failed worker in
        a collective). `what` (the call, as an error names it) follows the worker's name:
        "rollout worker 0 {what}: ..."."""
        raise NotImplementedError

    def result(self, pending: Pending[R], what: str) -> R:
        return self.results([pending], what)[0]

    def results_retrying(self, pending: Sequence[Pending[R]], what: Callable[[int], str],
                         resubmit: Callable[[int], Pending[R]], max_retries: int,
                         replaced: Callable[[int], None] = lambda rank: None) -> list[R]:
        """The results of `pending` (call i described by what(i)); when the worker of call i is lost
        or silent, a fresh one takes its place, `replaced(rank)` brings it up to date and
        `resubmit(i)` runs the call again on it, at most max_retries times per call. A failure of
        the call itself is raised at once."""
        pending = list(pending)
        out: list[R] = []
        for i in range(len(pending)):
            tries = 0
            while True:
                try:
                    out.append(self.result(pending[i], what(i)))
                    break
                except (WorkerLost, WorkerTimeout) as e:
                    if tries >= max_retries:
                        raise
                    tries += 1
                    log.warning("cluster: replacing %s; retry %d of cluster.max_retries=%d", e, tries, max_retries)
                    self.restart(pending[i].rank)
                    replaced(pending[i].rank)
                    pending[i] = resubmit(i)
                    # the calls still to wait for get their time again: the replacement took some of it
                    now = time.monotonic()
                    pending[i + 1:] = [dataclasses.replace(p, since=now) for p in pending[i + 1:]]
        return out

    def dead_other_than(self, rank: int, pending: Sequence[Pending], what: str) -> WorkerLost | None:
        """When worker `rank` failed in a call of the whole group, the death of another is the
        likelier cause (a collective lost its peer): that death, if one shows within a second."""
        raise NotImplementedError

    def restart(self, rank: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _timeout(self, rank: int, what: str, detail: str) -> WorkerTimeout:
        return WorkerTimeout(f"{self.role} {rank} {what}: no answer within cluster.timeout_s={self.timeout_s:g} s "
                             f"({detail})", rank, detail)

    def _lost(self, rank: int, what: str, how: str, pid: int | None = None) -> WorkerLost:
        where = f" (pid {pid})" if pid is not None else ""
        return WorkerLost(f"{self.role} {rank}{where} {what}: gone ({how})", rank, how, pid)

    def _answer(self, rank: int, answer: tuple, what: str) -> Any:
        status, value, seconds = answer
        if status == "error":
            raise WorkerFailed(f"{self.role} {rank} {what}: {value}", rank, value)
        self.last_seconds[rank] = seconds
        return value


# -- processes of this machine ------------------------------------------------------------------------


def _serve(role: str, rank: int, conn, factory: Callable, args: tuple) -> None:
    """A worker process: builds its worker, then answers calls in order until the controller says
    close or its end of the pipe closes."""
    status, value, seconds = _run(role, rank, "start-up", lambda: factory(*args))
    worker = value if status == "ok" else None
    conn.send((status, None if status == "ok" else value, seconds))  # the worker stays here
    while worker is not None:
        try:
            message = conn.recv()  # between calls: until the controller asks, or exits (EOF)
        except (EOFError, OSError):
            break
        if message is None:
            break
        name, call_args, kwargs = message
        try:
            conn.send(_run(role, rank, name, lambda: getattr(worker, name)(*call_args, **kwargs)))
        except OSError:
            break
    if hasattr(worker, "close"):
        worker.close()


def _context(module: str):
    """Workers fork from a forkserver that imported the worker's module (torch, transformers,
    r1lab) once: a group after the first starts without importing them again. The server never
    runs torch itself, so forking it is safe (no threads, no CUDA context). torch's context: a
    tensor in an answer travels as shared memory."""
    import multiprocessing

    import torch.multiprocessing

    ctx = torch.multiprocessing.get_context("forkserver")
    multiprocessing.set_forkserver_preload([module])
    return ctx


def _stop(procs, conns) -> None:
    for c in conns:
        try:
            c.send(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


class ProcessWorkers(WorkerGroup[W]):
    """The workers as processes of this machine (cluster.launcher local), driven over pipes. A
    worker answers its calls in order; answers read out of order wait in `_early`."""

    def __init__(self, worker_class: type[W], role: str, size: int, timeout_s: float):
        super().__init__(worker_class, role, size, timeout_s)
        self.procs: list = [None] * size
        self.conns: list = [None] * size
        self._sent = [0] * size  # calls sent to each worker (its start-up is call 0)
        self._read = [0] * size  # answers read from each
        self._early: dict[tuple[int, int], tuple] = {}
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns)

    def rendezvous(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{s.getsockname()[1]}"

    def start(self, args: Sequence[tuple], factory: Callable[..., W] | None = None) -> None:
        self._factory, self._args = factory or self.worker_class, list(args)
        pending = [self._spawn(k) for k in range(self.size)]
        self.results(pending, "start-up")

    def _spawn(self, rank: int) -> Pending:
        ctx = _context(self._factory.__module__)
        parent, child = ctx.Pipe()
        name = f"r1lab-{self.role.split()[0]}-{rank}"
        p = ctx.Process(target=_serve, args=(self.role, rank, child, self._factory, self._args[rank]), daemon=True,
                        name=name)
        p.start()
        self.procs[rank], self.conns[rank] = p, parent
        self._sent[rank], self._read[rank] = 1, 0
        return Pending(rank, 0)

    def submit(self, rank: int, method: Callable[Concatenate[W, P], R], *args: P.args, **kwargs: P.kwargs) -> Pending[R]:
        name = _method_name(self.worker_class, method)
        try:
            self.conns[rank].send((name, args, kwargs))
        except OSError:  # its end of the pipe is closed: the worker is gone
            raise self._death(rank, f"in '{name}'") from None
        self._sent[rank] += 1
        return Pending(rank, self._sent[rank] - 1)

    def broadcast(self, method: Callable[Concatenate[W, P], R], *args: P.args, **kwargs: P.kwargs) -> list[Pending[R]]:
        return [self.submit(k, method, *args, **kwargs) for k in range(self.size)]

    def results(self, pending: Sequence[Pending[R]], what: str) -> list[R]:
        from multiprocessing.connection import wait

        deadline = min((p.since for p in pending), default=0.0) + self.timeout_s
        answers: dict[int, Any] = {}
        left = dict(enumerate(pending))
        while True:
            for i, p in list(left.items()):
                if (p.rank, p.handle) in self._early:
                    answers[i] = self._answer(p.rank, self._early.pop((p.rank, p.handle)), what)
                    del left[i]
            if not left:
                return [answers[i] for i in range(len(pending))]
            ranks = sorted({p.rank for p in left.values()})
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(ranks[0], what, f"alive: {self.procs[ranks[0]].is_alive()}")
            wait([self.conns[r] for r in ranks] + [self.procs[r].sentinel for r in ranks], timeout=remaining)
            for r in ranks:
                if self.conns[r].poll():
                    try:
                        self._early[(r, self._read[r])] = self.conns[r].recv()
                    except (EOFError, OSError):  # closed, or reset by a worker killed mid-message
                        raise self._death(r, what) from None
                    self._read[r] += 1
                elif not self.procs[r].is_alive():
                    raise self._death(r, what)

    def _death(self, rank: int, what: str) -> WorkerLost:
        proc = self.procs[rank]
        proc.join(timeout=5)
        code = proc.exitcode
        how = "still running" if code is None else f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return self._lost(rank, what, how, proc.pid)

    def dead_other_than(self, rank: int, pending: Sequence[Pending], what: str) -> WorkerLost | None:
        from multiprocessing.connection import wait

        wait([p.sentinel for r, p in enumerate(self.procs) if r != rank], timeout=1.0)
        # a worker whose start-up failed answers so and exits with 0: not a death
        dead = [r for r, p in enumerate(self.procs) if r != rank and not p.is_alive() and p.exitcode != 0]
        return self._death(dead[0], what) if dead else None

    def restart(self, rank: int) -> None:
        proc = self.procs[rank]
        proc.terminate()
        proc.join(timeout=5)
        self._early = {key: a for key, a in self._early.items() if key[0] != rank}
        self.result(self._spawn(rank), "start-up")

    def close(self) -> None:
        self._finalizer()


# -- Ray actors ---------------------------------------------------------------------------------------


class _RayHost:
    """The body of every Ray actor of a group: one worker and the calls on it."""

    def start(self, role: str, rank: int, factory: Callable, *args) -> tuple:
        self.role, self.rank = role, rank
        status, value, seconds = _run(role, rank, "start-up", lambda: factory(*args))
        self.worker = value if status == "ok" else None
        return status, None if status == "ok" else value, seconds  # the worker stays here

    def call(self, name: str, *args, **kwargs) -> tuple:
        return _run(self.role, self.rank, name, lambda: getattr(self.worker, name)(*args, **kwargs))

    def rendezvous(self) -> str:
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return f"tcp://{ip}:{s.getsockname()[1]}"

    def stop(self) -> None:
        if hasattr(getattr(self, "worker", None), "close"):
            self.worker.close()


def _kill(actors: list) -> None:
    import ray

    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # the actor or the Ray runtime is already gone
            pass


class RayWorkers(WorkerGroup[W]):
    """The workers as Ray actors of the run's one Ray cluster (ensure_ray: cluster.ray_address,
    or a local cluster sized for every Ray worker of the run), `cpus` and `gpus` each."""

    def __init__(self, worker_class: type[W], role: str, size: int, cluster: ClusterConfig, cpus: float = 1,
                 gpus: float = 0, resources: dict[str, float] | None = None):
        import ray

        super().__init__(worker_class, role, size, cluster.timeout_s)
        ensure_ray(cluster)
        self.cpus, self.gpus, self.resources = cpus, gpus, dict(resources or {})
        have = ray.cluster_resources().get("CPU", 0)
        if have < cpus * size:
            log.warning("cluster: %d %ss of %g CPU each ask more than the Ray cluster's %g CPUs: those left over "
                        "wait for a free CPU, up to cluster.timeout_s", size, role, cpus, have)
        # custom resources place the role on the nodes that offer them (cluster.*_resources)
        self._actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, resources=self.resources or None,
                                       max_restarts=0)(_RayHost)
        self.actors = [self._actor_class.remote() for _ in range(size)]
        self._finalizer = weakref.finalize(self, _kill, self.actors)

    def rendezvous(self) -> str:
        return self.results([Pending(0, self.actors[0].rendezvous.remote())], "asked for its address", raw=True)[0]

    def start(self, args: Sequence[tuple], factory: Callable[..., W] | None = None) -> None:
        self._factory, self._args = factory or self.worker_class, list(args)
        self.results([self._start(k) for k in range(self.size)], "start-up")

    def _start(self, rank: int) -> Pending:
        return Pending(rank, self.actors[rank].start.remote(self.role, rank, self._factory, *self._args[rank]))

    def submit(self, rank: int, method: Callable[Concatenate[W, P], R], *args: P.args, **kwargs: P.kwargs) -> Pending[R]:
        return Pending(rank, self.actors[rank].call.remote(_method_name(self.worker_class, method), *args, **kwargs))

    def broadcast(self, method: Callable[Concatenate[W, P], R], *args: P.args, **kwargs: P.kwargs) -> list[Pending[R]]:
        import ray

        # each argument in the object store once for all the actors (an ObjectRef argument reaches
        # the method as its value)
        refs = [a if isinstance(a, ray.ObjectRef) else ray.put(a) for a in args]
        return [self.submit(k, method, *refs, **kwargs) for k in range(self.size)]  # type: ignore[arg-type]

    def results(self, pending: Sequence[Pending[R]], what: str, raw: bool = False) -> list[R]:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline = min((p.since for p in pending), default=0.0) + self.timeout_s
        answers: dict[int, Any] = {}
        left = {p.handle: i for i, p in enumerate(pending)}
        while left:
            remaining = deadline - time.monotonic()
            ready = ray.wait(list(left), num_returns=1, timeout=remaining)[0] if remaining > 0 else []
            if not ready:
                rank = min(pending[i].rank for i in left.values())
                raise self._timeout(rank, what, f"a Ray actor; one that the cluster cannot place, lacking {self._asks()} "
                                                "free, never starts")
            for ref in ready:
                i = left.pop(ref)
                rank = pending[i].rank
                try:
                    answer = ray.get(ref)
                except (RayActorError, ActorUnavailableError) as e:
                    raise self._lost(rank, what, f"Ray actor: {type(e).__name__}") from None
                answers[i] = answer if raw else self._answer(rank, answer, what)
        return [answers[i] for i in range(len(pending))]

    def dead_other_than(self, rank: int, pending: Sequence[Pending], what: str) -> WorkerLost | None:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        others = {p.handle: p.rank for p in pending if p.rank != rank}
        ready, _ = ray.wait(list(others), num_returns=len(others), timeout=1.0)
        for ref in ready:
            try:
                ray.get(ref)
            except (RayActorError, ActorUnavailableError) as e:
                return self._lost(others[ref], what, f"Ray actor: {type(e).__name__}")
        return None

    def _asks(self) -> str:
        custom = "".join(f" and {v:g} {k}" for k, v in sorted(self.resources.items()))
        return f"{self.cpus:g} CPU" + (f" and {self.gpus:g} GPU" if self.gpus else "") + custom

    def restart(self, rank: int) -> None:
        _kill([self.actors[rank]])
        self.actors[rank] = self._actor_class.remote()
        self.result(self._start(rank), "start-up")

    def close(self) -> None:
        self._finalizer()


__all__ = ["Pending", "ProcessWorkers", "RayWorkers", "WorkerFailed", "WorkerGroup", "WorkerLost", "WorkerTimeout"]

"""Worker processes that run verifiers with a hard timeout per item.

Hangs are why (Math-Verify#65, open-r1#420): sympy can spin for minutes on a crafted expression,
and a thread cannot be stopped. So `verify_batch` runs verifiers in a small pool of worker
*processes*; an item that exceeds its deadline gets `Verdict("timeout")`, its worker is killed and
a fresh one started, and the batch goes on.

Workers are fresh interpreters (`python -c ...`), not forks: forking a trainer that holds torch
and tokenizer threads can deadlock the child, and multiprocessing's "spawn" would re-run the
user's `__main__` script. A fresh interpreter knows only what it imports, so a worker imports the
modules that registered the parent's verifiers (the registry records them) before looking a task
up. Verifiers must therefore live in importable modules, not `__main__`.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Sequence

from r1lab.records import Problem, Verdict
from r1lab.verify import registry
from r1lab.verify.registry import short

STARTUP_TIMEOUT_S = 120.0  # a worker that cannot import math-verify in this long is broken, not slow


# ---------------------------------------------------------------------------------------------
# worker side


def _exit_when_orphaned(parent_pid: int) -> None:
    """Watchdog thread: a worker whose trainer died (even by SIGKILL) must not linger, busy or not."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _worker_main(fd: int, parent_pid: int, modules: list[str]) -> None:
    """Entry point of a worker process: answer ("done", i, status, reason, extracted) per job until EOF."""
    conn = Connection(fd)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    from r1lab.verify import math as vmath

    vmath.INTERNAL_TIMEOUT_S = None  # our parent's kill is the timeout here; see verify/math.py
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once that its alarm is off
    import_errors: dict[str, str] = {}
    for name in modules:
        _import_into(name, import_errors)
    vmath.verify_math("<answer>\\frac{1}{2}</answer>", Problem("warmup", "", "0.5"))  # load sympy/antlr now
    try:
        conn.send(("ready",))
        while (job := conn.recv()) is not None:
            i, module, task, response, problem = job
            v = _verify_in_worker(module, task, response, problem, import_errors)
            extracted = None if v.extracted is None else str(v.extracted)
            conn.send(("done", i, v.status, str(v.reason), extracted))
    except (EOFError, OSError):  # the parent closed our socket or died: nothing left to do
        return


def _import_into(name: str, errors: dict[str, str]) -> None:
    if name in errors or name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except BaseException as e:
        errors[name] = f"{type(e).__name__}: {short(str(e))}"


def _verify_in_worker(module: str, task: str, response: str, problem: Problem, import_errors: dict[str, str]) -> Verdict:
    _import_into(module, import_errors)
    if module in import_errors:
        return Verdict("error", f"worker could not import {module!r} (which registers {task!r}): {import_errors[module]}")
    entry = registry.registered(task)
    if entry is None:
        return Verdict("error", f"importing {module!r} did not register a verifier for {task!r} in the worker")
    return entry.fn(response, problem)


# ---------------------------------------------------------------------------------------------
# parent side: the pool

_BOOT = "import sys; sys.path[:] = {path!r}; from r1lab.verify.pool import _worker_main; _worker_main({fd}, {ppid}, {modules!r})"


class _Worker:
    """One worker process and the parent's end of its socket; at most one job in flight."""

    def __init__(self) -> None:
        self.conn, child = Pipe(duplex=True)
        modules = registry.registering_modules()
        path = [os.path.abspath(p) for p in sys.path]
        boot = _BOOT.format(path=path, fd=child.fileno(), ppid=os.getpid(), modules=modules)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", boot], pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is the trainer's to handle, not ours
            )
        finally:
            child.close()
        self.ready = False
        self.start_deadline = time.monotonic() + STARTUP_TIMEOUT_S
        self.job: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def exit_code(self) -> int | None:
        try:
            return self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None


class _Pool:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.workers: list[_Worker] = []

    def resize(self, n: int) -> None:
        while len(self.workers) < n:
            self.workers.append(_Worker())
        while len(self.workers) > n:
            self.workers.pop().kill()

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker()

    def run(self, jobs: Sequence[tuple[str, str, str, Problem]], timeout: float) -> list[Verdict]:
        """Verdicts for (module, task, response, problem) jobs; each job gets `timeout` seconds of a worker."""
        try:
            return self._run(jobs, timeout)
        except BaseException:
            self.close()  # interrupted (Ctrl-C) mid-batch: busy workers would answer a later batch with stale results
            raise

    def _run(self, jobs: Sequence[tuple[str, str, str, Problem]], timeout: float) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(jobs)
        todo = deque(range(len(jobs)))
        while todo or any(w.job is not None for w in self.workers):
            now = time.monotonic()
            for w in list(self.workers):
                if w.ready and w.job is None and todo:
                    if w.proc.poll() is not None:  # died while idle (OOM killer, ...): not this job's fault
                        self._replace(w)
                        continue
                    i = todo.popleft()
                    try:
                        w.conn.send((i, *jobs[i]))
                    except (OSError, EOFError):  # the worker died while idle: retry the job elsewhere
                        todo.appendleft(i)
                        self._replace(w)
                        continue
                    except Exception as e:  # the job itself cannot be pickled
                        results[i] = Verdict("error", f"cannot send the job to a worker: {type(e).__name__}: {short(str(e))}")
                        continue
                    w.job, w.deadline = i, now + timeout
            waiting = [w for w in self.workers if w.job is not None or not w.ready]
            if not waiting:
                continue
            until = min(w.deadline if w.ready else w.start_deadline for w in waiting)
            readable = set(wait([w.conn for w in waiting], timeout=max(0.0, until - time.monotonic())))
            for w in waiting:
                if w.conn in readable:
                    self._receive(w, results)
            now = time.monotonic()
            for w in list(self.workers):
                if w.job is not None and now >= w.deadline:
                    results[w.job] = Verdict("timeout", f"verifier did not finish within {timeout:g}s; its worker was killed")
                    self._replace(w)
                elif not w.ready and now >= w.start_deadline:
                    self.close()
                    raise RuntimeError(f"a verifier worker did not start within {STARTUP_TIMEOUT_S:g}s")
        return [v if v is not None else Verdict("error", "no result") for v in results]

    def _receive(self, w: _Worker, results: list[Verdict | None]) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            code = w.exit_code()
            if not w.ready:
                self.close()
                raise RuntimeError(f"a verifier worker exited during start-up (exit code {code}); its error is on stderr above") from None
            if w.job is not None:
                results[w.job] = Verdict("error", f"the verifier worker died (exit code {code}) on this response")
            self._replace(w)
            return
        if msg[0] == "ready":
            w.ready = True
        elif msg[0] == "done" and msg[1] == w.job:
            _, i, status, reason, extracted = msg
            results[i] = Verdict(status, reason, extracted)
            w.job = None


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> _Pool:
    """The module's pool, started lazily and resized to `workers`; a forked child starts its own."""
    global _POOL
    if _POOL is not None and _POOL.pid != os.getpid():
        _POOL = None  # inherited through fork: those workers belong to the parent
    if _POOL is None:
        _POOL = _Pool()
    _POOL.resize(workers)
    return _POOL


def run_in_workers(jobs: Sequence[tuple[str, str, str, Problem]], timeout: float, workers: int) -> list[Verdict]:
    """Verdicts for (module, task, response, problem) jobs on the module's pool of `workers`
    processes, each job bounded by `timeout` seconds; one batch at a time per process."""
    with _POOL_LOCK:
        return _pool(workers).run(jobs, timeout)


def shutdown_workers() -> None:
    """Kill the pool's worker processes (a later verify_batch starts new ones). Runs at exit."""
    global _POOL
    locked = _POOL_LOCK.acquire(timeout=2.0)  # at exit a daemon thread may still hold it mid-batch
    try:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.close()
        _POOL = None
    finally:
        if locked:
            _POOL_LOCK.release()


atexit.register(shutdown_workers)

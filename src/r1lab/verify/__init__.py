"""Verifiers: one per task (`problem.task`), run in killable worker processes with a hard timeout.

A verifier is `fn(response_text, problem) -> Verdict`. The registry wraps every verifier so that an
exception becomes `Verdict("error", ...)`: bad model output must never crash a training step.

Hangs are a different matter (Math-Verify#65, open-r1#420; PITFALLS #3): sympy can spin for
minutes on a crafted expression, and a thread cannot be stopped. So `verify_batch` runs verifiers in
a small pool of worker *processes*; an item that exceeds its deadline gets `Verdict("timeout")`,
its worker is killed and a fresh one started, and the batch goes on.

Workers are fresh interpreters (`python -c ...`), not forks: forking a trainer that holds torch
and tokenizer threads can deadlock the child, and multiprocessing's "spawn" would re-run the
user's `__main__` script. A fresh interpreter knows only what it imports, so the registry records,
for each task, the module whose import registers its verifier; a worker imports that module
before looking the task up. Verifiers must therefore live in importable modules, not `__main__`.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Sequence

from r1lab.errors import R1labError
from r1lab.records import Problem, Verdict

Verifier = Callable[[str, Problem], Verdict]

STARTUP_TIMEOUT_S = 120.0  # a worker that cannot import math-verify in this long is broken, not slow


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: Verifier  # the guarded verifier: never raises
    module: str  # importing this module registers the verifier (workers do exactly that)
    answer_only: bool  # the verdict depends on (response, answer) alone, so it can be shared across problems
    reads: tuple[str, ...] = ()  # metadata keys an answer_only verdict also depends on (part of its cache key)


_REGISTRY: dict[str, _Entry] = {}


def register_verifier(
    task_name: str, *, answer_only: bool = False, reads: tuple[str, ...] = ()
) -> Callable[[Verifier], Verifier]:
    """Decorator: make `fn` the verifier for problems whose `task` is `task_name`.

    Records the module that calls this (so worker processes can import it) and returns `fn`
    unchanged. `answer_only=True` declares that the verdict depends on the response and the
    gold answer only; `verify_batch` then verifies a repeated (response, answer) once even across
    different problems, and caches it across calls. Leave it False when the verifier reads the
    prompt or metadata (countdown), unless what it reads is a few metadata keys: list them in
    `reads` and they become part of the sharing and caching key (math reads "choices").
    """
    caller = sys._getframe(1).f_globals.get("__name__", "")

    def decorator(fn: Verifier) -> Verifier:
        _REGISTRY[task_name] = _Entry(_guarded(fn, task_name), caller or fn.__module__, answer_only, tuple(reads))
        return fn

    return decorator


def get_verifier(task_name: str) -> Verifier:
    """The registered (exception-safe) verifier for `task_name`; R1labError listing known tasks if none."""
    return _entry(task_name).fn


def known_tasks() -> list[str]:
    return sorted(_REGISTRY)


def _entry(task_name: str) -> _Entry:
    if task_name not in _REGISTRY:
        # the built-in task families register their verifiers when imported; a caller that only
        # imported r1lab.verify should still find them
        try:
            importlib.import_module("r1lab.tasks")
        except ImportError:
            pass
    if task_name not in _REGISTRY:
        raise R1labError(f"no verifier registered for task {task_name!r}; known tasks: {', '.join(known_tasks()) or 'none'}")
    return _REGISTRY[task_name]


def _short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _guarded(fn: Verifier, task_name: str) -> Verifier:
    """`fn`, except that any exception or a non-Verdict result becomes Verdict("error")."""

    @functools.wraps(fn)
    def safe(response: str, problem: Problem) -> Verdict:
        try:
            verdict = fn(response, problem)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # math-verify's TimeoutException derives from BaseException
            try:
                message = _short(str(e))
            except BaseException:
                message = "(unprintable)"
            return Verdict("error", f"{task_name} verifier raised {type(e).__name__}: {message}")
        if not isinstance(verdict, Verdict):
            return Verdict("error", f"{task_name} verifier returned {type(verdict).__name__}, not a Verdict")
        return verdict

    return safe


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
        errors[name] = f"{type(e).__name__}: {_short(str(e))}"


def _verify_in_worker(module: str, task: str, response: str, problem: Problem, import_errors: dict[str, str]) -> Verdict:
    _import_into(module, import_errors)
    if module in import_errors:
        return Verdict("error", f"worker could not import {module!r} (which registers {task!r}): {import_errors[module]}")
    entry = _REGISTRY.get(task)
    if entry is None:
        return Verdict("error", f"importing {module!r} did not register a verifier for {task!r} in the worker")
    return entry.fn(response, problem)


# ---------------------------------------------------------------------------------------------
# parent side: the pool

_BOOT = "import sys; sys.path[:] = {path!r}; from r1lab.verify import _worker_main; _worker_main({fd}, {ppid}, {modules!r})"


class _Worker:
    """One worker process and the parent's end of its socket; at most one job in flight."""

    def __init__(self) -> None:
        self.conn, child = Pipe(duplex=True)
        modules = sorted({e.module for e in _REGISTRY.values()} - {"__main__"})
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
                        results[i] = Verdict("error", f"cannot send the job to a worker: {type(e).__name__}: {_short(str(e))}")
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


# ---------------------------------------------------------------------------------------------
# the verdict cache: repeated (response, answer) pairs across calls (groups resample the same answers)

CACHE_SIZE = 1 << 16  # entries; a bounded LRU in the calling process
CACHE_MAX_RESPONSE = 4096  # longer responses are rarely repeated verbatim and would bloat the cache
_CACHEABLE = ("correct", "wrong", "unparsable")  # never timeout or error: those may be load or transient
_CACHE: OrderedDict[tuple[Any, ...], Verdict] = OrderedDict()
_CACHE_LOCK = threading.Lock()
cache_stats = {"hits": 0, "misses": 0}


def clear_verdict_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
        cache_stats.update(hits=0, misses=0)


def _cache_get(key: tuple[Any, ...]) -> Verdict | None:
    with _CACHE_LOCK:
        v = _CACHE.get(key)
        if v is not None:
            _CACHE.move_to_end(key)
            cache_stats["hits"] += 1
        else:
            cache_stats["misses"] += 1
        return v


def _cache_put(key: tuple[Any, ...], v: Verdict) -> None:
    if v.status not in _CACHEABLE or len(key[1]) > CACHE_MAX_RESPONSE:
        return
    with _CACHE_LOCK:
        _CACHE[key] = v
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)


def _share_key(e: _Entry, task: str, response: str, p: Problem) -> tuple[Any, ...]:
    """Items with equal keys get one verification: (response, answer, read metadata) for answer_only
    verifiers, else also the problem object itself."""
    if not e.answer_only:
        return (task, response, p.answer, id(p))
    meta = p.metadata or {}
    extra = tuple(repr(meta.get(k)) for k in e.reads)
    return (task, response, p.answer, extra, e.fn)


# ---------------------------------------------------------------------------------------------
# entry points


def verify_batch(
    problems: Sequence[Problem], responses: Sequence[str], timeout: float = 5.0, workers: int = 2
) -> list[Verdict]:
    """One Verdict per (problem, response), in order. Never hangs and never raises on model output.

    `workers` > 0: in that many worker processes, each item bounded by `timeout` seconds
    (exceeded -> Verdict("timeout"), worker killed and replaced). `workers=0`: in this process,
    without a timeout (tests, debugging). Repeated pairs within the call are verified once, and
    verdicts of answer_only verifiers are remembered across calls (see CACHE_SIZE, clear_verdict_cache).
    Raises R1labError for a task with no verifier (a data error, found before any work).
    """
    problems, responses = list(problems), list(responses)
    if len(problems) != len(responses):
        raise ValueError(f"verify_batch: {len(problems)} problems but {len(responses)} responses")
    if workers > 0 and not timeout > 0:
        raise ValueError(f"verify_batch: timeout must be > 0 seconds, got {timeout}")
    entries = {task: _entry(task) for task in {p.task for p in problems}}
    if workers > 0:
        in_main = sorted(t for t, e in entries.items() if e.module == "__main__")
        if in_main:
            raise R1labError(f"the verifier for {', '.join(in_main)} is defined in __main__, which worker processes "
                             "cannot import; move it into a module or pass workers=0")

    jobs: list[tuple[str, str, str, Problem]] = []
    keys: list[tuple[Any, ...]] = []
    slot: list[int | Verdict] = []  # an index into jobs, or a cached verdict
    seen: dict[tuple[Any, ...], int] = {}
    for p, r in zip(problems, responses):
        r = r if isinstance(r, str) else ("" if r is None else str(r))
        e = entries[p.task]
        key = _share_key(e, p.task, r, p)
        cached = _cache_get(key) if e.answer_only else None
        if cached is not None:
            slot.append(cached)
            continue
        if key not in seen:
            seen[key] = len(jobs)
            jobs.append((e.module, p.task, r, p))
            keys.append(key)
        slot.append(seen[key])

    if not jobs:
        unique: list[Verdict] = []
    elif workers <= 0:
        unique = [entries[task].fn(r, p) for _, task, r, p in jobs]
    else:
        with _POOL_LOCK:
            unique = _pool(workers).run(jobs, timeout)
    for key, (_, task, _, _), v in zip(keys, jobs, unique):
        if entries[task].answer_only:
            _cache_put(key, v)
    # own copies: callers may annotate them
    return [dataclasses.replace(s if isinstance(s, Verdict) else unique[s]) for s in slot]


def check_gold(problems: Iterable[Problem], timeout: float = 5.0, workers: int = 2) -> list[tuple[Problem, Verdict]]:
    """The problems whose gold answer, stated as a response (`<answer>gold</answer>`), does NOT score correct.

    A pre-flight check for load time (PITFALLS #2): an unparseable gold answer would otherwise
    quietly give every sample the same reward. Meaningful for tasks whose gold answer is itself a
    valid response (math); countdown's gold is a target number, not an expression.
    """
    problems = list(problems)
    verdicts = verify_batch(problems, [f"<answer>{p.answer}</answer>" for p in problems], timeout=timeout, workers=workers)
    return [(p, v) for p, v in zip(problems, verdicts) if not v.correct]


from r1lab.verify import math as _math  # noqa: E402,F401  (registers "math")
from r1lab.verify import code as _code  # noqa: E402,F401  (registers "code")
from r1lab.verify import judge as _judge  # noqa: E402,F401  (registers "judge")

__all__ = [
    "Verifier", "check_gold", "clear_verdict_cache", "get_verifier", "known_tasks", "register_verifier",
    "shutdown_workers", "verify_batch",
]

"""Run untrusted Python (model output) in a separate, limited process and report what happened.

Layers, outermost first; each one stops something the others cannot:

1. A separate interpreter (`python -I -S -B`: no site-packages, no user site, PYTHON* variables
   ignored, no bytecode written) in its own session, with a clean environment (nothing of
   `os.environ` is passed on: API keys in the trainer's environment stay there) and a fresh
   temporary working directory that is deleted afterwards.
2. rlimits set by the harness before any untrusted line runs: CPU seconds, address space,
   file size, open files, processes, no core files. A wall-clock deadline in the parent kills
   the whole process group; output beyond a byte cap kills it too.
3. No network: the harness moves itself into a new network namespace (`unshare(CLONE_NEWNET)`,
   as root, or inside a new user namespace when unprivileged user namespaces are allowed). Only
   an unconnected loopback exists there; abstract Unix sockets are per namespace as well.
4. Another user: when running as root and an interpreter that every user may execute exists,
   the harness switches to a random unused uid/gid before running the code. That uid cannot
   signal the parent (so `os.kill(os.getppid(), 9)` fails), cannot write or delete files of the
   trainer, cannot read root's 0600 files, and RLIMIT_NPROC (per uid) bounds fork bombs. At the
   end every process of that uid is killed, which also catches children that left the group.
5. A Python audit hook (`sys.addaudithook`; it cannot be removed once installed) that refuses
   process creation, signals, sockets, ctypes, writes/deletes outside the working directory and
   the usual introspection entry points. It is not a security boundary by itself (CPython's own
   documentation says so), but it makes behaviour the same where layers 3-4 are unavailable.

How a pass is reported: the parent compares stdout itself (stdio tests), and the harness
reports completion on a separate pipe with a per-run random nonce that is never in the
environment, argv or the file system (read from an unlinked file whose descriptor is closed
before the untrusted code runs). `sys.exit(0)`, `os._exit(0)`, printing "PASSED", killing the
parent or monkeypatching builtins therefore cannot produce an "ok" result. What it cannot stop:
code in the same interpreter that digs the nonce out of the harness' memory (the audit hook
blocks `sys._getframe`, `gc.get_objects` and friends, but CPython offers other routes). Treat the
nonce as a strong guard against reward hacking, not as isolation; layers 1-4 are the isolation.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache

SANDBOX_STATUSES = ("ok", "runtime_error", "timeout", "memory", "output_limit", "killed")
STARTUP_GRACE_S = 0.5  # added to the wall-clock limit: interpreter start-up is not the program's time
STDERR_KEEP = 8192  # bytes of stderr kept in the result (the rest is read and dropped)
_UID_RANGE = (200_000, 300_000)  # a random uid from here per run; no real account lives there


@dataclass
class SandboxResult:
    """What happened to one run. Only `status == "ok"` means the program (and `after`) finished."""

    status: str  # one of SANDBOX_STATUSES
    stdout: str = ""
    stderr: str = ""  # the first STDERR_KEEP bytes
    exit_code: int | None = None  # negative: killed by that signal
    wall_time: float = 0.0
    reason: str = ""
    isolation: tuple[str, ...] = field(default_factory=tuple)  # the layers that were in place

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# The harness runs first in the child, as a script: `python ... sandbox_harness.py SETUP_FD RESULT_FD`.
HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_harness.py")


@lru_cache(maxsize=1)
def sandbox_interpreter() -> tuple[str, bool]:
    """(interpreter, can_drop_uid): ours when every user can run it and read its stdlib, else a
    system python3 that can; the uid switch is off when neither qualifies or we are not root."""
    if os.geteuid() != 0:
        return sys.executable, False
    ours = os.path.realpath(sys.executable)
    if _world_usable(ours) and _world_usable(sysconfig.get_paths()["stdlib"], directory=True):
        return ours, True
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        real = os.path.realpath(candidate)
        if os.path.exists(real) and _world_usable(real):
            return real, True
    return sys.executable, False


def _world_usable(path: str, directory: bool = False) -> bool:
    """Whether a user with no relation to the owner can reach `path` (every parent searchable)."""
    try:
        parts = path.split("/")
        for i in range(2, len(parts)):
            if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(path).st_mode
    except OSError:
        return False
    need = stat.S_IXOTH | (stat.S_IROTH if directory else 0)
    return mode & need == need


def _kill_uid(uid: int) -> None:
    """Kill every process of `uid` (a sandbox-only uid): also children that left the process group."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only makes syscalls and exits
        try:
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(100):
                os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def run_python(
    code: str,
    stdin: str = "",
    *,
    timeout: float = 5.0,
    memory_mb: int = 512,
    after: str | None = None,
    max_output: int = 1_000_000,
    max_file_mb: int = 16,
    max_open_files: int = 64,
    max_processes: int = 32,
    audit: bool = True,
    confine_reads: bool = False,
) -> SandboxResult:
    """Run `code` (then `after`, test code, in the same namespace) with `stdin`; never raises on bad code.

    `timeout` is wall-clock seconds for the program (plus STARTUP_GRACE_S for the interpreter);
    CPU time is limited to the same, rounded up. `max_output` caps stdout and stderr bytes each
    (beyond it the run is killed: "output_limit"). `audit=False` drops layer 5 (for testing the
    other layers). `confine_reads=True` also refuses reading files outside the working directory
    and the standard library (layer 5: /etc/passwd, the trainer's files; for tools, whose output the
    model reads). Status "ok" means the harness confirmed that everything ran to completion.
    """
    interpreter, drop_uid = sandbox_interpreter()
    uid = secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) + _UID_RANGE[0] if drop_uid else None
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="r1lab-sandbox-")
    start = time.monotonic()
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        cpu = max(1, int(timeout + 0.999))
        limits = {
            "RLIMIT_CPU": cpu, "RLIMIT_AS": memory_mb << 20, "RLIMIT_FSIZE": max_file_mb << 20,
            "RLIMIT_NOFILE": max_open_files, "RLIMIT_NPROC": max_processes, "RLIMIT_CORE": 0,
        }
        cfg = {"nonce": nonce, "rlimits": limits, "uid": uid, "cwd": workdir, "code": code, "after": after, "audit": audit,
               "stack_mb": min(256, memory_mb // 4), "confine_reads": confine_reads}
        return _run(interpreter, cfg, stdin, timeout + STARTUP_GRACE_S, max_output, uid, start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(interpreter: str, cfg: dict, stdin: str, deadline_s: float, max_output: int, uid: int | None, start: float) -> SandboxResult:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cfg["cwd"], "TMPDIR": cfg["cwd"]}
    result_r, result_w = os.pipe()
    # both files are unlinked; the setup file (it holds the nonce) is closed here as soon as the child has it
    with tempfile.TemporaryFile() as setup, tempfile.TemporaryFile() as stdin_file:
        setup.write(json.dumps(cfg).encode())
        setup.seek(0)
        stdin_file.write(stdin.encode("utf-8", "replace"))
        stdin_file.seek(0)
        try:
            proc = subprocess.Popen(
                [interpreter, "-I", "-S", "-B", "-X", "utf8", HARNESS, str(setup.fileno()), str(result_w)],
                stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cfg["cwd"], env=env,
                pass_fds=(setup.fileno(), result_w), start_new_session=True,
            )
        except OSError as e:
            os.close(result_r)
            return SandboxResult("killed", reason=f"could not start the sandbox: {e}")
        finally:
            os.close(result_w)
    return _collect(proc, result_r, cfg["nonce"].encode(), deadline_s, max_output, uid, start)


def _collect(proc: subprocess.Popen, result_r: int, nonce: bytes, deadline_s: float, max_output: int,
             uid: int | None, start: float) -> SandboxResult:
    """Read stdout, stderr and the report pipe until all close, the deadline passes or output overflows."""
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), result_r: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline = start + deadline_s
    cause = ""
    exited_at: float | None = None
    stderr_bytes = 0
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline:
            cause = "timeout"
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 0.2:  # a leftover child holds the pipes open
            break
        for key, _ in sel.select(timeout=min(0.05, deadline - now)):
            fd = key.fd
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(fd)
                continue
            buf = bufs[fd]
            if fd == proc.stderr.fileno():
                if len(buf) < STDERR_KEEP:
                    buf += chunk[: STDERR_KEEP - len(buf)]
                stderr_bytes += len(chunk)
                if stderr_bytes > max_output:  # a flood on stderr is capped like one on stdout
                    cause = "output_limit"
                    break
                continue
            buf += chunk
            if fd == proc.stdout.fileno() and len(buf) > max_output:
                cause = "output_limit"
            elif fd == result_r and len(buf) > 1 << 20:
                cause = "output_limit"
        if cause:
            break
    sel.close()
    _terminate(proc, uid)
    os.close(result_r)
    wall = time.monotonic() - start
    stdout = bytes(bufs[proc.stdout.fileno()][:max_output]).decode("utf-8", "replace")
    stderr = bytes(bufs[proc.stderr.fileno()]).decode("utf-8", "replace")
    proc.stdout.close()
    proc.stderr.close()
    reports = _reports(bytes(bufs[result_r]), nonce)
    layers = next((tuple(r.get("layers", ())) for r in reports if r.get("kind") == "setup"), ())
    if uid is None:
        layers = tuple(x for x in layers if x != "uid")
    res = SandboxResult("killed", stdout, stderr, proc.returncode, wall, isolation=layers)
    return _classify(res, reports, cause, deadline_s)


def _terminate(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the process group (and, with a sandbox uid, every process of it), then reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL'ed processes do not linger
        pass


def _reports(data: bytes, nonce: bytes) -> list[dict]:
    """The harness' messages: lines that start with this run's nonce. Anything else is ignored."""
    out = []
    for line in data.split(b"\n"):
        if line.startswith(nonce + b" "):
            try:
                msg = json.loads(line[len(nonce) + 1 :])
            except ValueError:
                continue
            if isinstance(msg, dict):
                out.append(msg)
    return out


def _classify(res: SandboxResult, reports: list[dict], cause: str, deadline_s: float) -> SandboxResult:
    kinds = {r.get("kind"): r for r in reports}
    code = res.exit_code
    if cause == "timeout":
        res.status, res.reason = "timeout", f"still running after {deadline_s:g}s wall clock; killed"
    elif cause == "output_limit":
        res.status, res.reason = "output_limit", "output over the byte cap; killed"
    elif "done" in kinds:
        res.status, res.reason = "ok", ""
    elif "memory" in kinds or "MemoryError" in res.stderr or "Cannot allocate memory" in res.stderr:
        res.status, res.reason = "memory", "out of memory (address-space limit)"
    elif "error" in kinds:
        e = kinds["error"]
        res.status = "runtime_error"
        res.reason = f"{e.get('type')} in the {e.get('where')}: {e.get('message', '')}".strip()
    elif code is not None and code in (-signal.SIGXCPU, -signal.SIGKILL) and res.wall_time >= 0.9 * (deadline_s - STARTUP_GRACE_S):
        res.status, res.reason = "timeout", "CPU time limit reached"
    elif code == -signal.SIGXCPU:
        res.status, res.reason = "timeout", "CPU time limit reached"
    elif code is not None and code < 0:
        res.status, res.reason = "killed", f"killed by signal {signal.Signals(-code).name if -code in signal.valid_signals() else -code}"
    elif "setup" not in kinds:
        res.status, res.reason = "killed", f"the sandbox harness did not start (exit code {code}): {res.stderr[-300:]}"
    else:
        res.status, res.reason = "runtime_error", f"exited with code {code} before finishing (sys.exit/os._exit?)"
    return res


__all__ = ["SANDBOX_STATUSES", "SandboxResult", "run_python", "sandbox_interpreter"]

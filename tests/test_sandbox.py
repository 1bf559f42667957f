"""The sandbox against hostile programs: each must fail safely, with a reason, in bounded time."""

from __future__ import annotations

import os
import time

import pytest

from r1lab.verify.sandbox import SANDBOX_STATUSES, run_python, sandbox_interpreter

AS_ROOT = os.geteuid() == 0 and sandbox_interpreter()[1]


def run(code: str, stdin: str = "", limit: float = 3.0, **kw):
    t0 = time.monotonic()
    r = run_python(code, stdin, **kw)
    took = time.monotonic() - t0
    assert r.status in SANDBOX_STATUSES
    assert took < limit, f"{r.status} took {took:.2f}s"
    return r


def test_ordinary_program_runs_and_reads_stdin():
    r = run("n = int(input())\nprint(sum(range(n + 1)))", "10")
    assert (r.status, r.stdout, r.exit_code) == ("ok", "55\n", 0)
    assert "rlimits" in r.isolation


def test_infinite_loop_times_out():
    r = run("while True: pass", timeout=1.0, limit=3.0)
    assert r.status == "timeout" and r.reason


def test_sleeping_forever_is_killed_at_the_wall_clock_deadline():
    r = run("import time\ntime.sleep(1000)", timeout=0.5, limit=2.5)
    assert r.status == "timeout" and "wall clock" in r.reason


def test_memory_bomb():
    r = run("x = bytearray(10**10)", memory_mb=256)
    assert r.status == "memory"
    r = run("x = []\nwhile True: x.append(' ' * 10**6)", memory_mb=256)
    assert r.status == "memory"


def test_huge_output_is_cut_off():
    r = run("while True: print('x' * 10000)", max_output=100_000)
    assert r.status == "output_limit" and len(r.stdout) <= 100_000


def test_fork_bomb_is_refused():
    r = run("import os\nwhile True: os.fork()")
    assert r.status == "runtime_error" and "PermissionError" in r.reason


@pytest.mark.skipif(not AS_ROOT, reason="RLIMIT_NPROC per sandbox needs the uid switch (root)")
def test_fork_bomb_without_the_audit_hook_hits_the_process_limit():
    r = run("import os\nwhile True: os.fork()", audit=False, max_processes=16, limit=4.0)
    assert r.status == "runtime_error" and "BlockingIOError" in r.reason


def test_writes_outside_the_working_directory_fail(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    for code in (f"open({str(target)!r}, 'w').write('gone')", f"import os\nos.remove({str(target)!r})",
                 "open('/tmp/r1lab-sandbox-escape', 'w').write('x')", "open('../escape', 'w').write('x')"):
        r = run(code)
        assert r.status == "runtime_error" and "PermissionError" in r.reason, code
    assert target.read_text() == "keep"
    assert not os.path.exists("/tmp/r1lab-sandbox-escape")
    assert run("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())").stdout == "ok\n"


@pytest.mark.skipif(not AS_ROOT, reason="the uid switch (root) is what stops writes without the audit hook")
def test_writes_outside_fail_even_without_the_audit_hook(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    r = run(f"import os\nos.remove({str(target)!r})", audit=False)
    # refused by file permissions, or (tmpfs layer) the file under /tmp is not even visible
    assert r.status == "runtime_error" and ("PermissionError" in r.reason or "FileNotFoundError" in r.reason)
    assert target.read_text() == "keep"


def test_a_chdir_does_not_open_a_way_out():
    # relative paths are judged from the directory the program is in now, not where it started
    r = run("import os\nos.chdir('/tmp')\nopen('r1lab-chdir-escape', 'w').write('x')")
    assert r.status == "runtime_error" and "PermissionError" in r.reason
    assert not os.path.exists("/tmp/r1lab-chdir-escape")


def test_world_writable_directories_are_private_to_the_sandbox():
    """Without the audit hook, writes into /tmp, /dev/shm or through a dir_fd land in a tmpfs that
    vanishes with the sandbox (the "tmpfs" layer), where mount namespaces are permitted."""
    probe = run("pass")
    if "tmpfs" not in probe.isolation:
        pytest.skip("mount namespaces are not permitted here")
    names = ["/tmp/r1lab-tmpfs-a", "/tmp/r1lab-tmpfs-b", "/dev/shm/r1lab-tmpfs-c"]
    code = ("import os\nos.chdir('/tmp')\nopen('r1lab-tmpfs-a', 'w').write('x')\n"
            "fd = os.open('/tmp', os.O_RDONLY)\nos.close(os.open('r1lab-tmpfs-b', os.O_CREAT | os.O_WRONLY, dir_fd=fd))\n"
            "open('/dev/shm/r1lab-tmpfs-c', 'w').write('x')\nprint(sorted(os.listdir('/tmp')))")
    r = run(code, audit=False)
    assert r.status == "ok" and "r1lab-tmpfs-a" in r.stdout  # the program saw its own writes...
    assert not any(os.path.exists(n) for n in names)  # ...and nobody else ever does


def test_a_flood_on_stderr_is_cut_off_like_stdout():
    r = run("import sys\nwhile True: sys.stderr.write('e' * 65536)", max_output=100_000)
    assert r.status == "output_limit"


def test_environment_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    r = run("import os\nprint(sorted(os.environ.items()))")
    assert r.status == "ok" and "sk-secret-value" not in r.stdout and "OPENAI_API_KEY" not in r.stdout
    r = run("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())")
    assert r.status == "runtime_error" and "sk-secret-value" not in r.stdout


def test_no_network():
    r = run("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)")
    assert r.status == "runtime_error"
    if "netns" in r.isolation or "userns+netns" in r.isolation:  # the OS layer too, without the hook
        r = run("import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))", audit=False)
        assert r.status == "runtime_error" and "unreachable" in r.reason


def test_killing_the_parent_fails_and_the_parent_survives():
    for code in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "import os\nos.killpg(0, 9)"):
        r = run(code)
        assert r.status != "ok"
    if AS_ROOT:
        r = run("import os\nos.kill(os.getppid(), 9)", audit=False)
        assert r.status == "runtime_error" and "PermissionError" in r.reason
    assert run("print(1)").ok  # still here


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos._exit(0)",
        "import sys\nprint('PASSED')\nsys.exit(0)",
        "import builtins\nbuiltins.AssertionError = Exception\nraise SystemExit(0)",
        "import sys, os\nos.write(3, b'ok')\nos.write(4, b'done')\nos._exit(0)",
        "class A:\n    def __eq__(self, o): return True\n    def __bool__(self): return True\ndef f(x): return A()",
        "def f(x): raise SystemExit(0)",
        "import ctypes\nctypes.CDLL(None).exit(0)",
    ],
)
def test_faked_passes_are_not_passes(code):
    """The tests (after) must run to completion; exits, printed claims, fd writes and always-equal objects fail."""
    r = run(code, after="assert __r1lab_plain__(f(2)) == __r1lab_plain__(4)")
    assert r.status != "ok", r


def test_a_genuine_pass_with_tests():
    assert run("def f(x):\n    return 2 * x", after="assert __r1lab_plain__(f(2)) == 4").ok
    r = run("def f(x):\n    return 3 * x", after="assert __r1lab_plain__(f(2)) == 4")
    assert r.status == "runtime_error" and "AssertionError" in r.reason


def test_harness_state_is_out_of_reach():
    """The nonce lives in the main thread; the program runs in another whose frames hold nothing of it."""
    r = run("import sys\nf = sys._getframe()\nwhile f.f_back: f = f.f_back\nprint(sorted(f.f_locals))\n"
            "import gc\ngc.get_objects()")
    assert r.status == "runtime_error" and "nonce" not in r.stdout and "cfg" not in r.stdout


def test_the_harness_file_is_neither_on_the_program_path_nor_run_by_import():
    """The harness runs as a script by path: its directory (verify/, with modules named math and code)
    must not be on the program's sys.path, and importing the module must not start a harness."""
    import importlib

    from r1lab.verify import sandbox

    harness_dir = os.path.dirname(os.path.realpath(sandbox.HARNESS))
    r = run("import os, sys\nprint(sorted({os.path.realpath(p) for p in sys.path if p}))")
    assert r.ok, r
    assert harness_dir not in r.stdout and "r1lab" not in r.stdout
    module = importlib.import_module("r1lab.verify.sandbox_harness")
    assert os.path.realpath(module.__file__) == os.path.realpath(sandbox.HARNESS) and callable(module._main)

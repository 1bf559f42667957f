"""The sandbox harness: the first code that runs in the child interpreter of `sandbox.run_python`.

Run as a script, never imported: `python -I -S -B -X utf8 sandbox_harness.py SETUP_FD RESULT_FD`.
It reads its settings (limits, working directory, the run's nonce, the code) from SETUP_FD, puts
the isolation layers in place (see sandbox.py), runs the untrusted code and then the tests in a
fresh `__main__` namespace, and reports on RESULT_FD, each line prefixed with the nonce. Everything
it keeps lives in `_main`'s locals, not in module globals, because the untrusted code can
`import __main__`. Only the standard library is used: the child runs without site-packages and
may be a different interpreter than the caller's (see `sandbox_interpreter`).
"""


def _main(setup_fd, result_fd):
    import builtins, json, os, resource, signal, sys, threading, types
    chunks = []
    while True:
        b = os.read(setup_fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(setup_fd)
    cfg = json.loads(b"".join(chunks))
    nonce = cfg["nonce"].encode()
    layers = []

    def report(kind, **info):
        try:
            os.write(result_fd, nonce + b" " + json.dumps({"kind": kind, **info}).encode() + b"\n")
        except OSError:
            pass

    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    layers.append("rlimits")
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        newns, newnet, newuser = 0x00020000, 0x40000000, 0x10000000
        if libc.unshare(newnet | newns) == 0:
            layers += ["netns"] + (["tmpfs"] if _private_tmp(libc, cfg["cwd"]) else [])
        elif libc.unshare(newuser | newnet | newns) == 0:
            layers += ["userns+netns"] + (["tmpfs"] if _private_tmp(libc, cfg["cwd"]) else [])
        elif libc.unshare(newnet) == 0:
            layers.append("netns")
    except Exception:
        libc = None
    uid = cfg["uid"]
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        layers.append("uid")
    else:
        uid = None
    if libc is not None:
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL; after setuid, which clears it
    os.chdir(cfg["cwd"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead
    cwd = os.path.realpath(cfg["cwd"])
    if cfg["audit"]:
        _install_audit_hook(cwd, cfg.get("confine_reads", False))
        layers.append("audit")
    report("setup", layers=layers)

    real_type, plain_types = type, (int, float, complex, str, bytes, bool, type(None))
    budget = [10**6]  # elements checked by plain() over the whole run

    def plain(value):
        """`value` itself if it is built only of builtin data types (no user __eq__ or __bool__)."""
        stack = [value]
        while stack:
            x = stack.pop()
            budget[0] -= 1
            if budget[0] < 0:
                raise TypeError("test values too large to check")
            t = real_type(x)
            if t in plain_types:
                continue
            if t in (list, tuple, set, frozenset):
                stack.extend(x)
            elif t is dict:
                stack.extend(x.keys())
                stack.extend(x.values())
            else:
                raise TypeError(f"the test got a {t.__name__}, not a plain value")
        return value

    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    stdout = sys.stdout
    threading.stack_size(cfg["stack_mb"] << 20)
    ok = _run_in_thread(threading, cfg["code"], "program", module.__dict__, cfg["after"] is None, report)
    if ok and cfg["after"] is not None:
        ns = dict(module.__dict__)
        ns["__r1lab_plain__"] = plain
        ok = _run_in_thread(threading, cfg["after"], "tests", ns, False, report)
    try:
        stdout.flush()
    except BaseException:
        pass
    if ok:
        report("done")
    if uid is not None:  # this uid is ours alone: end whatever the program left behind
        try:
            os.kill(-1, 9)
        except OSError:
            pass
    os._exit(0)


def _private_tmp(libc, cwd):
    """In a fresh mount namespace, cover every world-writable directory with an empty, small tmpfs
    that vanishes with the process, then bind the working directory back at its own path: whatever
    the program writes outside it (through a chdir, a dir_fd, a path the audit hook cannot see) is
    thrown away. Returns False, leaving the mounts as they were, where mounting is not permitted."""
    import os
    if libc.mount(None, b"/", None, 16384 | 262144, None) != 0:  # MS_REC | MS_PRIVATE
        return False
    keep = os.open(cwd, os.O_RDONLY | os.O_DIRECTORY)
    try:
        covered = []
        for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            if os.path.isdir(d) and not os.path.islink(d):
                if libc.mount(b"tmpfs", d.encode(), b"tmpfs", 2 | 4, b"size=64m,mode=1777") != 0:  # nosuid, nodev
                    return False
                covered.append(d)
        if any(cwd.startswith(d + "/") for d in covered):
            os.makedirs(cwd, exist_ok=True)
            if libc.mount(f"/proc/self/fd/{keep}".encode(), cwd.encode(), None, 4096, None) != 0:  # MS_BIND
                return False
        return True
    finally:
        os.close(keep)


def _execute(source, where, ns, out):
    """Runs in a fresh thread, so no frame above the untrusted code holds the nonce; records only text."""
    try:
        exec(compile(source, f"<{where}>", "exec"), ns)
        out.append(("ok", "", ""))
    except SystemExit as e:
        out.append(("exit", "SystemExit", repr(e.code)[:200] if e.code is None or type(e.code) is int else "(object)"))
    except MemoryError:
        out.append(("memory", "MemoryError", ""))
    except BaseException as e:
        try:
            message = str(e)[:500]
        except BaseException:
            message = "(unprintable)"
        out.append(("error", type(e).__name__, message))


def _run_in_thread(threading, source, where, ns, exit_ok, report):
    out = []
    t = threading.Thread(target=_execute, args=(source, where, ns, out), daemon=True)
    t.start()
    t.join()
    kind, name, message = out[0] if out else ("error", "Unknown", "the program thread vanished")
    if kind == "ok" or (kind == "exit" and exit_ok and message in ("None", "0")):
        return True
    if kind == "memory":
        report("memory", where=where)
    else:
        report("error", where=where, type=name, message=message)
    return False


def _install_audit_hook(cwd, confine_reads=False):
    import os, sys
    realpath, fspath, join, getcwd = os.path.realpath, os.fspath, os.path.join, os.getcwd
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    blocked = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.startfile",
               "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.setuid",
               "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
               "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
               "sys.setprofile", "sys.settrace", "os.chroot", "os.mount"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.chmod", "os.chown", "os.link", "os.symlink",
                   "os.truncate", "os.utime", "os.mkdir", "shutil.rmtree", "shutil.move", "shutil.copyfile",
                   "os.chdir"}
    inside = cwd + "/"
    allowed_outside = ("/dev/null",)
    proc_ok = ("/proc/self/status", "/proc/meminfo", "/proc/cpuinfo", "/proc/self/fd")

    # what a program may read when reads are confined: its directory, the standard library (imports)
    readable = (inside, os.path.realpath(os.path.dirname(os.__file__)) + "/")
    readable_files = ("/dev/null", "/dev/urandom", "/dev/zero")

    def resolved(p):
        """The real absolute path of `p`, or None for a file descriptor (already open: allowed)."""
        if isinstance(p, int):
            return None
        p = fspath(p)
        if isinstance(p, bytes):
            p = p.decode("utf-8", "replace")
        return realpath(join(getcwd(), p))

    def ok_read(p):
        full = resolved(p)
        return full is None or full == cwd or full.startswith(readable) or full in readable_files or full.startswith(proc_ok)

    def ok_path(p):
        full = resolved(p)
        return full is None or full == cwd or full.startswith(inside) or full in allowed_outside

    def hook(event, args):
        if event in blocked or event.startswith("ctypes."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            if isinstance(path, (str, bytes)):
                text = path if isinstance(path, str) else path.decode("latin-1")
                if text.startswith("/proc/") and not text.startswith(proc_ok):
                    raise PermissionError("sandbox: /proc is not readable here")
            if writing and not ok_path(path):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
            if confine_reads and not writing and path is not None and not ok_read(path):
                raise PermissionError(f"sandbox: reading outside the working directory is not allowed: {path!r}")
        elif confine_reads and event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            if not ok_read(args[0]):
                raise PermissionError(f"sandbox: listing outside the working directory is not allowed")
        elif event in path_events:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not ok_path(a):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    sys.addaudithook(hook)


if __name__ == "__main__":
    import os as _os
    import sys as _sys

    # without -P (Python 3.10, where -I does not imply it) the script's directory would come
    # first on sys.path, and its modules would shadow the standard library's for the program
    if _sys.path and _os.path.realpath(_sys.path[0]) == _os.path.dirname(_os.path.realpath(__file__)):
        del _sys.path[0]
    _setup, _result = int(_sys.argv[1]), int(_sys.argv[2])
    del _os, _sys
    _main(_setup, _result)

"""Verifier throughput and the sandbox's behaviour on hostile programs (numbers for BENCHMARKS.md).

    python benchmarks/verify_bench.py

Math: pairs/s through verify_batch (2 worker processes) vs one item at a time (in-process, and
one-item verify_batch calls), with the cross-call cache cleared so every pair is really verified,
then the same batch again to show the cache. Sandbox: executions/s of a trivial program and the
overhead per test case of the code verifier. Then every hostile input with its verdict and time.
"""

from __future__ import annotations

import os
import time

from r1lab.records import Problem
from r1lab.verify import clear_verdict_cache, verify_batch
from r1lab.verify.code import run_tests
from r1lab.verify.math import verify_math
from r1lab.verify.sandbox import run_python, sandbox_interpreter

HOSTILE = [
    ("infinite loop", "while True: pass", {}),
    ("sleep forever", "import time\ntime.sleep(10**6)", {}),
    ("fork bomb", "import os\nwhile True: os.fork()", {}),
    ("fork bomb, audit hook off", "import os\nwhile True: os.fork()", {"audit": False}),
    ("memory bomb", "x = bytearray(10**10)", {}),
    ("memory creep", "x = []\nwhile True: x.append(' ' * 10**6)", {}),
    ("huge output", "while True: print('x' * 10**4)", {}),
    ("write outside cwd", "open('/work/escape.txt', 'w').write('x')", {}),
    ("write outside cwd, audit hook off", "open('/work/escape.txt', 'w').write('x')", {"audit": False}),
    ("delete a file", "import os\nos.remove('/etc/hostname')", {}),
    ("read env secrets", "import os\nprint(os.environ.get('OPENAI_API_KEY', 'none'))", {}),
    ("read parent's environ", "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())", {}),
    ("network", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", {}),
    ("network, audit hook off", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", {"audit": False}),
    ("kill the parent", "import os\nos.kill(os.getppid(), 9)", {}),
    ("kill the parent, audit hook off", "import os\nos.kill(os.getppid(), 9)", {"audit": False}),
    ("sys.exit(0) before tests", "import sys\nsys.exit(0)", {"after": "assert f(1) == 2"}),
    ("os._exit(0) before tests", "import os\nos._exit(0)", {"after": "assert f(1) == 2"}),
    ("print PASSED + exit", "print('PASSED')\nimport sys\nsys.exit(0)", {"after": "assert f(1) == 2"}),
    ("always-equal object", "class A:\n    def __eq__(s, o): return True\ndef f(x): return A()",
     {"after": "assert __r1lab_plain__(f(1)) == 2"}),
    ("forge report on fd 4", "import os\nos.write(4, b'x {\"kind\": \"done\"}\\n')\nos._exit(0)",
     {"after": "assert f(1) == 2"}),
    ("ctypes libc call", "import ctypes\nctypes.CDLL(None).exit(0)", {"after": "assert f(1) == 2"}),
    # found by trying cases the tests did not have (2026-11-25); the first two were misses then
    ("chdir /tmp, then write", "import os\nos.chdir('/tmp')\nopen('escape', 'w').write('x')", {}),
    ("chdir /tmp + write, audit off", "import os\nos.chdir('/tmp')\nopen('escape', 'w').write('x')\n"
     "print('wrote to a private tmpfs' if os.path.exists('/tmp/escape') else '')", {"audit": False}),
    ("write via dir_fd, audit off", "import os\nfd = os.open('/tmp', os.O_RDONLY)\n"
     "os.close(os.open('escape', os.O_CREAT | os.O_WRONLY, dir_fd=fd))", {"audit": False}),
    ("stderr flood", "import sys\nwhile True: sys.stderr.write('e' * 65536)", {}),
    ("os.system", "import os\nos.system('id')", {}),
    ("symlink to /etc/passwd", "import os\nos.symlink('/etc/passwd', 'p')\nprint(open('p').read())", {}),
    ("raise own rlimit", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", {}),
    ("disk bomb in cwd", "f = open('big', 'wb')\nwhile True: f.write(b'x' * 2**20)", {}),
    ("deep recursion", "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)", {}),
    ("8 spinning threads", "import threading\n[threading.Thread(target=lambda: [0 for _ in iter(int, 1)]).start()"
     " for _ in range(8)]", {}),
]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f}/s"


def bench_math() -> None:
    problems, responses = [], []
    for i in range(400):
        a, b = i % 37 + 1, i % 11 + 2
        problems.append(Problem(str(i), "q", f"\\frac{{{a}}}{{{b}}}"))
        responses.append(f"<think>work</think><answer>{a / b:.6f}</answer>" if i % 3 else f"<answer>\\frac{{{2 * a}}}{{{2 * b}}}</answer>")
    verify_batch(problems[:2], responses[:2], workers=2)  # start the workers (paid once per process)
    verify_math(responses[-1], problems[-1])  # load sympy and the parsers in this process too
    unique = len(set(zip(responses, (p.answer for p in problems))))
    print(f"math verification, {len(problems)} pairs ({unique} distinct), 2 cores:")
    t0 = time.perf_counter()
    for p, r in zip(problems[:100], responses[:100]):
        verify_math(r, p)
    print(f"  one at a time, in-process:        {rate(100, time.perf_counter() - t0)}  (no timeout protection)")
    clear_verdict_cache()
    t0 = time.perf_counter()
    for p, r in zip(problems[100:200], responses[100:200]):
        verify_batch([p], [r], workers=2)
    print(f"  one-item verify_batch calls:      {rate(100, time.perf_counter() - t0)}")
    clear_verdict_cache()
    t0 = time.perf_counter()
    verify_batch(problems, responses, workers=2)
    print(f"  verify_batch, 2 workers:          {rate(len(problems), time.perf_counter() - t0)}")
    t0 = time.perf_counter()
    verify_batch(problems, responses, workers=2)
    print(f"  same batch again (cache hits):    {rate(len(problems), time.perf_counter() - t0)}")


def bench_sandbox() -> None:
    print(f"\nsandbox ({sandbox_interpreter()[0]}, layers {run_python('pass').isolation}):")
    n = 30
    t0 = time.perf_counter()
    for _ in range(n):
        assert run_python("print(sum(range(10)))").ok
    seconds = time.perf_counter() - t0
    print(f"  trivial program, sequential:      {rate(n, seconds)}  ({1000 * seconds / n:.0f} ms each)")
    program = "a, b = map(int, input().split())\nprint(a + b)"
    for k in (1, 10):
        tests = [{"type": "stdio", "input": f"{i} {i}", "output": str(2 * i)} for i in range(k)]
        t0 = time.perf_counter()
        results = run_tests(program, tests)
        assert all(r.passed for r in results)
        print(f"  code verifier, {k:2d} stdio tests:     {1000 * (time.perf_counter() - t0) / k:.0f} ms per test case")
    tests = [{"type": "assert", "code": f"assert add({i}, 1) == {i + 1}"} for i in range(10)]
    t0 = time.perf_counter()
    assert all(r.passed for r in run_tests("def add(a, b):\n    return a + b", tests))
    print(f"  code verifier, 10 assert tests:    {1000 * (time.perf_counter() - t0) / 10:.0f} ms per test case")


def bench_hostile() -> None:
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-secret")
    print("\nhostile programs (timeout 2 s, memory 256 MB, output cap 1 MB):")
    print(f"  isolation layers here: {', '.join(run_python('pass').isolation)}")
    print(f"  {'input':38s} {'verdict':14s} {'seconds':>7s}  reason")
    for name, code, kw in HOSTILE:
        t0 = time.perf_counter()
        r = run_python(code, timeout=2.0, memory_mb=256, **kw)
        took = time.perf_counter() - t0
        leaked = "sk-benchmark-secret" in r.stdout
        reason = (r.reason or "output: " + r.stdout.strip()[:40]).replace("\n", " ")[:70]
        print(f"  {name:38s} {r.status:14s} {took:7.2f}  {reason}{'  LEAKED' if leaked else ''}")
    escaped = [p for p in ("/work/escape.txt", "/tmp/escape", "/etc/escape") if os.path.exists(p)]
    print(f"  files that escaped the sandbox: {escaped or 'none'}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    bench_math()
    bench_sandbox()
    bench_hostile()

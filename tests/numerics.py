"""The numerics run: the float-sensitive tests (marker `numerics`) under other CPU kernel dispatches.

A float bound that holds on one host can fail on another: torch, MKL and oneDNN pick their kernels
by the CPU's instruction sets, and r1lab's C kernels are built for the CPU they run on. Each variant
below makes this host round the way another host would, so the suite's tolerances are checked
against other hosts' arithmetic from whatever host runs this:

    python tests/numerics.py                 # every variant
    python tests/numerics.py avx2-host -x    # one of them; options after the names go to pytest

Exit status 0 when every variant passes. `make test-numerics` runs it; so does CI after `make test`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, str]] = {
    # what an AVX2-only host (an AMD EPYC without AVX-512, say) runs: ATen's AVX2 kernels, MKL and
    # oneDNN capped at AVX2, r1lab's C kernels built for x86-64-v3, no native bf16
    "avx2-host": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                  "R1LAB_KERNELS_MARCH": "x86-64-v3", "R1LAB_NATIVE_BF16": "0"},
    # ATen's scalar (non-vectorised) kernels: the other end from the host's own
    "default-isa": {"ATEN_CPU_CAPABILITY": "default", "R1LAB_NATIVE_BF16": "0"},
    # the fast engine's torch path instead of its fused C kernels
    "no-c-kernels": {"R1LAB_KERNELS": "0"},
    # a host with AVX-512 but no native bf16: every "auto" dtype resolves to float32
    "no-native-bf16": {"R1LAB_NATIVE_BF16": "0"},
}
X86_ONLY = {"avx2-host"}  # -march=x86-64-v3 and AVX2 caps mean nothing elsewhere


def run(name: str, extra: list[str]) -> tuple[int, float]:
    env = {**os.environ, **VARIANTS[name]}
    cmd = [sys.executable, "-m", "pytest", "-m", "numerics", "-p", "no:cacheprovider", "-q", *extra]
    start = time.monotonic()
    print(f"== numerics [{name}]: {' '.join(f'{k}={v}' for k, v in VARIANTS[name].items())}", flush=True)
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    return code, time.monotonic() - start


def main(argv: list[str]) -> int:
    """argv: variant names first (none = every variant), then pytest's own options."""
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, extra = argv[:split], argv[split:]
    for name in names:
        if name not in VARIANTS:
            print(f"numerics: unknown variant {name!r} (known: {', '.join(VARIANTS)})", file=sys.stderr)
            return 2
    if not names:
        names = [n for n in VARIANTS if n not in X86_ONLY or platform.machine() in ("x86_64", "AMD64")]
    results = [(name, *run(name, extra)) for name in names]
    print("\nvariant          result   time")
    for name, code, seconds in results:
        print(f"{name:<16} {'passed' if code == 0 else f'FAILED ({code})':<8} {seconds:5.0f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

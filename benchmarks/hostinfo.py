"""What a benchmark's figures were measured on: the CPU model and the instruction-set extensions that
decide which kernels run (AVX2, AVX-512 BF16, AMX), so that figures from different hosts are never
compared by mistake."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    """lscpu's "Model name" ("" where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def isa_flags() -> list[str]:
    """Which of ISA_FLAGS /proc/cpuinfo lists, sorted."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(f for f in ISA_FLAGS if f in flags)


def host() -> str:
    """One line: "AMD EPYC (avx2, avx512_bf16), 2 cores"."""
    return f"{cpu_model()} ({', '.join(isa_flags())}), {os.cpu_count()} cores"

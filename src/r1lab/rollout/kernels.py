"""FastEngine's fused decode kernels (kernels.c), compiled on first use with the system C compiler.

Outside its matrix products, a decode step is a long run of small operators (RMSNorm, RoPE, casts,
cache writes, the SiLU gate, residual adds) and attention of one query token per row, each with
per-call overhead far above its arithmetic. kernels.c does the non-matmul work of a layer in five C
calls and plain temperature sampling in one; the matrix products stay with torch / oneDNN.

C through ctypes rather than a torch C++ extension or `torch.compile`: the C file compiles in about
a second (an extension includes the ATen headers), needs no Python headers, and a ctypes call costs
about a microsecond, less than the operators it replaces; a compiled torch function's call overhead
is larger than that (BENCHMARKS.md has the figures). The library is built once per source / compiler / CPU into r1lab's cache directory
and loaded; where there is no compiler or the build fails, `load()` returns None and the engine
keeps its torch path (same results up to float rounding; tested against each other).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
ENV_SWITCH = "R1LAB_KERNELS"  # "0" turns the kernels off (the torch path runs instead)
# the -march the kernels are built for: native by default; x86-64-v3 (AVX2 + FMA) builds what an
# AVX2-only host would run, which the numerics run (tests/numerics.py) uses on any x86 host
ENV_MARCH = "R1LAB_KERNELS_MARCH"


def flags(march: str | None = None) -> list[str]:
    march = march or os.environ.get(ENV_MARCH, "") or "native"
    return ["-O3", f"-march={march}", "-fopenmp", "-fPIC", "-shared", "-std=c11", "-fno-math-errno"]


def _cache_dir() -> Path:
    from r1lab.hub import r1lab_home

    return r1lab_home() / "kernels"


def _cpu_signature() -> str:
    """-march=native targets this CPU: a library built on another must not be picked up."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(cc: str, out: Path, march: str | None = None) -> None:
    """Compile kernels.c for `march` (default: flags()) into the shared library `out` (written
    atomically). Raises on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags(march), str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Kernels:
    """ctypes bindings of kernels.c for one compute dtype (float32 or bfloat16)."""

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype):
        suffix = {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
        P, I, F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float

        def fn(name, *argtypes):
            f = getattr(lib, f"r1_{name}_{suffix}")
            f.argtypes, f.restype = list(argtypes), None
            return f

        self.dtype = dtype
        self.add_rmsnorm = fn("add_rmsnorm", P, P, P, P, I, I, F)
        self.rope_kv = fn("rope_kv", P, I, I, I, I, P, P, P, P, P, P, I)
        self.decode_attention = fn("decode_attention", P, P, P, P, I, I, I, I, I, F, P)
        self.silu_mul = fn("silu_mul", P, I, I, P)
        self._sample = lib.r1_sample
        self._sample.argtypes, self._sample.restype = [P, I, I, F, P, P, P, P], None
        self._scratch = torch.empty(0)

    def sample(self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
               uniforms: torch.Tensor | None = None):
        """(tokens [B], logprobs [B]) for logits [B, V] float32, sampled at `temperature` (no top-k /
        top-p): `rollout.base._sample_untruncated` in one C pass per row, with the same one uniform
        per row, from `generator` or the given `uniforms` [B] float64."""
        B, V = logits.shape
        logits = logits.float().contiguous()
        if uniforms is None:
            uniforms = torch.rand((B,), generator=generator, dtype=torch.float64)
        u = uniforms.double().contiguous()
        if self._scratch.numel() < B * V:
            self._scratch = torch.empty(B * V)
        tokens, logprobs = torch.empty(B, dtype=torch.long), torch.empty(B)
        self._sample(logits.data_ptr(), B, V, temperature, u.data_ptr(), tokens.data_ptr(), logprobs.data_ptr(),
                     self._scratch.data_ptr())
        return tokens, logprobs


def library_path(cc: str) -> Path:
    """Where the library built from this source, compiler, flags and CPU lives."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *flags(), _cpu_signature(), torch.__version__]).encode())
    return _cache_dir() / f"r1lab_kernels_{key.hexdigest()[:16]}.so"


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        log.info("fast engine: no C compiler found; decoding with torch operators")
        return None
    path = library_path(cc)
    try:
        if not path.exists():
            build(cc, path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a damaged cached library (a full disk, a copied cache): build it again, once
            path.unlink(missing_ok=True)
            build(cc, path)
            lib = ctypes.CDLL(str(path))
        _self_test(lib)
        return lib
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        log.warning("fast engine: the fused decode kernels are unavailable (%s); decoding with torch operators", err)
        return None


def _self_test(lib: ctypes.CDLL) -> None:
    """One small check that the library computes what it should on this machine (a miscompiled
    or stale build must not decode silently wrong)."""
    x = torch.linspace(-20, 20, 101)
    out = torch.empty_like(x)
    lib.r1_exp_f32.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.r1_exp_f32(x.data_ptr(), out.data_ptr(), x.numel())
    if not torch.allclose(out.double(), x.double().exp(), rtol=1e-6, atol=0):  # not assert: it must survive -O
        raise RuntimeError("exp kernel self-test failed")


def load(dtype: torch.dtype) -> Kernels | None:
    """The kernels for `dtype`, or None where they cannot run (no compiler, a failed build, an
    unsupported dtype, R1LAB_KERNELS=0)."""
    if dtype not in (torch.float32, torch.bfloat16):
        return None
    lib = _library()
    return Kernels(lib, dtype) if lib is not None else None

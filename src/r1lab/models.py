"""One loading path for every model: the tiny model built offline, or any local Hugging Face
directory (a checkpoint r1lab wrote, a Qwen2.5 or Llama download), or a prepared name (see hub.py).

The tiny model is a real Qwen2-architecture causal LM with a real byte-level BPE tokenizer trained
with the `tokenizers` library and wrapped as a transformers fast tokenizer with a ChatML template, so
everything downstream (rollout, training, checkpoints, eval) runs the same code as for a real model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from r1lab.config import TinyModelConfig
from r1lab.errors import ModelError
from r1lab.records import prompt_messages, prompt_text
from r1lab.vision import (attach_image_processor, forward_inputs, image_processor_of, is_vision_config, is_vision_model,
                          load_image_processor, suppress_vision_tokens)

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# The R1 tags are single tokens (not "special": decoding keeps them) so formats are cheap to learn.
REASONING_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


# a step scorer is a model directory whose scorer.json names its kind (eval/scorers.py loads it)
SCORER_FILE = "scorer.json"
PRM_KIND = "implicit_prm"  # PRIME's implicit process reward model (train/prm.py)
PPM_KIND = "rstar_ppm"  # rStar-Math's process preference model (train/ppm.py)


def torch_dtype(name: str) -> torch.dtype:
    """float32 / bfloat16 by name; `auto` is bfloat16 where it is fast (a GPU, or a CPU with native
    bf16 matmuls) and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() or cpu_has_native_bf16() else torch.float32
    if name not in DTYPES:
        raise ModelError(f"model.dtype: unknown dtype {name!r} (use float32, bfloat16 or auto)")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """model.device: `auto` is the first GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ModelError(f"model.device: unknown device {name!r} (use auto, cpu or cuda[:N])") from None
    if device.type not in ("cpu", "cuda"):
        raise ModelError(f"model.device: unsupported device type {device.type!r} (use auto, cpu or cuda[:N])")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model.device={name}: torch sees no CUDA GPU here (torch {torch.__version__}); use cpu or auto")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (its first parameter's device: r1lab never splits a model)."""
    return next(model.parameters()).device


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    start: int = 0,
    entropy_grad: bool = True,
    vision: "list | None" = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T) of each next token: [B, L-1] (and the entropy of that distribution).

    Right padding needs no position ids: causal attention never lets a real token see the pads
    after it. Log-probs are computed in float32 whatever the model dtype (or autocast).
    `start` > 0 skips the LM head and the softmax for positions before it (prompt tokens that carry
    no loss): those entries come back 0. `entropy_grad=False` computes the entropy for logging only,
    outside the autograd graph.

    Batches live on the CPU; on a GPU model the ids go to its device and the [B, L-1] results come
    back (autograd follows the copy), so the loss code is the same for every device.

    `vision`: per row, the pixel inputs of its images (vision.VisionInputs) or None, for a
    vision-language model; the rows' image tokens are in `input_ids`.
    """
    home = input_ids.device
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    L = input_ids.shape[1]
    start = min(max(start, 0), L - 1)
    extra = {}
    if is_vision_model(model):
        extra = forward_inputs(model, input_ids, attention_mask, vision or [None] * len(input_ids))
        extra.pop("rope_deltas")
    elif vision is not None and any(v is not None for v in vision):
        raise ModelError("the batch shows images, but the model is text-only")
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   logits_to_keep=L - start, **extra).logits[:, :-1]  # positions start .. L-2
    if extra:
        logits = suppress_vision_tokens(logits, model)
    logprobs, entropy = logprobs_of_targets(logits, input_ids[:, start + 1:], temperature, with_entropy, entropy_grad)
    if start:
        logprobs = torch.nn.functional.pad(logprobs, (start, 0))
        entropy = None if entropy is None else torch.nn.functional.pad(entropy, (start, 0))
    return logprobs.to(home), None if entropy is None else entropy.to(home)


def logprobs_of_targets(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                        with_entropy: bool = False, entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T) at `targets` ([..., V] logits, [...] ids), in float32 whatever the
    logits' dtype, and the entropy of each distribution (outside the graph unless `entropy_grad`)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


NATIVE_BF16_SWITCH = "R1LAB_NATIVE_BF16"  # "0": act as a CPU without native bf16 (what an AVX2 host picks)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX). Without it torch emulates
    bf16 matmuls, ~100x slower than fp32 on a 2-core AVX2 EPYC (benchmarks/speed_rollout.py).
    R1LAB_NATIVE_BF16=0 answers no whatever the CPU."""
    if os.environ.get(NATIVE_BF16_SWITCH, "1") == "0":
        return False
    cap = torch.backends.cpu.get_cpu_capability()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return cap in ("AVX512", "AVX512_BF16", "AMX") and ("avx512_bf16" in flags or "amx_bf16" in flags)


def warn_if_emulated_bf16(setting: str) -> None:
    """bf16 on a CPU without native bf16 is legal but slow: say so once, naming the setting."""
    if not cpu_has_native_bf16() and not torch.cuda.is_available():
        log.warning("%s: this CPU has no native bf16 matmuls (no AVX-512 BF16 / AMX), so bf16 runs emulated, "
                    "far slower than float32; use float32 here", setting)


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus`; digits are always split one per token, so numbers
    tokenise the same way wherever they occur (arithmetic depends on it)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        padding_side="left",
        model_max_length=4096,
    )
    fast.add_tokens(REASONING_TAGS)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, cfg: TinyModelConfig, seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def resolve_model_path(path: str) -> Path:
    """A local directory holding config.json, or a prepared name (`r1lab models list`), which
    resolves to its cached converted directory (converted on first use). A real path wins."""
    p = Path(path).expanduser()
    if not p.exists():
        from r1lab import hub

        if path in hub.REGISTRY:
            return hub.prepare(path)
        raise ModelError(f"model path does not exist: {path} (nor is it a prepared model: {', '.join(hub.known_models())})")
    if not (p / "config.json").is_file():
        raise ModelError(f"not a Hugging Face model directory (no config.json): {path}")
    return p


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    p = resolve_model_path(str(path))
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception as e:  # a broken directory gets one line, not a transformers stack
        raise ModelError(f"cannot load the tokenizer from {p}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:  # many base models ship without one; reuse EOS and pad left
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str | Path, dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a causal LM and its tokenizer from a local Hugging Face directory; a Qwen2-VL /
    Qwen2.5-VL directory loads as its image-text-to-text model, its image processor attached to
    the tokenizer (vision.py)."""
    p = resolve_model_path(str(path))
    tokenizer = load_tokenizer(p)
    if dtype != "auto" and torch_dtype(dtype) is torch.bfloat16:
        warn_if_emulated_bf16("model.dtype=bfloat16")
    try:
        from transformers import AutoConfig, AutoModelForImageTextToText

        if is_vision_config(AutoConfig.from_pretrained(p)):
            attach_image_processor(tokenizer, load_image_processor(p))
            model = AutoModelForImageTextToText.from_pretrained(p, dtype=torch_dtype(dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(p, dtype=torch_dtype(dtype))
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load the model from {p}: {str(e).splitlines()[0]}") from None
    return model, tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Save as a plain HF directory (safetensors), written beside and renamed when complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if image_processor_of(tokenizer) is not None:
        image_processor_of(tokenizer).save_pretrained(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path


def stop_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the chat end-of-turn marker."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in (IM_END, "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            if tok != PAD_TOKEN or tokenizer.pad_token != PAD_TOKEN or tid == tokenizer.eos_token_id:
                ids.add(tid)
    return sorted(ids)


def render_prompt(tokenizer: PreTrainedTokenizerFast, prompt: str | list[dict[str, str]]) -> str:
    """The text the model is conditioned on: the chat template with the generation prompt when the
    tokenizer has one, else the raw text. A prompt whose last message is the assistant's is a
    prefilled response (R1-Zero's template opens it with `<think>`): the model continues that text."""
    messages = prompt_messages(prompt)
    prefill = _prefill_of(messages)
    if getattr(tokenizer, "chat_template", None):
        if prefill is not None:
            return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if prefill is not None:
        return prompt_text(messages[:-1], which="all") + "\n" + prefill
    return prompt_text(prompt, which="all") + "\n"


def _prefill_of(messages: list[dict[str, str]]) -> str | None:
    """The content of a final assistant message, or None when the prompt ends with another role."""
    return str(messages[-1].get("content", "")) if messages and messages[-1].get("role") == "assistant" else None


def response_prefill(prompt: str | list[dict[str, str]]) -> str:
    """The prefilled start of the response (the content of a final assistant message), or ''."""
    return _prefill_of(prompt_messages(prompt)) or ""


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def merged_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's parameters as (Hugging Face name, tensor), one at a time, with every active LoRA
    adapter folded in (W + (alpha / r) B A) and the adapter tensors left out: what an inference engine
    that knows nothing of peft loads. The model itself is not changed; without adapters, its
    parameters as they are."""
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        deltas = {}
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and not module.merged:
                active = [a for a in module.active_adapters if a in module.lora_A]
                if active:
                    deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in active)
        for name, p in model.named_parameters():
            if ".lora_" in name:
                continue
            tensor = p.detach()
            if name in deltas:
                tensor = tensor + deltas[name].to(tensor.dtype)
            yield name.replace(".base_layer.", "."), tensor

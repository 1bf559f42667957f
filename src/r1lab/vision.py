"""Vision-language models: the tiny Qwen2-VL built offline, the image processor that travels with
the tokenizer, prompts with image tokens, and the pixel inputs of a forward.

One code path serves the tiny model and any local Qwen2-VL / Qwen2.5-VL directory: the model is a
transformers `...ForConditionalGeneration`; its image processor is transformers' PIL-backed
`Qwen2VLImageProcessorPil` (no torchvision), read from the directory's preprocessor_config.json.

A prompt shows its images before the text of its first user message, each as
`<|vision_start|><|image_pad|>...<|vision_end|>` with one `<|image_pad|>` per merged patch (what
Qwen's own chat template and processor produce). The pixel inputs of a row are a `VisionInputs`:
its images' patches and their (t, h, w) grids. r1lab computes the multimodal rotary positions
itself (`get_rope_index`) and passes them in every forward, so no forward depends on state the
model kept from an earlier call (transformers caches `rope_deltas` on the module otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from r1lab.errors import ModelError

VISION_FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # model_type values whose pixel inputs this module builds
VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"
VISION_TOKENS = [VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD]
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END  # one image in a rendered prompt, before expansion
_PROCESSOR_ATTR = "r1lab_image_processor"


@dataclass
class VisionInputs:
    """The pixel inputs of one row: its images' patches in order and their grids."""

    pixel_values: torch.Tensor  # [patches, channels * temporal_patch * patch * patch]
    grid_thw: torch.Tensor  # [images, 3] (temporal, height, width) in patches


def is_vision_config(config: Any) -> bool:
    return getattr(config, "model_type", "") in VISION_FAMILIES


def is_vision_model(model: Any) -> bool:
    return is_vision_config(getattr(model, "config", None))


def freeze_vision_tower(model: Any, where: str) -> None:
    """Stop the vision tower's weights from learning (requires_grad off): the optimizer then holds
    only the language model's, and the tower's forward builds no graph, as the pixel inputs need no
    gradient. Not a VLM: ModelError naming `where`."""
    tower = getattr(getattr(model, "model", model), "visual", None) if is_vision_model(model) else None
    if tower is None:
        raise ModelError(f"{where}: the model ({getattr(getattr(model, 'config', None), 'model_type', type(model).__name__)}) "
                         "has no vision tower to freeze")
    tower.requires_grad_(False)


# --- the image processor rides on the tokenizer ---------------------------------------------------


def attach_image_processor(tokenizer, processor) -> None:
    """Every stage passes a model's tokenizer around; a VLM's carries its image processor with it."""
    setattr(tokenizer, _PROCESSOR_ATTR, processor)


def image_processor_of(tokenizer) -> Any | None:
    return getattr(tokenizer, _PROCESSOR_ATTR, None)


def tiny_image_processor(image_size: int, patch_size: int = 8):
    """Every image resized to about image_size x image_size pixels, in patch_size patches merged 2 x 2."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = image_size * image_size
    return Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                    min_pixels=pixels, max_pixels=pixels)


def load_image_processor(path) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    try:
        return Qwen2VLImageProcessorPil.from_pretrained(path)
    except Exception as e:
        raise ModelError(f"cannot load the image processor from {path}: {' '.join(str(e).split())[:200]}") from None


# --- the tiny model ----------------------------------------------------------------------------


def add_vision_tokens(tokenizer) -> None:
    """The Qwen2-VL special tokens (special: decoding with skip_special_tokens drops them)."""
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})


def build_tiny_vlm(tokenizer, cfg, seed: int = 0):
    """A Qwen2-VL of the tiny text model's size with a small vision tower (cfg: TinyModelConfig)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    head_dim = cfg.hidden_size // cfg.num_heads
    # Rotary frequencies per head, dealt one at a time to (temporal, height, width): transformers
    # cycles t, h, w over the entries of mrope_section, so [1] * n interleaves them. The blocked
    # split of the released checkpoints ([16, 24, 24] of 64) gives width only the lowest frequencies,
    # which turn by under 0.01 rad from one column of a 4 x 4 image to the next: the tiny model
    # could not tell its image tokens' columns apart (benchmarks/vlm_probe.py). Text tokens have
    # the same three positions, so text sees plain RoPE either way.
    section = [1] * (head_dim // 2)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD),
            ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_positions,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None),
        vision_config=dict(depth=cfg.vision_layers, embed_dim=cfg.vision_width, hidden_size=cfg.hidden_size,
                           num_heads=max(1, cfg.vision_width // 32), patch_size=cfg.patch_size, spatial_merge_size=2,
                           temporal_patch_size=2, mlp_ratio=2),
        tie_word_embeddings=True, **ids)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# --- prompts and pixel inputs ------------------------------------------------------------------


def with_image_placeholders(messages: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The messages with `count` image placeholders opening the first user message."""
    out = [dict(m) for m in messages]
    first = next((m for m in out if m.get("role", "user") == "user"), None)
    if first is None:
        raise ModelError("a prompt with images needs a user message to show them in")
    first["content"] = IMAGE_PLACEHOLDER * count + str(first.get("content", ""))
    return out


def pixel_inputs(tokenizer, images: Sequence[str], where: str) -> VisionInputs:
    """A problem's images (PNG data URLs) through the tokenizer's image processor."""
    from r1lab.images import decode_image

    processor = image_processor_of(tokenizer)
    if processor is None:
        raise ModelError(f"{where} shows images, but the model is text-only (no image processor); "
                         f"use a vision-language model (a Qwen2-VL directory, or model.path=tiny with image data)")
    out = processor(images=[decode_image(url, where) for url in images], return_tensors="pt")
    return VisionInputs(out["pixel_values"].float(), out["image_grid_thw"].long())


def expand_image_tokens(ids: list[int], tokenizer, vision: VisionInputs) -> list[int]:
    """Each single `<|image_pad|>` id of a rendered prompt repeated once per merged patch of its image."""
    pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    merge = image_processor_of(tokenizer).merge_size ** 2
    counts = (vision.grid_thw.prod(-1) // merge).tolist()
    if ids.count(pad) != len(counts):
        raise ModelError(f"the prompt holds {ids.count(pad)} image tokens for {len(counts)} images "
                         f"(does the prompt text contain {IMAGE_PAD} itself?)")
    out, k = [], 0
    for i in ids:
        if i == pad:
            out.extend([pad] * int(counts[k]))
            k += 1
        else:
            out.append(i)
    return out


def suppress_vision_tokens(logits: torch.Tensor, model) -> torch.Tensor:
    """The logits with the image / video / vision start-end tokens made impossible (a large negative
    number, not -inf, so that masked-out prompt positions stay finite): a model writes text, and an
    image token in a response would have no pixels behind it. The engine samples from, and the
    trainer scores, this same distribution."""
    c = model.config
    ids = torch.tensor([c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id],
                       device=logits.device)
    return logits.index_fill(-1, ids, -1e9)


def forward_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   vision: Sequence[VisionInputs | None]) -> dict[str, torch.Tensor]:
    """The keyword inputs a Qwen2-VL forward over a batch needs beyond ids and mask: the rows'
    pixel values and grids (concatenated in row order) and the [3, B, L] rotary positions, with
    the [B, 1] offset between them and the plain token positions (what decoding continues from)."""
    device = input_ids.device
    image_token = model.config.image_token_id
    rows = [v for v in vision if v is not None]
    grids = torch.cat([v.grid_thw for v in rows]).to(device) if rows else None
    token_types = (input_ids == image_token).int()
    counted = int(token_types.sum())
    merge = model.config.vision_config.spatial_merge_size ** 2
    expected = int((grids.prod(-1) // merge).sum()) if grids is not None else 0
    if counted != expected:
        hint = (" (this forward was given no pixels: DPO, PRMs, budget forcing and multi-turn episodes do not carry "
                "images yet)" if not rows else "")
        raise ModelError(f"the batch holds {counted} image tokens where its images need {expected}{hint}")
    inner = next(m for m in model.modules() if hasattr(m, "get_rope_index"))  # under LoRA too
    positions, deltas = inner.get_rope_index(input_ids, mm_token_type_ids=token_types, image_grid_thw=grids,
                                             attention_mask=attention_mask)
    out = {"position_ids": positions, "rope_deltas": deltas}
    if rows:
        out["pixel_values"] = torch.cat([v.pixel_values for v in rows]).to(device)
        out["image_grid_thw"] = grids
    return out

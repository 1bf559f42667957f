"""LoRA (Hu et al. 2021) through peft: W x + (alpha / r) B A x, with A, B trainable and W frozen.

`apply_lora` injects adapters into the model *in place* (the object the trainer, the rollout engine
and the reference copy already hold keeps working, its forward unchanged) and freezes every other
weight, so the optimizer, which takes the parameters that require grad, sees only the adapters.
`merge_lora` folds B A into W and removes the adapter modules, leaving a plain model that saves as
an ordinary Hugging Face directory: no peft needed to load an r1lab checkpoint.
"""

from __future__ import annotations

from typing import Any

from r1lab.config import LoRAConfig
from r1lab.errors import ConfigError
from r1lab.models import merged_weights  # re-exported: what an engine loads of an adapted model


def apply_lora(model: Any, cfg: LoRAConfig, where: str = "lora") -> Any | None:
    """The peft wrapper when cfg.r > 0 (keep it for merge_lora), else None and the model untouched."""
    if cfg.r <= 0:
        return None
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if not cfg.target_modules or missing:
        raise ConfigError(f"{where}.target_modules: {missing or '[]'} not in this model "
                          f"({type(model).__name__}; linear layers named e.g. q_proj, up_proj)")
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=list(cfg.target_modules), bias="none")
    wrapper = get_peft_model(model, config)
    assert wrapper.base_model.model is model  # injected in place: callers keep using `model`
    return wrapper


def merge_lora(wrapper: Any | None, model: Any) -> Any:
    """Fold the adapters into the weights and drop them; returns the plain model (`model` itself)."""
    if wrapper is None:
        return model
    merged = wrapper.merge_and_unload()
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in merged.__dict__:
            delattr(merged, attr)
    return merged


def lora_parameter_names(model: Any) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


__all__ = ["apply_lora", "lora_parameter_names", "merge_lora", "merged_weights"]

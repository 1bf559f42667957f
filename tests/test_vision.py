"""The vision-language path on the tiny Qwen2-VL: pixels reach the model, image tokens and the loss
mask line up, the hf engine and the trainer agree on log-probs (left vs right padding, rows with 0, 1
and 2 images), checkpoints round-trip with their image processor, the fast engine and text models
refuse images in one line, and an RL step with images updates the policy."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from r1lab.config import RunConfig, TinyModelConfig
from r1lab.errors import ModelError
from r1lab.models import build_tiny_model, build_tiny_tokenizer, load_model, save_model, token_logprobs
from r1lab.records import Problem
from r1lab.rollout import HFEngine, make_engine
from r1lab.rollout.base import SamplingParams, encode_prompts
from r1lab.rollout.fast import unsupported_reason
from r1lab.tasks import generate_splits, get_task
from r1lab.train.common import pad_sequences
from r1lab.train.sft import sft_examples
from r1lab.vision import (IMAGE_PAD, VISION_END, VISION_START, VisionInputs, add_vision_tokens,
                          attach_image_processor, build_tiny_vlm, image_processor_of, tiny_image_processor)

SMALL = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                        vision_layers=1, vision_width=32)


@pytest.fixture(scope="module")
def vlm():
    train, _ = generate_splits(["count_shapes", "digit_sum", "bar_value"], 12, 0, 1, seed=0)
    texts = [p.prompt for p in train] + [get_task(p.metadata["family"]).teacher_trace(p) for p in train]
    tok = build_tiny_tokenizer(texts)
    add_vision_tokens(tok)
    attach_image_processor(tok, tiny_image_processor(SMALL.image_size, SMALL.patch_size))
    return build_tiny_vlm(tok, SMALL, seed=0).eval(), tok, train


def _rows(tok, problems, responses):
    examples = sft_examples(tok, list(zip(problems, responses)))
    batch = pad_sequences([p for p, _ in examples], [r for _, r in examples], tok.pad_token_id)
    return batch, [e.vision for e in examples]


def assert_engine_logprobs_are_the_trainers(model, tok, completions) -> None:
    """The log-probs the engine reported for each sampled token equal the trainer's forward over the
    same ids and pixels (1e-4: float32 over a few layers, batched against incremental decoding)."""
    batch = pad_sequences([c.prompt_ids for c in completions], [c.response_ids for c in completions], tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                            vision=[c.vision for c in completions])[0]
    mask = batch["response_mask"].bool()
    for i, c in enumerate(completions):
        assert torch.allclose(lp[i][mask[i]], torch.tensor(c.logprobs), atol=1e-4), i


def test_image_tokens_sit_before_the_question_and_carry_no_loss(vlm):
    model, tok, train = vlm
    p = train[0]
    (prompt_ids, response_ids), = sft_examples(tok, [(p, "<think>x</think>\n<answer>3</answer>")])
    pad, start, end = (tok.convert_tokens_to_ids(t) for t in (IMAGE_PAD, VISION_START, VISION_END))
    first = prompt_ids.index(start)
    # a 64 px image in 8 px patches merged 2 x 2: 4 x 4 = 16 image tokens, contiguous, then the text
    assert prompt_ids[first + 1: first + 17] == [pad] * 16 and prompt_ids[first + 17] == end
    assert prompt_ids.count(pad) == 16
    assert p.prompt in tok.decode(prompt_ids[first + 18:])
    batch, vision = _rows(tok, [p], ["<think>x</think>\n<answer>3</answer>"])
    mask = batch["response_mask"][0]
    ids = batch["input_ids"][0]
    # column t scores token t+1: exactly the response tokens, never an image or prompt token
    assert mask.nonzero().squeeze(-1).tolist() == list(range(len(prompt_ids) - 1, len(prompt_ids) + len(response_ids) - 1))
    assert not (ids[1:][mask.bool()] == pad).any()


def test_pixels_reach_the_model(vlm):
    model, tok, train = vlm
    problems = train[:3]
    batch, vision = _rows(tok, problems, ["<think>a b</think>\n<answer>1</answer>"] * 3)

    def logprobs(vis):
        with torch.no_grad():
            return token_logprobs(model, batch["input_ids"], batch["attention_mask"], vision=vis)[0] * batch["response_mask"]

    real = logprobs(vision)
    zeroed = logprobs([VisionInputs(torch.zeros_like(v.pixel_values), v.grid_thw) for v in vision])
    g = torch.Generator().manual_seed(0)
    shuffled = logprobs([VisionInputs(v.pixel_values[torch.randperm(len(v.pixel_values), generator=g)], v.grid_thw)
                         for v in vision])
    swapped = logprobs([vision[1], vision[0], vision[2]])  # another problem's picture
    for other in (zeroed, shuffled, swapped):
        assert (real - other).abs().max() > 1e-4
    assert torch.equal(real, logprobs(vision))  # and the same pixels give the same numbers
    with pytest.raises(ModelError, match="image tokens where its images need"):
        token_logprobs(model, batch["input_ids"], batch["attention_mask"], vision=[None, None, None])


def test_image_rows_and_columns_get_rotary_angles_apart(vlm):
    """The tiny VLM can tell its image tokens' rows and columns apart: neighbours in a row or a
    column differ in some rotary angle by more than 0.2 rad (a blocked t/h/w split, as in the
    released checkpoints, gives width only frequencies that turn by < 0.01 rad a column)."""
    model, tok, train = vlm
    batch, vision = _rows(tok, train[:1], ["<answer>1</answer>"])
    from r1lab.vision import forward_inputs

    pos = forward_inputs(model, batch["input_ids"], batch["attention_mask"], vision)["position_ids"]
    image = batch["input_ids"][0] == model.config.image_token_id
    cos, sin = model.model.language_model.rotary_emb(torch.zeros(1), pos[:, :, image.nonzero().squeeze(-1)])
    cells = torch.stack([cos[0], sin[0]], -1).reshape(4, 4, -1, 2)  # a 64 px picture: 4 x 4 merged tokens, row-major
    apart = lambda a, b: (a - b).norm(dim=-1).amax(-1).min()  # noqa: E731 - the widest angle gap, at the closest pair
    assert apart(cells[:, 1:], cells[:, :-1]) > 0.2  # columns
    assert apart(cells[1:, :], cells[:-1, :]) > 0.2  # rows


def test_hf_engine_and_trainer_agree_with_zero_one_and_two_images(vlm):
    model, tok, train = vlm
    text = Problem("t", "What is 2 + 3?", "5")
    two = dataclasses.replace(train[1], id="two", images=train[1].images + train[2].images)
    problems = [train[0], text, two]
    engine = HFEngine(model, tok)
    cs = engine.generate(problems, SamplingParams(temperature=1.0, max_new_tokens=10), n=2, seed=3)
    assert [c.vision is None for c in cs] == [False, False, True, True, False, False]
    assert cs[4].vision.grid_thw.shape[0] == 2
    assert_engine_logprobs_are_the_trainers(model, tok, cs)
    vision_ids = {model.config.image_token_id, model.config.video_token_id,
                  model.config.vision_start_token_id, model.config.vision_end_token_id}
    assert not vision_ids & {t for c in cs for t in c.response_ids}


def test_checkpoint_round_trip_keeps_the_image_processor(vlm, tmp_path):
    model, tok, train = vlm
    save_model(model, tok, tmp_path / "ckpt")
    loaded, tok2 = load_model(tmp_path / "ckpt")
    assert image_processor_of(tok2) is not None and type(loaded).__name__ == "Qwen2VLForConditionalGeneration"
    a = encode_prompts(tok, train[:2])
    b = encode_prompts(tok2, train[:2])
    assert [x.ids for x in a] == [y.ids for y in b]
    assert all(torch.equal(x.vision.pixel_values, y.vision.pixel_values) for x, y in zip(a, b))
    batch, vision = _rows(tok, train[:2], ["<answer>2</answer>"] * 2)
    with torch.no_grad():
        before = token_logprobs(model, batch["input_ids"], batch["attention_mask"], vision=vision)[0]
        after = token_logprobs(loaded, batch["input_ids"], batch["attention_mask"], vision=vision)[0]
    assert torch.allclose(before, after)


def test_fast_engine_and_text_models_refuse_images_in_one_line(vlm):
    model, tok, train = vlm
    assert "vision-language model" in unsupported_reason(model)
    assert isinstance(make_engine(model, tok, "fast"), HFEngine)  # falls back, saying why
    text_tok = build_tiny_tokenizer(["hello world"])
    text_model = build_tiny_model(text_tok, SMALL)
    with pytest.raises(ModelError) as e:
        make_engine(text_model, text_tok, "fast").generate(train[:1], SamplingParams(max_new_tokens=2))
    assert "shows images, but the model is text-only" in str(e.value) and "\n" not in str(e.value)


def _rl_trainer(vlm, freeze_vision: bool = False):
    """An RL trainer over a copy of the tiny VLM (groups of 4, 8 new tokens, lr 1e-3), the copy, and
    the fixture's problems."""
    from r1lab.train.rl import RLTrainer

    model, tok, train = vlm
    model = copy.deepcopy(model)
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 8
    cfg.train.group_size = 4
    cfg.train.lr = 1e-3
    cfg.train.freeze_vision = freeze_vision
    return RLTrainer(cfg, model, tok, HFEngine(model, tok)), model, train


def test_an_rl_step_with_images_updates_the_policy_without_shared_prefix(vlm, caplog):
    trainer, model, train = _rl_trainer(vlm)
    cs = trainer.rollout(train[:2], seed=0)
    batch = trainer.make_batch(cs, torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]), torch.arange(2).repeat_interleave(4))
    assert batch.vision is not None and len(batch.vision) == 8
    before = [p.detach().clone() for p in model.model.visual.parameters()]
    with caplog.at_level("WARNING"):
        stats = trainer.update(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values() if isinstance(v, float))
    assert any("shared_prefix: off for batches with images" in r.message for r in caplog.records)
    # the gradient reached the vision tower through the image tokens
    assert any(not torch.equal(a, b) for a, b in zip(before, model.model.visual.parameters()))


def test_freeze_vision_updates_the_language_model_only(vlm):
    trainer, model, train = _rl_trainer(vlm, freeze_vision=True)
    tower = {n: p.detach().clone() for n, p in model.named_parameters() if ".visual." in n}
    lm = {n: p.detach().clone() for n, p in model.named_parameters() if ".visual." not in n}
    assert tower and lm
    cs = trainer.rollout(train[:2], seed=0)
    trainer.update(trainer.make_batch(cs, torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]), torch.arange(2).repeat_interleave(4)))
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], w) for n, w in tower.items())
    assert any(not torch.equal(after[n], w) for n, w in lm.items())
    # the optimizer holds the language model's parameters only
    held = {id(p) for g in trainer.policy.optimizer.param_groups for p in g["params"]}
    assert held == {id(after[n]) for n in lm}


def test_freeze_vision_on_a_text_model_is_one_clear_error():
    from r1lab.vision import freeze_vision_tower

    tok = build_tiny_tokenizer(["a b c 1 2 3"])
    with pytest.raises(ModelError, match=r"train.freeze_vision: the model \(qwen2\) has no vision tower"):
        freeze_vision_tower(build_tiny_model(tok, SMALL, seed=0), "train.freeze_vision")


def test_rl_cli_refuses_freeze_vision_on_a_text_model_before_evaluating(tmp_path, capsys):
    from pathlib import Path

    from r1lab.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "grpo.yaml"
    assert main(["rl", str(recipe), "train.freeze_vision=true", f"out_dir={tmp_path}", "data.train_size=64",
                 "data.sft_size=0", "data.eval_size=8", "--quiet"]) == 2
    assert "train.freeze_vision: the model (qwen2) has no vision tower to freeze" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/eval/*"))  # nothing was evaluated


def test_serve_reads_image_url_parts_and_an_endpoint_sends_them(vlm, tmp_path):
    import threading

    from r1lab.rollout.openai import OpenAIEngine
    from r1lab.serve import ChatModel, RequestError, make_server, parse_request

    model, tok, train = vlm
    url = train[0].images[0]
    req = parse_request({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "How many?"}]}]}, accepts_images=True)
    assert req["images"] == [url] and req["messages"] == [{"role": "user", "content": "How many?"}]
    bad = [({"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}, "data URL"),
           ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "not an image file"),
           ({"type": "video", "video": "x"}, "content part")]
    for part, message in bad:
        with pytest.raises(RequestError, match=message):
            parse_request({"messages": [{"role": "user", "content": [part]}]}, accepts_images=True)
    with pytest.raises(RequestError, match="text-only"):
        parse_request({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    with pytest.raises(RequestError, match="first user message"):
        parse_request({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": url}}]},
                                    {"role": "user", "content": "q"}]}, accepts_images=True)

    save_model(model, tok, tmp_path / "vlm")
    server = make_server(ChatModel(str(tmp_path / "vlm"), "vlm"), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address[:2]
        endpoint = OpenAIEngine(f"http://{host}:{port}/v1")
        params = SamplingParams(temperature=0.0, max_new_tokens=8)
        remote = endpoint.generate(train[:2], params)
        local = HFEngine(model, tok).generate(train[:2], params)
        assert [c.text for c in remote] == [c.text for c in local]  # the pictures made the trip
    finally:
        server.shutdown()
        server.server_close()


def test_eval_cli_scores_a_jsonl_of_image_problems_with_pass_at_k(vlm, tmp_path):
    import json

    from r1lab.cli import main
    from r1lab.images import data_url_bytes

    model, tok, train = vlm
    save_model(model, tok, tmp_path / "vlm")
    rows = []
    for i, p in enumerate(train[:3]):
        (tmp_path / f"pic{i}.png").write_bytes(data_url_bytes(p.images[0], "x"))
        rows.append({"id": p.id, "prompt": p.prompt, "answer": p.answer, "images": [f"pic{i}.png"]})
    (tmp_path / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval-out"
    assert main(["eval", str(tmp_path / "vlm"), "--data", str(tmp_path / "images.jsonl"), "--n", "2", "--out", str(out),
                 "--quiet", "sampling.max_new_tokens=6", "rollout.engine=hf"]) == 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert "pass@2" in json.dumps(summary)
    assert len((out / "eval" / "results.jsonl").read_text().splitlines()) == 3


def test_vllm_refuses_a_vision_language_model_in_one_line(vlm):
    from r1lab.errors import EngineError
    from r1lab.rollout.vllm import vllm_unavailable_reason

    if vllm_unavailable_reason() is not None:
        pytest.skip("vLLM is not installed here")
    model, tok, _ = vlm
    with pytest.raises(EngineError) as e:
        make_engine(model, tok, "vllm")
    assert "vision-language model (qwen2_vl)" in str(e.value) and "\n" not in str(e.value)


def test_a_tiny_qwen2_5_vl_takes_the_same_path(vlm):
    """Qwen2.5-VL (window attention in its vision tower, its own config) through the same engine and
    trainer code: the hf engine's log-probs equal the trainer's."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    _, tok, train = vlm
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (("image_token_id", IMAGE_PAD), ("video_token_id", "<|video_pad|>"),
                                                             ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                         eos_token_id=tok.eos_token_id, bos_token_id=None),
        vision_config=dict(depth=1, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=1, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=32, fullatt_block_indexes=[0]),
        tie_word_embeddings=True, **ids)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    cs = HFEngine(model, tok).generate(train[:3], SamplingParams(temperature=1.0, max_new_tokens=6), n=2, seed=0)
    assert_engine_logprobs_are_the_trainers(model, tok, cs)

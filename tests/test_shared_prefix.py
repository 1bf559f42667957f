"""Shared-prompt forwards (r1lab.train.prefix) against the plain forward of every row, in float64."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.common import pad_sequences, token_logprobs
from r1lab.train.prefix import SharedPrefix, prompt_lengths

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

# two prompts of different lengths sampled 3 and 2 times, one prompt once, one 1-token prompt
# (an empty prefix) twice; responses of different lengths, including a single token
PROMPTS = [[5, 9, 3, 7]] * 3 + [[4, 8, 2, 6, 1, 3, 9]] * 2 + [[7, 7, 2]] + [[11]] * 2
RESPONSES = [[12, 4, 4, 9, 2], [3], [8, 8, 1], [5, 5, 5, 5, 5, 5, 2], [6, 1], [9, 9, 3, 2], [4, 2, 6], [10]]


def _llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).double()


def _batch():
    return pad_sequences(PROMPTS, RESPONSES, pad_id=0)


def _models(tiny):
    qwen = copy.deepcopy(tiny[0]).double()  # Qwen2: q/k/v biases
    return {"llama": _llama(), "qwen2": qwen}


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.parametrize("cpu_attention", [False, True])
def test_shared_prefix_logprobs_and_entropy_equal_the_full_forward(tiny, name, cpu_attention):
    model = _models(tiny)[name]
    if cpu_attention:
        assert use_cpu_training_attention(model)
    t = _batch()
    rows = torch.arange(len(PROMPTS))
    with trainer_attention(), torch.no_grad():
        prefix = SharedPrefix.build(model, t["input_ids"], t["attention_mask"], t["response_mask"], rows)
        assert prefix is not None
        for idx in (rows, torch.tensor([7, 0, 4]), torch.tensor([3, 6])):  # micro-batches of any rows
            L = int(t["attention_mask"][idx].sum(-1).max())
            want_lp, want_ent = token_logprobs(model, t["input_ids"][idx, :L], t["attention_mask"][idx, :L],
                                               temperature=0.7, with_entropy=True)
            got_lp, got_ent = prefix.logprobs(idx, temperature=0.7, with_entropy=True)
            mask = t["response_mask"][idx, : L - 1].double()
            assert got_lp.shape == want_lp.shape == mask.shape
            torch.testing.assert_close(got_lp * mask, want_lp * mask, rtol=0, atol=1e-12)
            torch.testing.assert_close(got_ent * mask, want_ent * mask, rtol=0, atol=1e-12)
            prompt_cols = torch.arange(L - 1) < torch.tensor([len(PROMPTS[i]) - 1 for i in idx.tolist()]).unsqueeze(1)
            assert got_lp[prompt_cols].abs().max() == 0  # before the response: 0, as token_logprobs' skipped columns


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_shared_prefix_gradient_over_micro_batches_equals_the_full_forward(tiny, name):
    """Two micro-batches, each with its own backward, then the prompts' backward once: the same
    parameter gradient as the plain forward of all rows."""
    model = _models(tiny)[name]
    use_cpu_training_attention(model)
    t = _batch()
    weights = torch.randn(t["response_mask"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    parts = [torch.tensor([0, 3, 6, 5]), torch.tensor([1, 2, 4, 7])]

    def loss_of(lp, ent, idx, L):
        mask = t["response_mask"][idx, : L - 1].double()
        return ((lp * weights[idx, : L - 1] + 0.1 * ent) * mask).sum()

    model.zero_grad()
    with trainer_attention():
        for idx in parts:
            L = int(t["attention_mask"][idx].sum(-1).max())
            lp, ent = token_logprobs(model, t["input_ids"][idx, :L], t["attention_mask"][idx, :L], with_entropy=True)
            loss_of(lp, ent, idx, L).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    with trainer_attention():
        prefix = SharedPrefix.build(model, t["input_ids"], t["attention_mask"], t["response_mask"], torch.cat(parts))
        for idx in parts:
            L = int(t["attention_mask"][idx].sum(-1).max())
            lp, ent = prefix.logprobs(idx, with_entropy=True)
            loss_of(lp, ent, idx, L).backward()
        prefix.backward()
    for n, p in model.named_parameters():
        # not 1e-12: HF's RMSNorm runs in float32 even in a float64 model, and the shared prompt sums
        # its rows' gradients before that float32 step (the last layer, after every norm, agrees to 1e-16)
        assert float((p.grad - want[n]).abs().max()) <= 1e-6 * float(want[n].abs().max()), n


def test_shared_prefix_declines_when_nothing_repeats_or_the_attention_cannot_take_its_mask(tiny):
    t = pad_sequences([[5, 9, 3], [4, 8, 2]], [[1, 2], [3]], pad_id=0)
    model = _llama()
    assert SharedPrefix.build(model, t["input_ids"], t["attention_mask"], t["response_mask"], torch.arange(2)) is None
    t = _batch()
    eager = _llama("eager")
    assert SharedPrefix.build(eager, t["input_ids"], t["attention_mask"], t["response_mask"], torch.arange(8)) is None


def test_prompt_lengths_read_from_the_response_mask():
    t = _batch()
    assert prompt_lengths(t["attention_mask"], t["response_mask"]).tolist() == [len(p) for p in PROMPTS]


def test_shared_prefix_with_frozen_lower_layers_trains_the_rest_exactly(tiny):
    """As under LoRA on upper layers only: K/V below the first trainable layer need no gradient."""
    model = _llama()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.1."))  # layer 1 K/V need grads, layer 0 K/V do not
    t = _batch()
    idx = torch.arange(len(PROMPTS))
    L = int(t["attention_mask"].sum(-1).max())
    mask = t["response_mask"][:, : L - 1].double()
    lp, _ = token_logprobs(model, t["input_ids"][:, :L], t["attention_mask"][:, :L])
    (lp * mask).sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    prefix = SharedPrefix.build(model, t["input_ids"], t["attention_mask"], t["response_mask"], idx)
    lp, _ = prefix.logprobs(idx)
    (lp * mask).sum().backward()
    prefix.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, want[n], rtol=1e-9, atol=1e-12, msg=n)


def test_embedding_gradient_added_in_place_equals_autograds(tiny):
    """EmbeddingGradInPlace: the tied embedding's gradient over two micro-batches (plus the LM head's
    share through autograd) equals the plain backward's; the padding row gets none."""
    from r1lab.train.common import EmbeddingGradInPlace

    model = _models(tiny)["qwen2"]
    emb = model.get_input_embeddings()
    assert emb.padding_idx is not None and model.get_output_embeddings().weight is emb.weight  # tied
    t = _batch()
    t["input_ids"][0, 2] = emb.padding_idx  # a pad inside a row: its row must get no gradient
    parts = [torch.tensor([0, 3, 6, 5]), torch.tensor([1, 2, 4, 7])]
    grads = []
    for in_place in (False, True):
        model.zero_grad(set_to_none=True)
        with EmbeddingGradInPlace(model, enabled=in_place) as ctx:
            assert (ctx.module is not None) == in_place
            for idx in parts:
                L = int(t["attention_mask"][idx].sum(-1).max())
                lp, _ = token_logprobs(model, t["input_ids"][idx, :L], t["attention_mask"][idx, :L])
                (lp * t["response_mask"][idx, : L - 1]).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert "forward" not in vars(emb)  # the module's own forward is back
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-12, atol=1e-14, msg=n)
    assert grads[1]["model.embed_tokens.weight"].abs().sum() > 0

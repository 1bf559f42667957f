import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = [
    "<|im_start|>user\nCompute ((7 + 3) * 4) - 5.<|im_end|>\n<|im_start|>assistant\n",
    "<think>7 + 3 = 10\n10 * 4 = 40\n40 - 5 = 35</think>\n<answer>35</answer>",
    "<|im_start|>user\nUse 3, 5, 7 to make 22.<|im_end|>\n<|im_start|>assistant\n",
    "<think>3 * 5 = 15\n15 + 7 = 22</think>\n<answer>3 * 5 + 7</answer>",
] * 20


@pytest.fixture(scope="session")
def tiny():
    """A freshly built tiny Qwen2 model and its tokenizer (random weights)."""
    from r1lab.config import TinyModelConfig
    from r1lab.models import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer(CORPUS, vocab_size=300)
    model = build_tiny_model(tok, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128), seed=0)
    model.eval()
    return model, tok

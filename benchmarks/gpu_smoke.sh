#!/usr/bin/env bash
# On a lent GPU machine (the `device` tool): a short check that SFT, GRPO with a reference (KL), PPO
# with a critic, and eval all run on CUDA, on the tiny model. Locally it runs the same on the CPU.
#   bash benchmarks/gpu_smoke.sh        (R1 defaults to .venv/bin/r1lab; OUT_DIR to runs/gpu-smoke)
set -euo pipefail
R1=${R1:-.venv/bin/r1lab}
D=${OUT_DIR:-runs/gpu-smoke}
rm -rf "$D"
$R1 sft recipes/tiny/sft.yaml name=sft out_dir="$D" sft.max_steps=30 data.train_size=600 data.sft_size=400 \
  data.eval_size=32 eval.n=2 eval.ks=[1,2] --quiet
for r in grpo orz_ppo; do
  $R1 rl recipes/tiny/$r.yaml name=$r out_dir="$D" init_from="$D/sft/checkpoints/sft" train.steps=3 \
    train.prompts_per_step=4 data.train_size=600 data.sft_size=400 data.eval_size=32 eval.n=2 eval.ks=[1,2] train.eval_every=0 \
    algo.kl_coef=0.01 --quiet
done
python3 - "$D" <<'PY'
import json, sys, pathlib
for r in ("grpo", "orz_ppo"):
    rows = [json.loads(l) for l in pathlib.Path(sys.argv[1], r, "metrics.jsonl").open()]
    keys = ("reward/total", "loss/total", "policy/kl", "critic/value_loss", "rollout/logprob_diff_max")
    print(r, [{k: round(m[k], 5) for k in keys if m.get(k) is not None} for m in rows])
PY

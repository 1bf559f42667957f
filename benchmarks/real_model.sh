#!/usr/bin/env bash
# SmolLM2-135M-Instruct: held-out GSM8K test accuracy before SFT, after LoRA SFT, after full SFT and
# after GRPO, and the same SFT -> GRPO on the demo's arithmetic task. Figures go to
# BENCHMARKS.md ("The real model"), written by hand from the logs and summaries this leaves in runs/.
#
#   bash benchmarks/real_model.sh            # every stage; each command's wall time in runs/real_times.txt
#   STAGES="base sft_lora" bash benchmarks/real_model.sh
#
# Sizes are overridable (CPU-feasible defaults below are smaller than the recipes' where noted).
set -euo pipefail
R1=${R1:-.venv/bin/r1lab}   # e.g. R1="python3 -m r1lab" where r1lab is on PYTHONPATH only
EVAL_BS=${EVAL_BS:-32}
EXTRA=${EXTRA:-}   # overrides for every sft/rl stage, e.g. EXTRA="eval.batch_size=128" on a GPU
LIMIT=${LIMIT:-200}              # GSM8K test problems (the first LIMIT), greedy
MAXTOK=${MAXTOK:-256}            # generation budget of the test-set evals
SFT_STEPS=${SFT_STEPS:-300}
RL_STEPS=${RL_STEPS:-40}
STAGES=${STAGES:-"base sft_lora sft_full grpo arith"}
TIMES=runs/real_times.txt
mkdir -p runs

t() {  # t LABEL COMMAND... : run, log the wall time
  local label=$1; shift
  local t0=$(date +%s)
  echo "+ $*" | tee -a runs/real_commands.txt
  "$@"
  echo "$label $(( $(date +%s) - t0 ))s" | tee -a "$TIMES"
}

geval() {  # geval MODEL OUT PROMPT
  t "eval:$2" $R1 eval "$1" --benchmarks gsm8k --limit "$LIMIT" --max-new-tokens "$MAXTOK" --prompt "$3" \
    --out "runs/$2" --quiet eval.batch_size="$EVAL_BS"
}

for s in $STAGES; do
  case $s in
    base)
      geval smollm2-135m-instruct real-base-boxed boxed
      geval smollm2-135m-instruct real-base-r1 r1 ;;
    base_r1)
      geval smollm2-135m-instruct real-base-r1 r1 ;;
    sft_lora)
      t sft_lora $R1 sft recipes/real/smollm2_gsm8k_sft_lora.yaml sft.max_steps="$SFT_STEPS" $EXTRA --quiet
      geval runs/smollm2-gsm8k-sft-lora/checkpoints/sft real-sft-lora r1 ;;
    sft_full)
      t sft_full $R1 sft recipes/real/smollm2_gsm8k_sft_full.yaml sft.max_steps="$SFT_STEPS" $EXTRA --quiet
      geval runs/smollm2-gsm8k-sft-full/checkpoints/sft real-sft-full r1 ;;
    grpo)
      t grpo $R1 rl recipes/real/smollm2_gsm8k_grpo.yaml train.steps="$RL_STEPS" eval.at_start=false $EXTRA --quiet  # the SFT stage evaluated the start
      geval runs/smollm2-gsm8k-grpo/checkpoints/rl real-grpo r1 ;;
    arith)  # held-out: the recipe's 200 generated problems (never in training), greedy
      t eval:arith-base $R1 eval smollm2-135m-instruct --recipe recipes/real/smollm2_arith_sft.yaml --n 1 \
        --temperature 0 --out runs/real-arith-base --quiet
      t arith_sft $R1 sft recipes/real/smollm2_arith_sft.yaml $EXTRA --quiet
      t arith_grpo $R1 rl recipes/real/smollm2_arith_grpo.yaml train.steps="$RL_STEPS" $EXTRA --quiet ;;
  esac
done

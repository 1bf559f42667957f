#!/bin/bash
# SmolLM2-135M-Instruct before any training: accuracy and language mixing on the multilingual
# held-out set of benchmarks/language_mixing.py (24 word-arithmetic problems per language), greedy.
#   OMP_NUM_THREADS=2 /work/bin/heavy bash benchmarks/language_mixing_smollm2.sh [HELDOUT] [OUT]
set -euo pipefail
HELDOUT=${1:-/tmp/r1lab-language-mixing/heldout.jsonl}
OUT=${2:-/tmp/r1lab-smollm2-languages}
python -m r1lab models prepare smollm2-135m-instruct
python -m r1lab eval smollm2-135m-instruct --data "$HELDOUT" --n 1 --temperature 0 --max-new-tokens 160 \
    --out "$OUT" --quiet reward.verify_workers=0 'eval.ks=[1]'
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = json.loads((out / "eval" / "summary.json").read_text())
s = next(v for k, v in summary.items() if k != "_meta")
print(json.dumps({k: v for k, v in s.items() if k.startswith(("lang/", "avg@"))}, indent=1))
rows = [json.loads(l) for l in (out / "eval" / "results.jsonl").read_text().splitlines()]
for lang in ("en", "zh", "fr", "ja"):
    r = next(r for r in rows if r.get("language") == lang)
    print(lang, repr(r["samples"][0]["text"][:300]))
PY

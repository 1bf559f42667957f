"""Rewrite GSM8K train into r1lab's SFT / RL format (run from the repository root):

    python data/gsm8k/make_r1.py /work/shared/data/gsm8k_train.jsonl

Each GSM8K solution becomes an R1-format trace: its lines, with the calculator annotations
`<<48/2=24>>` removed, inside <think>...</think>, then the final number in <answer>N</answer>.
The prompt is r1lab.benchmarks.R1_PROMPT_TEMPLATE (the `--prompt r1` of `r1lab eval`). The last 200
problems of the train file are held out as a dev split (train_r1.jsonl has the first 7273), so that
training-time evaluation never touches the GSM8K test set. Rows are r1lab problems:
{id, prompt, answer, task, source, response}. Deterministic: same input, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from r1lab.benchmarks import R1_PROMPT_TEMPLATE

DEV = 200
_CALC = re.compile(r"<<[^<>]*>>")
EXPECTED_SHA256 = "d30ef01e18aef6666a7c1c5fd436b21f2872383f6c6572f6d695dafb335bcfe4"  # shared data README


def r1_trace(solution: str, answer: str) -> str:
    """GSM8K solution text (before `####`) -> `<think>\\nsteps\\n</think>\\n<answer>N</answer>`."""
    lines = [" ".join(_CALC.sub("", line).split()) for line in solution.replace("\u2028", "\n").splitlines()]
    steps = "\n".join(line for line in lines if line)
    return f"<think>\n{steps}\n</think>\n<answer>{answer}</answer>"


def convert(row: dict) -> dict:
    return {"id": row["id"], "prompt": R1_PROMPT_TEMPLATE.format(problem=row["problem"]), "answer": row["answer"],
            "task": "math", "source": "gsm8k-train", "response": r1_trace(row["solution"], row["answer"])}


def main(src: str, out_dir: str = "data/gsm8k") -> None:
    data = Path(src).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPECTED_SHA256:
        sys.exit(f"{src}: sha256 {digest}, expected {EXPECTED_SHA256}")
    rows = [convert(json.loads(line)) for line in data.decode("utf-8").splitlines() if line.strip()]
    leftovers = [r["id"] for r in rows if "<<" in r["response"] or ">>" in r["response"]]
    if leftovers:
        sys.exit(f"calculator annotations left in {leftovers[:5]}")
    out = Path(out_dir)
    for name, part in (("train_r1.jsonl", rows[:-DEV]), ("dev_r1.jsonl", rows[-DEV:])):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        (out / name).write_text(text, encoding="utf-8")
        print(f"{out / name}: {len(part)} rows, sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    main(*sys.argv[1:])

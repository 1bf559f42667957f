"""A deterministic sample of the MATH training split (run from the repository root):

    python data/math/make_sample.py /work/shared/data/math_train.jsonl

Every 7th problem of the split in its file order (rows 0, 7, 14, ...: 1,072 problems, all seven
subjects and five levels), with the fields id, problem, answer, subject, level; the solutions are
left out to keep the file small. Used as real, presumed-clean training rows by the decontamination
test (tests/test_data_decontam_quality.py). Deterministic: same input, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

STEP = 7
EXPECTED_SHA256 = "4568fbbaa122bec4c215e56e2c95316b59a5de84aa304c0cee73408986614e52"  # the source file


def main(src: str, out: str = "data/math/train_sample.jsonl") -> None:
    raw = Path(src).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != EXPECTED_SHA256:
        sys.exit(f"{src}: sha256 {digest}, expected {EXPECTED_SHA256}")
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    keep = [{k: r[k] for k in ("id", "problem", "answer", "subject", "level")} for r in rows[::STEP]]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep)
    Path(out).write_text(text, encoding="utf-8")
    print(f"{out}: {len(keep)} rows, sha256 {hashlib.sha256(text.encode('utf-8')).hexdigest()}")


if __name__ == "__main__":
    main(*sys.argv[1:])

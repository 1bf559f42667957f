"""Score a model on held-out problems: n samples each, verified, summarised, saved per problem."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm.auto import tqdm

from r1lab.eval.metrics import avg_at_k, majority_at_k, pass_at_k
from r1lab.records import Problem, write_jsonl
from r1lab.rollout.base import SamplingParams
from r1lab.verify import verify_batch


@dataclass
class EvalResult:
    summary: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)


def summarise(rows: list[dict[str, Any]], n: int, ks: list[int]) -> dict[str, float]:
    samples = [s for r in rows for s in r["samples"]]
    correct_len = [s["length"] for s in samples if s["correct"]]
    wrong_len = [s["length"] for s in samples if not s["correct"]]
    out: dict[str, float] = {
        "problems": len(rows),
        "samples": len(samples),
        f"avg@{n}": mean(r["avg"] for r in rows) if rows else 0.0,
        f"maj@{n}": mean(r["maj"] for r in rows) if rows else 0.0,
    }
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = mean(pass_at_k(n, r["correct"], k) for r in rows) if rows else 0.0
    out["len_correct"] = mean(correct_len) if correct_len else float("nan")
    out["len_wrong"] = mean(wrong_len) if wrong_len else float("nan")
    out["len_mean"] = mean(s["length"] for s in samples) if samples else 0.0
    out["truncated"] = mean(s["finish"] == "length" for s in samples) if samples else 0.0
    out["unparsable"] = mean(s["status"] == "unparsable" for s in samples) if samples else 0.0
    return out


def evaluate(
    engine,
    problems: list[Problem],
    params: SamplingParams,
    n: int = 8,
    ks: list[int] | None = None,
    seed: int = 0,
    verify_timeout: float = 5.0,
    verify_workers: int = 2,
    out_path: str | Path | None = None,
    desc: str = "eval",
    show_progress: bool = True,
) -> EvalResult:
    ks = ks or [1, n]
    t0 = time.time()
    bar = tqdm(total=len(problems) * n, desc=desc, unit="sample", disable=not show_progress, dynamic_ncols=True)
    completions = engine.generate(problems, params, n=n, seed=seed, on_batch=bar.update)
    bar.close()
    expanded = [p for p in problems for _ in range(n)]
    verdicts = verify_batch(expanded, [c.text for c in completions], timeout=verify_timeout, workers=verify_workers)
    rows = []
    for i, p in enumerate(problems):
        cs, vs = completions[i * n : (i + 1) * n], verdicts[i * n : (i + 1) * n]
        ok = [v.correct for v in vs]
        rows.append(
            {
                "id": p.id,
                "prompt": p.prompt,
                "answer": p.answer,
                "n": n,
                "correct": sum(ok),
                "avg": avg_at_k(ok),
                "maj": majority_at_k([v.extracted for v in vs], ok),
                "samples": [
                    {
                        "text": c.text,
                        "extracted": v.extracted,
                        "status": v.status,
                        "reason": v.reason,
                        "correct": v.correct,
                        "length": len(c.response_ids),
                        "finish": c.finish_reason,
                    }
                    for c, v in zip(cs, vs)
                ],
            }
        )
    summary = summarise(rows, n, ks)
    elapsed = time.time() - t0
    gen_tokens = sum(len(c.response_ids) for c in completions)
    summary["seconds"] = elapsed
    summary["tokens_per_s"] = gen_tokens / max(elapsed, 1e-9)
    if out_path is not None:
        write_jsonl(out_path, rows)
    return EvalResult(summary, rows)

"""The tiny recipes of the families beyond math (code repair, sorting, poems, translation) run end
to end: SFT on teacher traces, then two GRPO steps with each family's own reward terms logged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from r1lab.pipeline import plan_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
TERMS = {"code_repair": ("repair_tests", "repair_similarity"), "sorting": ("sort_correct", "sort_speed"),
         "poem": ("poem_lines", "poem_acrostic", "poem_syllables", "poem_rhyme"), "translation": ("chrf", "bleu")}
SMALL = ["model.tiny.hidden_size=64", "model.tiny.num_layers=1", "model.tiny.intermediate_size=128",
         "data.train_size=80", "data.sft_size=40", "data.eval_size=4", "sft.epochs=1", "train.steps=2",
         "train.prompts_per_step=2", "train.group_size=2", "train.eval_every=0", "eval.n=1", "eval.ks=[1]",
         "reward.verify_workers=1"]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TERMS))
def test_tiny_recipe_runs_and_logs_its_terms(family, tmp_path):
    plan = plan_pipeline(ROOT / "recipes" / "tiny" / f"{family}.yaml", [f"out_dir={tmp_path}", "name=r", *SMALL])
    run_pipeline(plan, show_progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "r" / "01-rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for term in TERMS[family]:
            assert math.isfinite(r[f"reward/{term}"]), (family, term)

"""The DPO stage: response-only sequence log-probs, the reference computed once from the starting
weights, micro-batching that leaves the update unchanged, the command's errors, and a tiny run on
the demo's SFT model that raises the chosen-vs-rejected margin and held-out accuracy."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from r1lab.cli import main
from r1lab.config import DPOConfig
from r1lab.data.pairs import PreferencePair
from r1lab.runs import MetricsWriter, read_metrics
from r1lab.train.common import token_logprobs
from r1lab.train.dpo import dpo_examples, sequence_logprobs, train_dpo

PAIRS = [
    PreferencePair("a", "Compute ((7 + 3) * 4) - 5.", "<think>7 + 3 = 10\n10 * 4 = 40\n40 - 5 = 35</think>\n<answer>35</answer>",
                   "<think>7 + 3 = 10</think>\n<answer>10</answer>"),
    PreferencePair("b", "Use 3, 5, 7 to make 22.", "<think>3 * 5 = 15\n15 + 7 = 22</think>\n<answer>3 * 5 + 7</answer>",
                   "<answer>3 + 5</answer>"),
    PreferencePair("c", "Compute 7 + 3.", "<answer>10</answer>", "<think>7</think>\n<answer>73</answer>"),
]


def test_sequence_logprobs_sum_only_the_response_tokens(tiny):
    model, tok = tiny
    ex = dpo_examples(tok, PAIRS)
    assert all(c[-1] == tok.eos_token_id and r[-1] == tok.eos_token_id for _, c, r in ex)
    sums, lengths = sequence_logprobs(model, ex, tok.pad_token_id)
    assert lengths.tolist() == [len(c) for _, c, _ in ex] + [len(r) for _, _, r in ex]
    # each row on its own, no padding: the log-probs of the response tokens, summed
    for i, (p, c, r) in enumerate(ex):
        for j, resp in ((i, c), (i + len(ex), r)):
            ids = torch.tensor([p + resp])
            lp, _ = token_logprobs(model, ids, torch.ones_like(ids))
            assert sums[j].item() == pytest.approx(lp[0, len(p) - 1:].sum().item(), abs=1e-4)


def _train(tiny, **kw):
    model, tok = tiny
    model = copy.deepcopy(model)
    cfg = DPOConfig(**{"lr": 1e-3, "batch_size": 3, "micro_batch_size": 3, "warmup_steps": 0, "epochs": 1, **kw})
    rows = []

    class Rows(MetricsWriter):
        def __init__(self):
            pass

        def write(self, step, metrics):
            rows.append({"step": step, **metrics})

    summary = train_dpo(model, tok, dpo_examples(tok, PAIRS), cfg, metrics=Rows(), show_progress=False)
    return model, rows, summary


@pytest.mark.parametrize("loss", ["dpo", "rpo", "ipo"])
def test_first_step_starts_at_the_reference(tiny, loss):
    _, rows, _ = _train(tiny, loss=loss, max_steps=1, beta=0.5)
    first = rows[0]
    assert first["dpo/margin"] == pytest.approx(0.0, abs=1e-5) and first["dpo/reward_chosen"] == pytest.approx(0.0, abs=1e-5)
    if loss == "dpo":
        assert first["dpo/loss"] == pytest.approx(math.log(2), abs=1e-5)
    if loss == "ipo":  # (0 - 1 / (2 beta))^2 = 1
        assert first["dpo/loss"] == pytest.approx(1.0, abs=1e-4)
    if loss == "rpo":
        assert first["dpo/loss"] == pytest.approx(math.log(2) + first["dpo/nll"], abs=1e-5)


def test_micro_batching_does_not_change_the_update(tiny):
    whole, rows_whole, _ = _train(tiny, max_steps=2, micro_batch_size=3)
    split, rows_split, _ = _train(tiny, max_steps=2, micro_batch_size=1)
    for a, b in zip(rows_whole, rows_split):
        assert a["dpo/loss"] == pytest.approx(b["dpo/loss"], abs=1e-5)
    for (name, p), q in zip(whole.named_parameters(), split.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_training_on_fixed_pairs_raises_the_margin(tiny):
    _, rows, summary = _train(tiny, epochs=15, beta=0.5)
    assert [r["step"] for r in rows] == list(range(1, 16)) and summary["dpo/steps"] == 15
    assert rows[-1]["dpo/margin"] > 1.0 and rows[-1]["dpo/accuracy"] == 1.0
    assert rows[-1]["dpo/loss"] < 0.5 * math.log(2)
    assert all(math.isfinite(v) for r in rows for v in r.values())


def test_simpo_needs_no_reference(tiny):
    _, rows, _ = _train(tiny, loss="simpo", beta=2.0, gamma=0.5, epochs=10)
    assert rows[0]["dpo/margin"] != 0  # the length-normalised likelihoods differ from the start
    assert rows[-1]["dpo/margin"] > rows[0]["dpo/margin"]


@pytest.mark.parametrize("overrides, message", [
    (["dpo.loss=dpoo"], "unknown preference loss 'dpoo'"),
    (["dpo.chosen=longest"], "unknown chosen policy 'longest'"),
    (["dpo.rounds=0"], "dpo.rounds must be >= 1"),
    (["dpo.samples_per_problem=1"], "dpo.samples_per_problem must be >= 2"),
    (["dpo.pairs_path=PAIRS", "dpo.rounds=2"], "iterative rounds"),
    (["dpo.pairs_path=missing.jsonl"], "missing.jsonl: file not found"),
])
def test_dpo_command_rejects_bad_settings_before_writing(tmp_path, capsys, overrides, message):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    overrides = [o.replace("PAIRS", str(pairs)).replace("missing.jsonl", str(tmp_path / "missing.jsonl")) for o in overrides]
    assert main(["dpo", "recipes/tiny/dpo.yaml", "--quiet", f"out_dir={tmp_path / 'runs'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()

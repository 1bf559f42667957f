"""The DPO stage: response-only sequence log-probs, the reference computed once from the starting
weights, micro-batching that leaves the update unchanged, the command's errors, and a tiny run on
the demo's SFT stage (test size) that raises the chosen-vs-rejected margin without costing held-out
accuracy, and the same stage on a prepared pairs file."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from r1lab.cli import main
from r1lab.config import DPOConfig
from r1lab.data.pairs import PreferencePair
from r1lab.runs import MetricsWriter
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
    args = {k: kw.pop(k) for k in ("beta", "nll_coef", "gamma") if k in kw}
    cfg = DPOConfig(**{"lr": 1e-3, "batch_size": 3, "micro_batch_size": 3, "warmup_steps": 0, "epochs": 1, "loss_args": args, **kw})
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


def test_simper_needs_no_reference_and_widens_the_margin(tiny):
    _, rows, _ = _train(tiny, loss="simper", epochs=10)
    assert rows[-1]["dpo/margin"] > rows[0]["dpo/margin"] and rows[-1]["dpo/loss"] < rows[0]["dpo/loss"]


@pytest.mark.parametrize("overrides, message", [
    (["dpo.loss=dpoo"], "dpo.loss='dpoo': expected one of 'dpo', 'rpo'"),
    (["dpo.chosen=longest"], "dpo.chosen='longest': expected one of 'shortest', 'random', 'confident'"),
    (["dpo.rounds=0"], "dpo.rounds=0: expected an integer >= 1"),
    (["dpo.samples_per_problem=1"], "dpo.samples_per_problem=1: expected 2 or more"),
    (["dpo.pairs_path=PAIRS", "dpo.rounds=2"], "iterative rounds"),
    (["dpo.pairs_path=missing.jsonl"], "missing.jsonl': expected an existing file (not found)"),
    (["dpo.loss_args.beta=0"], "dpo.loss_args.beta=0.0: expected a number > 0"),
])
def test_dpo_command_rejects_bad_settings_before_writing(tmp_path, capsys, overrides, message):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    overrides = [o.replace("PAIRS", str(pairs)).replace("missing.jsonl", str(tmp_path / "missing.jsonl")) for o in overrides]
    assert main(["dpo", "recipes/tiny/dpo.yaml", "--quiet", f"out_dir={tmp_path / 'runs'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


# the demo's pipeline at test size: multi-step arithmetic (difficulty 2), a narrower model, fewer traces
DEMO_SMALL = ["model.tiny.hidden_size=96", "model.tiny.num_layers=2", "model.tiny.intermediate_size=288",
              "data.difficulty=2", "data.train_size=1200", "data.sft_size=600", "data.eval_size=64",
              "reward.verify_workers=1", "sampling.max_new_tokens=40", "eval.n=16", "eval.ks=[1,16]"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models' matmuls are too small to gain from a second thread, and on a shared CPU
    threads that wait on each other make a step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_sft(tmp_path_factory):
    """The demo's SFT stage at test size: right on some problems, wrong on others."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["sft", "recipes/tiny/sft.yaml", "--quiet", f"out_dir={out}", "name=sft", *DEMO_SMALL,
                 "sft.epochs=30", "sft.batch_size=32", "sft.lr=3e-3"]) == 0
    return out / "sft" / "checkpoints" / "sft"


def _avg(path):
    rows = [json.loads(l) for l in Path(path).read_text().splitlines()]
    return sum(r["correct"] for r in rows) / sum(len(r["samples"]) for r in rows)


def test_iterative_dpo_raises_the_margin_and_keeps_held_out_accuracy(demo_sft, tmp_path):
    assert main(["dpo", "recipes/tiny/iterative_dpo.yaml", "--quiet", f"out_dir={tmp_path}", "name=idpo", *DEMO_SMALL,
                 f"init_from={demo_sft}", "dpo.rounds=4", "dpo.prompts_per_round=128"]) == 0
    run = tmp_path / "idpo"
    for rel in ["report.md", "plots/dpo.png", "dpo_metrics.jsonl", "dpo_rounds.json", "eval/start.jsonl", "eval/dpo.jsonl",
                "checkpoints/dpo/model.safetensors", "checkpoints/dpo-round4/model.safetensors"]:
        assert (run / rel).is_file(), rel
    rounds = json.loads((run / "dpo_rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for r in rounds:
        manifest = json.loads((run / "data" / f"pairs-round{r['round']}.manifest.json").read_text())
        assert manifest["rows_out"] == r["round/pairs"] > 0 and manifest["steps"][0]["rows_in"] == 128
        assert r["round/generated_samples"] == 128 * 8
        sampler = demo_sft if r["round"] == 1 else run / "checkpoints" / f"dpo-round{r['round'] - 1}"
        assert manifest["steps"][0]["settings"]["model"] == str(sampler)  # each round samples from the last
        # each pass's pairs were measured before their own update: on its last pass the policy
        # prefers the chosen responses it trained on
        assert r["dpo/margin"] > 0 and r["dpo/accuracy"] > 0.5
    # At this size the held-out gain is within sampling noise, so the test asserts only that
    # training on self-generated pairs did not cost accuracy; the gain is measured at the demo's
    # size (benchmarks/dpo_vs_grpo.py).
    start, end = _avg(run / "eval" / "start.jsonl"), _avg(run / "eval" / "dpo.jsonl")
    assert end > start - 0.02, (start, end)
    assert "| start |" in (run / "report.md").read_text() and "round 4" in (run / "report.md").read_text()

    # the same stage on a prepared pairs file (the first round's): one pass, no sampling
    pairs = run / "data" / "pairs-round1.jsonl"
    assert main(["dpo", "recipes/tiny/dpo.yaml", "--quiet", f"out_dir={tmp_path}", "name=offline", *DEMO_SMALL,
                 f"init_from={demo_sft}", f"dpo.pairs_path={pairs}", "dpo.epochs=3", "eval.at_start=false"]) == 0
    offline = json.loads((tmp_path / "offline" / "dpo_rounds.json").read_text())
    assert len(offline) == 1 and "round/pairs" not in offline[0] and offline[0]["dpo/margin"] > 0
    assert not (tmp_path / "offline" / "data" / "pairs-round1.jsonl").exists()

"""Continued pre-training (`r1lab cpt`, the pipeline's `cpt` stage): packing by hand, attention that
stops at document boundaries (float64 against each document alone), the loss and held-out perplexity
against separate forwards, the corpus reader on hostile input, one-line errors that leave nothing
behind, and a run resumed from any checkpoint (and after SIGKILL) that is the uninterrupted run."""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1lab.cli import main
from r1lab.config import CPTConfig, TinyModelConfig, load_config
from r1lab.data.corpus import read_corpus
from r1lab.errors import ConfigError, DataError
from r1lab.models import build_tiny_model, build_tiny_tokenizer, logprobs_of_targets
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.checkpoint import CPT_STATE_DIR, checkpoints
from r1lab.train.cpt import cpt_loss, heldout_nll, pack_documents, packed_logprobs, split_documents, train_cpt
from helpers_runs import run_and_kill_at

ROOT = Path(__file__).resolve().parents[1]
EOS = 2
TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, max_positions=64)


# --- packing -----------------------------------------------------------------------------------


def test_documents_are_packed_with_eos_into_full_rows_positions_restarting_per_document():
    docs = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
    # stream: 5 6 7 E | 8 9 10 11 12 E | 13 14 E  (13 tokens): three rows of 4, one tail token left out
    (p,) = pack_documents(docs, EOS, 4)
    assert p.input_ids.tolist() == [[5, 6, 7, 2], [8, 9, 10, 11], [12, 2, 13, 14]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 0, 1]]
    # a target is the next token of the same document: 13 (a new document) is not predicted from EOS
    assert p.target_mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 1]]
    assert p.dropped_tokens == 1
    (c,) = pack_documents(docs, EOS, 4, reset=False)
    assert c.input_ids.tolist() == p.input_ids.tolist()
    assert c.position_ids.tolist() == [[0, 1, 2, 3]] * 3 and c.target_mask.tolist() == [[1, 1, 1]] * 3
    full, tail = pack_documents(docs, EOS, 4, keep_tail=True)
    assert full.input_ids.tolist() == p.input_ids.tolist() and full.dropped_tokens == 0
    assert tail.input_ids.tolist() == [[2]] and tail.position_ids.tolist() == [[0]] and tail.target_mask.shape == (1, 0)
    (exact,) = pack_documents([[5, 6, 7]], EOS, 4)  # exactly one row: nothing left out
    assert exact.input_ids.tolist() == [[5, 6, 7, 2]] and exact.dropped_tokens == 0


def test_the_held_out_documents_depend_on_their_texts_only():
    docs = [f"document {i}" for i in range(20)]
    train, held = split_documents(docs, 0.1)
    assert len(held) == 2 and sorted(train + held) == sorted(docs)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(split_documents(shuffled, 0.1)[1]) == sorted(held)
    assert split_documents(docs, 0.0) == (docs, [])
    assert len(split_documents(docs[:3], 0.01)[1]) == 1  # a fraction > 0 holds out at least one


# --- attention at document boundaries, the loss, the held-out perplexity ----------------------


def _model():
    tok = build_tiny_tokenizer(["12 + 34 = 46, so the answer is 46."] * 4)
    return build_tiny_model(tok, TINY, seed=3).double()


def _alone(model, ids: list[int]) -> torch.Tensor:
    """The log-probs of a document piece run by itself (positions from 0, nothing before it)."""
    x = torch.tensor([ids])
    return logprobs_of_targets(model(input_ids=x).logits[:, :-1], x[:, 1:])[0][0]


@pytest.mark.numerics
@pytest.mark.parametrize("trainer", [False, True])
def test_a_packed_row_gives_each_document_the_log_probs_it_has_alone(trainer):
    model = _model()
    if trainer:
        assert use_cpu_training_attention(model)
    (p,) = pack_documents([[5, 6, 7], [8, 9, 10, 11, 12, 13]], EOS, 8)  # row: 5 6 7 E 8 9 10 11
    with trainer_attention():
        packed = packed_logprobs(model, p).double()[0]
        crossed = packed_logprobs(model, pack_documents([[5, 6, 7], [8, 9, 10, 11, 12, 13]], EOS, 8, reset=False)[0],
                                  reset=False).double()[0]
    first, second = _alone(model, [5, 6, 7, EOS]), _alone(model, [8, 9, 10, 11])
    # the model runs in float64 and log-probs come back in float32 (logprobs_of_targets): the packed
    # and the lone forwards agree to one float32 rounding of values of about 6 (the other document's
    # scores are excluded exactly, not merely made small)
    tol = 2 * torch.finfo(torch.float32).eps * 8
    assert torch.allclose(packed[:3], first.double(), atol=tol, rtol=0)
    assert torch.allclose(packed[4:], second.double(), atol=tol, rtol=0)
    assert torch.allclose(crossed[:3], first.double(), atol=tol, rtol=0)  # before the boundary nothing differs ...
    assert (crossed[4:] - second.double()).abs().max() > 1e-4  # ... after it, attention across documents does


def test_the_loss_is_the_token_mean_nll_of_the_targets_and_the_perplexity_its_exp():
    model = _model()
    docs = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
    (p,) = pack_documents(docs, EOS, 4)
    loss, n = cpt_loss(model, p)
    # by hand: the targets of each document piece, each piece run alone
    pieces = [[5, 6, 7, EOS], [8, 9, 10, 11], [12, EOS], [13, 14]]
    nll = torch.cat([-_alone(model, piece) for piece in pieces])
    assert n == 8 == len(nll)
    assert math.isclose(loss.item(), nll.mean().item(), rel_tol=1e-6)  # float32 log-probs
    parts = pack_documents(docs, EOS, 4, keep_tail=True)
    mean, count = heldout_nll(model, parts, batch_size=2)
    assert count == 8 and math.isclose(mean, nll.mean().item(), rel_tol=1e-6)  # the tail row [E] has no target


# --- the corpus reader on hostile input --------------------------------------------------------


def test_the_corpus_reader_takes_jsonl_text_files_and_directories(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "  "}\n{"text": "two", "x": 1}\n')
    (tmp_path / "d" / "b.md").write_text("# three\n")
    (tmp_path / "d" / "c.txt").write_text("four\nstill four\n")
    (tmp_path / "d" / "skip.csv").write_text("not a corpus file")
    corpus = read_corpus(tmp_path / "d")
    assert corpus.documents == ["one", "two", "# three\n", "four\nstill four\n"] and corpus.blank == 1
    assert read_corpus(tmp_path / "d" / "a.jsonl").documents == ["one", "two"]


@pytest.mark.parametrize("name, content, field, message", [
    ("c.jsonl", '{"text": "ok"}\n{"body": "x", "id": 3}\n', "text", r"c.jsonl:2: no 'text' field \(cpt.text_field; the row has: body, id\)"),
    ("c.jsonl", '{"text": "ok"}\n{"text": ["a", "b"]}\n', "text", r"c.jsonl:2: 'text' is not text \(list\)"),
    ("c.jsonl", '{"text": "ok"}\n{"text": "unterminated\n', "text", r"c.jsonl:2: not valid JSON"),
    ("c.jsonl", '["text", "a list"]\n', "text", r"c.jsonl:1: expected a JSON object with a 'text' field, got list"),
    ("c.jsonl", '{"text": ""}\n{"text": " \\n "}\n', "text", r"no text \(2 documents, all blank\)"),
    ("c.jsonl", "", "text", r"no text \(0 documents, all blank\)"),
    ("c.txt", b"caf\xe9 latin-1", "text", r"c.txt: not UTF-8 text \(byte 3\)"),
    ("c.csv", "text\nhello\n", "text", r"expected a .jsonl, .txt, .md file or a directory of them"),
])
def test_hostile_corpus_files_get_one_line_naming_file_and_row(tmp_path, name, content, field, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message) as e:
        read_corpus(path, field)
    assert "\n" not in str(e.value)


def test_a_missing_path_or_an_empty_directory_is_named(tmp_path):
    with pytest.raises(DataError, match=r"cpt.corpus=.*nowhere: not found"):
        read_corpus(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no .jsonl, .txt, .md file in this directory"):
        read_corpus(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"cpt.corpus: no corpus given"):
        read_corpus("")


# --- `r1lab cpt`: bad input is one line, exit 2, nothing written --------------------------------

SMALL = ["model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
         "model.tiny.intermediate_size=64", "data.train_size=60", "data.sft_size=40", "data.eval_size=4",
         "reward.verify_workers=0", "eval.n=1", "eval.ks=[1]", "sampling.max_new_tokens=8"]


def _jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", r"cpt.corpus='.*missing.jsonl': expected an existing file or directory \(not found\)"),
    ("empty", r"empty.jsonl: no text \(0 documents, all blank\)"),
    ("no_field", r"no_field.jsonl:1: no 'text' field \(cpt.text_field; the row has: body\)"),
    ("short_bytes", r"shorter than one sequence \(at most \d+ tokens of training text, cpt.seq_len=64\)"),
    ("short_tokens", r"shorter than one sequence \(\d+ tokens of training text with EOS, cpt.seq_len=64\)"),
    ("too_long", r"cpt.seq_len=64: longer than the model's 32 positions"),
    ("all_held_out", r"1 document\(s\), all held out by cpt.heldout=0.5"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case, message):
    corpus = {
        "missing": tmp_path / "missing.jsonl",
        "empty": _jsonl(tmp_path / "empty.jsonl", []),
        "no_field": _jsonl(tmp_path / "no_field.jsonl", ["one", "two"], field="body"),
        "short_bytes": _jsonl(tmp_path / "short_bytes.jsonl", ["1 + 1 = 2", "2 + 2 = 4"]),
        # 120 bytes, but "Compute" is one token of the tiny tokenizer: far fewer than 64 tokens
        "short_tokens": _jsonl(tmp_path / "short_tokens.jsonl", ["Compute " * 15, "x"]),
        "too_long": _jsonl(tmp_path / "too_long.jsonl", ["Compute 1 + 2. " * 30, "y"]),
        "all_held_out": _jsonl(tmp_path / "all_held_out.jsonl", ["Compute 1 + 2. " * 30]),
    }[case]
    extra = {"too_long": ["model.tiny.max_positions=32"], "all_held_out": ["cpt.heldout=0.5"]}.get(case, [])
    out = tmp_path / "runs"
    code = main(["cpt", str(ROOT / "recipes" / "tiny" / "cpt.yaml"), f"cpt.corpus={corpus}", "cpt.seq_len=64",
                 "cpt.heldout=0", f"out_dir={out}", "name=bad", "--quiet", *SMALL, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("r1lab: error: ") and "\n" not in err and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_a_pipeline_names_the_cpt_stage_of_a_bad_corpus_before_anything_runs(tmp_path):
    from r1lab.pipeline import plan_pipeline

    recipe = {"base": str(ROOT / "recipes" / "tiny" / "grpo.yaml"), "stages": [{"cpt": {}}, {"sft": {}}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"stages\[0\] \(cpt\): cpt.corpus: no corpus given"):
        plan_pipeline(path, [f"out_dir={tmp_path / 'runs'}"])
    bad = _jsonl(tmp_path / "c.jsonl", ["x"], field="body")
    with pytest.raises(ConfigError, match=r"stages\[0\] \(cpt\): .*c.jsonl:1: no 'text' field"):
        plan_pipeline(path, [f"out_dir={tmp_path / 'runs'}", f"cpt.corpus={bad}"])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(cpt\): unknown key 'input'"):
        plan_pipeline(path, [f"cpt.corpus={ROOT / 'data' / 'cpt' / 'math_text.jsonl'}", "stages.0.input=train"])
    assert not (tmp_path / "runs").exists()


# --- resume ------------------------------------------------------------------------------------

TIMING = ("time", "cpt/tokens_per_s")


class Rows:
    def __init__(self):
        self.rows = []

    def write(self, step, metrics):
        self.rows.append({"step": step, **{k: v for k, v in metrics.items() if k not in TIMING}})


def _setup():
    tok = build_tiny_tokenizer(["12 + 34 = 46"] * 4)
    model = build_tiny_model(tok, TINY, seed=3)
    g = random.Random(5)
    docs = [[g.randrange(3, 40) for _ in range(g.randrange(2, 12))] for _ in range(30)]
    (train,) = pack_documents(docs[3:], EOS, 8)
    return model, train, pack_documents(docs[:3], EOS, 8, keep_tail=True)


def test_cpt_resumed_from_any_checkpoint_matches_the_uninterrupted_run(tmp_path):
    model, train, held = _setup()
    assert len(train) == 24  # 6 steps per epoch of 4 rows
    cfg = CPTConfig(batch_size=4, lr=1e-2, warmup_steps=2, epochs=2, max_steps=9, eval_every=4, save_every=1,
                    keep_checkpoints=100)
    whole = Rows()
    torch.manual_seed(11)
    summary = train_cpt(model, train, held, cfg, metrics=whole, seed=7, show_progress=False, run_path=tmp_path / "whole")
    final = {k: v.clone() for k, v in model.state_dict().items()}
    saved = checkpoints(tmp_path / "whole", CPT_STATE_DIR)
    assert len(saved) == 9 and summary["cpt/steps"] == 9
    assert [r["step"] for r in whole.rows] == list(range(10))  # step 0: the starting model's perplexity
    assert [r["step"] for r in whole.rows if "cpt/heldout_ppl" in r] == [0, 4, 8, 9]
    assert whole.rows[-1]["cpt/heldout_ppl"] < whole.rows[0]["cpt/heldout_ppl"]
    for k in (3, 6, 8):  # inside the first epoch, at its end, inside the second
        model, train, held = _setup()
        torch.manual_seed(999)
        random.seed(999)
        state = torch.load(saved[k - 1], map_location="cpu", weights_only=False)
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        resumed = Rows()
        train_cpt(model, train, held, cfg, metrics=resumed, seed=7, show_progress=False, run_path=tmp_path / f"r{k}",
                  resume=state)
        assert resumed.rows == whole.rows[k + 1:], k  # every logged number, bit for bit
        assert all(torch.equal(model.state_dict()[n], final[n]) for n in final), k


def _cpt(tmp_path, *extra):
    return [sys.executable, "-m", "r1lab", "cpt", str(ROOT / "recipes" / "tiny" / "cpt.yaml"), f"out_dir={tmp_path}",
            "--quiet", *SMALL, "model.tiny.max_positions=64", "cpt.seq_len=64", "cpt.batch_size=8", "cpt.max_steps=12",
            "cpt.eval_every=5", "cpt.save_every=2", "cpt.keep_checkpoints=2", "cpt.heldout=0.02", *extra]


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "cpt_metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_cpt_killed_and_resumed_from_the_cli_gives_the_uninterrupted_run(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cpt(tmp_path, "name=whole"), check=True, env=env, capture_output=True)
    state = tmp_path / "killed" / "checkpoints" / CPT_STATE_DIR
    run_and_kill_at(_cpt(tmp_path, "name=killed"), env, state / "step-000004.pt", poll_s=0.005)
    whole = _rows(tmp_path / "whole")
    assert [r["step"] for r in whole] == list(range(13))
    assert 5 <= len(_rows(tmp_path / "killed")) < 13 and not (tmp_path / "killed" / "checkpoints" / "cpt").exists()
    assert main(_cpt(tmp_path, f"resume={tmp_path / 'killed'}", "cpt.lr=1e-4")[3:]) == 2
    assert "resume: cpt.lr differs from the run's (0.002 -> 0.0001)" in capsys.readouterr().err
    out = subprocess.run(_cpt(tmp_path, f"resume={tmp_path / 'killed'}"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout
    assert _rows(tmp_path / "killed") == whole  # every logged number of every step, bit for bit
    a = load_file(tmp_path / "whole" / "checkpoints" / "cpt" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "cpt" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "killed" / "plots" / "cpt.png").is_file()
    assert sorted(p.name for p in state.glob("step-*.pt")) == ["step-000010.pt", "step-000012.pt"]


# --- the cpt stage of a pipeline ---------------------------------------------------------------

PIPELINE = {
    "base": str(ROOT / "recipes" / "tiny" / "grpo.yaml"),
    "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64,
                       "max_positions": 64}},
    "data": {"train_size": 60, "sft_size": 40, "eval_size": 4},
    "reward": {"verify_workers": 0}, "sampling": {"max_new_tokens": 8}, "eval": {"n": 1, "ks": [1]},
    "cpt": {"corpus": str(ROOT / "data" / "cpt" / "math_text.jsonl"), "seq_len": 32, "batch_size": 4, "max_steps": 3,
            "save_every": 1, "keep_checkpoints": 5, "eval_every": 0},
    "sft": {"epochs": 1, "batch_size": 16, "warmup_steps": 0},
    "evaluate_each": False,
    "stages": [{"cpt": {}}, {"sft": {}}],
}


def test_a_pipeline_cpt_stage_reads_the_data_section_as_an_sft_stage_does(tmp_path):
    """So the tiny model's tokenizer and initial weights are the same with CPT first as without it.
    (Resuming an interrupted cpt stage is the runner's resume of any checkpointing stage, as for SFT:
    the `resumable` table of pipeline.runner_plan; the CLI test above kills and resumes CPT itself.)"""
    from r1lab.pipeline import plan_pipeline

    recipe = tmp_path / "p.yaml"
    recipe.write_text(yaml.safe_dump(PIPELINE))
    plan = plan_pipeline(recipe, [f"out_dir={tmp_path}", "name=whole"])
    other = tmp_path / "sft_first.yaml"
    other.write_text(yaml.safe_dump({**PIPELINE, "stages": [{"sft": {}}]}))
    sft_first = plan_pipeline(other, [f"out_dir={tmp_path}", "name=other"])

    def data_of(p):  # the stage's data section, its files named relative to its run directory
        d = p.stages[0].cfg.data
        return {**vars(d), "train_path": Path(d.train_path).relative_to(p.run_dir),
                "eval_path": Path(d.eval_path).relative_to(p.run_dir)}

    assert data_of(plan) == data_of(sft_first) and plan.stages[0].cfg.seed == sft_first.stages[0].cfg.seed
    assert data_of(plan)["train_path"] == Path("prepare/data/sft.jsonl")
    assert [s.kind for s in plan.stages] == ["cpt", "sft"] and plan.stages[1].model.endswith("00-cpt/checkpoints/cpt")
    assert not (tmp_path / "whole").exists()  # planning writes nothing

"""Test-time search with a step scorer: best-of-N, PRM-weighted and majority voting on hand cases;
step-level beam search on a scripted engine whose path, width, expansion, budgets and compute are
worked out by hand; the implicit-PRM scorer against float64; its directory as a PRIME run leaves it;
the scorer registry; `r1lab eval --search` end to end and its errors."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from r1lab.errors import ConfigError
from r1lab.eval.scorers import (ImplicitPRMScorer, aggregate_prefix, load_scorer, read_scorer_info,
                                register_scorer_kind, step_end_tokens)
from r1lab.eval.search import (answer_groups, beam_search, beam_sizes, best_of_n, score_rows, selection_points,
                               selection_row, top_k, vote, vote_weight)
from r1lab.records import Completion, Problem
from r1lab.rollout.base import Engine, SamplingParams

ROOT = Path(__file__).resolve().parents[1]

# --- selection among N ----------------------------------------------------------------------------


def test_best_of_n_picks_the_argmax_of_the_first_n():
    scores = [0.1, 0.5, -2.0, 0.5, 3.0]
    assert best_of_n(scores) == 4
    assert best_of_n(scores, 4) == 1  # a tie goes to the earliest
    assert best_of_n(scores, 1) == 0
    assert best_of_n([]) is None
    assert best_of_n([math.nan, -1.0]) == 1  # NaN never wins
    assert best_of_n([math.nan]) is None


def test_weighted_vote_and_majority_by_hand():
    groups = [0, 1, 1, 2, None]
    weights = [0.9, 0.3, 0.3, 0.2, 5.0]  # the sample without an answer does not vote
    assert vote(groups, weights) == 0  # group 0: 0.9 > group 1: 0.6 > group 2: 0.2
    assert vote(groups, [1.0] * 5) == 1  # majority: group 1 has two votes; index of its first sample
    assert vote(groups, [1.0] * 5, n=1) == 0
    assert vote([1, 0, 0, 1], [1.0] * 4) == 0  # a tie goes to the group seen first (1, at index 0)
    assert vote([None, None], [1.0, 1.0]) is None


def test_vote_weight_is_the_sigmoid_without_overflow():
    assert vote_weight(0.0) == 0.5
    assert vote_weight(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-15)
    assert vote_weight(-2.0) == pytest.approx(1 / (1 + math.exp(2.0)), abs=1e-15)
    assert vote_weight(-1e4) == 0.0 and vote_weight(1e4) == 1.0 and vote_weight(math.nan) == 0.0


def test_answer_groups_use_the_verifier_equivalence_for_math():
    p = Problem("p", "Compute 1 / 2.", "0.5")
    got = answer_groups([p], [["1/2", "0.5", " 1/2 ", None, "3", "\\frac{1}{2}", ""]], workers=0)
    assert got == [[0, 0, 0, None, 1, 0, 2]]


def test_answer_groups_fall_back_to_text_for_a_verifier_that_reads_the_problem():
    from r1lab.tasks import generate_splits

    train, _ = generate_splits(["countdown"], 4, 1, 2, 0)
    p = train[0]
    # countdown's verifier needs the puzzle's numbers: expressions are grouped as text only
    got = answer_groups([p], [["1 + 2", "1+2", "2 + 1", "1  +  2"]], workers=0)
    assert got == [[0, 1, 2, 0]]


def _sample(correct, extracted, score, length=10, text="t"):
    return {"text": text, "extracted": extracted, "correct": correct, "score": score, "length": length,
            "status": "correct" if correct else ("unparsable" if extracted is None else "wrong")}


def test_selection_row_by_hand():
    samples = [_sample(False, "4", 2.0), _sample(True, "5", 1.0), _sample(True, "5", 0.5), _sample(False, "6", -1.0)]
    groups = [0, 1, 1, 2]
    r = selection_row(samples, groups, 4)
    assert r["tokens"] == 40 and r["n"] == 4
    assert r["best_of_n"] == 0 and not r["best_of_n_correct"]
    # weights: sigmoid(2) = 0.881 for "4" against sigmoid(1) + sigmoid(0.5) = 0.731 + 0.622 for "5"
    assert r["weighted_vote"] == 1 and r["weighted_vote_correct"]
    assert r["majority"] == 1 and r["majority_correct"] and r["any_correct"]
    r1 = selection_row(samples, groups, 1)
    assert r1["tokens"] == 10 and not r1["majority_correct"] and not r1["any_correct"]


def test_selection_on_adversarial_samples():
    # empty completions and completions with no answer never vote; best-of-N may still pick one
    samples = [_sample(False, None, 3.0, 0, ""), _sample(False, None, 1.0), _sample(True, "7", -1.0)]
    r = selection_row(samples, [None, None, 0], 3)
    assert r["best_of_n"] == 0 and not r["best_of_n_correct"]
    assert r["majority"] == 2 and r["majority_correct"] and r["weighted_vote_correct"]
    none = selection_row(samples[:2], [None, None], 2)
    assert none["majority"] is None and not none["majority_correct"] and not none["weighted_vote_correct"]


class FixedScorer:
    """Scores from a table of partial texts (0 for any other), counting the calls."""

    def __init__(self, table=None):
        self.table, self.calls = dict(table or {}), []

    @classmethod
    def load(cls, path):
        return cls(json.loads((Path(path) / "scorer.json").read_text())["table"])

    def score(self, prompts, partials):
        self.calls.append(list(partials))
        return [float(self.table.get(p, 0.0)) for p in partials]


def test_score_rows_groups_equivalent_answers_for_every_vote():
    p = Problem("p", "Compute 1 / 2.", "1/2")
    rows = [{"id": "p", "samples": [_sample(True, "1/2", 0.0, text="a"), _sample(True, "0.5", 0.0, text="b"),
                                    _sample(False, "3", 0.0, text="c"), _sample(False, "3", 0.0, text="d"),
                                    _sample(False, "3", 0.0, text="e")]}]
    out = score_rows(rows, [p], FixedScorer({"a": 1.0, "b": 1.0, "c": -3.0, "d": -3.0, "e": -3.0}), [1, 3, 5], workers=0)
    s = out[0]["selection"]
    assert [x["score"] for x in out[0]["samples"]] == [1.0, 1.0, -3.0, -3.0, -3.0]
    assert [x["group"] for x in out[0]["samples"]] == [0, 0, 1, 1, 1]
    assert s["3"]["majority_correct"]  # "1/2" and "0.5" are one answer: 2 votes against 1
    assert not s["5"]["majority_correct"]  # three "3" beat them
    # weighted: 2 * sigmoid(1) = 1.46 against 3 * sigmoid(-3) = 0.14
    assert s["5"]["weighted_vote_correct"] and s["5"]["best_of_n_correct"]
    pts = selection_points(out, [1, 3, 5])
    assert [pt["tokens_per_problem"] for pt in pts] == [10, 30, 50]
    assert [pt["majority"] for pt in pts] == [1.0, 1.0, 0.0]


# --- beam search on a scripted engine --------------------------------------------------------------

EOS = 0


class CharTokenizer:
    """One token per character; id 0 is the end of sequence. No chat template: a prompt renders as
    its text and a newline."""

    chat_template = None
    eos_token_id = pad_token_id = EOS

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i == EOS else chr(i) for i in ids)


class ScriptedEngine(Engine):
    """A model given as a tree of steps: `steps[prefix]` lists the next steps after the response text
    `prefix` ("$" ends the response). Row k of the rows with the same prefix in one call takes
    option k (modulo their number) at every node. Decodes a character at a time, honouring stop
    strings, the end of sequence and max_new_tokens as the real engines do."""

    continues_ids = True

    def __init__(self, steps, prompt_len):
        self.steps, self.prompt_len = steps, prompt_len
        self.tokenizer, self.stop_ids = CharTokenizer(), [EOS]
        self.calls, self.emitted = [], 0

    def _rest(self, prefix, k):
        if prefix in self.steps:
            s = self.steps[prefix][k % len(self.steps[prefix])]
        else:  # inside a step: the rest of the option this prefix is part of; after a leaf, the end
            node = max((n for n in self.steps if prefix.startswith(n)), key=len)
            s = next(((node + o)[len(prefix):] for o in self.steps[node]
                      if (node + o).startswith(prefix) and len(node + o) > len(prefix)), "$")
        return s if s.endswith("$") else s + self._rest(prefix + s, k)

    def generate_ids(self, prompts, params, seed=None):
        self.calls.append((len(prompts), params.stop, params.max_new_tokens))
        seen, out = {}, []
        for i, ids in enumerate(prompts):
            prefix = self.tokenizer.decode(ids[self.prompt_len:])
            k = seen[prefix] = seen.get(prefix, -1) + 1
            new, finish, text = [], "length", ""
            for ch in self._rest(prefix, k):
                new.append(EOS if ch == "$" else ord(ch))
                if ch == "$":
                    finish = "stop"
                    break
                text += ch
                if any(text.endswith(s) for s in params.stop):
                    finish = "stop"
                    break
                if len(new) >= params.max_new_tokens:
                    break
            self.emitted += len(new)
            out.append(Completion(str(i), list(ids), new, text, [0.0] * len(new), finish))
        return out


PROBLEM = Problem("q", "Q", "1")
TREE = {"": ["A\n", "B\n", "C\n", "D\n"], "B\n": ["B1\n", "B2$"], "D\n": ["D1\n", "D2\n"], "D\nD1\n": ["X$", "Y$"]}
SCORES = {"A\n": 0.1, "B\n": 0.9, "C\n": 0.5, "D\n": 0.7, "B\nB1\n": 0.2, "B\nB2": 0.95, "D\nD1\n": 0.6,
          "D\nD2\n": 0.3, "D\nD1\nX": 0.4, "D\nD1\nY": 0.99}


def _search(tree=TREE, scores=SCORES, width=2, expand=2, max_new=64, **kw):
    engine = ScriptedEngine(tree, prompt_len=len("Q\n"))
    scorer = FixedScorer(scores)
    res = beam_search(engine, scorer, [PROBLEM], SamplingParams(max_new_tokens=max_new), width, expand, **kw)
    return res[0], engine, scorer


def test_beam_search_follows_the_hand_computed_path():
    r, engine, scorer = _search()
    # round 1: A B C D -> keep B (0.9), D (0.7); round 2: B1 B2 D1 D2 -> keep B2 (0.95, ended), D1 (0.6);
    # round 3: X Y from D1 -> both kept, both ended; the best finished beam is D1 Y (0.99)
    assert [b.text for b in r.beams] == ["B\nB2", "D\nD1\nY", "D\nD1\nX"]
    assert [b.finish for b in r.beams] == ["stop"] * 3 and [b.steps for b in r.beams] == [2, 3, 3]
    assert r.beams[r.best].text == "D\nD1\nY" and r.beams[r.best].score == 0.99
    assert [c[0] for c in engine.calls] == [4, 4, 2]  # W*E first steps, then E per kept beam
    assert all(c[1] == ("\n",) for c in engine.calls)
    assert scorer.calls == [["A\n", "B\n", "C\n", "D\n"], ["B\nB1\n", "B\nB2", "D\nD1\n", "D\nD2\n"],
                            ["D\nD1\nX", "D\nD1\nY"]]
    # compute: 4 x 2 tokens, then 3 + 3 (B2 and its end of sequence) + 3 + 3, then 2 + 2
    assert r.tokens == 24 == engine.emitted and r.expansions == 10 and r.scored == 10 and r.rounds == 3


def test_width_one_is_greedy_on_the_scores():
    r, engine, _ = _search(width=1, expand=2)
    # A B -> B; B1 B2 -> B2 (ended)
    assert [b.text for b in r.beams] == ["B\nB2"] and [c[0] for c in engine.calls] == [2, 2]
    assert r.tokens == 4 + 6 and r.expansions == 4


def test_the_step_budget_ends_open_beams_as_they_are():
    r, engine, _ = _search(max_steps=1)
    assert [b.text for b in r.beams] == ["B\n", "D\n"] and [b.finish for b in r.beams] == ["steps", "steps"]
    assert r.beams[r.best].text == "B\n" and r.tokens == 8 and r.rounds == 1


def test_the_token_budget_bounds_every_beam():
    r, engine, _ = _search(max_new=3)
    # round 1 as before (2 tokens each); round 2 has room for 1 token: every candidate ends at the budget
    assert [c[2] for c in engine.calls] == [3, 1]
    assert all(b.finish == "length" and len(b.ids) == 3 for b in r.beams) and len(r.beams) == 2
    assert r.tokens == 8 + 4 == engine.emitted


def test_step_tokens_cut_a_step_without_delimiter_and_the_search_goes_on():
    tree = {"": ["no delimiter at all$"]}
    r, engine, _ = _search(tree=tree, width=1, expand=1, step_tokens=5)
    assert [b.text for b in r.beams] == ["no delimiter at all"] and r.beams[0].finish == "stop"
    assert r.rounds == 4 and r.tokens == len("no delimiter at all") + 1 == engine.emitted
    assert [c[2] for c in engine.calls] == [5, 5, 5, 5]


def test_after_the_end_of_thinking_the_rest_is_one_step_and_the_delimiter_is_configurable():
    tree = {"": ["<think>a;"], "<think>a;": ["b</think>;"], "<think>a;b</think>;": ["<answer>1</answer>;"],
            "<think>a;b</think>;<answer>1</answer>;": ["$"]}
    r, engine, _ = _search(tree=tree, scores={}, width=1, expand=1, delimiter=";")
    assert [c[1] for c in engine.calls] == [(";",), (";",), ()]
    assert r.beams[0].text == "<think>a;b</think>;<answer>1</answer>;" and r.rounds == 3
    r2, engine2, _ = _search(tree=tree, scores={}, width=1, expand=1, delimiter=";", think_end="")
    assert [c[1] for c in engine2.calls] == [(";",)] * 4 and r2.beams[0].text == r.beams[0].text


def test_empty_completions_and_an_immediate_end():
    r, engine, _ = _search(tree={"": ["$"]}, scores={}, width=2, expand=2)
    # four equal candidates (an end of sequence at once) are one beam
    assert len(r.beams) == 1 and r.beams[0].text == "" and r.beams[0].finish == "stop"
    assert r.tokens == 4 and r.expansions == 4 and r.beams[r.best].text == ""


def test_beam_sizes_and_top_k():
    assert [beam_sizes(n, 0, 4) for n in (1, 2, 4, 8, 16)] == [(1, 1), (1, 2), (1, 4), (2, 4), (4, 4)]
    assert beam_sizes(8, 2, 4) == (2, 4) and beam_sizes(3, 4, 4) == (3, 1)
    with pytest.raises(ConfigError):
        beam_sizes(0)
    assert top_k([0.1, 0.9, 0.9, math.nan, 0.5], 3) == [1, 2, 4]
    assert top_k([math.nan, 0.0], 2) == [1, 0]


def test_beam_search_refuses_an_engine_without_token_prefixes():
    class Endpoint(Engine):  # continues_ids stays False
        tokenizer = CharTokenizer()

    with pytest.raises(ConfigError, match="local model"):
        beam_search(Endpoint(), FixedScorer(), [PROBLEM], SamplingParams(), 1, 1)


# --- the implicit PRM scorer --------------------------------------------------------------------------


def test_aggregate_prefix_by_hand():
    r = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64)  # q = 0.5, -0.5, -0.25, 1.75
    assert aggregate_prefix(r, [], "sum") == 1.75
    assert aggregate_prefix(r, [0, 2], "min") == -0.25
    assert aggregate_prefix(r, [1], "min") == -0.5
    assert aggregate_prefix(r, [], "min") == 1.75  # the last token always ends a step
    assert aggregate_prefix(r[:0], [], "sum") == 0.0 == aggregate_prefix(r[:0], [], "min")
    with pytest.raises(ConfigError):
        aggregate_prefix(r, [], "mean")


def test_step_end_tokens_from_offsets():
    # tokens "a", "b\nc", "\n", "d": the first newline ends inside token 1, the second is token 2
    assert step_end_tokens([(0, 1), (1, 4), (4, 5), (5, 6)], "ab\nc\nd", "\n") == [1, 2]
    assert step_end_tokens([(0, 3)], "abc", "\n") == []
    assert step_end_tokens([(0, 2), (2, 4)], "x;;y", ";;") == [1]


def _prm_pair(tiny):
    model, tok = tiny
    phi = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return phi, model, tok


def _reference(phi, ref, tok, prompt, partial, beta):
    from r1lab.models import render_prompt

    p_ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    r_ids = tok(partial, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    out = []
    for m in (phi, ref):
        m64 = copy.deepcopy(m).double()
        with torch.no_grad():
            logp = torch.log_softmax(m64(input_ids=ids).logits[0, :-1].double(), -1)
        out.append(logp.gather(-1, ids[0, 1:, None])[:, 0][len(p_ids) - 1:])
    return beta * (out[0] - out[1])


@pytest.mark.numerics
def test_implicit_prm_scorer_matches_float64(tiny):
    phi, ref, tok = _prm_pair(tiny)
    prompts = ["Compute ((7 + 3) * 4) - 5.", "Use 3, 5, 7 to make 22.", "Compute 1 + 1."]
    partials = ["<think>7 + 3 = 10\n10 * 4 = 40\n40 - 5 = 35</think>\n<answer>35</answer>", "<think>3 * 5 = 15\n", ""]
    beta = 0.05
    for agg in ("sum", "min"):
        got = ImplicitPRMScorer(phi, ref, tok, beta, agg=agg, batch_size=2).score(prompts, partials)
        for g, p, x in zip(got, prompts, partials):
            r = _reference(phi, ref, tok, p, x, beta)
            if not len(r):
                assert g == 0.0
                continue
            q = r.cumsum(0)
            enc = tok(x, add_special_tokens=False, return_offsets_mapping=True)
            ends = [i for i, (_, e) in enumerate(enc["offset_mapping"]) if "\n" in x[:e] and
                    x[:e].count("\n") > x[:enc["offset_mapping"][i - 1][1] if i else 0].count("\n")]
            want = float(q[-1]) if agg == "sum" else float(q[sorted(set(ends) | {len(q) - 1})].min())
            assert g == pytest.approx(want, abs=2e-5), (agg, x)
    assert ImplicitPRMScorer(ref, ref, tok, beta).score(prompts, partials) == [0.0, 0.0, 0.0]


def _prime_cfg(tmp_path):
    from r1lab.config import load_config

    return load_config(ROOT / "recipes" / "tiny" / "prime.yaml", [f"out_dir={tmp_path}"])


def test_a_saved_implicit_prm_loads_as_a_scorer(tiny, tmp_path):
    from r1lab.models import save_model
    from r1lab.train.prm import ImplicitPRM

    phi, ref, tok = _prm_pair(tiny)
    prm = ImplicitPRM(_prime_cfg(tmp_path), ref)
    prm.model.load_state_dict(phi.state_dict())
    prompts, partials = ["Compute 1 + 1."] * 2, ["<think>1 + 1 = 2\n", "<think>1 + 1 = 2</think>\n<answer>2</answer>"]
    want = ImplicitPRMScorer(phi, ref, tok, prm.beta).score(prompts, partials)
    prm.save(tmp_path / "own", tok)  # a reference built in memory is saved beside the PRM
    assert read_scorer_info(tmp_path / "own") == {"kind": "implicit_prm", "beta": prm.beta, "reference": "reference"}
    assert load_scorer(tmp_path / "own").score(prompts, partials) == pytest.approx(want, abs=1e-6)
    save_model(ref, tok, tmp_path / "sft")
    prm.save(tmp_path / "by_path", tok, tmp_path / "sft")  # a reference loaded from a directory is named
    assert read_scorer_info(tmp_path / "by_path")["reference"] == str((tmp_path / "sft").resolve())
    assert not (tmp_path / "by_path" / "reference").exists()
    assert load_scorer(tmp_path / "by_path", agg="min").score(prompts, partials)[1] <= want[1] + 1e-6
    (tmp_path / "sft" / "config.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "sft")
    with pytest.raises(ConfigError, match="reference model"):
        load_scorer(tmp_path / "by_path")


def test_the_scorer_registry(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(ConfigError, match="no scorer.json"):
        load_scorer(tmp_path / "none")
    with pytest.raises(ConfigError, match="not a directory"):
        load_scorer(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scorer.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_scorer(tmp_path / "bad")
    (tmp_path / "fixed").mkdir()
    (tmp_path / "fixed" / "scorer.json").write_text(json.dumps({"kind": "fixed_test", "table": {"x": 2.5}}))
    with pytest.raises(ConfigError, match="unknown kind 'fixed_test'"):
        load_scorer(tmp_path / "fixed")
    register_scorer_kind("fixed_test", f"{__name__}:FixedScorer")  # the one line another scorer needs
    scorer = load_scorer(tmp_path / "fixed", agg="sum", delimiter="\n")  # options it does not take are left out
    assert isinstance(scorer, FixedScorer) and scorer.score(["p", "p"], ["x", "y"]) == [2.5, 0.0]


def test_a_prime_run_leaves_its_prm_as_a_scorer_directory(tmp_path):
    from r1lab.rollout import HFEngine
    from r1lab.stages import load_policy, prepare_data
    from r1lab.train.rl import train_rl
    from r1lab.config import load_config

    cfg = load_config(ROOT / "recipes" / "tiny" / "prime.yaml", [
        "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.tiny.intermediate_size=64", "data.train_size=200", "data.sft_size=10", "data.eval_size=4",
        "reward.verify_workers=1", "train.prompts_per_step=2", "train.group_size=4", "train.micro_batch_size=8",
        "train.eval_every=0", "train.steps=1", "sampling.max_new_tokens=8", f"out_dir={tmp_path}"])
    data = prepare_data(cfg, None, log=lambda *_: None)
    model, tok = load_policy(cfg, data)
    train_rl(cfg, model, tok, HFEngine(model, tok), data.rl_prompts, show_progress=False, run_path=tmp_path / "run")
    prm_dir = tmp_path / "run" / "prm"
    assert read_scorer_info(prm_dir)["kind"] == "implicit_prm" and (prm_dir / "reference" / "config.json").is_file()
    scores = load_scorer(prm_dir).score(["Compute 1 + 1."], ["<think>1 + 1 = 2</think>\n<answer>2</answer>"])
    assert len(scores) == 1 and math.isfinite(scores[0])


# --- r1lab eval --search ----------------------------------------------------------------------------


def test_eval_search_writes_rows_table_and_plot(tmp_path, tiny, capsys):
    from r1lab.cli import main
    from r1lab.models import save_model
    from r1lab.train.prm import ImplicitPRM

    phi, ref, tok = _prm_pair(tiny)
    save_model(ref, tok, tmp_path / "m")
    prm = ImplicitPRM(_prime_cfg(tmp_path), ref)
    prm.model.load_state_dict(phi.state_dict())
    prm.save(tmp_path / "prm", tok, tmp_path / "m")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(Problem(f"p{i}", f"Compute {i} + 1.", str(i + 1)).to_dict()) + "\n"
                            for i in range(3)), encoding="utf-8")
    common = ["eval", str(tmp_path / "m"), "--data", str(data), "--prm", str(tmp_path / "prm"), "--quiet",
              "model.dtype=float32", "reward.verify_workers=0", "eval.max_new_tokens=12", "eval.search.step_tokens=4"]
    assert main([*common, "--search", "beam", "--search-n", "1,2,4", "--beam-expand", "2", "--out", str(tmp_path / "ev")]) == 0
    ev = tmp_path / "ev"
    table = (ev / "eval" / "search.md").read_text()
    assert "| 4 |" in table and "2 x 2" in table and (ev / "plots" / "search.png").stat().st_size > 0
    assert json.loads((ev / "eval" / "summary.json").read_text())["p"]["n"] == 4
    rows = [json.loads(x) for x in (ev / "eval" / "search.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["samples"]) == 4 and set(r["selection"]) == {"1", "2", "4"} for r in rows)
    points = json.loads((ev / "eval" / "search.json").read_text())["points"]
    for pt in points:  # the tokens of each point are those of the samples it used
        assert pt["tokens_per_problem"] == pytest.approx(
            sum(sum(s["length"] for s in r["samples"][: pt["n"]]) for r in rows) / 3)
        beams = [json.loads(x) for x in (ev / "eval" / f"beam-{pt['n']}.jsonl").read_text().splitlines()]
        assert pt["beam_tokens_per_problem"] == pytest.approx(sum(b["tokens"] for b in beams) / 3)
        assert all(len(b["beams"]) >= 1 and all(x["length"] <= 12 for x in b["beams"]) for b in beams)
        assert pt["beam"] == pytest.approx(sum(b["correct"] for b in beams) / 3)
    # the same through the config's fields; a sampling method runs no beam search
    assert main([*common, "eval.search.method=weighted_vote", "eval.search.ns=[2,1]", "--out", str(tmp_path / "wv")]) == 0
    wv = json.loads((tmp_path / "wv" / "eval" / "search.json").read_text())
    assert wv["method"] == "weighted_vote" and [pt["n"] for pt in wv["points"]] == [1, 2]
    assert not list((tmp_path / "wv" / "eval").glob("beam-*.jsonl")) and "beam" not in wv["points"][0]
    capsys.readouterr()
    for bad in (["--search", "nope"], ["--search", "beam", "--search-n", "0"], ["--search", "beam", "--search-n", "a"],
                ["--search", "beam", "eval.search.agg=mean"]):
        assert main([*common, *bad, "--out", str(tmp_path / "bad")]) == 2
    assert "search" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "m"), "--data", str(data), "--search", "beam", "--out", str(tmp_path / "bad")]) == 2
    assert main(["eval", str(tmp_path / "m"), "--data", str(data), "--prm", str(tmp_path / "prm"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert main(["eval", str(tmp_path / "m"), "--data", str(data), "--search", "best_of_n", "--prm", str(tmp_path),
                 "--out", str(tmp_path / "bad")]) == 2
    import shutil

    shutil.copytree(tmp_path / "prm", tmp_path / "orphan")
    info = json.loads((tmp_path / "orphan" / "scorer.json").read_text())
    (tmp_path / "orphan" / "scorer.json").write_text(json.dumps({**info, "reference": str(tmp_path / "gone")}))
    assert main(["eval", str(tmp_path / "m"), "--data", str(data), "--search", "beam", "--prm", str(tmp_path / "orphan"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "reference model" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_equal_candidates_count_once_in_the_width():
    tree = {"": ["A\n", "A\n", "B\n"], "A\n": ["$"], "B\n": ["$"]}
    r, engine, scorer = _search(tree=tree, scores={"A\n": 0.9, "B\n": 0.1}, width=2, expand=2)
    # round 1 draws A A B A (4 rows, options by row): A is scored and kept once, B fills the second place
    assert scorer.calls[0] == ["A\n", "B\n"] and r.expansions == 4 + 2 + 2 and r.scored == 2 + 2
    assert sorted(b.text for b in r.beams) == ["A\n", "B\n"] and r.tokens == 8 + 2 + 2


def test_a_prm_trained_with_lora_is_saved_with_its_adapters_folded_in(tiny, tmp_path):
    from r1lab.config import LoRAConfig
    from r1lab.train.lora import apply_lora
    from r1lab.train.prm import ImplicitPRM

    model, tok = tiny
    policy = copy.deepcopy(model)
    apply_lora(policy, LoRAConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    prm = ImplicitPRM(_prime_cfg(tmp_path), policy)
    with torch.no_grad():
        for name, p in prm.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)  # a trained adapter: the PRM differs from its reference
    prompts, partials = ["Compute 1 + 1."], ["<think>1 + 1 = 2</think>\n<answer>2</answer>"]
    want = ImplicitPRMScorer(prm.model, prm.ref_model, tok, prm.beta).score(prompts, partials)
    prm.save(tmp_path / "prm", tok)
    from safetensors.torch import load_file

    assert not any("lora" in k or "base_layer" in k for k in load_file(tmp_path / "prm" / "model.safetensors"))
    got = load_scorer(tmp_path / "prm").score(prompts, partials)
    assert want[0] != 0.0 and got == pytest.approx(want, abs=1e-5)

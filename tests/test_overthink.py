"""Overthinking measures and the decoy probe (eval/overthink.py): numbers worked by hand, hostile
model output (no thinking block, the answer inside a larger number), a decoy with no text."""

import json
from fractions import Fraction

import pytest

from r1lab.config import load_config
from r1lab.errors import ConfigError
from r1lab.eval.overthink import (
    DEFAULT_DECOY,
    decoy_report,
    first_answer_position,
    numbers_in,
    overthinking_metrics,
    thinking_past_answer,
    with_decoy,
)
from r1lab.eval.run import summarise
from r1lab.records import Problem


def test_numbers_standing_on_their_own_and_their_signs():
    text = "7-5=2; x = -5 (-3) 135 3.5 x35 35x 1,035 v_35 35."
    got = [(v, text[s:e]) for v, s, e in numbers_in(text)]
    assert got == [(7, "7"), (5, "5"), (2, "2"), (-5, "-5"), (-3, "-3"), (135, "135"), (Fraction(7, 2), "3.5"),
                   (35, "35")]


@pytest.mark.parametrize("thinking", ["135 is close", "try 3.5 then 35.2", "it is -35", "x35 and 35x",
                                      "1,035 apples", "350", "thirty-five"])
def test_the_answer_inside_a_larger_number_is_not_the_answer(thinking):
    assert first_answer_position(thinking, "35") is None


def test_first_answer_position_and_what_follows():
    # "3 + 4 = 7\n7 * 5 = 35" ends with the answer: nothing after it
    assert thinking_past_answer("<think>3 + 4 = 7\n7 * 5 = 35</think><answer>35</answer>", "35") == (False, 0.0)
    text = "<think>7 * 5 = 35\ncheck: 35 / 5 = 7</think>"  # 28 characters of thinking, 18 after "35"
    assert first_answer_position("7 * 5 = 35\ncheck: 35 / 5 = 7", "35") == 10
    assert thinking_past_answer(text, "35") == (True, pytest.approx(18 / 28))
    assert thinking_past_answer("<think>7 * 5 = 35</think>", " 35 ") == (False, 0.0)  # the gold answer's spaces
    assert thinking_past_answer("<think>x = -4, so -4</think>", "-4") == (True, pytest.approx(7 / 13))


def test_samples_that_cannot_be_measured_are_left_out():
    assert thinking_past_answer("no thinking block, answer 35", "35") is None
    assert thinking_past_answer("<think>nothing numeric here</think>", "35") is None
    assert thinking_past_answer("<think>the expression 3 * 5 + 7</think>", "3 * 5 + 7") is None  # not a number
    assert thinking_past_answer("<think></think>", "35") is None
    assert thinking_past_answer(None, "35") is None


def _row(pid, difficulty, answer, samples):
    return {"id": pid, "answer": answer, "difficulty": difficulty, "avg": sum(s["correct"] for s in samples) / len(samples),
            "maj": 0.0, "n": len(samples), "correct": sum(s["correct"] for s in samples),
            "samples": [{"status": "correct" if s["correct"] else "wrong", "finish": "stop", "extracted": None, **s}
                        for s in samples]}


def test_overthinking_metrics_by_hand():
    rows = [
        _row("a", 1, "7", [{"text": "<think>3 + 4 = 7</think><answer>7</answer>", "length": 10, "correct": True},
                           {"text": "<think>3 + 4 = 8</think><answer>8</answer>", "length": 20, "correct": False}]),
        _row("b", 3, "35", [{"text": "<think>7 * 5 = 35\ncheck: 35 / 5 = 7</think><answer>35</answer>", "length": 50,
                             "correct": True},
                            {"text": "<answer>35</answer>", "length": 70, "correct": True}]),  # no thinking: unmeasured
    ]
    got = overthinking_metrics(rows)
    assert got["overthink/len_easiest"] == 15 and got["overthink/len_hardest"] == 60
    assert got["overthink/len_ratio"] == 4 and got["overthink/level_hardest"] == 3
    assert got["overthink/measured"] == 2
    assert got["overthink/continued"] == 0.5
    assert got["overthink/after_first"] == pytest.approx((0 + 18 / 28) / 2)
    one_level = [dict(r, difficulty=2) for r in rows]
    assert "overthink/len_ratio" not in overthinking_metrics(one_level)  # one level: nothing to compare
    assert overthinking_metrics([]) == {"overthink/measured": 0}


def test_eval_summary_carries_language_and_overthinking_measures():
    rows = [dict(_row("z", 1, "7", [{"text": "<think>三加四等于七。</think><answer>7</answer>", "length": 9,
                                     "correct": True}]), language="zh"),
            dict(_row("f", 2, "7", [{"text": "<think>Three plus four makes seven.</think><answer>8</answer>",
                                     "length": 11, "correct": False}]), language="fr")]
    s = summarise(rows, 1, [1])
    assert s["lang/zh/accuracy"] == 1.0 and s["lang/fr/accuracy"] == 0.0
    assert s["lang/zh/consistency"] == 1.0 and s["lang/fr/consistency"] == 0.0  # English reasoning for French
    assert s["lang/consistency"] == 0.5 and s["lang/mixed"] == 0.0
    assert s["overthink/len_ratio"] == pytest.approx(11 / 9)


def test_decoy_goes_in_front_of_text_and_chat_prompts():
    problems = [Problem("p1", "Compute 2 + 3.", "5"),
                Problem("p2", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 1 + 1."}], "2")]
    got = with_decoy(problems, "default")
    assert got[0].prompt == f"{DEFAULT_DECOY}\n\nCompute 2 + 3."
    assert got[1].prompt[0] == {"role": "system", "content": "Be brief."}
    assert got[1].prompt[1]["content"] == f"{DEFAULT_DECOY}\n\nCompute 1 + 1."
    assert problems[1].prompt[1]["content"] == "Compute 1 + 1."  # the originals are untouched
    assert [p.id for p in got] == ["p1", "p2"] and all(p.metadata["decoy"] for p in got)
    assert with_decoy(problems[:1], "What is the capital of Peru?")[0].prompt.startswith("What is the capital")
    # a task family: a generated puzzle per problem, the same for the same seed
    knights = with_decoy(problems, "knights", seed=1)
    assert knights[0].prompt != knights[1].prompt or knights[0].prompt != problems[0].prompt
    assert "knight" in knights[0].prompt.lower() and knights[0].prompt == with_decoy(problems, "knights", seed=1)[0].prompt


@pytest.mark.parametrize("decoy", ["", "   ", "\n\t", None])
def test_a_decoy_with_no_text_is_an_error(decoy):
    with pytest.raises(ConfigError, match="no text"):
        with_decoy([Problem("p", "Compute 1 + 1.", "2")], decoy)


def test_config_refuses_a_blank_decoy():
    assert load_config(None, ["eval.decoy=default"]).eval.decoy == "default"
    with pytest.raises(ConfigError, match="eval.decoy"):
        load_config(None, ['eval.decoy="  "'])


def test_decoy_report_by_hand():
    base = [_row("a", 1, "7", [{"text": "", "length": 10, "correct": True}, {"text": "", "length": 30, "correct": True}]),
            _row("b", 1, "7", [{"text": "", "length": 20, "correct": False}, {"text": "", "length": None, "correct": True}])]
    decoy = [_row("a", 1, "7", [{"text": "", "length": 40, "correct": True}, {"text": "", "length": 40, "correct": False}]),
             _row("b", 1, "7", [{"text": "", "length": 60, "correct": False}, {"text": "", "length": 60, "correct": False}]),
             _row("c", 1, "7", [{"text": "", "length": 999, "correct": True}])]  # not in the plain eval: left out
    r = decoy_report(base, decoy)
    # mean lengths per problem: plain a 20, b 20 (the unknown length left out); decoy a 40, b 60
    assert r["decoy/problems"] == 2
    assert r["decoy/len_plain"] == 20 and r["decoy/len_decoy"] == 50
    assert r["decoy/token_inflation"] == 2.5 and r["decoy/token_inflation_per_problem"] == 2.5
    assert r["decoy/accuracy_plain"] == 0.75 and r["decoy/accuracy_decoy"] == 0.25
    assert r["decoy/accuracy_change"] == -0.5
    with pytest.raises(ValueError, match="share no problem"):
        decoy_report(base, decoy[2:])


def test_eval_cli_runs_the_decoy_probe(tmp_path, tiny):
    from r1lab.cli import main
    from r1lab.models import save_model

    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(Problem(f"p{i}", f"Compute {i} + 1.", str(i + 1)).to_dict()) + "\n"
                            for i in range(2)), encoding="utf-8")
    args = ["eval", str(tmp_path / "m"), "--data", str(data), "--n", "2", "--max-new-tokens", "8", "--out",
            str(tmp_path / "ev"), "--quiet", "model.dtype=float32", "reward.verify_workers=0", "eval.decoy=default"]
    assert main(args) == 0
    report = json.loads((tmp_path / "ev" / "eval" / "decoy.json").read_text())
    assert report["decoy/problems"] == 2 and report["example"].startswith(DEFAULT_DECOY)
    assert report["decoy/token_inflation"] > 0 and "decoy/token_inflation" in (tmp_path / "ev" / "eval" / "decoy.md").read_text()
    rows = [json.loads(line) for line in (tmp_path / "ev" / "eval" / "decoy.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"].startswith(DEFAULT_DECOY)
    assert main([*args[:-1], "eval.decoy=default", "--think-budgets", "4"]) == 2  # the probe is plain eval only

"""Grader audit: the strict grader on adversarial output, the rate statistics by hand, reading every
verdict file, the CLI, and end to end with `r1lab serve` as the LLM judge."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

from r1lab.errors import DataError
from r1lab.records import Problem
from r1lab.verify.audit import (AuditSettings, Item, last_boxed, load_items, report_markdown, reward_error_rates, run_audit,
                                strict_grade, stratified_sample, wilson, write_report)


def _cli(*args, cwd, timeout=120):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("response, gold, status", [
    (r"<answer>\frac{1}{2}</answer>", "0.5", "correct"),  # numbers compared exactly
    (r"The total is \boxed{1,000}.", "1000", "correct"),
    (r"<answer>\$72.</answer>", "72", "correct"),
    (r"<answer>-\dfrac{3}{4}</answer>", "-0.75", "correct"),
    (r"<answer>0.333</answer>", r"\frac{1}{3}", "wrong"),  # close is not equal
    (r"<answer>\left( 1, 2 \right)</answer>", "(1,2)", "correct"),  # text after spacing is removed
    (r"<answer>\text{(B)}</answer>", "(B)", "correct"),
    ("<answer>5 cm</answer>", "5", "wrong"),  # strict: units are not stripped
    ("<think>the answer is 4</think> so 4", "4", "wrong"),  # no final-answer block: never read from the prose
    ("<think><answer>4</answer></think> <answer>3</answer>", "4", "wrong"),  # the last block decides
    ("<answer>4</answer> <answer>", "4", "correct"),  # a stray opening tag after the block
    ("<answer></answer>", "0", "wrong"),
    (r"\boxed{\boxed{7}", "7", "correct"),  # the box that closes
    (r"\boxed{4", "4", "wrong"),  # never closes
    ("<answer>1/0</answer>", "1/0", "correct"),  # not a number: compared as text
    (None, "1", "wrong"),
    (r"<answer>\boxed{2} or \boxed{3}</answer>", "3", "correct"),
])
def test_strict_grader_on_adversarial_output(response, gold, status):
    assert strict_grade(response, Problem("p", "q", gold)).status == status


def test_strict_grader_stays_fast_on_hostile_text():
    t0 = time.perf_counter()
    for text in ("\\boxed{" * 200_000, "<answer>" * 200_000, "{" * 500_000 + "}" * 10, "</answer>" * 100_000 + "<answer>1"):
        assert strict_grade(text, Problem("p", "q", "1")).status == "wrong"
    assert time.perf_counter() - t0 < 5
    assert last_boxed(r"\boxed{\{1\}} and \boxed{x^{2}}") == "x^{2}"


def test_wilson_interval_against_hand_computed_values():
    # k/n = 5/10, z = 1.96: centre (0.5 + 0.19208) / 1.38416 = 0.5, half 1.96/1.38416 * sqrt(0.025 + 0.009604) = 0.26341
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-5) and hi == pytest.approx(0.76341, abs=1e-5)
    lo, hi = wilson(0, 10)  # centre 0.19208/1.38416 = 0.13877, half the same: (0, 0.27753)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-5)
    assert wilson(0, 0) == (0.0, 1.0)


def test_reward_error_rates_by_hand():
    # 800 rewarded, 200 not; 10 of 100 sampled rewarded are wrong (q = 0.1), 20 of 100 not rewarded are right (r = 0.2)
    # FP = 800*0.1 = 80, TN = 200*0.8 = 160 -> FPR = 1/3; FN = 200*0.2 = 40, TP = 720 -> FNR = 40/760
    r = reward_error_rates(800, 200, 10, 100, 20, 100)
    assert r["wrong_among_reward_correct"]["estimate"] == 0.1 and r["correct_among_reward_not_correct"]["estimate"] == 0.2
    assert r["false_positive_rate"]["estimate"] == pytest.approx(1 / 3)
    assert r["false_negative_rate"]["estimate"] == pytest.approx(40 / 760)
    q_lo, q_hi = wilson(10, 100)
    r_lo, r_hi = wilson(20, 100)
    assert r["false_positive_rate"]["low"] == pytest.approx(800 * q_lo / (800 * q_lo + 200 * (1 - r_lo)))
    assert r["false_negative_rate"]["high"] == pytest.approx(200 * r_hi / (200 * r_hi + 800 * (1 - q_hi)))
    for key in ("false_positive_rate", "false_negative_rate"):
        assert r[key]["low"] < r[key]["estimate"] < r[key]["high"]
    none = reward_error_rates(10, 5, 0, 10, 0, 0)  # no rejected item graded: no estimate, only the widest bounds
    assert math.isnan(none["false_negative_rate"]["estimate"]) and math.isnan(none["false_positive_rate"]["estimate"])
    assert none["false_positive_rate"]["low"] == 0.0  # q_lo = 0
    assert none["false_negative_rate"]["high"] == pytest.approx(5 / (5 + 10 * (1 - wilson(0, 10)[1])))  # r_hi = 1


def _items(pos: int, neg: int) -> list[Item]:
    return ([Item(f"f:{i}", f"p{i}", "q", "1", "<answer>1</answer>", True, "correct") for i in range(pos)]
            + [Item(f"f:{pos + i}", f"p{pos + i}", "q", "1", "<answer>2</answer>", False, "wrong") for i in range(neg)])


def test_stratified_sample_takes_both_verdicts():
    items = _items(10, 90)
    s = stratified_sample(items, 20, seed=1)
    assert sum(i.reward_correct for i in s) == 10 and len(s) == 20
    s = stratified_sample(items, 30, seed=1)
    assert sum(i.reward_correct for i in s) == 10 and len(s) == 30  # the short side is taken whole
    assert [i.ref for i in stratified_sample(items, 30, seed=1)] == [i.ref for i in s]  # deterministic
    assert len(stratified_sample(items, 0)) == 100


def test_audit_finds_planted_grading_errors_in_both_directions(tmp_path):
    items = _items(30, 30)
    items[0].reward_correct, items[0].reward_status = False, "unparsable"  # a right answer the reward missed
    items[40].reward_correct, items[40].reward_status = True, "correct"  # a wrong answer the reward accepted
    r = run_audit(items, AuditSettings(n=0), source="planted")
    assert r["table"] == {"reward_correct": {"second_correct": 29, "second_wrong": 1, "second_abstained": 0},
                          "reward_not_correct": {"second_correct": 1, "second_wrong": 29, "second_abstained": 0}}
    assert [(d["ref"], d["direction"]) for d in r["disagreements"]] == [
        ("f:40", "reward correct, second wrong"), ("f:0", "reward not correct, second correct")]
    assert r["agreement"] == pytest.approx(58 / 60)
    assert r["rates"]["false_positive_rate"]["estimate"] == pytest.approx(1 / 30)
    md = report_markdown(r)
    assert "f:40: reward correct, second wrong" in md and "false-positive rate" in md
    js, mdp = write_report(r, tmp_path / "out")
    assert json.loads(js.read_text())["disagreements"][0]["ref"] == "f:40" and mdp.read_text() == md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["audit.json", "audit.md"]  # no temporary left


def test_load_items_reads_eval_rl_and_flat_files(tmp_path):
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps({"id": "a", "prompt": "1+1?", "answer": "2", "n": 2, "samples": [
        {"text": "<answer>2</answer>", "status": "correct", "correct": True},
        {"text": "<answer>3</answer>", "status": "wrong", "correct": False}]}) + "\n", encoding="utf-8")
    items = load_items(ev)
    assert [(i.ref.split("/")[-1], i.problem_id, i.reward_correct, i.answer) for i in items] == [
        ("eval.jsonl:1#0", "a", True, "2"), ("eval.jsonl:1#1", "a", False, "2")]
    rl = tmp_path / "samples.jsonl"
    rl.write_text(json.dumps({"step": 1, "problem_id": "a", "text": "<answer>2</answer>", "reward": 1.0, "verdict": "correct"}) + "\n",
                  encoding="utf-8")
    probs = tmp_path / "problems.jsonl"
    probs.write_text(json.dumps({"id": "a", "prompt": "1+1?", "answer": "2"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"samples.jsonl:1: no prompt/answer in the row .*pass --problems"):
        load_items(rl)
    assert [(i.prompt, i.answer, i.reward_status) for i in load_items(rl, probs)] == [("1+1?", "2", "correct")]
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"problem": "q", "answer": "1", "response": "x", "correct": False}) + "\n"
                    + json.dumps({"problem": "q", "answer": "1", "response": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"flat.jsonl:2: no recorded verdict"):
        load_items(flat)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"problem_id": "zz", "text": "x", "verdict": "wrong"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"problem 'zz' is not in"):
        load_items(other, probs)


def test_cli_strict_audit_and_bad_input(tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"What is {i}+{i}?", "answer": str(2 * i), "samples": [
        {"text": f"<answer>{2 * i}</answer>", "status": "correct", "correct": True},
        {"text": f"<answer>{2 * i + 1}</answer>", "status": "correct" if i == 3 else "wrong", "correct": i == 3}]}
        for i in range(10)]
    (tmp_path / "ev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = _cli("verify", "audit", "ev.jsonl", "--n", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "ev.audit" / "audit.json").read_text())
    assert report["verdicts"] == 20 and report["graded"] == 20
    assert [d["ref"] for d in report["disagreements"]] == ["ev.jsonl:4#1"]
    assert "agreement 95.0%" in res.stdout and "audit.md" in res.stdout
    res = _cli("verify", "audit", "missing.jsonl", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "r1lab: error: missing.jsonl: file not found"
    res = _cli("verify", "audit", "ev.jsonl", "--judge", "localhost:8000", cwd=tmp_path)
    assert res.returncode == 2 and "--judge must be an http(s) URL" in res.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    res = _cli("verify", "audit", "ev.jsonl", "--judge", f"http://127.0.0.1:{port}/v1", "--out", "dead", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "does not answer" in res.stderr
    assert not (tmp_path / "dead").exists()


# ---------------------------------------------------------------------------------------------
# end to end: `r1lab serve` as the judge


def _eval_rows():
    """Eight problems, two samples each; the recorded verdicts say the second sample of the odd ones is wrong."""
    return [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "n": 2, "samples": [
        {"text": f"<answer>{2 * i}</answer>", "status": "correct", "correct": True},
        {"text": f"<answer>{2 * i + i % 2}</answer>", "status": "wrong" if i % 2 else "correct", "correct": not i % 2}]}
        for i in range(8)]


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    """A tiny model trained (in about a second) to answer every judge prompt of this test with CORRECT, served by `r1lab serve`."""
    import torch

    from r1lab.config import TinyModelConfig
    from r1lab.models import build_tiny_model, build_tiny_tokenizer, save_model
    from r1lab.verify.judge import JudgeVerifier

    judge = JudgeVerifier("http://unused")
    prompts = [judge.prompt(s["text"], Problem(r["id"], r["prompt"], r["answer"])) for r in _eval_rows() for s in r["samples"]]
    tok = build_tiny_tokenizer(prompts + ["CORRECT"] * 4, vocab_size=400)
    model = build_tiny_model(tok, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                                  intermediate_size=64, max_positions=512))
    reply = tok("CORRECT<|im_end|>", add_special_tokens=False)["input_ids"]
    seqs = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, seqs)) + len(reply)
    ids = torch.tensor([s + reply + [tok.pad_token_id] * (width - len(s) - len(reply)) for s in seqs])
    labels = torch.tensor([[-100] * len(s) + reply + [-100] * (width - len(s) - len(reply)) for s in seqs])
    mask = (labels != -100) | (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(40):
            loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.05
    path = tmp_path_factory.mktemp("judge") / "tiny-judge"
    save_model(model, tok, path)
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", str(path), "--port", "0", "--model-name", "judge"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = proc.stdout.readline()  # printed once the model is loaded and the port bound
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"r1lab serve did not start: {line!r}")
    yield "http://" + line.split("http://", 1)[1].split("/v1", 1)[0] + "/v1"
    proc.terminate()
    proc.wait(timeout=10)


def test_audit_end_to_end_with_r1lab_serve_as_the_judge(tmp_path, judge_server):
    (tmp_path / "ev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _eval_rows()), encoding="utf-8")
    res = _cli("verify", "audit", "ev.jsonl", "--n", "12", "--seed", "3", "--judge", judge_server, "--judge-model", "judge",
               "--out", "audit", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["verdicts"] == 16 and report["sampled"] == 12 and report["abstained"] == 0
    assert report["grader"] == f"LLM judge {judge_server} (model judge)"
    # 12 of 16, stratified: all 4 rejected and 8 of the 12 accepted; this judge calls every one correct
    assert report["table"] == {"reward_correct": {"second_correct": 8, "second_wrong": 0, "second_abstained": 0},
                               "reward_not_correct": {"second_correct": 4, "second_wrong": 0, "second_abstained": 0}}
    assert sorted(d["ref"] for d in report["disagreements"]) == [f"ev.jsonl:{i + 1}#1" for i in (1, 3, 5, 7)]
    assert all(d["direction"] == "reward not correct, second correct" and "CORRECT" in d["second_reason"]
               for d in report["disagreements"])
    rates = report["rates"]
    assert rates["correct_among_reward_not_correct"]["estimate"] == 1.0 and rates["wrong_among_reward_correct"]["estimate"] == 0.0
    assert rates["false_negative_rate"]["estimate"] == pytest.approx(4 / 16)  # FN 4, TP 12
    assert rates["false_positive_rate"]["estimate"] is None  # FP + TN = 0: this judge finds no wrong answer at all
    md = (tmp_path / "audit" / "audit.md").read_text()
    assert "## Disagreements to read (4)" in md and "judge said" in md

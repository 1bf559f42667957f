"""Budget forcing: the thinking stops at exactly the maximum, an early end becomes "Wait" below the
minimum, counts are exact; the engines' token-id continuation path it runs on; the eval sweep."""

import math

import pytest

from r1lab.errors import ConfigError
from r1lab.eval.budget import BudgetForcedEngine, BudgetForcing, force_budget
from r1lab.records import Completion, Problem
from r1lab.rollout import FastEngine, HFEngine, SamplingParams
from r1lab.rollout.base import Engine, encode_prompts, stop_string_end

pytestmark = pytest.mark.numerics  # float comparisons across kernels, shapes, processes or float64: tests/numerics.py

LINE = "1 + 1 = 2\n"


class ScriptedEngine(Engine):
    """A model whose next text is a function of what the response holds so far: `lines` lines of
    thinking per turn (a turn starts at the prompt or after each "Wait"), then "</think>", then
    "\\n<answer>2</answer>" and its end of sequence. Honours max_new_tokens, stop strings and
    stop ids the way the real engines do, and records each call's max_new_tokens."""

    continues_ids = True

    def __init__(self, tok, lines, close=True):
        self.tokenizer, self.lines, self.close = tok, lines, close
        self.stop_ids = [tok.eos_token_id]
        self.calls = []
        self.prompt_len = None

    def _script(self, response: str) -> list[int]:
        enc = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        if "</think>" in response:
            return enc("\n<answer>2</answer>") + [self.tokenizer.eos_token_id]
        turn = response.rsplit("Wait", 1)[-1]
        todo = max(0, self.lines - turn.count("\n"))
        if not self.close:
            return enc(LINE * todo) + [self.tokenizer.eos_token_id]
        return enc(("<think>" if not response else "") + LINE * todo + "</think>")

    def generate_ids(self, prompts, params, seed=None, on_batch=None):
        self.calls.append(params.max_new_tokens)
        out = []
        for i, ids in enumerate(prompts):
            response = self.tokenizer.decode(ids[self.prompt_len:], skip_special_tokens=False)
            script, toks, finish = self._script(response), [], "length"
            for t in script:
                toks.append(t)
                if t in self.stop_ids or stop_string_end(self.tokenizer, toks, params.stop) is not None:
                    finish = "stop"
                    break
                if len(toks) >= params.max_new_tokens:
                    break
            if finish == "stop" and toks[-1] in self.stop_ids:
                text = self.tokenizer.decode(toks[:-1])
            else:
                text = self.tokenizer.decode(toks)
            out.append(Completion(str(i), list(ids), toks, text, [-0.5] * len(toks), finish))
        return out


def _prompt(tok):
    e = encode_prompts(tok, [Problem("p", "Compute 1 + 1.", "2")])[0]
    return e.ids


def _run(tok, lines, f, close=True, n=1):
    eng = ScriptedEngine(tok, lines, close)
    prompt = _prompt(tok)
    eng.prompt_len = len(prompt)
    comps, marks = force_budget(eng, tok, [(prompt, "", "p")] * n, SamplingParams(temperature=0.0), f, seed=0)
    return eng, comps, marks


def enc(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def test_the_maximum_stops_thinking_at_exactly_the_budget_and_forces_the_answer(tiny):
    _, tok = tiny
    natural = enc(tok, "<think>" + LINE * 40)  # the model would think far longer
    for budget in (1, 7, 10, 23):
        eng, (c,), [(waits, forced)] = _run(tok, 40, BudgetForcing(max_think=budget, answer_tokens=16))
        close = enc(tok, "\n</think>\n<answer>")
        assert c.think_tokens == budget and forced and waits == 0
        assert c.response_ids[:budget] == natural[:budget]  # what the model wrote, cut at exactly the budget
        assert c.response_ids[budget:budget + len(close)] == close
        assert c.text.endswith("\n</think>\n<answer>\n<answer>2</answer>")  # the answer phase continued
        assert c.finish_reason == "stop" and eng.calls == [budget, 16]
        assert all(math.isnan(x) for x in c.logprobs[budget:budget + len(close)])
        assert not any(math.isnan(x) for x in c.logprobs[:budget])


def test_below_the_minimum_an_end_of_thinking_becomes_wait_and_decoding_goes_on(tiny):
    _, tok = tiny
    line, wait, start = len(enc(tok, LINE)), len(enc(tok, "Wait")), len(enc(tok, "<think>"))
    first = start + 2 * line  # tokens before the model's first "</think>"
    f = BudgetForcing(min_think=first + 1, max_think=200)
    _, (c,), [(waits, forced)] = _run(tok, 2, f)
    # one Wait: the second turn brings the count to first + wait + 2 lines >= min, and the model's own close stands
    assert waits == 1 and not forced
    assert c.think_tokens == first + wait + 2 * line
    think_end = enc(tok, "</think>")
    assert c.response_ids[c.think_tokens:c.think_tokens + len(think_end)] == think_end
    assert c.text == "<think>" + LINE * 2 + "Wait" + LINE * 2 + "</think>\n<answer>2</answer>"
    # a higher minimum needs more Waits, each replacing an end of thinking
    f = BudgetForcing(min_think=first + 2 * (wait + 2 * line), max_think=200)
    _, (c,), [(waits, _)] = _run(tok, 2, f)
    assert waits == 2 and c.think_tokens == first + 2 * (wait + 2 * line)
    assert c.text.count("Wait") == 2 and c.text.count("</think>") == 1


def test_between_minimum_and_maximum_nothing_is_forced_and_the_count_is_exact(tiny):
    _, tok = tiny
    natural = enc(tok, "<think>" + LINE * 3)
    _, (c,), [(waits, forced)] = _run(tok, 3, BudgetForcing(min_think=2, max_think=len(natural) + 1))
    assert (c.think_tokens, waits, forced) == (len(natural), 0, False)
    assert c.text == "<think>" + LINE * 3 + "</think>\n<answer>2</answer>"
    # a delimiter that lands on the last token of the budget is the model's own close, not a forced one
    _, (c,), [(_, forced)] = _run(tok, 3, BudgetForcing(max_think=len(natural) + len(enc(tok, "</think>"))))
    assert c.think_tokens == len(natural) and not forced


def test_wait_extension_is_capped_by_the_maximum(tiny):
    _, tok = tiny
    line, wait, start = len(enc(tok, LINE)), len(enc(tok, "Wait")), len(enc(tok, "<think>"))
    # turns of 2 lines: after the first turn and two Waits, the budget ends inside the third turn's lines
    budget = start + 2 * line + 2 * (wait + 2 * line) - line
    _, (c,), [(waits, forced)] = _run(tok, 2, BudgetForcing(min_think=budget, max_think=budget))
    assert forced and waits == 2 and c.think_tokens == budget
    assert c.text.count("</think>") == 1 and c.text.count("Wait") == 2 and "\n</think>\n<answer>" in c.text
    # a Wait that would end exactly at the maximum is inserted, and the thinking is closed right after it
    budget = start + 2 * line + wait
    eng, (c,), [(waits, forced)] = _run(tok, 2, BudgetForcing(min_think=budget, max_think=budget))
    assert (waits, forced, c.think_tokens) == (1, True, budget) and len(eng.calls) == 2
    assert c.text.startswith("<think>" + LINE * 2 + "Wait\n</think>\n<answer>")


def test_a_token_that_straddles_the_delimiter_counts_as_delimiter_and_its_text_is_kept(tiny):
    _, tok = tiny
    # with end "= 2", the token " =" holds a space before the delimiter: the count stops before that
    # token, and on a Wait extension the space is re-encoded with the Wait
    assert [tok.decode([i]) for i in enc(tok, "<think>1 + 1 = 2")][4:6] == ["1", " ="]
    _, (c,), [(waits, forced)] = _run(tok, 2, BudgetForcing(min_think=6, max_think=100, end="= 2"))
    assert (waits, forced) == (1, False)
    assert c.think_tokens == len(enc(tok, "<think>1 + 1")) + len(enc(tok, " Wait")) + len(enc(tok, "1 + 1"))
    assert c.text.startswith("<think>1 + 1 Wait1 + 1 = 2")


def test_end_of_sequence_without_delimiter(tiny):
    _, tok = tiny
    body = enc(tok, LINE * 2)
    _, (c,), [(waits, _)] = _run(tok, 2, BudgetForcing(max_think=100), close=False)
    assert waits == 0 and c.think_tokens == len(body) and c.text == LINE * 2 and c.finish_reason == "stop"
    _, (c,), [(waits, _)] = _run(tok, 2, BudgetForcing(min_think=len(body) + 1, max_think=100), close=False)
    assert waits == 1 and c.text == LINE * 2 + "Wait" + LINE * 2


def test_settings_are_checked():
    for kw in ({"max_think": 0}, {"max_think": 4, "min_think": 5}, {"max_think": 4, "answer_tokens": 0},
               {"max_think": 4, "wait": ""}):
        with pytest.raises(ConfigError):
            BudgetForcing(**kw)
    with pytest.raises(ConfigError, match="endpoint"):
        BudgetForcedEngine(Engine(), BudgetForcing(max_think=4))  # an engine that cannot continue ids


# -- the engines' continuation path, on the tiny model ------------------------------------------------


@pytest.mark.parametrize("cls", [FastEngine, HFEngine])
def test_generate_ids_continues_a_prefix_exactly(tiny, cls):
    model, tok = tiny
    engine = cls(model, tok)
    probs = [Problem("a", "Compute 1 + 2.", "3"), Problem("b", "Use 3, 5, 7 to make 22.", "x")]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    full = engine.generate(probs, greedy)
    prompts = [e.ids for e in encode_prompts(tok, probs)]
    same = engine.generate_ids(prompts, greedy)
    assert [c.response_ids for c in same] == [c.response_ids for c in full]
    # greedy from prompt + the first 5 tokens gives the rest of the greedy response
    tail = engine.generate_ids([p + c.response_ids[:5] for p, c in zip(prompts, full)], SamplingParams(temperature=0.0, max_new_tokens=7))
    assert [c.response_ids for c in tail] == [c.response_ids[5:] for c in full]
    sampled = SamplingParams(temperature=1.0, max_new_tokens=12)
    assert ([c.response_ids for c in engine.generate_ids(prompts, sampled, seed=3)]
            == [c.response_ids for c in engine.generate(probs, sampled, seed=3)])


def test_budget_forced_engine_on_the_tiny_model(tiny):
    model, tok = tiny
    eng = BudgetForcedEngine(FastEngine(model, tok), BudgetForcing(max_think=6, answer_tokens=4))
    comps = eng.generate([Problem("a", "Compute 1 + 2.", "3"), Problem("b", "Compute 2 + 2.", "4")],
                         SamplingParams(temperature=1.0), n=3, seed=0)
    close = enc(tok, "\n</think>\n<answer>")
    assert len(comps) == 6 and [c.problem_id for c in comps] == ["a"] * 3 + ["b"] * 3
    for c in comps:
        assert c.think_tokens <= 6
        if c.response_ids[c.think_tokens:c.think_tokens + len(close)] == close:
            assert c.think_tokens == 6
        assert len(c.response_ids) <= 6 + len(close) + 4 and len(c.logprobs) == len(c.response_ids)
    assert eng.stats["samples"] == 6 and eng.stats["think_tokens"] == sum(c.think_tokens for c in comps)
    assert eng.stats["forced_close"] >= 1  # an untrained model rarely closes its thinking within 6 tokens


def test_eval_think_budgets_sweep_writes_table_plot_and_resumes(tmp_path, tiny, capsys):
    import json

    from r1lab.cli import main
    from r1lab.models import save_model

    model, tok = tiny
    save_model(model, tok, tmp_path / "m")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(Problem(f"p{i}", f"Compute {i} + 1.", str(i + 1)).to_dict()) + "\n"
                            for i in range(3)), encoding="utf-8")
    args = ["eval", str(tmp_path / "m"), "--data", str(data), "--n", "2", "--think-budgets", "2,1:5", "--answer-tokens", "3",
            "--out", str(tmp_path / "ev"), "--quiet", "model.dtype=float32", "reward.verify_workers=0"]
    assert main(args) == 0
    table = (tmp_path / "ev" / "eval" / "scaling.md").read_text()
    assert "| 0..2 |" in table and "| 1..5 |" in table
    assert (tmp_path / "ev" / "plots" / "scaling.png").stat().st_size > 0
    points = json.loads((tmp_path / "ev" / "eval" / "scaling.json").read_text())["points"]
    for (lo, hi), p in zip([(0, 2), (1, 5)], points):
        rows = [json.loads(line) for line in (tmp_path / "ev" / "eval" / f"think-{lo}-{hi}.jsonl").read_text().splitlines()]
        think = [s["think_tokens"] for r in rows for s in r["samples"]]
        assert len(think) == 6 and all(t <= hi for t in think)
        assert p["think_mean"] == pytest.approx(sum(think) / 6) and p["samples"] == 6
    capsys.readouterr()
    assert main(args) == 0  # evaluating into the directory again resumes: the same table
    assert (tmp_path / "ev" / "eval" / "scaling.md").read_text().split("\n\n")[1].splitlines()[2].split("|")[:7] == \
        table.split("\n\n")[1].splitlines()[2].split("|")[:7]
    for bad in (["--think-budgets", "4:2"], ["--think-budgets", "x"], ["--think-min", "3"]):
        assert main(["eval", str(tmp_path / "m"), "--data", str(data), *bad, "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["eval", "http://127.0.0.1:9/v1", "--think-budgets", "4", "--out", str(tmp_path / "bad")]) == 2
    assert "needs a local model" in capsys.readouterr().err and not (tmp_path / "bad").exists()

"""Span credit (reward.token_credit): each checkable claim in a response pays its own tokens.
Expected values are computed by hand from the formula in algos/credit.py; the claims are read from
hand-written (often hostile) responses to the scenes of helpers_visual.py."""

from __future__ import annotations

import copy

import pytest
import torch

from r1lab.algos.credit import char_spans_to_tokens, span_credit_advantage, token_char_ends
from r1lab.config import RunConfig
from r1lab.errors import ConfigError
from r1lab.records import Completion
from r1lab.reward_registry import Span, get_span_credit
from r1lab.tasks import generate_splits, get_task

from helpers_visual import BAR, BAR_TEACHER, COUNT, DIGITS, MATH

spans_of = get_span_credit("visual_readings")


def claims(problem, text):
    """(claimed text, key, value) per claim: what the span covers, checked against the text."""
    return [(text[s.start:s.end], s.key, s.value) for s in spans_of(problem, text)]


# -- the claims a response makes ---------------------------------------------------------------------

def test_the_teacher_trace_makes_only_right_claims_at_its_digits():
    assert claims(BAR, BAR_TEACHER) == [("5", "1", 1.0), ("4", "2", 1.0), ("4", "2", 1.0)]
    text = "row 1 has 2, row 2 has 0, row 3 has 1, row 4 has 0.\n2 + 0 + 1 + 0 = 3"
    assert claims(COUNT, text) == [("2", "1", 1.0), ("0", "2", 1.0), ("1", "3", 1.0), ("0", "4", 1.0)]
    assert claims(DIGITS, "The digits are 3, 0, 9.\n3 + 0 + 9 = 12") == [("3", "1", 1.0), ("0", "2", 1.0), ("9", "3", 1.0)]
    # every generated teacher trace: claims, all right
    train, _ = generate_splits(["bar_value", "count_shapes", "digit_sum"], 30, 0, 2, seed=3)
    for p in train:
        spans = spans_of(p, get_task(p.metadata["family"]).teacher_trace(p))
        assert spans and all(s.value == 1.0 for s in spans), p.id


@pytest.mark.parametrize("text", ["", "<answer>4</answer>", "bar bar is is 4 row has has 2", "bar 9 is 4, row 7 has 1",
                                  "bar x is 4", "The digits are .", "bar 2 is -4"])
def test_no_readings_make_no_claims(text):
    for p in (BAR, COUNT, DIGITS):
        assert spans_of(p, text) == []
    assert spans_of(MATH, BAR_TEACHER) == []  # a problem without a picture has no items


def test_wrong_and_sprayed_readings_are_claims_valued_zero():
    assert claims(BAR, "bar 1 is 4, bar 2 is 4.") == [("4", "1", 0.0), ("4", "2", 1.0)]
    # bars past the asked one are not items: no claim, right or wrong
    assert claims(BAR, "bar 3 is 5, bar 4 is 1, BAR 2 IS 4") == [("4", "2", 1.0)]
    spray = ", ".join(f"bar 2 is {h}" for h in range(1, 8))
    assert [v for _, _, v in claims(BAR, spray)] == [0, 0, 0, 1, 0, 0, 0]
    # a number glued to more digits is not the reading it starts with
    assert claims(BAR, "bar 2 is 45") == [("45", "2", 0.0)]
    # two digit lists are two guesses: every entry is valued 0, even the right ones
    assert [v for *_, v in claims(DIGITS, "The digits are 3, 0, 9. The digits are 1, 1, 1.")] == [0.0] * 6
    # entries past the picture's digits make no claim
    assert claims(DIGITS, "The digits are 3, 1, 9, 9.") == [("3", "1", 1.0), ("1", "2", 0.0), ("9", "3", 1.0)]


# -- claims onto tokens --------------------------------------------------------------------------

def test_char_spans_map_onto_the_tokens_that_overlap_them():
    ends = [3, 5, 9]  # tokens "abc" [0, 3), "de" [3, 5), "fghi" [5, 9)
    got = char_spans_to_tokens([Span(3, 5, "a", 1), Span(4, 7, "b", 0), Span(0, 1, "c", 1), Span(8, 9, "d", 1),
                                Span(9, 10, "past", 1), Span(2, 2, "empty", 1)], ends)
    assert got == [(1, 2, "a", 1.0), (1, 3, "b", 0.0), (0, 1, "c", 1.0), (2, 3, "d", 1.0)]


def test_credit_is_each_claim_minus_its_items_group_mean():
    mask = torch.ones(4, 6)
    groups = torch.tensor([0, 0, 0, 1])
    spans = [[(2, 3, "1", 1.0), (4, 6, "2", 0.0)],  # key 2 is claimed once in group 0: no baseline, 0
             [(4, 5, "1", 0.0)],
             [(1, 2, "1", 1.0)],
             [(0, 1, "1", 1.0)]]  # alone in group 1: 0
    credit = span_credit_advantage(spans, groups, mask)
    want = torch.zeros(4, 6, dtype=torch.float64)
    want[0, 2], want[1, 4], want[2, 1] = 1 - 2 / 3, 0 - 2 / 3, 1 - 2 / 3
    assert torch.allclose(credit.double(), want, atol=1e-7)  # float32 of values below 1: ~6e-8 round-off
    # outside the response mask nothing is paid
    mask[0, 2] = 0
    assert span_credit_advantage(spans, groups, mask)[0, 2] == 0


def test_spraying_guesses_costs_more_than_it_pays():
    # three samples read bar 2 right once; the fourth claims every height for it
    spans = [[(0, 1, "2", 1.0)], [(0, 1, "2", 1.0)], [(0, 1, "2", 1.0)],
             [(k, k + 1, "2", float(k == 3)) for k in range(7)]]
    credit = span_credit_advantage(spans, torch.zeros(4, dtype=torch.long), torch.ones(4, 7))
    mean = 4 / 10
    assert credit[3].sum().item() == pytest.approx((1 - mean) + 6 * (0 - mean), abs=1e-6)
    assert credit[3].sum() < 0 < credit[0].sum()


def test_token_char_ends_line_up_with_the_text_around_a_prefill_and_the_stop_token(tiny):
    _, tok = tiny
    body = "<think>7 + 3 = 10</think>\n<answer>10</answer>"
    ids = tok(body, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for prefill in ("", "<think>"):
        text = prefill + body  # as the engine writes it: the prefill, then the tokens without the stop token
        ends = token_char_ends(tok, ids, text)
        assert ends is not None and len(ends) == len(ids)
        starts = [len(prefill)] + ends[:-1]
        for t, i in enumerate(ids[:-1]):
            assert text[starts[t]:ends[t]] == tok.decode([i], skip_special_tokens=False)
    assert token_char_ends(tok, ids, "something else entirely") is None
    assert token_char_ends(tok, [], "") is None


# -- in the trainer ------------------------------------------------------------------------------

def test_make_batch_adds_the_credit_on_the_reading_digits_only(tiny):
    from r1lab.rollout import HFEngine
    from r1lab.train.rl import RLTrainer

    model, tok = tiny
    model = copy.deepcopy(model)
    texts = [BAR_TEACHER, BAR_TEACHER.replace("bar 1 is 5", "bar 1 is 3"), BAR_TEACHER.replace("is 4", "is 2")]
    prompt = tok(BAR.prompt)["input_ids"]
    cs = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        cs.append(Completion(BAR.id, prompt, ids, text, [0.0] * len(ids), "stop"))
    rewards, groups = torch.tensor([1.0, 1.0, 0.0]), torch.zeros(3, dtype=torch.long)

    def batch(credit):
        cfg = RunConfig()
        cfg.train.group_size = 3
        cfg.reward.token_credit = credit
        trainer = RLTrainer(cfg, model, tok, HFEngine(model, tok))
        return trainer, trainer.make_batch(cs, rewards, groups, [BAR] * 3)

    _, plain = batch({})
    trainer, paid = batch({"visual_readings": 0.5})
    diff = paid.advantages - plain.advantages
    # bar 1: right, wrong, right (mean 2/3); bar 2: right twice, right twice, wrong twice (mean 2/3)
    want = {0: [1 / 3, 1 / 3, 1 / 3], 1: [-2 / 3, 1 / 3, 1 / 3], 2: [1 / 3, -2 / 3, -2 / 3]}
    for row, values in want.items():
        where = diff[row].nonzero().squeeze(-1)
        ids = paid.input_ids[row, where + 1]  # advantages sit on the tokens they score (the shifted targets)
        assert [tok.decode([i]) for i in ids.tolist()] == list("5" "44" if row == 0 else "3" "44" if row == 1 else "522")
        assert diff[row, where].tolist() == pytest.approx([0.5 * v for v in values], abs=1e-6)
    assert trainer.credit_stats["credit/unaligned"] == 0
    assert trainer.credit_stats["credit/visual_readings/claims"] == 3
    assert trainer.credit_stats["credit/visual_readings/value"] == pytest.approx(6 / 9)
    with pytest.raises(ValueError, match="needs the problem of every completion"):
        trainer.make_batch(cs, rewards, groups)


def test_an_unknown_span_credit_term_is_a_config_error():
    from r1lab.config import load_config

    with pytest.raises(ConfigError, match="token_credit"):
        load_config(None, ["reward.token_credit.visual_reading=0.5"])


steps_of = get_span_credit("visual_steps")


def test_visual_steps_checks_the_sum_line_against_the_responses_own_readings():
    teacher = "row 1 has 2, row 2 has 0, row 3 has 1, row 4 has 0.\n2 + 0 + 1 + 0 = 3"
    got = [(teacher[s.start:s.end], s.key, s.value) for s in steps_of(COUNT, teacher)]
    assert got[4:] == [("2", "copy 1", 1.0), ("0", "copy 2", 1.0), ("1", "copy 3", 1.0), ("0", "copy 4", 1.0),
                       ("3", "total", 1.0)]
    # row 3 misread as 2 and copied faithfully: only the reading is wrong (the copy and the sum are right)
    misread = "row 1 has 2, row 2 has 0, row 3 has 2, row 4 has 0.\n2 + 0 + 2 + 0 = 4"
    assert [s.value for s in steps_of(COUNT, misread)] == [1, 1, 0, 1, 1, 1, 1, 1, 1]
    # rows read right, row 3 miscopied, the sum of what was written right: only the copy is wrong
    miscopied = "row 1 has 2, row 2 has 0, row 3 has 1, row 4 has 0.\n2 + 0 + 2 + 0 = 4"
    assert [s.value for s in steps_of(COUNT, miscopied)] == [1, 1, 1, 1, 1, 1, 0, 1, 1]
    # a bad addition, a fifth term, a term for a row read twice
    assert steps_of(COUNT, teacher.replace("= 3", "= 5"))[-1].value == 0.0
    assert [s.value for s in steps_of(COUNT, teacher.replace("= 3", "+ 1 = 4"))][4:] == [1, 1, 1, 1, 0, 1]
    twice = "row 1 has 2, row 1 has 3, row 2 has 0.\n2 + 0 = 2"
    assert [(s.key, s.value) for s in steps_of(COUNT, twice)] == [("1", 1.0), ("1", 0.0), ("2", 1.0), ("copy 1", 0.0),
                                                                   ("copy 2", 1.0), ("total", 1.0)]
    # digit sums the same way; bar charts have no sum line; no readings, no steps
    digits = "The digits are 3, 0, 9.\n3 + 0 + 9 = 12"
    assert [(s.key, s.value) for s in steps_of(DIGITS, digits)][3:] == [("copy 1", 1.0), ("copy 2", 1.0), ("copy 3", 1.0),
                                                                        ("total", 1.0)]
    assert steps_of(BAR, BAR_TEACHER) == spans_of(BAR, BAR_TEACHER)
    assert steps_of(COUNT, "2 + 0 + 1 + 0 = 3") == [] and steps_of(MATH, teacher) == []
    train, _ = generate_splits(["count_shapes", "digit_sum"], 20, 0, 2, seed=5)
    for p in train:
        assert all(s.value == 1.0 for s in steps_of(p, get_task(p.metadata["family"]).teacher_trace(p))), p.id

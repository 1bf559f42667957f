"""SFT on episodes: a written multi-turn trace replayed through its environment is token for token
the episode a rollout of the same turns records (tags and hermes call formats), only the model's
turns are targets (the loss against a float64 hand computation; the observation positions get
exactly no gradient), and a trace the episode cannot hold is a one-line DataError."""

import copy
import math

import pytest
import torch
from helpers_episodes import QWEN25_TOOL_TEMPLATE, ScriptedEngine

from r1lab.errors import DataError
from r1lab.records import Problem
from r1lab.rollout import SamplingParams
from r1lab.rollout.episodes import EpisodeLimits, run_episodes, trace_episode
from r1lab.train.sft import sft_batch, sft_examples, sft_loss

PROBLEM = Problem("q", "Compute 47 * 82.", "3854", task="math")
TAGS = {"tools": ["calculator"], "call_format": "tags", "instructions": False}
CALL, ANSWER = "<think>\n<calc>47 * 82</calc>", "</think>\n<answer>3854</answer>"
OUTPUT = "\n<output>\n3854\n</output>\n"  # what the tags format appends after a call
LIMITS = EpisodeLimits(max_turns=3, max_tokens=400)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def rollout_of(tok, turns, settings, eos):
    """The episode a model that samples exactly `turns` (ids per turn) records."""
    engine = ScriptedEngine(tok, turns, [eos])
    return run_episodes(engine, [PROBLEM], SamplingParams(temperature=0, max_new_tokens=200), env="tools",
                        env_settings=settings, limits=LIMITS)[0]


@pytest.mark.parametrize("fmt", ["tags", "hermes"])
def test_a_replayed_trace_is_the_episode_a_rollout_records(tiny, fmt):
    tok = tiny[1]
    if fmt == "hermes":  # a Qwen2.5-style template: the result comes back as a tool turn of the template
        tok = copy.deepcopy(tok)
        tok.chat_template = QWEN25_TOOL_TEMPLATE
        call = '<tool_call>{"name": "calculator", "arguments": {"expression": "47 * 82"}}</tool_call>'
        settings, trace = {"tools": ["calculator"], "call_format": "hermes"}, call + ANSWER  # no observation in it
    else:
        call, settings, trace = CALL, TAGS, CALL + OUTPUT + ANSWER
    eos = tok.eos_token_id
    ep = trace_episode(tok, PROBLEM, trace, "tools", settings, LIMITS)
    rolled = rollout_of(tok, [ids(tok, call), ids(tok, ANSWER) + [eos]], settings, eos)
    assert ep.prompt_ids == rolled.prompt_ids
    assert ep.ids == rolled.ids and ep.mask == rolled.mask
    assert ep.who == ["model", "env", "model"] and ep.finish_reason == "stop" and ep.answer == rolled.answer
    obs = ep.ids[len(ids(tok, call)): len(ep.ids) - len(ids(tok, ANSWER)) - 1]
    assert ep.mask == [1] * len(ids(tok, call)) + [0] * len(obs) + [1] * (len(ids(tok, ANSWER)) + 1)
    assert "3854" in tok.decode(obs) and ep.ids[-1] == eos
    if fmt == "tags":
        assert tok.decode(obs) == OUTPUT
    # the SFT example: the episode's ids, the observation masked; a one-turn trace has no mask
    (ex, one) = sft_examples(tok, [(PROBLEM, trace), (PROBLEM, ANSWER)], "tools", settings, LIMITS)
    assert list(ex[0]) == ep.prompt_ids and list(ex[1]) == ep.ids and ex.mask == ep.mask
    assert one.mask is None and list(one[1]) == ids(tok, ANSWER) + [eos]


def test_the_sft_loss_of_a_two_turn_transcript_matches_float64_and_skips_the_observation(tiny):
    model, tok = tiny
    model = copy.deepcopy(model).double()
    example = sft_examples(tok, [(PROBLEM, CALL + OUTPUT + ANSWER)], "tools", TAGS, LIMITS)[0]
    prompt, response = list(example[0]), list(example[1])
    batch = sft_batch([example], tok.pad_token_id)
    logits = []

    def keep(module, inputs, out):  # the LM head's output [1, L, V], with its gradient kept
        out.retain_grad()
        logits.append(out)

    hook = model.lm_head.register_forward_hook(keep)
    try:
        loss, n = sft_loss(model, batch)
        loss.backward()
    finally:
        hook.remove()
    # by hand: -log softmax(logits[t])[next id] in float64 over the model's tokens only, averaged
    z = logits[0][0].detach().double()
    total, count = 0.0, 0
    for k, (tid, target) in enumerate(zip(response, example.mask)):
        if not target:
            continue
        row = z[len(prompt) + k - 1].tolist()  # the position that predicts response token k
        top = max(row)
        total -= row[tid] - top - math.log(sum(math.exp(v - top) for v in row))
        count += 1
    assert n == count == sum(example.mask) == len(response) - len(ids(tok, OUTPUT))
    # token_logprobs takes the log-softmax in float32 whatever the model's dtype: ~20 terms of size ~6,
    # each within a few float32 ulps (6e-8 relative), so the mean is within ~1e-7 relative; 1e-6 allows it
    assert float(loss.detach()) == pytest.approx(total / count, rel=1e-6)
    # the rows that predict observation tokens get exactly zero gradient, so their targets cannot
    # change the loss or its gradient; the rows that predict model tokens do get one
    grad = logits[0].grad[0]
    for k, target in enumerate(example.mask):
        row = grad[len(prompt) + k - 1]
        assert (row.abs().sum() > 0) if target else torch.equal(row, torch.zeros_like(row)), k


@pytest.mark.parametrize("trace, message", [
    (CALL + "\n<output>\n9999\n</output>\n" + ANSWER, "the environment answers"),  # a wrong tool output
    (CALL + OUTPUT, "ends before the episode does"),
    (CALL + OUTPUT + CALL + OUTPUT + CALL + OUTPUT + ANSWER, "longer than the episode limits"),
])
def test_a_trace_the_episode_cannot_hold_is_one_line(tiny, trace, message):
    with pytest.raises(DataError, match=message) as err:
        trace_episode(tiny[1], PROBLEM, trace, "tools", TAGS, LIMITS)
    assert "\n" not in str(err.value) and "'q'" in str(err.value)

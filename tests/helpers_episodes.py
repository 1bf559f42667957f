"""A scripted model for episode tests: exact ids per turn, the engines' stop rules."""

from __future__ import annotations

from r1lab.envs import Environment, StepResult, register_env
from r1lab.records import Completion
from r1lab.rollout.base import Engine, stop_string_end


class ScriptedEngine(Engine):
    """A model whose turn t is the id list script[t] (the same for every episode), honouring
    max_new_tokens, stop strings and stop ids as the real engines do, with log-prob -0.1*(k+1) for
    its k-th token. Records each call's prompts."""

    continues_ids = True

    def __init__(self, tok, script, stop_ids):
        self.tokenizer, self.script, self.stop_ids = tok, script, list(stop_ids)
        self.calls = []

    def generate_ids(self, prompts, params, seed=None, on_batch=None):
        turn = len(self.calls)
        self.calls.append([list(p) for p in prompts])
        out = []
        for i, ids in enumerate(prompts):
            toks, finish, cut = [], "length", None
            for t in self.script[min(turn, len(self.script) - 1)]:
                toks.append(t)
                if t in self.stop_ids + list(params.stop_token_ids):
                    finish = "stop"
                    break
                if (cut := stop_string_end(self.tokenizer, toks, params.stop)) is not None:
                    finish = "stop"
                    break
                if len(toks) >= params.max_new_tokens:
                    break
            text = self.tokenizer.decode(toks, skip_special_tokens=False)
            text = text[:cut] if cut is not None else text[:-len(self.tokenizer.decode(toks[-1:]))] if finish == "stop" else text
            out.append(Completion(str(i), list(ids), toks, text, [-0.1 * (k + 1) for k in range(len(toks))], finish))
        return out


def spelled(tok, text):
    """`text` as ids one character-piece at a time: a tokenization BPE would never produce, so any
    decode-and-re-encode of a sampled turn changes the ids."""
    ids = []
    for ch in text:
        ids += tok(ch, add_special_tokens=False)["input_ids"]
    assert ids != tok(text, add_special_tokens=False)["input_ids"]
    return ids


@register_env("chatter")
class ChatterEnvironment(Environment):
    """A multi-turn environment a random model plays: every model turn ends at a common letter or
    "<" (a random tiny model writes one within a few tokens) and is answered with the same observation, until
    max_turns or the model's end of sequence. Each answered turn counts one tool call; a turn that
    holds a digit counts one tool error as well (so both metrics vary)."""

    name = "chatter"
    stop = tuple("aeiont<")
    reward_terms = ("chatter_turns",)

    def __init__(self, reply: str = "<output>ok</output>"):
        self.reply = reply

    def step(self, turn_text):
        errors = int(any(ch.isdigit() for ch in turn_text))
        return StepResult(self.reply, done=False, rewards={"chatter_turns": 1.0},
                          info={"tool_calls": 1, "tool_errors": errors})


# a Qwen2.5-style template with tool turns (hermes): tool results come back in a user turn
QWEN25_TOOL_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    # like Qwen3, earlier turns lose their thinking when re-rendered: the drift this runner avoids
    "{%- set content = message['content'].split('</think>')[-1].lstrip('\\n') if not loop.last else message['content'] %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

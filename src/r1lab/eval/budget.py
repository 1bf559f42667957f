"""Budget forcing (s1: Muennighoff et al. 2025, "s1: Simple test-time scaling", Sec. 3.1): control
how many tokens a model thinks for at test time.

- Maximum: the thinking is cut at exactly `max_think` tokens, the end of thinking is appended
  (`close`, "\\n</think>\\n<answer>" by default) and the model writes its answer in at most
  `answer_tokens` more tokens.
- Minimum: when the model ends its thinking (it writes `end`, "</think>", or its end of sequence)
  before `min_think` tokens, that end is removed, `wait` ("Wait") is appended and decoding goes on.

Thinking tokens are the response tokens before the end of thinking: every sampled token and every
inserted "Wait" token; not the prompt (nor a `<think>` the chat template pre-fills), not the
delimiter. A token that holds the start of the delimiter counts as part of the delimiter; any text
it holds before the delimiter is re-encoded together with "Wait" when the thinking is extended.

Works on any engine with `generate_ids(prompts, params, seed)` (continuations of token-id
prefixes): forced text is appended as token ids, and what the model wrote is never re-tokenised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from r1lab.errors import ConfigError
from r1lab.records import Completion, Problem
from r1lab.rollout.base import Engine, SamplingParams, encode_prompts

ROUND_SEED_STRIDE = 104_729  # decoding round r of a call samples with seed + r * stride


@dataclass(frozen=True)
class BudgetForcing:
    max_think: int  # thinking tokens at most; reaching it closes the thinking
    min_think: int = 0  # thinking tokens at least; an earlier end of thinking becomes `wait`
    answer_tokens: int = 32  # tokens for the answer after the thinking is closed
    end: str = "</think>"  # what the model writes to end its thinking
    wait: str = "Wait"  # appended in place of an early end
    close: str = "\n</think>\n<answer>"  # appended when the maximum is reached

    def __post_init__(self) -> None:
        if self.max_think < 1:
            raise ConfigError(f"budget forcing: the thinking maximum must be >= 1, got {self.max_think}")
        if not 0 <= self.min_think <= self.max_think:
            raise ConfigError(f"budget forcing needs 0 <= minimum <= maximum, got {self.min_think}..{self.max_think}")
        if self.answer_tokens < 1:
            raise ConfigError(f"budget forcing: answer_tokens must be >= 1, got {self.answer_tokens}")
        for name in ("end", "wait", "close"):
            if not getattr(self, name):
                raise ConfigError(f"budget forcing: '{name}' must not be empty")


@dataclass
class _Job:
    prompt: list[int]
    prefill: str
    problem_id: str
    ids: list[int] = field(default_factory=list)  # the response so far
    lps: list[float] = field(default_factory=list)  # its log-probs (NaN for inserted tokens)
    think: int = 0  # thinking tokens, fixed once the thinking ends
    waits: int = 0
    forced: bool = False  # the maximum closed the thinking
    state: str = "think"  # think -> answer -> done, or think -> done (the model ended its response)
    text: str = ""
    finish: str = ""

    def insert(self, ids: list[int]) -> None:
        self.ids += ids
        self.lps += [math.nan] * len(ids)

    def take(self, c: Completion, k: int | None = None) -> None:
        self.ids += c.response_ids[:k]
        self.lps += c.logprobs[:k]

    def close(self, close_ids: list[int]) -> None:
        """The maximum is reached: the thinking ends here and the forced close follows."""
        self.think, self.forced, self.state = len(self.ids), True, "answer"
        self.insert(close_ids)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def _tokens_before(tokenizer, ids: list[int], chars: int) -> int:
    """The number of leading tokens whose text ends at or before character `chars`."""
    k = len(ids)
    while k > 0 and len(_decode(tokenizer, ids[:k])) > chars:
        k -= 1
    return k


def force_budget(engine: Engine, tokenizer, jobs: list[tuple[list[int], str, str]], params: SamplingParams,
                 f: BudgetForcing, seed: int | None = None) -> tuple[list[Completion], list[tuple[int, bool]]]:
    """Sample one budget-forced response for each (prompt ids, template prefill, problem id).

    Thinking is decoded in rounds; every round continues all the still-thinking jobs in one
    `generate_ids` call with `end` as a stop string and as many new tokens as the job with the most
    room left may take; a job's output beyond its own room is cut (the same tokens as if it had
    been stopped there). Then one call writes the answers of the jobs whose thinking was closed.
    Returns the completions, whose `think_tokens` is the exact count and whose inserted tokens have
    NaN log-probs, and for each one (waits inserted, whether the maximum closed its thinking)."""
    wait_ids = _encode(tokenizer, f.wait)
    close_ids = _encode(tokenizer, f.close)
    if not wait_ids or not close_ids:
        raise ConfigError("budget forcing: 'wait' and 'close' must encode to at least one token")
    state = [_Job(list(p), prefill, pid) for p, prefill, pid in jobs]
    stop_ids = set(engine.stop_ids) | set(params.stop_token_ids)
    rnd = 0
    while active := [j for j in state if j.state == "think"]:
        for j in [j for j in active if len(j.ids) >= f.max_think]:  # a Wait filled the budget
            j.close(close_ids)
        if not (active := [j for j in active if j.state == "think"]):
            break
        budget = max(f.max_think - len(j.ids) for j in active)
        p = replace(params, max_new_tokens=budget, stop=(f.end,))
        comps = engine.generate_ids([j.prompt + j.ids for j in active], p,
                                    seed=None if seed is None else seed + rnd * ROUND_SEED_STRIDE)
        rnd += 1
        for j, c in zip(active, comps):
            _think_step(j, c, f, tokenizer, wait_ids, close_ids, stop_ids)
    answering = [j for j in state if j.state == "answer"]
    if answering:
        p = replace(params, max_new_tokens=f.answer_tokens)
        comps = engine.generate_ids([j.prompt + j.ids for j in answering], p,
                                    seed=None if seed is None else seed + rnd * ROUND_SEED_STRIDE)
        for j, c in zip(answering, comps):
            j.text = _decode(tokenizer, j.ids) + c.text
            j.take(c)
            j.finish, j.state = c.finish_reason, "done"
    comps = [Completion(problem_id=j.problem_id, prompt_ids=j.prompt, response_ids=j.ids, text=j.prefill + j.text,
                        logprobs=j.lps, finish_reason=j.finish, think_tokens=j.think) for j in state]
    return comps, [(j.waits, j.forced) for j in state]


def _think_step(j: _Job, c: Completion, f: BudgetForcing, tokenizer, wait_ids: list[int], close_ids: list[int],
                stop_ids: set[int]) -> None:
    """Fold one round's continuation `c` into job `j`: close, extend with "Wait", or finish."""
    room = f.max_think - len(j.ids)
    new = c.response_ids
    if len(new) > room or (len(new) == room and c.finish_reason == "length"):
        j.take(c, room)  # exactly max_think thinking tokens
        j.close(close_ids)
        return
    text = _decode(tokenizer, new)
    at = text.find(f.end) if c.finish_reason == "stop" else -1
    if at >= 0:  # the model closed its thinking
        k = _tokens_before(tokenizer, new, at)
        leftover = text[len(_decode(tokenizer, new[:k])):at]
        extra = _encode(tokenizer, leftover + f.wait) if leftover else wait_ids
        if len(j.ids) + k < f.min_think and len(j.ids) + k + len(extra) <= f.max_think:
            j.take(c, k)
            j.insert(extra)
            j.waits += 1
            return
        j.think = len(j.ids) + k
        j.take(c)
        j.state = "answer"
        return
    # no delimiter: the model ended its response (an end-of-sequence or stop token)
    ended = c.finish_reason == "stop" and new and new[-1] in stop_ids
    body = new[:-1] if ended else new
    if ended and len(j.ids) + len(body) < f.min_think and len(j.ids) + len(body) + len(wait_ids) <= f.max_think:
        j.take(c, len(body))
        j.insert(wait_ids)
        j.waits += 1
        return
    j.think = len(j.ids) + len(body)
    j.text = _decode(tokenizer, j.ids + body)
    j.take(c)
    j.finish, j.state = c.finish_reason, "done"


class BudgetForcedEngine(Engine):
    """An engine (same `generate` contract as the others) whose samples are budget-forced.
    `stats` accumulates over calls: samples, thinking tokens, waits inserted, forced closes."""

    def __init__(self, engine: Engine, forcing: BudgetForcing):
        if not engine.continues_ids:
            raise ConfigError("budget forcing needs a local model (an engine that continues token-id prefixes); "
                              "an endpoint cannot be forced")
        self.engine, self.forcing, self.tokenizer = engine, forcing, engine.tokenizer
        self.batch_size = engine.batch_size
        self.stats = {"samples": 0, "think_tokens": 0, "waits": 0, "forced_close": 0}

    def generate(self, problems: list[Problem], params: SamplingParams, n: int = 1, seed: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[Completion]:
        encoded = encode_prompts(self.tokenizer, problems)
        jobs = [(e.ids, e.prefill, e.problem_id) for e in encoded for _ in range(n)]
        comps, marks = force_budget(self.engine, self.tokenizer, jobs, params, self.forcing, seed)
        self.stats["samples"] += len(comps)
        self.stats["think_tokens"] += sum(c.think_tokens or 0 for c in comps)
        self.stats["waits"] += sum(w for w, _ in marks)
        self.stats["forced_close"] += sum(forced for _, forced in marks)
        if on_batch:
            on_batch(len(comps))
        return comps


def forced_engine(engine: Engine, budget: Any) -> BudgetForcedEngine:
    """`engine` budget-forced as the config's eval.budget section says (an engine already forced
    that way is returned as it is)."""
    f = BudgetForcing(max_think=budget.max_think, min_think=budget.min_think, answer_tokens=budget.answer_tokens,
                      end=budget.end, wait=budget.wait, close=budget.close)
    if isinstance(engine, BudgetForcedEngine):
        if engine.forcing == f:
            return engine
        engine = engine.engine
    return BudgetForcedEngine(engine, f)


def parse_budgets(text: str, min_think: int = 0) -> list[tuple[int, int]]:
    """"16,32,64" or "8:16,32:32" -> [(min, max), ...]; a bare MAX takes `min_think` (capped at MAX)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        lo, sep, hi = item.partition(":")
        try:
            a, b = (int(lo), int(hi)) if sep else (min(min_think, int(lo)), int(lo))
        except ValueError:
            raise ConfigError(f"thinking budget {item!r} is not MAX or MIN:MAX (integers), in {text!r}") from None
        BudgetForcing(max_think=b, min_think=a)  # checks the bounds
        out.append((a, b))
    if not out:
        raise ConfigError("no thinking budgets given")
    return out


def scaling_point(rows: list[dict[str, Any]], summary: dict[str, float], n: int, budget: tuple[int, int],
                  waits: int | None = None) -> dict[str, Any]:
    """One point of the test-time scaling curve from an eval's per-problem rows and summary."""
    think = [s["think_tokens"] for r in rows for s in r["samples"] if s.get("think_tokens") is not None]
    point = {
        "min_think": budget[0], "max_think": budget[1],
        "think_mean": sum(think) / len(think) if think else float("nan"),
        "capped": sum(t >= budget[1] for t in think) / len(think) if think else float("nan"),
        "accuracy": summary[f"avg@{n}"], "maj": summary[f"maj@{n}"], "pass": summary.get(f"pass@{n}", float("nan")),
        "len_mean": summary["len_mean"], "samples": len(think),
    }
    if waits is not None:
        point["waits_per_sample"] = waits / len(think) if think else float("nan")
    return point


def scaling_table(points: list[dict[str, Any]], n: int) -> str:
    """Markdown: one row per budget. Accuracies in percent, lengths in tokens."""
    waits = any("waits_per_sample" in p for p in points)
    lines = [f"| thinking budget (min..max) | mean thinking tokens | capped at max | avg@{n} | maj@{n} | pass@{n} | "
             "response tokens |" + (" Waits per sample |" if waits else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if waits else "")]
    for p in points:
        row = (f"| {p['min_think']}..{p['max_think']} | {p['think_mean']:.1f} | {100 * p['capped']:.1f}% | "
               f"{100 * p['accuracy']:.1f} | {100 * p['maj']:.1f} | {100 * p['pass']:.1f} | {p['len_mean']:.1f} |")
        if waits:
            row += f" {p['waits_per_sample']:.2f} |" if "waits_per_sample" in p else " - |"
        lines.append(row)
    return "\n".join(lines)

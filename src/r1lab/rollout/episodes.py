"""Multi-turn episodes, token in, token out: the model samples, an environment answers, repeat.

Every turn continues each live episode's ids with `generate_ids` of the engine's `session()`
(FastEngine, HFEngine, vLLM), stopping at the model's end of turn or at a string the environment
listed (a tool call's closing tag); the fast engine's session keeps each episode's KV cache from
one turn to the next and prefills only the ids the turn added. The environment's answer is turned
into ids once and appended:

- a text observation (`<output>...</output>`) is encoded as it is, inside the model's own turn;
- chat messages (a tool turn) become the tokens that close the assistant turn, the tool turn and
  open the next assistant turn, read off the chat template rendered on a two-message stand-in
  conversation (`ObservationRenderer`). The episode's earlier turns are never re-rendered, and no
  sampled id is ever decoded and encoded again (docs/pitfalls.md, "Multi-turn tokenization drift").

The record is a `Completion`: response_ids are every id after the prompt, loss_mask marks the
model's (1) and the environment's (0) tokens, logprobs are the sampler's for the model's tokens
and 0.0 for the others. A collect step calls `run_episodes(engine, problems, params, n, seed)`
and then `score_episodes`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from r1lab.config import RunConfig
from r1lab.envs import ENVS, Environment, StepResult, ToolEnvironment, make_env
from r1lab.errors import ConfigError, DataError
from r1lab.records import Completion, Problem, prompt_text
from r1lab.reward_registry import REWARDS
from r1lab.rewards import compute_rewards
from r1lab.rollout.base import SamplingParams, encode_prompts
from r1lab.tasks import TASKS

TURN_SEED_STRIDE = 104_729  # turn t of a call samples with seed + t * stride (each turn its own draws)


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int = 4  # model turns per episode
    max_tokens: int = 1024  # ids after the prompt (model and environment tokens together)

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_tokens < 1:
            raise ConfigError(f"episode limits must be >= 1, got max_turns={self.max_turns}, max_tokens={self.max_tokens}")


@dataclass
class Turn:
    """One model turn and the environment's answer to it."""

    model_tokens: int
    env_tokens: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    env_seconds: float = 0.0


@dataclass
class Episode:
    problem: Problem
    env: Environment
    prompt_ids: list[int]
    prefill: str  # text the chat template put in the assistant turn; part of the first turn's text
    ids: list[int] = field(default_factory=list)  # every id after the prompt
    mask: list[int] = field(default_factory=list)  # per id: 1 = sampled by the model, 0 = environment
    logprobs: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # model turns and observations, in order (for reading)
    who: list[str] = field(default_factory=list)  # per text: "model" or "env"
    turns: list[Turn] = field(default_factory=list)
    env_rewards: dict[str, float] = field(default_factory=dict)
    finish_reason: str = ""  # empty while running; then one of envs.FINISH_REASONS
    # what the verifier and the reward terms score: the model's turns joined, never an observation
    # (a tool's output cannot put an <answer> in the model's mouth; the format term sees every turn)
    answer: str = ""
    completion: Completion | None = None

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)


class ObservationRenderer:
    """Observation -> ids, appended after a model turn. Chat messages are rendered by the template
    on a stand-in conversation (a user message and an assistant message holding a marker): the text
    after the marker is exactly what the template puts between the end of an assistant turn's
    content and the start of the next assistant turn, whatever the earlier turns held."""

    MARK = "R1LAB_TURN_MARK"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # control tokens (EOS, <|im_start|>...) that a tool's output must not smuggle in as such
        special = {i: str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        special.update(zip(tokenizer.all_special_ids, tokenizer.all_special_tokens))
        self.special_ids = set(special)
        self.special = sorted({t for t in special.values() if t}, key=len, reverse=True)

    def text(self, observation: str | list[dict[str, str]], last_id: int | None) -> str:
        if isinstance(observation, str):
            return self.defuse(observation)
        messages = [{**m, "content": self.defuse(str(m.get("content", "")))} for m in observation]
        if not getattr(self.tokenizer, "chat_template", None):
            return prompt_text(messages, which="all") + "\n"
        tail = self._after_mark(messages)
        if last_id is not None:  # the model already sampled the template's end-of-turn token
            sampled = self.tokenizer.decode([last_id], skip_special_tokens=False)
            if sampled and last_id in self.special_ids and tail.startswith(sampled):
                tail = tail[len(sampled):]
        return tail

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def defuse(self, text: str) -> str:
        """Break every special-token string in environment text with a zero-width space, so it is
        encoded as ordinary text, never as a turn marker."""
        for s in self.special:
            if s in text:
                text = text.replace(s, s[0] + "\u200b" + s[1:])
        return text

    def _after_mark(self, messages: list[dict[str, str]]) -> str:
        base = [{"role": "user", "content": "R1LAB_USER"}, {"role": "assistant", "content": self.MARK}]
        before = self.tokenizer.apply_chat_template(base, tokenize=False)
        after = self.tokenizer.apply_chat_template(base + messages, tokenize=False, add_generation_prompt=True)
        at = before.rfind(self.MARK)
        if at < 0 or after[: at + len(self.MARK)] != before[: at + len(self.MARK)]:
            raise ConfigError("the chat template renders an assistant turn differently once a tool turn follows it; "
                              "it cannot be used for token-exact episodes")
        return after[at + len(self.MARK):]


def _factory(env: str | Callable[[Problem], Environment], settings: dict[str, Any] | None):
    if callable(env):
        return env
    make_env(env, **(settings or {}))  # a bad name or settings fail here, before any sampling
    return lambda problem: make_env(env, **(settings or {}))


def run_episodes(engine: Any, problems: list[Problem], params: SamplingParams, n: int = 1, seed: int | None = None,
                 *, env: str | Callable[[Problem], Environment] = "one_turn", env_settings: dict[str, Any] | None = None,
                 limits: EpisodeLimits = EpisodeLimits()) -> list[Episode]:
    """n episodes per problem (problem i's at positions i*n .. i*n+n-1), each with its Completion.

    `env` is a registered environment's name (built with `env_settings` for every episode) or a
    function problem -> Environment. `params.max_new_tokens` bounds each model turn; `limits` the
    episode. Turn t samples with seed + t * TURN_SEED_STRIDE, so the first turn draws what
    `engine.generate(problems, params, n, seed)` draws."""
    if not engine.continues_ids:
        raise ConfigError("multi-turn episodes need an engine that continues token ids (fast or hf)")
    tokenizer = engine.tokenizer
    make = _factory(env, env_settings)
    renderer = ObservationRenderer(tokenizer)
    episodes = []
    for p in problems:
        for _ in range(n):
            e = make(p)
            messages = e.reset(p)
            enc = encode_prompts(tokenizer, [replace(p, prompt=messages)])[0]
            episodes.append(Episode(p, e, enc.ids, enc.prefill))
    turn = 0
    # an episode's key is its index; an engine may keep each one's context from turn to turn
    with engine.session() as session:
        while live := [k for k, ep in enumerate(episodes) if not ep.done]:
            by_stop: dict[tuple[str, ...], list[int]] = defaultdict(list)
            for k in live:
                by_stop[tuple(episodes[k].env.stop)].append(k)
            for stop, keys in by_stop.items():
                group = [episodes[k] for k in keys]
                room = max(limits.max_tokens - len(ep.ids) for ep in group)
                p = replace(params, max_new_tokens=min(params.max_new_tokens, room), stop=tuple(params.stop) + stop)
                comps = session.generate_ids(keys, [ep.prompt_ids + ep.ids for ep in group], p,
                                             seed=None if seed is None else seed + turn * TURN_SEED_STRIDE)
                for ep, c in zip(group, comps):
                    _advance(ep, c, turn, limits, renderer, tokenizer)
                session.drop([k for k, ep in zip(keys, group) if ep.done])
            turn += 1
    for ep in episodes:
        ep.completion = _completion(ep)
    return episodes


def _advance(ep: Episode, c: Completion, turn: int, limits: EpisodeLimits, renderer: ObservationRenderer,
             tokenizer) -> StepResult | None:
    """Fold one sampled turn into the episode and, unless it ends here, append the environment's
    answer. Returns what the environment answered (None when a limit ended the turn first)."""
    room = limits.max_tokens - len(ep.ids)
    new, lps = c.response_ids, c.logprobs
    text = (ep.prefill if turn == 0 else "") + c.text
    if len(new) > room:  # sampled with a larger group's room: keep what this episode may hold
        new, lps = new[:room], lps[:room]
        text = (ep.prefill if turn == 0 else "") + tokenizer.decode(new, skip_special_tokens=False)
    ep.ids += new
    ep.mask += [1] * len(new)
    ep.logprobs += list(lps)
    ep.texts.append(text)
    ep.who.append("model")
    record = Turn(model_tokens=len(new))
    ep.turns.append(record)
    ep.answer = "".join(t for who, t in zip(ep.who, ep.texts) if who == "model")
    if len(c.response_ids) > room or (c.finish_reason == "length" and len(ep.ids) >= limits.max_tokens):
        ep.finish_reason = "max_tokens"
        return None
    if c.finish_reason == "length":  # the turn hit max_new_tokens without ending
        ep.finish_reason = "length"
        return None
    t0 = time.perf_counter()
    result: StepResult = ep.env.step(text)
    record.env_seconds = time.perf_counter() - t0
    record.tool_calls = int(result.info.get("tool_calls", 0))
    record.tool_errors = int(result.info.get("tool_errors", 0))
    for name, value in result.rewards.items():
        ep.env_rewards[name] = ep.env_rewards.get(name, 0.0) + float(value)
    if result.done or result.observation is None:
        ep.finish_reason = result.finish_reason or "stop"
        if result.answer is not None:
            ep.answer = result.answer
        return result
    if turn + 1 >= limits.max_turns:
        ep.finish_reason = "max_turns"
        return result
    obs_text = renderer.text(result.observation, new[-1] if new else None)
    obs_ids = renderer.ids(obs_text)
    if len(ep.ids) + len(obs_ids) >= limits.max_tokens:  # no room left for the model to read it and answer
        ep.finish_reason = "max_tokens"
        return result
    ep.ids += obs_ids
    ep.mask += [0] * len(obs_ids)
    ep.logprobs += [0.0] * len(obs_ids)
    ep.texts.append(obs_text)
    ep.who.append("env")
    record.env_tokens = len(obs_ids)
    return result


def trace_episode(tokenizer, problem: Problem, trace: str, env: str | Callable[[Problem], Environment] = "one_turn",
                  env_settings: dict[str, Any] | None = None, limits: EpisodeLimits = EpisodeLimits()) -> Episode:
    """A written transcript (a teacher's trace) as the episode the runner records when a model
    writes it: the same prompt (the environment's `reset`), the same ids and loss mask, token for
    token, so SFT on it trains exactly the turns RL will sample and nothing the environment says.

    The trace is cut into model turns where the runner's engine stops: at the first of the
    environment's stop strings (a tool call's closing tag); the rest is the last turn, ended by the
    end-of-sequence id as a sampled last turn is. Each turn is encoded on its own, stepped through
    a fresh environment, and its answer appended by the runner's own code (`_advance`). The trace
    may hold a text observation exactly as the environment writes it (`<output>...</output>`):
    it is skipped, and any other text in its place is an error, so a trace never puts a wrong tool
    output before the model's next turn. A chat-message observation (a tool turn of the template)
    is not in the trace: the next turn follows the call directly. A trace that the episode cannot
    hold as written (it runs past a limit, or ends before the environment does) is a DataError."""
    e = _factory(env, env_settings)(problem)
    enc = encode_prompts(tokenizer, [replace(problem, prompt=e.reset(problem))])[0]
    ep = Episode(problem, e, enc.ids, enc.prefill)
    renderer = ObservationRenderer(tokenizer)
    rest = trace[len(enc.prefill):] if enc.prefill and trace.startswith(enc.prefill) else trace
    where = f"SFT trace of problem {problem.id!r}"
    turn = 0
    while not ep.done:
        if not rest:
            raise DataError(f"{where}: ends before the episode does (after {turn} turn(s)); the environment "
                            "expects another model turn")
        cuts = [rest.find(s) + len(s) for s in e.stop if s and s in rest]
        text = rest[: min(cuts)] if cuts else rest
        rest = rest[len(text):]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([] if cuts else [tokenizer.eos_token_id])
        c = Completion(problem.id, ep.prompt_ids, ids, text, [0.0] * len(ids), "stop")
        result = _advance(ep, c, turn, limits, renderer, tokenizer)
        if ep.finish_reason in ("max_turns", "max_tokens"):
            raise DataError(f"{where}: longer than the episode limits allow (finish reason {ep.finish_reason}, "
                            f"env.max_turns={limits.max_turns}, env.max_tokens={limits.max_tokens})")
        if ep.done:
            if rest or cuts:
                raise DataError(f"{where}: the episode ended ({ep.finish_reason}) with {len(rest)} characters of the "
                                "trace left")
            break
        if result is not None and isinstance(result.observation, str):
            shown = ep.texts[-1]
            if not rest.startswith(shown):
                raise DataError(f"{where}: after the call {text[-80:]!r} the environment answers {shown[:80]!r}, "
                                f"the trace has {rest[:80]!r}")
            rest = rest[len(shown):]
        turn += 1
    ep.completion = _completion(ep)
    return ep


def _completion(ep: Episode) -> Completion:
    # finished by the model or the environment: "stop"; cut by a limit: "length" (truncated, as the
    # overlong filter and the metrics read it); the episode keeps the precise reason
    return Completion(
        problem_id=ep.problem.id, prompt_ids=list(ep.prompt_ids), response_ids=list(ep.ids), text="".join(ep.texts),
        logprobs=list(ep.logprobs), finish_reason="stop" if ep.finish_reason == "stop" else "length",
        loss_mask=None if all(ep.mask) else list(ep.mask), transcript=list(zip(ep.who, ep.texts)),
    )


def score_episodes(episodes: list[Episode], terms: dict[str, float], timeout: float = 5.0, workers: int = 2,
                   settings: dict[str, float] | None = None, score: Callable[..., Any] | None = None
                   ) -> dict[str, list[float]]:
    """The task's reward terms on each episode's answer (the verifier reads `answer`, not the tool
    outputs), plus the environment's own terms, weighted by `terms` like the others. Writes
    verdict, rewards and reward into each episode's Completion; returns {term: values} and "total".
    `score` (compute_rewards' signature, the default) scores the answers: a Ray reward group may."""
    env_terms = {k: w for k, w in terms.items() if k not in REWARDS}
    produced = {k for ep in episodes for k in ep.env_rewards}
    if unknown := sorted(set(env_terms) - produced):
        raise ConfigError(f"reward terms {unknown} are neither registered terms nor produced by the environment; "
                          f"known terms: {', '.join(sorted(REWARDS))}")
    scored = [dataclasses.replace(ep.completion, text=ep.answer, rewards={}) for ep in episodes]
    score = score if score is not None else compute_rewards
    out = score([ep.problem for ep in episodes], scored, {k: w for k, w in terms.items() if k in REWARDS},
                timeout=timeout, workers=workers, settings=settings)
    for name in env_terms:
        out[name] = [ep.env_rewards.get(name, 0.0) for ep in episodes]
    for i, (ep, s) in enumerate(zip(episodes, scored)):
        c = ep.completion
        c.verdict, c.rewards = s.verdict, dict(s.rewards)
        c.rewards.update({name: out[name][i] for name in env_terms})
        c.reward = s.reward + sum(w * out[name][i] for name, w in env_terms.items())
        out["total"][i] = c.reward
    return out


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Per-episode means (turns, tool calls and errors, environment seconds), tokens per turn of the
    model and of the environment, and the share of each finish reason."""
    if not episodes:
        return {}
    turns = [t for ep in episodes for t in ep.turns]
    E, T = len(episodes), max(1, len(turns))
    out = {
        "env/turns": len(turns) / E,
        "env/tool_calls": sum(t.tool_calls for t in turns) / E,
        "env/tool_errors": sum(t.tool_errors for t in turns) / E,
        "env/model_tokens_per_turn": sum(t.model_tokens for t in turns) / T,
        "env/env_tokens_per_turn": sum(t.env_tokens for t in turns) / T,
        "env/env_seconds": sum(t.env_seconds for t in turns) / E,
    }
    for ep in episodes:
        key = f"env/finish/{ep.finish_reason}"
        out[key] = out.get(key, 0.0) + 1 / E
    return out


# --- the env section of a run config ---------------------------------------------------------------


def is_episodic(cfg: RunConfig) -> bool:
    return cfg.env.name != "one_turn"


def limits_of(cfg: RunConfig) -> EpisodeLimits:
    """env.max_turns and env.max_tokens as the runner's limits."""
    return EpisodeLimits(max_turns=cfg.env.max_turns, max_tokens=cfg.env.max_tokens)


def check_env(cfg: RunConfig) -> None:
    """Build the environment once from env.name and env.settings, so a bad name or setting (an
    unknown tool, a bad call format, a limit out of range) is a one-line ConfigError before anything
    is written; then check its tools against what each task family of data.tasks allows, and that
    every environment term reward.terms weighs is one this environment produces."""
    declared = getattr(ENVS.factories.get(cfg.env.name), "reward_terms", ())
    if foreign := [t for t in cfg.reward.terms if t not in REWARDS and t not in declared]:
        raise ConfigError(f"reward.terms: {', '.join(foreign)} is not a term env.name={cfg.env.name} produces "
                          f"(it produces: {', '.join(declared) or 'none'})")
    if not is_episodic(cfg):
        return
    if not isinstance(cfg.env.settings, dict):
        raise ConfigError(f"env.settings must be a mapping of the environment's settings, got {cfg.env.settings!r}")
    named = cfg.env.settings.get("tools")
    if isinstance(named, (list, tuple)):  # before building: a refused tool may also fail to build (search without a corpus)
        _check_allowed(cfg, [str(t) for t in named])
    try:
        env = make_env(cfg.env.name, **cfg.env.settings)
    except ConfigError as e:  # name the config section the bad setting came from
        raise ConfigError(f"env.settings of env.name={cfg.env.name}: {e}") from None
    _check_allowed(cfg, sorted(env.tools) if isinstance(env, ToolEnvironment) else [])


def _check_allowed(cfg: RunConfig, tools: list[str]) -> None:
    for family in cfg.data.tasks:
        allowed = getattr(TASKS.get(family), "tools", None)
        if allowed is None:
            continue
        if refused := [t for t in tools if t not in allowed]:
            raise ConfigError(f"env.settings.tools: task family {family!r} does not allow {', '.join(refused)} "
                              f"(it allows: {', '.join(sorted(allowed)) or 'no tools'})")

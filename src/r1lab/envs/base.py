"""The Environment interface, its registry, and the one-turn environment every task family is.

An environment runs one episode at a time (make one per episode, as gymnasium does):

    messages = env.reset(problem)          # the prompt, as chat messages
    result = env.step(turn_text)           # the model's turn, as text
    ... while not result.done: the observation goes into the context and the model takes a turn

`step` never raises on model output: a wrong turn is an observation or the end of the episode.
The runner (rollout/episodes.py) owns the token ids; an environment sees and returns text only,
so it cannot change a token the model sampled. Rewards of the task's verifier are computed once
per batch by the runner's scorer (the same `compute_rewards` a one-turn rollout uses); an
environment adds its own terms through `StepResult.rewards`.

A registry leaf: imports only errors and records, so anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from r1lab.errors import ConfigError
from r1lab.records import Problem, prompt_messages

Messages = list[dict[str, str]]

# why an episode ended: the model's own end, a limit of the runner, or one of the environment
FINISH_REASONS = ("stop", "length", "max_turns", "max_tokens", "max_tool_calls", "tool_timeout")


@dataclass
class StepResult:
    """What the environment answers to one model turn.

    observation: text appended as it is, inside the model's own turn (plain tag formats: `<output>`),
    or chat messages (a tool or user turn) that the runner renders through the chat template once;
    None when the episode is done."""

    observation: str | Messages | None
    done: bool
    rewards: dict[str, float] = field(default_factory=dict)  # environment reward terms of this step (summed)
    finish_reason: str = ""  # when done: one of FINISH_REASONS
    answer: str | None = None  # when done: the text the verifier scores (default: the last model turn)
    info: dict[str, Any] = field(default_factory=dict)  # tool calls, errors, time (counted by the runner)


class Environment:
    """One episode of a task. Subclasses override `reset` and `step`; `stop` lists the strings
    that end a model turn besides its end of sequence (a tool call's closing tag)."""

    name = ""
    stop: tuple[str, ...] = ()

    def reset(self, problem: Problem) -> Messages:
        self.problem = problem
        return prompt_messages(problem.prompt)

    def step(self, turn_text: str) -> StepResult:
        raise NotImplementedError


class OneTurnEnvironment(Environment):
    """A task family as an environment: the prompt, one answer, the task's verifier. The episode's
    text and ids are exactly those of a one-turn rollout, so its rewards are the same."""

    name = "one_turn"

    def step(self, turn_text: str) -> StepResult:
        return StepResult(None, done=True, finish_reason="stop", answer=turn_text)


_ENVS: dict[str, Callable[..., Environment]] = {}


def register_env(name: str) -> Callable[[Callable[..., Environment]], Callable[..., Environment]]:
    """Decorator: `make_env(name, **settings)` builds one episode's environment with this factory."""

    def deco(factory: Callable[..., Environment]) -> Callable[..., Environment]:
        _ENVS[name] = factory
        return factory

    return deco


register_env("one_turn")(OneTurnEnvironment)


def known_envs() -> list[str]:
    return sorted(_ENVS)


def make_env(name: str, **settings: Any) -> Environment:
    """A fresh environment for one episode; a ConfigError naming the known ones if `name` is not."""
    if name not in _ENVS:
        raise ConfigError(f"unknown environment {name!r}; known: {', '.join(known_envs())}")
    try:
        return _ENVS[name](**settings)
    except TypeError as e:
        raise ConfigError(f"environment {name!r}: bad settings {sorted(settings)} ({e})") from None

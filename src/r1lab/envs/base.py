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

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from r1lab.errors import ConfigError
from r1lab.records import Problem, prompt_messages

T = TypeVar("T")

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
    reward_terms: tuple[str, ...] = ()  # the names of the StepResult.rewards it produces (reward.terms may weight them)

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


class Factories(Generic[T]):
    """Named factories of one kind (environments, tools): register one with a decorator, build one
    by name with its settings; an unknown name or a setting the factory does not take is a one-line
    ConfigError. `plugins` name packages whose import registers more (the task families register
    their environments): imported by name, never by an import statement, before a name is missed
    or the names are listed."""

    def __init__(self, kind: str, factories: dict[str, Callable[..., T]] | None = None, plugins: tuple[str, ...] = ()):
        self.kind, self.factories, self.plugins = kind, dict(factories or {}), plugins

    def _load_plugins(self) -> None:
        for module in self.plugins:
            try:
                importlib.import_module(module)
            except ImportError:
                pass

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self.factories[name] = factory
            return factory

        return deco

    def known(self) -> list[str]:
        self._load_plugins()
        return sorted(self.factories)

    def __iter__(self):  # the names, so a config domain can list them (`choices="r1lab.envs:ENVS"`)
        return iter(self.known())

    def make(self, name: str, **settings: Any) -> T:
        if name not in self.factories:
            self._load_plugins()
        if name not in self.factories:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.known())}")
        try:
            return self.factories[name](**settings)
        except TypeError as e:
            raise ConfigError(f"{self.kind} {name!r}: bad settings {sorted(settings)} ({e})") from None


ENVS: Factories[Environment] = Factories("environment", {"one_turn": OneTurnEnvironment}, plugins=("r1lab.tasks",))
register_env = ENVS.register  # decorator: make_env(name, **settings) builds one episode's environment with it
known_envs = ENVS.known
make_env = ENVS.make  # a fresh environment for one episode


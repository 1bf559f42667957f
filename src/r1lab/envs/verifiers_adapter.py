"""verifiers tasks (PyPI `verifiers` 0.4.0, the environment format of prime-rl; extra `verifiers`)
as r1lab environments: r1lab samples the tokens, verifiers scores.

verifiers 0.4.0 ships only its `verifiers.v1` stack: a task is a `vf.Task` holding a `vf.TaskData`
row (prompt, system_prompt, and the task's own fields such as `answer`), its scoring as async
`@vf.reward(weight=...)` methods over a `vf.Trace` (the conversation as a message graph), and its
tools as `vf.Toolset`s (from `Task.toolsets(config)`) whose `@vf.tool` methods verifiers would
serve over MCP. A task set is anything iterable of tasks (a `vf.Taskset`, a list), named by an
importable reference `module:attr` (attr: the set, or a function returning it), as verifiers'
own loaders name environments. The adapter, "verifiers" in the environment registry:

- reset: the task's system prompt and prompt as chat messages, plus the tool guide when it has tools;
- each model turn: a hermes `<tool_call>` to one of its `@vf.tool` methods is run here, in
  process, with the tool environment's limits and error handling (envs/tool_env.py); a turn
  without a call ends the episode;
- the end: the episode's messages (the model's turns, with their tool calls, and the tool results)
  become a `vf.Trace`, the task's own `score` runs on it, and its weighted reward comes back as the
  environment's reward term `vf_episode_reward` (each reward also as `vf/<name>`).

An episode is correct iff every reward of the task gives full marks (`env.verdict`, which
`r1lab eval` uses for the episodes of an environment that has one). The verifier "verifiers" and
the registered term `vf_reward` score the final answer alone the same way (a trace of the prompt
and one assistant message), for what reads only the answer (a one-turn rollout, the RL reward
terms). What is not adapted: verifiers' multi-agent Envs (user-sim: the user is a second model),
harnesses, runtimes and sandboxes; the tool's MCP server prefix (tools keep their method names).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
from typing import Any

from r1lab.envs.base import Messages, StepResult, register_env
from r1lab.envs.tool_env import ToolCall, ToolEnvironment, parse_tool_call
from r1lab.envs.tools import Tool, ToolResult
from r1lab.errors import ConfigError
from r1lab.records import Problem, Verdict
from r1lab.reward_registry import register_reward
from r1lab.verify.registry import register_verifier

TASK = "verifiers"
MAX_ANSWER_CHARS = 20_000


def vf():
    try:
        import verifiers.v1 as v1
    except ImportError:
        raise ConfigError("verifiers environments need the package verifiers: pip install 'r1lab[verifiers]'") from None
    return v1


@functools.lru_cache(maxsize=16)
def load_tasks(ref: str) -> tuple[Any, ...]:
    """The tasks of `module:attr` (a task set, a list of tasks, or a function returning either)."""
    vf()
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ConfigError(f"verifiers task set {ref!r}: expected module:attr, e.g. my_envs:math_tasks")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"verifiers task set {ref!r}: cannot import it ({type(e).__name__}: {e})") from None
    if callable(obj) and not hasattr(obj, "__iter__"):
        obj = obj()
    tasks = tuple(obj)
    if not tasks or not all(isinstance(t, vf().Task) for t in tasks):
        raise ConfigError(f"verifiers task set {ref!r}: expected a non-empty set of vf.Task, got "
                          f"{type(tasks[0]).__name__ if tasks else 'nothing'}")
    return tasks


def prompt_messages(task: Any) -> Messages:
    """The task's system prompt and prompt as r1lab chat messages."""
    data = task.data
    out: Messages = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    if isinstance(data.prompt, str):
        out.append({"role": "user", "content": data.prompt})
    else:
        out += [{"role": m.role, "content": _text(m.content)} for m in data.prompt or []]
    return out


def _text(content: Any) -> str:
    from verifiers.v1.types import content_text

    return content if isinstance(content, str) else content_text(content)


def task_problem(ref: str, index: int) -> Problem:
    """Task `index` of task set `ref` as a Problem (the answer: the task's `answer` field if it has one)."""
    task = load_tasks(ref)[index]
    answer = str(getattr(task.data, "answer", "") or "(scored by the task's rewards)")
    return Problem(id=str(task.data.id or f"vf-{index:06d}"), prompt=prompt_messages(task), answer=answer, task=TASK,
                   source=ref, metadata={"vf_tasks": ref, "vf_index": index})


def _task_of(problem: Problem) -> Any:
    meta = problem.metadata or {}
    if not isinstance(meta.get("vf_tasks"), str) or not isinstance(meta.get("vf_index"), int):
        raise ConfigError(f"problem {problem.id!r} is not a verifiers task (no metadata vf_tasks / vf_index)")
    tasks = load_tasks(meta["vf_tasks"])
    if not 0 <= meta["vf_index"] < len(tasks):
        raise ConfigError(f"problem {problem.id!r}: vf_index {meta['vf_index']} is outside {meta['vf_tasks']}")
    return tasks[meta["vf_index"]]


def score_messages(task: Any, messages: list[Any]) -> dict[str, tuple[float, float]]:
    """The task's rewards on a trace of these vf messages: {name: (score, weight)}."""
    v = vf()
    from verifiers.v1.graph import MessageNode

    trace = v.Trace(task=v.TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash),
                    agent=v.AgentInfo(config=v.AgentConfig(), name="r1lab"))
    for i, m in enumerate(messages):
        trace.nodes.append(MessageNode(parent=i - 1 if i else None, message=m, sampled=m.role == "assistant"))
    asyncio.run(task.score(trace))
    return {name: (r.score, r.weight) for name, r in trace.rewards.items() if r is not None}


def _vf_prompt(task: Any) -> list[Any]:
    v = vf()
    out = [v.SystemMessage(content=task.data.system_prompt)] if task.data.system_prompt else []
    if isinstance(task.data.prompt, str):
        out.append(v.UserMessage(content=task.data.prompt))
    else:
        out += list(task.data.prompt or [])
    return out


class VerifiersTool(Tool):
    """One `@vf.tool` method, called in process with the model's JSON arguments."""

    sandboxed = False

    def __init__(self, method: Any):
        self.method = method
        self.name = self.tag = getattr(method, "tool_name", None) or method.__name__
        self.description = (method.__doc__ or "").strip()
        self.parameters = {n: getattr(p.annotation, "__name__", str(p.annotation))
                           for n, p in inspect.signature(method).parameters.items()}
        self.argument = next(iter(self.parameters), "input")

    def run(self, arguments, state, timeout):
        out = self.method(**arguments)
        if inspect.isawaitable(out):
            out = asyncio.run(_awaited(out))
        return ToolResult(out if isinstance(out, str) else json.dumps(out, default=str))


async def _awaited(x):
    return await x


class VerifiersEnvironment(ToolEnvironment):
    """A verifiers task as an episode: its prompt, its tools, its rewards (see the module doc)."""

    name = "verifiers"

    def __init__(self, max_tool_calls: int = 4, tool_timeout_s: float = 10.0, **limits):
        vf()
        super().__init__(tools=(), call_format="hermes", max_tool_calls=max_tool_calls,
                         tool_timeout_s=tool_timeout_s, **limits)

    def reset(self, problem: Problem) -> Messages:
        self.problem, self.task = problem, _task_of(problem)
        from verifiers.v1.utils.decorators import discover_decorated

        toolsets = type(self.task).toolsets(self.task.config)
        self.tools = {t.name: t for ts in toolsets for t in (VerifiersTool(m) for m in discover_decorated(ts, "tool"))}
        self.vf_messages = _vf_prompt(self.task)
        messages = prompt_messages(self.task)
        if self.tools:
            messages = [{"role": "system", "content": "\n\n".join(
                [m["content"] for m in messages if m["role"] == "system"] + [self.guide()])}] + \
                [m for m in messages if m["role"] != "system"]
        return messages

    def guide(self) -> str:
        specs = "\n".join(json.dumps({"name": t.name, "description": t.description, "arguments": t.parameters})
                          for t in self.tools.values())
        return ("You may call tools. Available tools:\n" + specs + "\nTo call one, write "
                '<tool_call>{"name": NAME, "arguments": {...}}</tool_call> and wait for its response.')

    def step(self, turn_text: str) -> StepResult:
        v = vf()
        result = super().step(turn_text)
        call = parse_tool_call(turn_text, "hermes", self.tools) if self.tools else None
        if not result.done:
            call_id = f"call_{self.calls}"
            name = call.name if isinstance(call, ToolCall) else "invalid"
            args = json.dumps(call.arguments) if isinstance(call, ToolCall) else "{}"
            before = turn_text[: turn_text.rfind("<tool_call>")] if "<tool_call>" in turn_text else turn_text
            self.vf_messages.append(v.AssistantMessage(content=before, tool_calls=[v.ToolCall(id=call_id, name=name, arguments=args)]))
            observation = result.observation[0]["content"] if isinstance(result.observation, list) else str(result.observation)
            self.vf_messages.append(v.ToolMessage(tool_call_id=call_id, content=observation, name=name))
            return result
        self.vf_messages.append(v.AssistantMessage(content=turn_text))
        try:
            scores = score_messages(self.task, self.vf_messages)
        except Exception as e:  # a reward that fails scores the episode 0, recorded
            result.info["vf_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            scores = {}
        result.rewards["vf_episode_reward"] = sum(s * w for s, w in scores.values())
        result.rewards.update({f"vf/{name}": s for name, (s, _) in scores.items()})
        self.verdict = _verdict(scores, turn_text)  # the whole episode's, which eval prefers to the answer's
        return result


register_env("verifiers")(VerifiersEnvironment)


def _answer_scores(response: str, problem: Problem) -> dict[str, tuple[float, float]]:
    task = _task_of(problem)
    return score_messages(task, _vf_prompt(task) + [vf().AssistantMessage(content=response)])


@register_verifier(TASK)
def check_verifiers(response: str, problem: Problem) -> Verdict:
    """Correct iff every reward of the task gives full marks to the final answer alone."""
    if not isinstance(response, str) or len(response) > MAX_ANSWER_CHARS:
        return Verdict("unparsable", f"not a response of at most {MAX_ANSWER_CHARS} characters")
    return _verdict(_answer_scores(response, problem), response)


def _verdict(scores: dict[str, tuple[float, float]], response: str) -> Verdict:
    """Correct iff every reward gives full marks."""
    if not scores:
        return Verdict("error", "the task's rewards gave no scores")
    low = {name: s for name, (s, _) in scores.items() if s < 1.0}
    if not low:
        return Verdict("correct", extracted=response[-300:])
    return Verdict("wrong", "verifiers rewards below 1: " + ", ".join(f"{k}={v:.3g}" for k, v in sorted(low.items())),
                   response[-300:])


@register_reward("vf_reward")
def vf_reward(problems, texts, verdicts, completions=None) -> list[float]:
    """The verifiers task's weighted reward of the final answer alone; 0 for other problems, and
    when a reward fails."""
    out = []
    for p, t in zip(problems, texts):
        try:
            out.append(sum(s * w for s, w in _answer_scores(t, p).values()) if p.task == TASK else 0.0)
        except Exception:
            out.append(0.0)
    return out

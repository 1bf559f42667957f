"""The tool environment: a task's problem and verifier, a set of allowed tools, per-episode limits.

Two call formats, one call per model turn (the turn stops at the call's closing tag):

- "hermes" (Qwen2.5, Hermes): `<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>`;
  the result comes back as a tool message, which the chat template renders (Qwen2.5's wraps it in
  `<tool_response>`);
- "tags", for models without a tool format: `<python>...</python>`, `<calc>...</calc>`,
  `<search>...</search>`; the result is appended inside the model's turn as `<output>...</output>`.

A turn without a call ends the episode: it is the answer the task's verifier scores. A malformed
call, an unknown tool, a tool that fails, hangs or floods: an error observation, counted in
`info` and in the environment's reward terms `tool_calls` / `tool_errors` (counts, >= 0) and
`tool_error_penalty` (-1 per failed call). reward.terms weights are >= 0 (a negative weight would
reward what a term penalises), so a penalty for failed calls is a positive weight on
`tool_error_penalty`: `reward.terms: {accuracy: 1.0, tool_error_penalty: 0.2}`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from r1lab.envs.base import Environment, Messages, StepResult, register_env
from r1lab.envs.tools import Tool, ToolResult, call_tool, make_tool
from r1lab.errors import ConfigError
from r1lab.records import Problem, prompt_messages

CALL_FORMATS = ("hermes", "tags")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


def parse_tool_call(turn_text: str, call_format: str, tools: dict[str, Tool]) -> ToolCall | str | None:
    """The call a turn ends with: a ToolCall, an error message (str) for a call the model got wrong,
    or None when the turn ends without one (it is the answer)."""
    text = turn_text.rstrip()
    if call_format == "hermes":
        if not text.endswith("</tool_call>"):
            return None
        start = text.rfind("<tool_call>")
        if start < 0:
            return "malformed tool call: </tool_call> without <tool_call>"
        body = text[start + len("<tool_call>"): -len("</tool_call>")].strip()
        try:
            call = json.loads(body)
        except ValueError as e:
            return f"malformed tool call: not JSON ({e})"
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return 'malformed tool call: expected {"name": ..., "arguments": {...}}'
        args = call.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError:
                return "malformed tool call: arguments are not a JSON object"
        if not isinstance(args, dict):
            return "malformed tool call: arguments are not a JSON object"
        if call["name"] not in tools:
            return f"unknown tool {call['name'][:50]!r}; available: {', '.join(sorted(tools))}"
        return ToolCall(call["name"], args)
    for tool in tools.values():
        close = f"</{tool.tag}>"
        if text.endswith(close):
            start = text.rfind(f"<{tool.tag}>")
            if start < 0:
                return f"malformed tool call: {close} without <{tool.tag}>"
            return ToolCall(tool.name, {tool.argument: text[start + len(tool.tag) + 2: -len(close)].strip()})
    return None


class ToolEnvironment(Environment):
    name = "tools"
    reward_terms = ("tool_calls", "tool_errors", "tool_error_penalty")

    def __init__(self, tools: tuple[str, ...] | list[str] = ("python", "calculator"), call_format: str = "hermes",
                 max_tool_calls: int = 4, tool_timeout_s: float = 5.0, max_tool_seconds: float = 30.0,
                 max_output_chars: int = 1500, tool_settings: dict[str, dict[str, Any]] | None = None,
                 instructions: bool = True, tool_objects: list[Tool] | None = None):
        if call_format not in CALL_FORMATS:
            raise ConfigError(f"tool environment: call_format must be one of {', '.join(CALL_FORMATS)}, got {call_format!r}")
        if max_tool_calls < 0 or tool_timeout_s <= 0 or max_tool_seconds <= 0 or max_output_chars < 1:
            raise ConfigError("tool environment: limits must be positive (max_tool_calls >= 0)")
        made = [make_tool(t, **(tool_settings or {}).get(t, {})) for t in tools] + list(tool_objects or [])
        self.tools = {t.name: t for t in made}
        self.call_format, self.instructions = call_format, instructions
        self.max_tool_calls, self.tool_timeout_s = max_tool_calls, tool_timeout_s
        self.max_tool_seconds, self.max_output_chars = max_tool_seconds, max_output_chars
        self.stop = ("</tool_call>",) if call_format == "hermes" else tuple(f"</{t.tag}>" for t in made)
        self.state: dict[str, Any] = {}  # the tools' memory within this episode
        self.calls = self.errors = 0
        self.tool_seconds = 0.0
        self.statuses: list[str] = []

    def reset(self, problem: Problem) -> Messages:
        self.problem = problem
        messages = prompt_messages(problem.prompt)
        if not self.instructions:
            return messages
        guide = self.guide()
        if messages and messages[0].get("role") == "system":
            return [{**messages[0], "content": f"{messages[0].get('content', '')}\n\n{guide}"}] + messages[1:]
        return [{"role": "system", "content": guide}] + messages

    def guide(self) -> str:
        """The system text that tells the model its tools and how to call them."""
        if self.call_format == "hermes":
            specs = "\n".join(json.dumps({"name": t.name, "description": t.description,
                                          "arguments": {t.argument: "string"}}) for t in self.tools.values())
            return ("You may call tools. Available tools:\n" + specs + "\nTo call one, write "
                    '<tool_call>{"name": NAME, "arguments": {...}}</tool_call> and wait for its response.')
        lines = "\n".join(f"<{t.tag}>{t.argument}</{t.tag}>: {t.description}" for t in self.tools.values())
        return "You may use tools; write one of these and wait for its <output>:\n" + lines

    def step(self, turn_text: str) -> StepResult:
        call = parse_tool_call(turn_text, self.call_format, self.tools)
        if call is None:
            return self._result(None, done=True, finish="stop")
        if self.calls >= self.max_tool_calls:
            return self._result(None, done=True, finish="max_tool_calls")
        if self.tool_seconds >= self.max_tool_seconds:
            return self._result(None, done=True, finish="tool_timeout")
        self.calls += 1
        t0 = time.perf_counter()
        if isinstance(call, str):
            result, name = ToolResult(f"error: {call}", "error"), ""
        else:
            result, name = call_tool(self.tools[call.name], call.arguments, self.state, self.tool_timeout_s), call.name
        self.tool_seconds += time.perf_counter() - t0
        self.errors += not result.ok
        self.statuses.append(result.status)
        text = result.text
        if len(text) > self.max_output_chars:
            text = text[: self.max_output_chars] + f"\n... [{len(result.text) - self.max_output_chars} more characters cut]"
        obs: str | Messages = ([{"role": "tool", "content": text}] if self.call_format == "hermes"
                               else f"\n<output>\n{text}\n</output>\n")
        return self._result(obs, done=False, info={"tool": name, "status": result.status, "tool_calls": 1,
                                                    "tool_errors": int(not result.ok)})

    def _result(self, obs, done: bool, finish: str = "", info: dict[str, Any] | None = None) -> StepResult:
        # this step's call and error as reward terms a recipe may weigh; the runner sums them over the episode
        step_calls = (info or {}).get("tool_calls", 0)
        step_errors = (info or {}).get("tool_errors", 0)
        return StepResult(obs, done=done, finish_reason=finish, info=info or {},
                          rewards={"tool_calls": float(step_calls), "tool_errors": float(step_errors),
                                   "tool_error_penalty": -float(step_errors)})


register_env("tools")(ToolEnvironment)

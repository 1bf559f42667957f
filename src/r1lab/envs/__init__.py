"""Environments: a task as episodes of model turns and observations. base.py: the interface, the
registry, the one-turn environment of every task family; tools.py: the tools and their registry;
tool_env.py: tool-call formats and the tool environment ("tools"); verifiers_adapter.py: verifiers
tasks as environments ("verifiers")."""

from r1lab.envs.base import (ENVS, FINISH_REASONS, Environment, Messages, OneTurnEnvironment, StepResult, known_envs,
                             make_env, register_env)
from r1lab.envs.tool_env import CALL_FORMATS, ToolCall, ToolEnvironment, parse_tool_call
from r1lab.envs import verifiers_adapter  # noqa: F401  (registers the "verifiers" environment and verifier)
from r1lab.envs.tools import (CalculatorTool, PythonTool, SearchIndex, SearchTool, Tool, ToolResult, call_tool,
                              calculate, known_tools, make_tool, register_tool)

__all__ = ["CALL_FORMATS", "ENVS", "FINISH_REASONS", "CalculatorTool", "Environment", "Messages", "OneTurnEnvironment",
           "PythonTool", "SearchIndex", "SearchTool", "StepResult", "Tool", "ToolCall", "ToolEnvironment",
           "ToolResult", "call_tool", "calculate", "known_envs", "known_tools", "make_env", "make_tool",
           "parse_tool_call", "register_env", "register_tool"]

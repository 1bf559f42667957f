"""Environments: a task as episodes of model turns and observations. base.py: the interface, the
registry, the one-turn environment of every task family."""

from r1lab.envs.base import (FINISH_REASONS, Environment, Messages, OneTurnEnvironment, StepResult, known_envs,
                             make_env, register_env)

__all__ = ["FINISH_REASONS", "Environment", "Messages", "OneTurnEnvironment", "StepResult", "known_envs", "make_env",
           "register_env"]

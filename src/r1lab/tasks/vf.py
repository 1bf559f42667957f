"""verifiers task sets as a task source: `vf:module:attr` in data.tasks, `r1lab data import` and
eval (envs/verifiers_adapter.py: the environment "verifiers", its verifier and reward terms).

A problem is one task of the set, drawn by the split's seeded stream; the held-out split and the
training split share no prompt (generate_splits), so a set of N tasks gives at most N problems
over both splits. The teacher trace is the task's `answer` field in the answer tags, for the
tasks whose rewards read it there."""

from __future__ import annotations

import random

from r1lab.envs.verifiers_adapter import TASK, load_tasks, task_problem
from r1lab.errors import ConfigError
from r1lab.records import Problem
from r1lab.tasks.base import TaskFamily, format_trace, register_source


def name_problem(ref: str) -> str | None:
    try:
        load_tasks(ref)
    except ConfigError as e:
        return str(e)
    return None


class VerifiersFamily(TaskFamily):
    task = TASK

    def __init__(self, ref: str):
        self.ref = ref

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        return task_problem(self.ref, rng.randrange(len(load_tasks(self.ref))))

    def teacher_trace(self, problem: Problem) -> str:
        return format_trace([], problem.answer)


register_source("vf", name_problem)(VerifiersFamily)

"""Generated verifiable task families; importing this package registers them all."""

from r1lab.tasks import (arithmetic, code_repair, countdown, gym, knights, multihop, multilingual, multiply,  # noqa: F401
                         poems, sorting, translation, vf, visual)
from r1lab.tasks.base import TASKS, TaskFamily, generate_splits, get_task, register_task, teacher_dataset

__all__ = ["TASKS", "TaskFamily", "generate_splits", "get_task", "register_task", "teacher_dataset"]

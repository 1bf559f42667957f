"""Generated verifiable task families; importing this package registers them all."""

from r1lab.tasks import arithmetic, code_repair, countdown, knights, poems, sorting, translation, visual  # noqa: F401  (registration side effect)
from r1lab.tasks.base import TASKS, TaskFamily, generate_splits, get_task, register_task, teacher_dataset

__all__ = ["TASKS", "TaskFamily", "generate_splits", "get_task", "register_task", "teacher_dataset"]

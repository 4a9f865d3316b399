"""Task registry: ``get_task(name, options)`` and ``TASKS``."""

from __future__ import annotations

import importlib

from progrl.config import ConfigError, validate_model
from progrl.tasks.base import Record, Task

# name -> "module:Class", imported on first use so optional dependencies stay optional
TASKS: dict[str, str] = {
    "arithmetic": "progrl.tasks.arithmetic:ArithmeticTask",
    "arithmetic-chain": "progrl.tasks.arithmetic:ArithmeticChainTask",
    "sentiment": "progrl.tasks.sentiment:SentimentTask",
    "ludii": "progrl.tasks.ludii:LudiiTask",
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"config error: task: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_task(name: str, options: dict | None = None) -> Task:
    """Instantiate a task with its options validated (errors name ``task_options.<field>``)."""
    cls = task_class(name)
    opts = validate_model(cls.Options, options or {}, prefix="task_options.")
    return cls(opts)


__all__ = ["TASKS", "Task", "Record", "get_task", "task_class"]

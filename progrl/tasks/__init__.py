"""Task registry: built-in tasks, plug-ins, ``get_task(name, options)``.

A task is named by

- a built-in name (:data:`TASKS`: ``arithmetic``, ``dataset``, ...);
- ``path/to/file.py:ClassName`` -- a :class:`~progrl.tasks.base.Task` subclass in a Python file
  (the file's folder is put on ``sys.path`` so it can import its siblings);
- ``package.module:ClassName`` -- one in an importable module;
- the name of an entry point in the ``progrl.tasks`` group, which installed packages declare
  in their ``pyproject.toml``::

      [project.entry-points."progrl.tasks"]
      my-task = "my_package.tasks:MyTask"

:func:`task_reference` turns a name into the form a run directory records (a file path made
absolute), so ``progrl eval RUN`` and ``--resume`` find the task again from any directory.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from progrl.config import ConfigError, validate_model
from progrl.pyfile import FileImportError, import_file, resolve_path
from progrl.tasks.base import Record, Task

# name -> "module:Class", imported on first use so optional dependencies stay optional
TASKS: dict[str, str] = {
    "arithmetic": "progrl.tasks.arithmetic:ArithmeticTask",
    "arithmetic-chain": "progrl.tasks.arithmetic:ArithmeticChainTask",
    "sentiment": "progrl.tasks.sentiment:SentimentTask",
    "dataset": "progrl.tasks.dataset:DatasetTask",
    "ludii": "progrl.tasks.ludii:LudiiTask",
}

ENTRY_POINT_GROUP = "progrl.tasks"


def plugin_tasks() -> dict[str, str]:
    """Installed plug-ins: entry-point name -> ``module:Class`` (built-in names win a clash)."""
    found = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in TASKS:
            found[ep.name] = ep.value
    return found


def _is_reference(name: str) -> bool:
    return ":" in name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def task_reference(name: str) -> str:
    """The name to record in a run directory: ``file.py:Class`` with an absolute path; others as given."""
    if _is_reference(name):
        where, _, attr = name.rpartition(":")
        if _is_file(where):
            return f"{resolve_path(where)}:{attr}"
    return name


def _load_file(path: str, name: str):
    path = resolve_path(path)
    try:
        return import_file(path, "progrl_task")
    except FileImportError as exc:
        raise ConfigError(f"config error: task: {name!r}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"config error: task: {name!r}: importing {path} failed: {type(exc).__name__}: {exc}") \
            from None


def _load_reference(ref: str, name: str):
    where, _, attr = ref.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"config error: task: {name!r}: expected 'path/to/file.py:Class' or 'package.module:Class'")
    if _is_file(where):
        module = _load_file(where, name)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigError(f"config error: task: {name!r}: cannot import {where!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"config error: task: {name!r}: {where} has no attribute {attr!r}")
    return obj


def task_class(name: str) -> type[Task]:
    """The Task class a name stands for (built-in, file/module reference or entry point)."""
    if name in TASKS:
        module, _, cls = TASKS[name].partition(":")
        return getattr(importlib.import_module(module), cls)
    if _is_reference(name):
        obj = _load_reference(name, name)
    else:
        plugins = plugin_tasks()
        if name not in plugins:
            known = sorted(TASKS) + sorted(plugins)
            raise ConfigError(f"config error: task: unknown task {name!r}; known: {', '.join(known)} "
                              "(or path/to/file.py:Class)")
        obj = _load_reference(plugins[name], name)
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ConfigError(f"config error: task: {name!r} is not a subclass of progrl.tasks.base.Task")
    return obj


def get_task(name: str, options: dict | None = None) -> Task:
    """Instantiate a task with its options validated (errors name ``task_options.<field>``)."""
    cls = task_class(name)
    opts = validate_model(cls.Options, options or {}, prefix="task_options.")
    return cls(opts)


def task_label(name: str) -> str:
    """A short name for run directories and messages (the class's ``name``, else its class name)."""
    if name in TASKS or not _is_reference(name):
        return name
    cls = task_class(name)
    return cls.name or cls.__name__


__all__ = ["TASKS", "ENTRY_POINT_GROUP", "Task", "Record", "get_task", "task_class", "task_reference",
           "plugin_tasks", "task_label"]

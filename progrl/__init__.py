"""progrl: reinforcement learning for language models from programmed rewards.

The Python API (docs/python-api.md) is importable from here: ``progrl.train``,
``progrl.evaluate``, ``progrl.make_config``, ``progrl.load_model``, ``progrl.Run``, and the
task and config types ``progrl.Task``, ``progrl.DatasetTask``, ``progrl.TrainConfig``. They load
lazily, so ``import progrl`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "progrl.api",
    "evaluate": "progrl.api",
    "make_config": "progrl.api",
    "load_model": "progrl.api",
    "Run": "progrl.api",
    "Task": "progrl.tasks.base",
    "DatasetTask": "progrl.tasks.dataset",
    "TrainConfig": "progrl.config",
    "ConfigError": "progrl.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'progrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

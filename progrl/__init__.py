"""progrl: reinforcement learning for language models from programmed rewards.

The Python API (docs/python-api.md) is importable from here: ``progrl.train``,
``progrl.evaluate``, ``progrl.make_config``, ``progrl.load_model``, ``progrl.Run``, and the
task and config types ``progrl.Task``, ``progrl.DatasetTask``, ``progrl.TrainConfig``. They load
lazily, so ``import progrl`` stays cheap.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning, unless the user chose otherwise.
# Spinning threads take the cores other jobs (and this job's own other threads) need: on a shared
# 2-core machine the arithmetic job ran 4x slower with 2 spinning threads than with 1, and 2
# sleeping threads beat 1 (docs/scaling.md, "CPU threads"). OpenMP reads this when torch is first
# imported, so it is set here, before progrl imports torch; processes progrl starts inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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

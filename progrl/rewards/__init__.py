"""The reward engine: programmed reward functions, run safely (docs/rewards.md).

    from progrl.rewards import RewardConfig, RewardEngine
    with RewardEngine(RewardConfig(functions=["my_reward.py:score"], timeout=5)) as engine:
        result = engine.score(prompts, completions, {"answer": answers})
        result.rewards, result.failures

Exports are loaded lazily so that worker processes, which import this package, stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FAILURE_KINDS": "progrl.rewards.failures",
    "Outcome": "progrl.rewards.failures",
    "RewardConfig": "progrl.rewards.config",
    "RewardFunctionConfig": "progrl.rewards.config",
    "RewardEngine": "progrl.rewards.engine",
    "RewardResult": "progrl.rewards.engine",
    "RewardFailureError": "progrl.rewards.engine",
    "RewardSpecError": "progrl.rewards.spec",
    "RewardBackendError": "progrl.rewards.jobs",
    "SampleFailure": "progrl.rewards.failures",
}

__all__ = [
    "FAILURE_KINDS",
    "Outcome",
    "RewardBackendError",
    "RewardConfig",
    "RewardEngine",
    "RewardFailureError",
    "RewardFunctionConfig",
    "RewardResult",
    "RewardSpecError",
    "SampleFailure",
]

if TYPE_CHECKING:  # pragma: no cover
    from progrl.rewards.config import RewardConfig, RewardFunctionConfig
    from progrl.rewards.engine import RewardEngine, RewardFailureError, RewardResult
    from progrl.rewards.failures import FAILURE_KINDS, Outcome, SampleFailure
    from progrl.rewards.jobs import RewardBackendError
    from progrl.rewards.spec import RewardSpecError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'progrl.rewards' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

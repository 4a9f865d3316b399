"""The ``[reward]`` section of the training config.

Defaults and their reasons (see docs/rewards.md for the user-facing version):

- ``backend = "process"``: untrusted or heavy rewards (compilers, game engines, generated
  code) are isolated in worker processes with a hard timeout and a memory cap. Built-in
  tasks whose reward is cheap, pure Python set ``backend = "inline"`` in their own
  defaults (e.g. arithmetic); a user config still overrides that.
- ``on_timeout = on_error = on_crash = 0.01``: the paper (Padula & Soemers 2024, game
  synthesis) scores an engine timeout or engine error as 0.01, just above the 0 of a
  non-compiling answer. A crash is an engine error seen from outside the process.
- ``on_nan = 0.0``: the paper maps NaN to 0.
- ``on_inf = on_type = on_length = 0.0``: nothing in the paper; 0 is the neutral value.
- ``on_none = "skip"``: TRL's convention (``GRPOTrainer`` turns ``None`` into NaN and sums
  the functions with ``nansum``; a sample every function left out gets reward NaN, stays
  out of the group baseline and gets advantage 0): ``None`` means "this function does not
  apply to this sample". It adds nothing to the weighted sum, and a sample for which every
  function skipped (with one function: returned ``None``) is dropped.
- ``max_failure_fraction = 1.0``: a step in which every sample failed, all for the same
  reason, stops the run (a reward that cannot work at all must not train on constants).

Every ``on_*`` value may instead be ``"drop"`` (the sample gets no reward and is left out
of the policy update) or ``"skip"`` (this function adds nothing to the sample's weighted
sum; a sample that every function skips is dropped).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FailureValue = Union[float, Literal["drop", "skip"]]


class RewardFunctionConfig(BaseModel):
    """One reward function: where it is, its weight, and keyword arguments for it."""

    model_config = ConfigDict(extra="forbid")

    fn: str = Field(min_length=1)  # "path/to/file.py:function" or "package.module:function"
    weight: float = 1.0  # weight in the sum over functions
    name: str | None = None  # key in per-function results; default: the function's name
    kwargs: dict[str, Any] = {}  # extra keyword arguments passed on every call
    batched: bool | None = None  # None: detect from the signature (first parameter prompts/completions)

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("weight must be a finite number")
        return v


class RewardConfig(BaseModel):
    """How rewards are computed: which functions, where they run, and failure handling."""

    model_config = ConfigDict(extra="forbid")

    functions: list[RewardFunctionConfig] = []  # empty: the task's own reward functions
    backend: Literal["inline", "process", "ray"] = "process"  # where reward functions run: inline (in the trainer), process (worker pool) or ray
    timeout: float = Field(10.0, gt=0)  # seconds per call of a reward function (hard for process/ray)
    load_timeout: float | None = Field(None, gt=0)  # seconds to import the functions in a worker; None: timeout
    workers: int = Field(2, ge=1)  # worker processes (process) or actors (ray)
    memory_mb: int | None = Field(None, ge=16)  # address space a call may add in a worker (RLIMIT_AS)
    batch_size: int = Field(32, ge=1)  # max samples per message to a worker / per batched call
    cache: bool = False  # reuse rewards of identical (prompt, completion, columns) per function
    cache_size: int = Field(100_000, ge=1)  # entries kept per function (least recently used dropped)
    show_output: bool = False  # let reward functions' stdout/stderr through (default: discarded)
    ray_address: str | None = None  # None: connect to a running Ray instance or start a local one
    sandbox: bool = False  # process backend: run each worker in a bubblewrap sandbox (docs/rewards.md)
    sandbox_network: bool = False  # with sandbox: keep the host's network (default: none at all)
    # stop the run when at least this fraction of a step's samples failed, all for one reason
    # (same function, same kind; None results do not count); "never": do not stop
    max_failure_fraction: Union[float, Literal["never"]] = 1.0

    on_timeout: FailureValue = 0.01  # value of a call past the timeout, or "drop"
    on_error: FailureValue = 0.01  # value when the function raised, or "drop"
    on_crash: FailureValue = 0.01  # value when the worker died or ran out of memory, or "drop"
    on_nan: FailureValue = 0.0  # value for a NaN result, or "drop"
    on_inf: FailureValue = 0.0  # value for an infinite result, or "drop"
    on_none: FailureValue = "skip"  # value for None ("this function does not apply"): "skip" (TRL's convention), a number, or "drop"
    on_type: FailureValue = 0.0  # value for a non-number result, or "drop"
    on_length: FailureValue = 0.0  # value when a batched function returned the wrong number of values, or "drop"

    @field_validator("functions", mode="before")
    @classmethod
    def _spec_strings(cls, v: Any) -> Any:
        """Allow the short form ``functions = ["file.py:fn", ...]`` (weight 1)."""
        if isinstance(v, list):
            return [{"fn": item} if isinstance(item, str) else item for item in v]
        return v

    @field_validator("on_timeout", "on_error", "on_crash", "on_nan", "on_inf", "on_none", "on_type",
                     "on_length")
    @classmethod
    def _finite_failure_value(cls, v: FailureValue) -> FailureValue:
        if v not in ("drop", "skip") and not math.isfinite(v):
            raise ValueError('must be a finite number, "drop" or "skip"')
        return v

    @field_validator("max_failure_fraction")
    @classmethod
    def _fraction(cls, v: float | str) -> float | str:
        if v != "never" and not 0 < v <= 1:
            raise ValueError('must be a fraction in (0, 1] or "never"')
        return v

    @model_validator(mode="after")
    def _sandbox_needs_process(self) -> "RewardConfig":
        if self.sandbox and self.backend != "process":
            raise ValueError(f'sandbox = true needs backend = "process" (got "{self.backend}")')
        return self

    @property
    def effective_load_timeout(self) -> float:
        """Seconds a worker may take to import the reward functions."""
        return self.load_timeout if self.load_timeout is not None else self.timeout

    def failure_policy(self) -> dict[str, float | str | None]:
        """Value given to each failure kind; ``None`` means the sample is dropped, ``"skip"`` adds nothing."""
        from progrl.rewards.failures import FAILURE_KINDS

        policy: dict[str, float | str | None] = {}
        for kind in FAILURE_KINDS:
            v = getattr(self, f"on_{kind}")
            policy[kind] = None if v == "drop" else "skip" if v == "skip" else float(v)
        return policy

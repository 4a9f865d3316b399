"""The unit of work handed to a backend, and the interface every backend implements.

The engine cuts a batch into :class:`Job` s: one reward function over a chunk of samples.
A backend evaluates jobs and returns one :class:`~progrl.rewards.failures.Outcome` per
``(function index, sample position)``; reward failures are outcomes, never exceptions.
A backend raises :class:`RewardBackendError` only when it cannot work at all (workers that
never start, Ray not installed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from progrl.rewards.failures import Outcome


class RewardBackendError(RuntimeError):
    """The reward backend itself cannot run (as opposed to a reward function failing)."""


@dataclass
class Job:
    """One reward function (by index) over some samples of the batch."""

    func: int  # index into the engine's function list
    positions: list[int]  # sample positions in the batch, one per entry below
    prompts: list[str]
    completions: list[str]
    columns: dict[str, list[Any]]
    attempt: int = 0  # how many times this job was re-queued because its worker died before starting it

    def subset(self, keep: Sequence[int], attempt: int | None = None) -> Job:
        """A new job over the entries at indices ``keep`` of this one."""
        return Job(
            func=self.func,
            positions=[self.positions[i] for i in keep],
            prompts=[self.prompts[i] for i in keep],
            completions=[self.completions[i] for i in keep],
            columns={k: [v[i] for i in keep] for k, v in self.columns.items()},
            attempt=self.attempt if attempt is None else attempt,
        )


Results = dict[tuple[int, int], Outcome]  # (function index, sample position) -> outcome


class Backend(Protocol):
    """Where reward functions run."""

    def max_chunk(self, func: int) -> int:
        """Largest number of samples to put in one job of function ``func``."""

    def start(self) -> None:
        """Start workers now (otherwise they start on the first :meth:`run`)."""

    def run(self, jobs: list[Job]) -> Results:
        """Evaluate every job; one outcome per (function, position) of every job."""

    def close(self) -> None:
        """Stop all workers; idempotent."""

"""The unit of work handed to a backend, and the interface every backend implements.

The engine cuts a batch into :class:`Job` s: one reward function over a chunk of samples.
A backend evaluates jobs and returns one :class:`~progrl.rewards.failures.Outcome` per
``(function index, sample position)``; reward failures are outcomes, never exceptions.
A backend raises :class:`RewardBackendError` only when it cannot work at all (workers that
never start, Ray not installed).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from progrl.rewards.failures import Outcome
from progrl.rewards.spec import RewardSpecError
from progrl.rewards.wire import FunctionInfo


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

    def describe(self) -> list[FunctionInfo]:
        """What each function is (batched, keywords), once it is loaded wherever it runs.

        Raises RewardSpecError (one line) when a function cannot be loaded there.
        """

    def run(self, jobs: list[Job]) -> Results:
        """Evaluate every job; one outcome per (function, position) of every job."""

    def close(self) -> None:
        """Stop all workers; idempotent."""


class SupervisedBackend:
    """The scheduling loop shared by the process and Ray backends.

    Subclasses keep ``self._workers``: objects with a ``state`` (``"starting"``, ``"idle"``,
    ``"busy"``, ...) and implement :meth:`start`, :meth:`describe`, :meth:`_send` (hand a
    job to an idle worker), :meth:`_wait` (wait for a result or a deadline and handle it,
    re-queueing jobs that must run again) and :meth:`_replace` (kill a worker and start a
    new one).
    """

    def __init__(self, functions: Sequence[Any], batched: Sequence[bool], *, workers: int, timeout: float,
                 batch_size: int, memory_mb: int | None = None, show_output: bool = False) -> None:
        self.functions = list(functions)  # FunctionSpec (picklable), one per function index
        self.batched = list(batched)
        self.n_workers = workers
        self.timeout = timeout
        self.batch_size = batch_size
        self.memory_mb = memory_mb
        self.show_output = show_output
        self._workers: list[Any] = []
        self._closed = False
        self._start_failures = 0  # workers in a row that died before being ready
        self.infos: list[FunctionInfo] | None = None  # what the first worker to load the functions reported

    def _started(self, worker: Any, tag: str, payload: Any, kill) -> None:
        """A worker's start message, parsed: ``"fatal"`` (the functions cannot be loaded; the
        worker is killed with ``kill()``) raises RewardSpecError; otherwise the first report of
        the functions is kept and the worker is idle."""
        if tag == "fatal":
            kill()
            raise RewardSpecError(payload)
        if self.infos is None:
            self.infos = payload
            self.batched = [i.batched for i in payload]
        worker.state = "idle"
        self._start_failures = 0

    def start(self) -> None:
        raise NotImplementedError

    def _send(self, worker: Any, job: Job, queue: deque[Job]) -> None:
        raise NotImplementedError

    def _wait(self, queue: deque[Job], results: Results) -> None:
        raise NotImplementedError

    def _replace(self, worker: Any) -> None:
        raise NotImplementedError

    def _abandon(self, worker: Any) -> None:
        """Give up on a busy worker after an exception (Ctrl-C): by default, replace it."""
        self._replace(worker)

    def run(self, jobs: list[Job]) -> Results:
        """Evaluate every job; see :class:`Backend`."""
        results: Results = {}
        queue: deque[Job] = deque(jobs)
        self.start()
        try:
            while queue or any(w.state == "busy" for w in self._workers):
                for w in list(self._workers):
                    if not queue:
                        break
                    if w.state == "idle":
                        self._send(w, queue.popleft(), queue)
                self._wait(queue, results)
        except BaseException:  # abandoned jobs: their workers are no longer in step with us
            for w in list(self._workers):
                if w.state == "busy":
                    self._abandon(w)
            raise
        return results

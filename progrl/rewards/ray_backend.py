"""The ``ray`` backend: reward functions in Ray actors, on this machine or a cluster.

``pip install 'progrl[ray]'``. Ray is imported only when this backend is used.

- ``workers`` actors (1 CPU each) load the functions once and serve one call at a time;
  the driver only sends work to idle actors, so a call starts when it is sent and its
  deadline is (send time + ``timeout``). Past it, the actor is killed (``ray.kill``) and
  replaced; the samples of that call are ``timeout`` failures. A dead actor (abort,
  segfault, OOM) gives ``crash`` failures and is replaced as well.
- Per-sample functions are sent one sample per actor call so that a hang or a crash
  fails only its own sample; batched functions get up to ``batch_size`` samples per call.
  (Ray adds roughly a millisecond per call: use ``process`` for cheap rewards.)
- ``memory_mb`` caps the address space an actor may add *during a call* (RLIMIT_AS,
  lifted again afterwards); ``MemoryError`` is a ``crash`` and the actor is replaced.
- Output written during a call (Python, C, subprocesses) is discarded unless
  ``show_output``; otherwise it ends in Ray's logs.
- Not covered: subprocesses that a reward starts are not killed with a timed-out actor
  (give them their own timeout), and on a remote cluster file specs must exist at the
  same path on every node (or use ``package.module:function`` with progrl installed there).
- With ``ray_address`` unset, an already initialised Ray (or ``RAY_ADDRESS``) is used,
  else a local instance is started; the engine shuts down only a Ray it started itself.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from progrl.rewards.failures import Outcome, failure
from progrl.rewards.isolation import limit_address_space, output_discarded, restore_address_space
from progrl.rewards.jobs import Job, Results, RewardBackendError, SupervisedBackend
from progrl.rewards.spec import FunctionSpec, call_chunk, load

log = logging.getLogger("progrl.rewards")

STARTUP_TIMEOUT = 120.0
MAX_START_FAILURES = 3


def import_ray() -> Any:
    """``import ray``, or a RewardBackendError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RewardBackendError("the ray reward backend needs Ray: pip install 'progrl[ray]' "
                                 f"({type(exc).__name__}: {exc})") from None
    return ray


class RewardActor:
    """The body of a Ray actor (made remote at run time, so that Ray stays optional)."""

    def __init__(self, functions: Sequence[FunctionSpec], memory_mb: int | None, show_output: bool) -> None:
        self.error: str | None = None
        self.loaded = []
        try:
            self.loaded = [load(f) for f in functions]
        except BaseException as exc:
            self.error = f"reward actor could not load its functions: {exc}"
        self.memory_mb = memory_mb
        self.show_output = show_output

    def ready(self) -> str | None:
        """None when the functions are loaded, else the error."""
        return self.error

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, func: int, prompts: list[str], completions: list[str],
                 columns: dict[str, list[Any]]) -> list[Outcome]:
        soft = limit_address_space(self.memory_mb) if self.memory_mb else None
        try:
            with output_discarded(not self.show_output):
                return call_chunk(self.loaded[func], prompts, completions, columns)
        finally:
            restore_address_space(soft)


class _Slot:
    """Driver-side state of one actor."""

    def __init__(self, handle: Any, ready_ref: Any) -> None:
        self.handle = handle
        self.ref = ready_ref  # the ready() call while starting, the evaluate() call while busy
        self.state = "starting"  # starting | idle | busy
        self.since = time.monotonic()
        self.job: Job | None = None


class RayBackend(SupervisedBackend):
    """Actors on a Ray cluster, with the process backend's timeout and failure semantics."""

    def __init__(self, functions: Sequence[FunctionSpec], batched: Sequence[bool], *, address: str | None = None,
                 **options: Any) -> None:
        self.ray = import_ray()
        super().__init__(functions, batched, **options)
        self.address = address
        self._owns_ray = False
        self._actor_cls: Any = None

    # ------------------------------------------------------------------ lifecycle
    def max_chunk(self, func: int) -> int:
        return self.batch_size if self.batched[func] else 1

    def _init_ray(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address, "ignore_reinit_error": True}
            if self.address is None:
                kwargs["include_dashboard"] = False
            try:
                ray.init(**kwargs)
            except Exception as exc:
                raise RewardBackendError(f"could not start or reach Ray (address={self.address!r}): "
                                         f"{type(exc).__name__}: {exc}") from None
            self._owns_ray = True
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(RewardActor)

    def _new_slot(self) -> _Slot:
        handle = self._actor_cls.remote(self.functions, self.memory_mb, self.show_output)
        return _Slot(handle, handle.ready.remote())

    def start(self) -> None:
        if self._closed:
            raise RewardBackendError("the reward engine is closed")
        if self._actor_cls is None:
            self._init_ray()
        while len(self._workers) < self.n_workers:
            self._workers.append(self._new_slot())

    def _kill(self, slot: _Slot) -> None:
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception:
            pass

    def _replace(self, slot: _Slot) -> None:
        self._kill(slot)
        self._workers[self._workers.index(slot)] = self._new_slot()

    def worker_pids(self) -> list[int]:
        """Process ids of the idle actors (for tests and diagnostics)."""
        idle = [s for s in self._workers if s.state == "idle"]
        return list(self.ray.get([s.handle.pid.remote() for s in idle]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._workers:
            self._kill(slot)
        self._workers.clear()
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()

    # ------------------------------------------------------------------ running
    def _send(self, slot: _Slot, job: Job, queue: deque[Job]) -> None:
        slot.job, slot.state, slot.since = job, "busy", time.monotonic()
        slot.ref = slot.handle.evaluate.remote(job.func, job.prompts, job.completions, job.columns)

    def _deadline(self, slot: _Slot) -> float:
        return slot.since + (STARTUP_TIMEOUT if slot.state == "starting" else self.timeout)

    def _wait(self, queue: deque[Job], results: Results) -> None:
        ray = self.ray
        active = [s for s in self._workers if s.state in ("starting", "busy")]
        if not active:
            return
        refs = [s.ref for s in active]
        timeout = max(0.0, min(self._deadline(s) for s in active) - time.monotonic())
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        now = time.monotonic()
        for slot in active:
            if slot.ref in done:
                self._collect(slot, results)
            elif now >= self._deadline(slot):
                self._expire(slot, results)

    def _collect(self, slot: _Slot, results: Results) -> None:
        ray = self.ray
        if slot.state == "starting":
            try:
                error = ray.get(slot.ref)
            except ray.exceptions.RayError as exc:
                self._start_failed(slot, f"{type(exc).__name__}: {exc}")
                return
            if error is not None:
                raise RewardBackendError(error)
            slot.state = "idle"
            self._start_failures = 0
            return
        job = slot.job
        assert job is not None
        try:
            outcomes: list[Outcome] = ray.get(slot.ref)
        except ray.exceptions.RayTaskError as exc:
            outcomes = [failure("error", f"reward actor call failed: {exc}")] * len(job.positions)
        except ray.exceptions.RayError as exc:
            outcomes = [failure("crash", f"reward actor died ({type(exc).__name__})")] * len(job.positions)
        for pos, outcome in zip(job.positions, outcomes):
            results[(job.func, pos)] = outcome
        slot.job, slot.state = None, "idle"
        if any(o.kind == "crash" for o in outcomes):
            self._replace(slot)

    def _expire(self, slot: _Slot, results: Results) -> None:
        if slot.state == "starting":  # waiting longer would not help: give up at once
            self._kill(slot)
            raise RewardBackendError(f"reward actor not ready after {STARTUP_TIMEOUT:.0f}s (not enough free CPUs "
                                     f"in the Ray cluster for {self.n_workers} actors of 1 CPU?)")
        job = slot.job
        assert job is not None
        self._replace(slot)
        outcome = failure("timeout", f"no result within {self.timeout:g}s (actor killed)")
        for pos in job.positions:
            results[(job.func, pos)] = outcome

    def _start_failed(self, slot: _Slot, message: str) -> None:
        self._start_failures += 1
        log.warning("reward actor failed to start: %s", message)
        if self._start_failures >= MAX_START_FAILURES:
            raise RewardBackendError(f"reward actors failed to start {self._start_failures} times in a row "
                                     f"(last: {message})")
        self._replace(slot)

"""The ``ray`` backend: reward functions in Ray actors, on this machine or a cluster.

``pip install 'progrl[ray]'``. Ray is imported only when this backend is used.

- ``workers`` actors (1 CPU each) import the functions (the driver does not: it learns
  what it needs about them from the first actor, and an import that raises, hangs past
  ``load_timeout`` or kills its actor is one RewardSpecError line), then serve one call at
  a time; the driver only sends work to idle actors, so a call starts when it is sent and
  its deadline is (send time + ``timeout``). Past it, the actor is killed (``ray.kill``)
  and replaced; the samples of that call are ``timeout`` failures. A dead actor (abort,
  segfault, OOM) gives ``crash`` failures and is replaced as well.
- Replies are the process backend's JSON lines (:mod:`progrl.rewards.wire`), returned as
  ``bytes`` and validated on the driver; a malformed one is a ``crash``. What remains:
  Ray's own transport deserialises every result with pickle on the driver, so a reward
  that takes over its actor process (it runs there) could hand the driver a crafted
  pickle through Ray. Use the process backend for code you do not trust (docs/rewards.md).
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

from progrl.rewards.failures import failure, safe_str, type_name
from progrl.rewards.isolation import limit_address_space, output_discarded, restore_address_space
from progrl.rewards.jobs import Job, Results, RewardBackendError, SupervisedBackend
from progrl.rewards.spec import FunctionSpec, RewardSpecError, call_chunk, info, load
from progrl.rewards.wire import (
    MAX_START_BYTES,
    FunctionInfo,
    ProtocolError,
    decode,
    encode_fatal,
    encode_ready,
    encode_reply,
    max_reply_bytes,
    parse_reply,
    parse_start,
)

log = logging.getLogger("progrl.rewards")

STARTUP_TIMEOUT = 120.0  # seconds for an actor process to come up (before it loads the functions)
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
    """The body of a Ray actor (made remote at run time, so that Ray stays optional).

    Every method returns builtins only: an int, or ``bytes`` holding one JSON line.
    """

    def __init__(self, memory_mb: int | None, show_output: bool) -> None:
        self.loaded: list = []
        self.memory_mb = memory_mb
        self.show_output = show_output

    def pid(self) -> int:
        return os.getpid()

    def load(self, functions: Sequence[FunctionSpec]) -> bytes:
        """Import the functions: a ready line with what they are, or a fatal line."""
        try:
            with output_discarded(not self.show_output):
                self.loaded = [load(f) for f in functions]
        except BaseException as exc:  # noqa: BLE001
            msg = safe_str(exc)
            if not msg.startswith("reward function"):
                msg = f"reward actor could not load its functions: {type_name(exc)}: {msg}"
            return encode_fatal(msg)
        return encode_ready(os.getpid(), [info(lf) for lf in self.loaded])

    def evaluate(self, job_id: int, func: int, prompts: list[str], completions: list[str],
                 columns: dict[str, list[Any]]) -> bytes:
        soft = limit_address_space(self.memory_mb) if self.memory_mb else None
        try:
            with output_discarded(not self.show_output):
                try:
                    outcomes = call_chunk(self.loaded[func], prompts, completions, columns, interruptible=False)
                except BaseException as exc:  # noqa: BLE001
                    outcomes = [failure("error", f"reading the reward's result raised {type_name(exc)}: "
                                                 f"{safe_str(exc)}")] * len(prompts)
        finally:
            restore_address_space(soft)
        return encode_reply(job_id, outcomes, any(o.kind == "crash" for o in outcomes))


class _Slot:
    """Driver-side state of one actor."""

    def __init__(self, handle: Any, ready_ref: Any, load_ref: Any) -> None:
        self.handle = handle
        self.ref = ready_ref  # pid() while starting, load() while loading, evaluate() while busy
        self.load_ref = load_ref  # sent with pid(), so that the actor loads as soon as it is up
        self.state = "starting"  # starting | loading | idle | busy
        self.since = time.monotonic()
        self.job: Job | None = None
        self.job_id = 0


class RayBackend(SupervisedBackend):
    """Actors on a Ray cluster, with the process backend's timeout and failure semantics."""

    def __init__(self, functions: Sequence[FunctionSpec], batched: Sequence[bool] | None = None, *,
                 address: str | None = None, load_timeout: float | None = None, **options: Any) -> None:
        self.ray = import_ray()
        super().__init__(functions, batched if batched is not None else [False] * len(functions), **options)
        self.address = address
        self.load_timeout = load_timeout if load_timeout is not None else self.timeout
        self.names = [f.name for f in self.functions]
        self.labels = [f.source or f.name for f in self.functions]
        self.infos: list[FunctionInfo] | None = None
        self._owns_ray = False
        self._actor_cls: Any = None
        self._next_id = 0

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
        handle = self._actor_cls.remote(self.memory_mb, self.show_output)
        return _Slot(handle, handle.pid.remote(), handle.load.remote(self.functions))

    def start(self) -> None:
        if self._closed:
            raise RewardBackendError("the reward engine is closed")
        if self._actor_cls is None:
            self._init_ray()
        while len(self._workers) < self.n_workers:
            self._workers.append(self._new_slot())

    def describe(self) -> list[FunctionInfo]:
        """Wait until an actor has imported the functions; what it reports about them."""
        self.start()
        while self.infos is None:
            self._wait(deque(), {})
        return self.infos

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
        self._next_id += 1
        slot.job, slot.job_id, slot.state, slot.since = job, self._next_id, "busy", time.monotonic()
        slot.ref = slot.handle.evaluate.remote(slot.job_id, job.func, job.prompts, job.completions, job.columns)

    def _deadline(self, slot: _Slot) -> float:
        limit = {"starting": STARTUP_TIMEOUT, "loading": self.load_timeout}.get(slot.state, self.timeout)
        return slot.since + limit

    def _wait(self, queue: deque[Job], results: Results) -> None:
        ray = self.ray
        active = [s for s in self._workers if s.state in ("starting", "loading", "busy")]
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

    def _get_line(self, slot: _Slot, limit: int) -> bytes:
        """The result of the slot's call: must be one JSON line (``bytes``); ProtocolError otherwise."""
        line = self.ray.get(slot.ref)  # Ray unpickles here (see the module docstring)
        if type(line) is not bytes or not line.endswith(b"\n") or len(line) > limit:
            raise ProtocolError(f"expected one JSON line, got {type_name(line)}")
        return line[:-1]

    def _loading_failed(self, slot: _Slot, message: str) -> None:
        self._kill(slot)
        what = f"reward function {self.labels[0]!r}" if len(self.labels) == 1 else "the reward functions"
        if self.infos is None:
            raise RewardSpecError(f"{what}: {message}")
        self._start_failed(slot, message)

    def _collect(self, slot: _Slot, results: Results) -> None:
        ray = self.ray
        if slot.state == "starting":
            try:
                ray.get(slot.ref)
            except ray.exceptions.RayError as exc:
                self._start_failed(slot, f"{type(exc).__name__}: {exc}")
                return
            slot.state, slot.since = "loading", time.monotonic()  # the load runs now (queued after pid())
            slot.ref = slot.load_ref
            return
        if slot.state == "loading":
            try:
                tag, payload = parse_start(decode(self._get_line(slot, MAX_START_BYTES)), self.names)
            except ProtocolError as exc:
                self._loading_failed(slot, f"malformed message from the reward actor ({exc})")
                return
            except ray.exceptions.RayError as exc:
                self._loading_failed(slot, f"the reward actor died while loading it ({type(exc).__name__})")
                return
            self._started(slot, tag, payload, lambda: self._kill(slot))
            return
        job = slot.job
        assert job is not None
        replace = False
        try:
            outcomes, replace = parse_reply(decode(self._get_line(slot, max_reply_bytes(len(job.positions)))),
                                            slot.job_id, len(job.positions))
        except ProtocolError as exc:
            outcomes = [failure("crash", f"malformed reply from the reward actor ({exc}); actor replaced")] * \
                len(job.positions)
            replace = True
        except ray.exceptions.RayTaskError as exc:
            outcomes = [failure("error", f"reward actor call failed: {exc}")] * len(job.positions)
        except ray.exceptions.RayError as exc:
            outcomes = [failure("crash", f"reward actor died ({type(exc).__name__})")] * len(job.positions)
            replace = True
        for pos, outcome in zip(job.positions, outcomes):
            results[(job.func, pos)] = outcome
        slot.job, slot.state = None, "idle"
        if replace:
            self._replace(slot)

    def _expire(self, slot: _Slot, results: Results) -> None:
        if slot.state == "starting":  # waiting longer would not help: give up at once
            self._kill(slot)
            raise RewardBackendError(f"reward actor not ready after {STARTUP_TIMEOUT:.0f}s (not enough free CPUs "
                                     f"in the Ray cluster for {self.n_workers} actors of 1 CPU?)")
        if slot.state == "loading":
            self._loading_failed(slot, f"loading took longer than {self.load_timeout:g}s (actor killed; raise "
                                       "reward.load_timeout for slow imports)")
            return
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

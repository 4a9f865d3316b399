"""The ``process`` backend: a small pool of worker processes with hard timeouts.

Design (see docs/rewards.md, "Backends"):

- Workers are ``multiprocessing`` processes of the **spawn** context (never a fork of the
  trainer, which holds torch threads and maybe a GPU context). Each loads every reward
  function once, then serves jobs over its own pipe; they are reused across calls.
- Workers start lazily, on the first :meth:`ProcessBackend.run` (or an explicit
  :meth:`start`, which returns at once while they boot), and a dead or killed worker is
  replaced straight away, so the replacement boots while the rest of the batch runs.
- Timeout: a worker stamps the start time of every reward call into shared memory; the
  supervisor waits on the pipes with a deadline of (start of the current call +
  ``timeout``) and, when it passes, SIGKILLs the worker's whole process group (so the
  reward's own subprocesses die too). No signal is ever raised inside the reward.
- Failure attribution: a batched call that times out or crashes fails every sample of
  that call (no per-sample retry: a hang would cost another timeout per sample, and a
  crash usually repeats). For a per-sample function only the sample that was running
  fails; the others of that chunk are evaluated again in a fresh worker.
- Memory: ``memory_mb`` caps the address space a worker may add after loading its
  functions (RLIMIT_AS); ``MemoryError`` is a ``crash`` and the worker is replaced.
- Output: workers' file descriptors 1 and 2 point to /dev/null, so a flood cannot fill a
  pipe; error messages come back with the outcomes instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import Any

from progrl.rewards.failures import Outcome, failure
from progrl.rewards.jobs import Job, Results, RewardBackendError, SupervisedBackend
from progrl.rewards.worker import worker_main

log = logging.getLogger("progrl.rewards")

STARTUP_TIMEOUT = 120.0  # seconds for a worker to load its functions
MAX_START_FAILURES = 3  # consecutive workers dying before "ready" -> RewardBackendError
MAX_JOB_ATTEMPTS = 3  # a job whose worker dies before starting it is re-sent this often


def describe_exit(exitcode: int | None) -> str:
    """``"worker died from signal SIGSEGV"`` and the like."""
    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (killed: out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"worker died from {name}{hint}"
    return f"worker exited with code {exitcode}"


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, ctx: Any, functions: Sequence[Any], options: dict[str, Any]) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.stamps = ctx.RawArray("d", 2)
        self.proc = ctx.Process(target=worker_main, args=(child_conn, list(functions), self.stamps, options),
                                name="progrl-reward-worker", daemon=True)
        self.proc.start()
        child_conn.close()  # so that the worker's death reads as EOF here
        self.state = "starting"  # starting | idle | busy | dead
        self.since = time.monotonic()  # start time (starting) or send time (busy)
        self.job: Job | None = None
        self.job_id = 0

    def call_started(self) -> float | None:
        """Start time of the reward call now running for the current job, or None if none began yet."""
        t = self.stamps[1]
        return t if t >= self.since else None

    def culprit(self) -> int | None:
        """Index (in the current job) of the sample whose call was running, or None if none began."""
        return int(self.stamps[0]) if self.call_started() is not None else None

    def kill(self) -> None:
        """SIGKILL the worker and its process group, reap it, close the pipe."""
        pid = self.proc.pid
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)  # the worker leads its own group
            except (ProcessLookupError, PermissionError, OSError):
                pass
        try:
            self.proc.kill()
        except Exception:
            pass
        self.proc.join(5)
        self.conn.close()
        self.state = "dead"


def _shutdown(workers: list[_Worker]) -> None:
    """Stop every worker: ask idle ones to exit (their atexit handlers run), kill the rest and their groups."""
    for w in workers:
        if w.state == "idle":
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                w.kill()
        elif w.state != "dead":
            w.kill()
    deadline = time.monotonic() + 1.0
    alive = [w.proc.sentinel for w in workers if w.state != "dead" and w.proc.exitcode is None]
    while alive and time.monotonic() < deadline:
        wait(alive, timeout=max(0.0, deadline - time.monotonic()))
        alive = [w.proc.sentinel for w in workers if w.state != "dead" and w.proc.exitcode is None]
    for w in workers:
        if w.state != "dead":
            w.kill()
    workers.clear()


class ProcessBackend(SupervisedBackend):
    """A pool of spawn-context worker processes; see the module docstring."""

    def __init__(self, functions: Sequence[Any], batched: Sequence[bool], **options: Any) -> None:
        super().__init__(functions, batched, **options)
        self._ctx = multiprocessing.get_context("spawn")
        self._next_id = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # ------------------------------------------------------------------ lifecycle
    def max_chunk(self, func: int) -> int:
        return self.batch_size

    def _options(self) -> dict[str, Any]:
        return {
            "parent_pid": os.getpid(),
            "parent_death_signal": threading.current_thread() is threading.main_thread(),
            "memory_mb": self.memory_mb,
            "show_output": self.show_output,
        }

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.functions, self._options())

    def start(self) -> None:
        """Start the missing workers; returns without waiting for them to boot."""
        if self._closed:
            raise RewardBackendError("the reward engine is closed")
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def _replace(self, w: _Worker) -> None:
        if w.state != "dead":
            w.kill()
        i = self._workers.index(w)
        self._workers[i] = self._spawn()

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for tests and diagnostics)."""
        return [w.proc.pid for w in self._workers if w.proc.pid is not None and w.state != "dead"]

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    # ------------------------------------------------------------------ running
    def _send(self, w: _Worker, job: Job, queue: deque[Job]) -> None:
        self._next_id += 1
        w.job, w.job_id, w.since, w.state = job, self._next_id, time.monotonic(), "busy"
        try:
            w.conn.send((w.job_id, job.func, job.prompts, job.completions, job.columns))
        except (OSError, ValueError):  # died while idle: not this job's fault
            queue.appendleft(job)
            self._replace(w)

    def _deadline(self, w: _Worker) -> float:
        if w.state == "starting":
            return w.since + STARTUP_TIMEOUT
        started = w.call_started()
        return (started if started is not None else w.since) + self.timeout

    def _wait(self, queue: deque[Job], results: Results) -> None:
        active = [w for w in self._workers if w.state in ("starting", "busy")]
        if not active:
            return
        deadline = min(self._deadline(w) for w in active)
        waitables: list[Any] = []
        for w in active:
            waitables += [w.conn, w.proc.sentinel]
        wait(waitables, timeout=max(0.0, deadline - time.monotonic()))
        for w in active:
            if w.state == "starting":
                self._check_starting(w)
            else:
                self._check_busy(w, queue, results)

    def _check_starting(self, w: _Worker) -> None:
        message = None
        try:
            if w.conn.poll():
                kind, detail = w.conn.recv()
                if kind == "ready":
                    w.state = "idle"
                    self._start_failures = 0
                    return
                w.kill()
                raise RewardBackendError(detail)
        except (EOFError, OSError):
            w.proc.join(5)
            message = describe_exit(w.proc.exitcode)
        if message is None and not w.proc.is_alive():
            message = describe_exit(w.proc.exitcode)
        if message is None and time.monotonic() > w.since + STARTUP_TIMEOUT:
            message = f"reward worker not ready after {STARTUP_TIMEOUT:.0f}s"
        if message is None:
            return
        self._start_failures += 1
        log.warning("reward worker failed to start: %s", message)
        if self._start_failures >= MAX_START_FAILURES:
            w.kill()
            raise RewardBackendError(f"reward workers failed to start {self._start_failures} times in a row "
                                     f"(last: {message})")
        self._replace(w)

    def _check_busy(self, w: _Worker, queue: deque[Job], results: Results) -> None:
        job = w.job
        assert job is not None
        died = False
        try:
            if w.conn.poll():
                job_id, outcomes, recycle = w.conn.recv()
                if job_id != w.job_id:  # cannot happen: one job per worker at a time
                    raise RewardBackendError("reward worker answered out of order")
                for pos, outcome in zip(job.positions, outcomes):
                    results[(job.func, pos)] = outcome
                w.job, w.state = None, "idle"
                if recycle:
                    self._replace(w)
                return
        except (EOFError, OSError):
            died = True
        if not died and w.proc.is_alive():
            if time.monotonic() < self._deadline(w):
                return
            w.kill()  # first, so that the stamps stop moving
            started, culprit = w.call_started(), w.culprit()
            self._replace(w)
            if started is not None and time.monotonic() - started < self.timeout:
                culprit = None  # the late call ended just before the kill; the one killed was not late
            outcome = failure("timeout", f"no result within {self.timeout:g}s (worker killed)")
        else:
            culprit = w.culprit()
            w.proc.join(5)
            outcome = failure("crash", describe_exit(w.proc.exitcode))
            self._replace(w)
        if culprit is None and job.attempt + 1 < MAX_JOB_ATTEMPTS:  # nobody to blame: run it again
            queue.appendleft(job.subset(range(len(job.positions)), attempt=job.attempt + 1))
            return
        self._fail(job, culprit, outcome, queue, results)

    def _fail(self, job: Job, culprit: int | None, outcome: Outcome, queue: deque[Job], results: Results) -> None:
        """Record ``outcome`` for the guilty sample(s) of ``job``; re-queue the innocent ones."""
        if self.batched[job.func] or culprit is None or not 0 <= culprit < len(job.positions):
            for pos in job.positions:
                results[(job.func, pos)] = outcome
            return
        results[(job.func, job.positions[culprit])] = outcome
        rest = [i for i in range(len(job.positions)) if i != culprit]
        if rest:
            queue.appendleft(job.subset(rest))

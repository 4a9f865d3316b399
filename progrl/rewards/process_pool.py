"""The ``process`` backend: a small pool of worker processes with hard timeouts.

Design (see docs/rewards.md, "Backends" and "Trust"):

- Workers are fresh interpreters, ``python -m progrl.rewards.worker`` (never a fork of
  the trainer, which holds torch threads and maybe a GPU context), optionally inside a
  bubblewrap sandbox (:mod:`progrl.rewards.sandbox`). Each imports every reward function
  once, then serves jobs; they are reused across calls. **The trainer never imports the
  reward's code and never unpickles anything from a worker**: a worker's replies are
  JSON lines, validated field by field (:mod:`progrl.rewards.wire`); anything malformed
  counts as a crash of that worker, which is replaced.
- The first worker to load the functions reports what the trainer needs to know about
  them (batched or not, keyword names): :meth:`ProcessBackend.describe`. An import that
  raises, hangs past ``load_timeout`` or kills its worker is one RewardSpecError line.
- Workers start in the background (:meth:`start` returns at once), and a dead or killed
  worker is replaced straight away, so the replacement boots while the batch runs.
- Timeout: a worker stamps the start time of every reward call into shared memory; the
  supervisor waits on the pipes with a deadline of (start of the current call +
  ``timeout``), capped at (send time + ``timeout`` x calls in the job) whatever the
  stamps say, and when it passes, SIGKILLs the worker and everything below it: its
  session, plus (best effort) every descendant found through /proc, the worker being their
  child subreaper; with the sandbox, the whole PID namespace. No signal is ever raised
  inside the reward.
- Failure attribution: a batched call that times out or crashes fails every sample of
  that call (no per-sample retry: a hang would cost another timeout per sample, and a
  crash usually repeats). For a per-sample function only the sample that was running
  fails; the others of that chunk are evaluated again in a fresh worker.
- Memory: ``memory_mb`` caps the address space a worker may add after loading its
  functions (RLIMIT_AS); ``MemoryError`` is a ``crash`` and the worker is replaced.
- Output: workers' file descriptors 1 and 2 point to /dev/null (or to the trainer's
  stderr with ``show_output``), so a flood cannot fill a pipe; error messages come back
  with the outcomes instead.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import progrl

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]
from progrl.rewards.failures import Outcome, failure
from progrl.rewards.isolation import kill_tree
from progrl.rewards.jobs import Job, Results, RewardBackendError, SupervisedBackend
from progrl.rewards.spec import RewardSpecError
from progrl.rewards.wire import (
    MAX_START_BYTES,
    FunctionInfo,
    LineReader,
    ProtocolError,
    decode,
    frame,
    max_reply_bytes,
    parse_reply,
    parse_start,
)
from progrl.rewards.worker import STAMPS

log = logging.getLogger("progrl.rewards")

STARTUP_TIMEOUT = 120.0  # seconds for a worker's interpreter to start (before it loads the functions)
MAX_START_FAILURES = 3  # consecutive workers dying before "ready" -> RewardBackendError
MAX_JOB_ATTEMPTS = 3  # a job whose worker dies before starting it is re-sent this often
JOB_GRACE = 1.0  # seconds on top of timeout x calls before a job is cut off whatever its stamps say
PIPE_BYTES = 1 << 20  # pipe capacity asked for (Linux F_SETPIPE_SZ), fewer wake-ups for big jobs
POLL_FALLBACK = 0.05  # seconds between liveness checks where there is no pidfd
STOP = frame(None)


def describe_exit(exitcode: int | None, sandboxed: bool = False) -> str:
    """``"worker died from signal SIGSEGV"`` and the like."""
    if exitcode is None:
        return "worker died"
    if sandboxed and exitcode > 128:  # bwrap reports a child killed by signal N as exit code 128 + N
        exitcode = 128 - exitcode
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (killed: out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"worker died from {name}{hint}"
    return f"worker exited with code {exitcode}"


def _shared_stamps() -> tuple[int, mmap.mmap]:
    """A 16-byte shared memory file (memfd where available) and the trainer's map of it."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("progrl-reward-stamps", os.MFD_CLOEXEC)
    else:  # pragma: no cover - not Linux
        f = tempfile.TemporaryFile()
        fd = os.dup(f.fileno())
        f.close()
    os.ftruncate(fd, STAMPS.size)
    return fd, mmap.mmap(fd, STAMPS.size)


def _big_pipe() -> tuple[int, int]:
    """A pipe (read end, write end), enlarged to PIPE_BYTES where the platform allows."""
    r, w = os.pipe()
    if fcntl is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
            pass
    return r, w


def _worker_env(scratch: str | None) -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(progrl.__file__)))  # so that `progrl` imports
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONSAFEPATH"] = "1"  # no cwd at the front of the worker's sys.path (Python >= 3.11)
    # workers run side by side: one OpenMP thread each for a reward that uses torch/numpy, unless the
    # user's environment says otherwise (docs/scaling.md, "CPU threads")
    env.setdefault("OMP_NUM_THREADS", "1")
    if scratch is not None:
        env["TMPDIR"] = scratch
    return env


class _Worker:
    """Trainer-side handle of one worker process."""

    def __init__(self, backend: ProcessBackend) -> None:
        self.sandboxed = backend.sandbox
        self.scratch = tempfile.mkdtemp(prefix="progrl-reward-") if self.sandboxed else None
        stamps_fd, self.stamps = _shared_stamps()
        argv = [sys.executable, "-m", "progrl.rewards.worker"]
        if self.sandboxed:
            from progrl.rewards.sandbox import bwrap_command

            assert self.scratch is not None
            argv = bwrap_command(self.scratch, backend.sandbox_network, os.getcwd()) + argv
        jobs_r, self.jobs = _big_pipe()
        self.replies, replies_w = _big_pipe()
        try:
            self.proc = subprocess.Popen(
                argv, stdin=jobs_r, stdout=replies_w, stderr=None if backend.show_output else subprocess.DEVNULL,
                pass_fds=(stamps_fd,), start_new_session=True, close_fds=True, env=_worker_env(self.scratch))
        except OSError as exc:
            for fd in (jobs_r, replies_w, self.jobs, self.replies, stamps_fd):
                os.close(fd)
            self.stamps.close()
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)
            raise RewardBackendError(f"cannot start a reward worker ({argv[0]}): {exc.strerror or exc}") from None
        for fd in (jobs_r, replies_w):
            os.close(fd)
        os.set_blocking(self.jobs, False)
        os.set_blocking(self.replies, False)
        try:
            self.pidfd: int | None = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        self.reader = LineReader(MAX_START_BYTES)
        self.outbox = bytearray(frame({
            "functions": backend.functions_pickle,
            "sys_path": list(sys.path),
            "parent_pid": None if self.sandboxed else os.getpid(),
            "parent_death_signal": threading.current_thread() is threading.main_thread(),
            "memory_mb": backend.memory_mb,
            "show_output": backend.show_output,
            "stamps_fd": stamps_fd,
        }))
        os.close(stamps_fd)  # the worker has its own copy; ours is the map
        self.state = "starting"  # starting | idle | busy | dead
        self.since = time.monotonic()  # start time (starting) or send time (busy)
        self.job: Job | None = None
        self.job_id = 0
        self.cap = math.inf  # the current job's deadline whatever the stamps say
        self.eof = False
        try:
            self.flush()
        except OSError:  # it died at once: the supervisor's liveness check reports how
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ------------------------------------------------------------------ channels
    def flush(self) -> None:
        """Write as much of the outbox as the pipe takes now; OSError (EPIPE) if the worker is gone."""
        while self.outbox:
            try:
                n = os.write(self.jobs, memoryview(self.outbox)[:PIPE_BYTES])
            except BlockingIOError:
                return
            del self.outbox[:n]

    def read_lines(self) -> list[bytes]:
        """Complete lines received so far; ProtocolError for anything that is not a JSON line."""
        lines: list[bytes] = []
        for _ in range(64):  # bounded: a flood is cut by the reader's line limit anyway
            try:
                data = os.read(self.replies, PIPE_BYTES)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.eof = True
                break
            lines += self.reader.feed(data)
            if len(data) < PIPE_BYTES:  # drained for now: poll() says when more comes
                break
        return lines

    def send(self, data: bytes) -> None:
        self.outbox += data
        self.flush()

    # ------------------------------------------------------------------ stamps
    def _stamps(self) -> tuple[float, float]:
        return STAMPS.unpack_from(self.stamps, 0)

    def stamped_since(self) -> float | None:
        """The stamped time if it is from after ``since`` (clamped to now), else None."""
        _, t = self._stamps()
        if not t >= self.since:  # also NaN
            return None
        return min(t, time.monotonic())

    def stamped_index(self, n: int) -> int | None:
        """The stamped index if it is a valid index below ``n`` and was stamped after ``since``."""
        i, t = self._stamps()
        if not t >= self.since or not math.isfinite(i) or i != int(i) or not 0 <= i < n:
            return None
        return int(i)

    # ------------------------------------------------------------------ life
    def alive(self) -> bool:
        """True while the process runs; does not reap it (its pid stays ours until kill())."""
        if self.state == "dead" or self.proc.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def kill(self) -> None:
        """SIGKILL the worker and everything below it, reap it, close the channels."""
        if self.state == "dead":
            return
        self.state = "dead"
        pid = self.proc.pid
        if self.proc.returncode is None:  # not reaped: the pid is still ours
            kill_tree(pid)  # the worker and every descendant, whatever their session
        try:
            os.killpg(pid, signal.SIGKILL)  # the worker leads its own session and group (its members keep it ours)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
            log.warning("reward worker %d did not die within 5s of SIGKILL", pid)
        self.close_channels()

    def close_channels(self) -> None:
        for fd in (self.jobs, self.replies, self.pidfd):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.jobs = self.replies = -1
        self.pidfd = None
        try:
            self.stamps.close()
        except (BufferError, ValueError):
            pass
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def exit_message(self) -> str:
        """How the (killed and reaped) worker ended."""
        return describe_exit(self.proc.returncode, self.sandboxed)


def _shutdown(workers: list[_Worker]) -> None:
    """Stop every worker: ask idle ones to exit (their atexit handlers run), kill the rest and their trees."""
    for w in workers:
        if w.state == "idle":
            try:
                w.send(STOP)
            except OSError:
                w.kill()
        elif w.state != "dead":
            w.kill()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(w.alive() for w in workers):
        for w in workers:
            if w.state != "dead" and w.outbox:
                try:
                    w.flush()
                except OSError:
                    pass
        time.sleep(0.01)
    for w in workers:
        w.kill()
    workers.clear()


class ProcessBackend(SupervisedBackend):
    """A pool of worker processes; see the module docstring."""

    def __init__(self, functions: Sequence[Any], batched: Sequence[bool] | None = None, *,
                 load_timeout: float | None = None, sandbox: bool = False, sandbox_network: bool = False,
                 **options: Any) -> None:
        super().__init__(functions, batched if batched is not None else [False] * len(functions), **options)
        self.load_timeout = load_timeout if load_timeout is not None else self.timeout
        self.sandbox = sandbox
        self.sandbox_network = sandbox_network
        self.functions_pickle = pickle.dumps(list(functions), protocol=pickle.HIGHEST_PROTOCOL)
        self.names = [getattr(f, "name", str(i)) for i, f in enumerate(functions)]
        self.labels = [getattr(f, "source", None) or name for f, name in zip(functions, self.names)]
        self.infos: list[FunctionInfo] | None = None  # from the first worker that loaded the functions
        self._next_id = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # ------------------------------------------------------------------ lifecycle
    def max_chunk(self, func: int) -> int:
        return self.batch_size

    def _spawn(self) -> _Worker:
        return _Worker(self)

    def start(self) -> None:
        """Start the missing workers; returns without waiting for them to boot."""
        if self._closed:
            raise RewardBackendError("the reward engine is closed")
        for i, w in enumerate(self._workers):
            if w.state == "dead":
                self._workers[i] = self._spawn()
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def describe(self) -> list[FunctionInfo]:
        """Wait until a worker has loaded the functions; what it reports about them.

        RewardSpecError (one line) when a function cannot be loaded: its import raised,
        took longer than ``load_timeout``, or killed the worker.
        """
        self.start()
        while self.infos is None:
            self._wait(deque(), {})
        return self.infos

    def _replace(self, w: _Worker) -> None:
        w.kill()
        if not self._closed:
            self._workers[self._workers.index(w)] = self._spawn()

    def _abandon(self, w: _Worker) -> None:
        w.kill()  # start() replaces it on the next run

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for tests and diagnostics; with the sandbox: the outer bwrap)."""
        return [w.pid for w in self._workers if w.state != "dead"]

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    # ------------------------------------------------------------------ running
    def _send(self, w: _Worker, job: Job, queue: deque[Job]) -> None:
        self._next_id += 1
        w.job, w.job_id, w.since, w.state = job, self._next_id, time.monotonic(), "busy"
        calls = 1 if self.batched[job.func] else max(1, len(job.positions))
        w.cap = w.since + self.timeout * calls + JOB_GRACE
        w.reader.max_line = max_reply_bytes(len(job.positions))
        try:
            w.send(frame((w.job_id, job.func, job.prompts, job.completions, job.columns)))
        except OSError:  # died while idle: not this job's fault
            queue.appendleft(job)
            self._replace(w)

    def _deadline(self, w: _Worker) -> float:
        if w.state == "starting":
            t0 = w.stamped_since()  # when the worker began to load the functions
            if t0 is None:
                return w.since + STARTUP_TIMEOUT
            return min(t0, w.since + STARTUP_TIMEOUT) + self.load_timeout
        started = w.stamped_since()
        return min((started if started is not None else w.since) + self.timeout, w.cap)

    def _wait(self, queue: deque[Job], results: Results) -> None:
        active = [w for w in self._workers if w.state in ("starting", "busy")]
        if not active:
            return
        deadlines = [self._deadline(w) for w in active]
        timeout = max(0.0, min(deadlines) - time.monotonic())
        poller = select.poll()
        watched = {}  # fd -> worker
        always = set()  # workers checked on every wake-up
        for w in active:
            poller.register(w.replies, select.POLLIN)
            watched[w.replies] = w
            if w.outbox:
                poller.register(w.jobs, select.POLLOUT)
                watched[w.jobs] = w
            if w.pidfd is not None:
                poller.register(w.pidfd, select.POLLIN)
                watched[w.pidfd] = w
            else:
                timeout = min(timeout, POLL_FALLBACK)
                always.add(id(w))
            if w.state == "starting":
                always.add(id(w))
                if w.stamped_since() is None:  # booting: look for the start of the load
                    timeout = min(timeout, POLL_FALLBACK)
        try:
            events = poller.poll(math.ceil(timeout * 1000))
        except InterruptedError:  # pragma: no cover - retried by the caller's loop
            events = []
        woken = {id(watched[fd]) for fd, _ in events}
        now = time.monotonic()
        for w, deadline in zip(active, deadlines):
            if id(w) not in woken and id(w) not in always and now < deadline:
                continue  # nothing happened to this one
            if w.state == "starting":
                self._check_starting(w)
            elif w.state == "busy":
                self._check_busy(w, queue, results)

    def _io(self, w: _Worker) -> tuple[list[bytes], str | None]:
        """Pending writes and reads of ``w``: (complete lines, why the worker must go or None)."""
        try:
            w.flush()
        except OSError:
            pass  # a dead reader: the liveness check below says how it died
        try:
            return w.read_lines(), None
        except ProtocolError as exc:
            return [], f"malformed message from the reward worker ({exc})"

    def _loading(self, w: _Worker) -> str:
        i = w.stamped_index(len(self.names))
        return f"reward function {self.labels[i]!r}" if i is not None else "the reward functions"

    def _check_starting(self, w: _Worker) -> None:
        lines, bad = self._io(w)
        if bad is None and lines:
            try:
                if len(lines) > 1 or w.reader.pending():
                    raise ProtocolError("more than one message at start")
                tag, payload = parse_start(decode(lines[0]), self.names)
            except ProtocolError as exc:
                bad = f"malformed message from the reward worker ({exc})"
            else:
                self._started(w, tag, payload, w.kill)
                return
        what = self._loading(w)
        if bad is not None:
            bad = f"{what}: {bad}"
        elif not w.alive() or (w.eof and not self._wait_exit(w)):
            w.kill()
            bad = f"{what}: the reward {w.exit_message()} while loading it"
        elif w.eof:
            bad = f"{what}: the reward worker closed its reply channel while loading it"
        elif time.monotonic() >= self._deadline(w):
            if w.stamped_since() is None:
                bad = f"reward worker not started after {STARTUP_TIMEOUT:.0f}s"
            else:
                bad = (f"{what}: loading took longer than {self.load_timeout:g}s (worker killed; "
                       "raise reward.load_timeout for slow imports)")
        if bad is None:
            return
        w.kill()
        if self.infos is None:  # no worker ever loaded the functions: this is about the functions
            raise RewardSpecError(bad)
        self._start_failures += 1
        log.warning("reward worker failed to start: %s", bad)
        if self._start_failures >= MAX_START_FAILURES:
            raise RewardBackendError(f"reward workers failed to start {self._start_failures} times in a row "
                                     f"(last: {bad})")
        self._replace(w)

    @staticmethod
    def _wait_exit(w: _Worker) -> bool:
        """After EOF on the replies: True while the worker is still alive half a second later."""
        for _ in range(50):
            if not w.alive():
                return False
            time.sleep(0.01)
        return True

    def _check_busy(self, w: _Worker, queue: deque[Job], results: Results) -> None:
        job = w.job
        assert job is not None
        lines, bad = self._io(w)
        if bad is None and lines:
            try:
                outcomes, recycle = parse_reply(decode(lines[0]), w.job_id, len(job.positions))
            except ProtocolError as exc:
                bad = f"malformed reply from the reward worker ({exc})"
            else:
                for pos, outcome in zip(job.positions, outcomes):
                    results[(job.func, pos)] = outcome
                w.job, w.state = None, "idle"
                if recycle or len(lines) > 1 or w.reader.pending():  # more than the reply: not to be trusted
                    self._replace(w)
                return
        retry = True
        if bad is None and w.eof and self._wait_exit(w):  # an exiting worker closes its pipes just before it dies
            bad = "the reward worker closed its reply channel"
        if bad is not None:
            culprit = w.stamped_index(len(job.positions))
            w.kill()
            outcome = failure("crash", f"{bad}; worker replaced")
        elif w.alive():
            now = time.monotonic()
            if now < self._deadline(w):
                return
            started, culprit = w.stamped_since(), w.stamped_index(len(job.positions))
            w.kill()  # first, so that the stamps stop moving
            if now >= w.cap:  # the stamps kept moving for longer than the whole job may take
                culprit, retry = None, False
            elif started is not None and now - started < self.timeout:
                culprit = None  # the late call ended just before the kill; the one killed was not late
            outcome = failure("timeout", f"no result within {self.timeout:g}s (worker killed)")
        else:
            culprit = w.stamped_index(len(job.positions))
            w.kill()
            outcome = failure("crash", w.exit_message())
        self._replace(w)
        if retry and culprit is None and job.attempt + 1 < MAX_JOB_ATTEMPTS:  # nobody to blame: run it again
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

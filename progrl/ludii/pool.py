"""A supervised pool of long-lived worker processes speaking JSON lines over stdin/stdout.

The Ludii engine runs in such workers (JVMs, :mod:`progrl.ludii.engine`); tests drive the same pool
with a fake worker program (:mod:`progrl.ludii.fake_worker`). The design follows the reward
engine's process backend (:mod:`progrl.rewards.process_pool`): workers are reused, a worker that
hangs is killed with its whole process group and replaced at once, and failures come back as
values, never as exceptions.

Protocol (data only: nothing that crosses the channel is ever executed or unpickled):

- the worker starts, warms up, and writes one line ``{"ready": true, ...}``;
- the pool writes one request object per line, with a fresh integer ``"id"``;
- the worker answers each request with one object per line carrying the same ``"id"``.

Failure handling, per request:

- no answer within its timeout -> ``timeout``; the worker's process group gets SIGKILL (a JVM does
  not check interrupts, so killing is the only way) and a new worker starts;
- the worker exits or closes its stdout -> ``crash`` (exit code and the last line of its stderr);
- anything on the channel that is not one JSON object with the expected id (garbage, a second
  line, a line longer than ``max_line`` bytes, invalid UTF-8), or output while idle -> ``error``
  for the request concerned, and the worker is replaced.

Workers that die before they are ready ``max_start_failures`` times in a row raise
:class:`PoolError` (a setup problem: wrong command, broken jar), with the reason.

Each worker is started in its own session (``start_new_session``) so that its process group can be
killed as a whole; its stderr goes to a log file (truncated at each start) whose last line is
quoted in crash messages. Workers also exit when their stdin closes, which happens when this
process dies; :meth:`JsonLinesPool.close` (also run at interpreter exit) stops them all.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_LINE = 8 << 20  # bytes in one reply line
MAX_MESSAGE = 300


class PoolError(RuntimeError):
    """The workers cannot run at all (they keep dying before they are ready)."""


@dataclass
class Reply:
    """What came back for one request: the worker's object, or a failure kind and message."""

    data: dict[str, Any] | None
    kind: str | None = None  # None | "timeout" | "crash" | "error"
    message: str | None = None
    seconds: float = 0.0  # wall time from sending the request to its outcome

    @property
    def ok(self) -> bool:
        return self.kind is None


def _clip(text: str, n: int = MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker closed its output"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker died from {name}"
    return f"worker exited with code {code}"


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None, log_path: Path | None) -> None:
        self.log_path = log_path
        log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         start_new_session=True, env=env, bufsize=0, close_fds=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = bytearray()
        self.eof = False
        self.state = "starting"  # starting | idle | busy | dead
        self.since = time.monotonic()
        self.request_id: int | None = None
        self.index: int | None = None  # which request of the current batch
        self.deadline = 0.0
        self.ready_info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_lines(self, max_line: int) -> tuple[list[bytes], bool]:
        """Complete lines now available, and whether the buffer overflowed ``max_line``."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buffer += chunk
            if len(self.buffer) > max_line and b"\n" not in self.buffer:
                return [], True
        lines = []
        while True:
            i = self.buffer.find(b"\n")
            if i < 0:
                break
            lines.append(bytes(self.buffer[:i]))
            del self.buffer[: i + 1]
        overflow = any(len(ln) > max_line for ln in lines) or len(self.buffer) > max_line
        return [ln for ln in lines if ln.strip()], overflow

    def send(self, obj: dict[str, Any]) -> bool:
        data = (json.dumps(obj, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def stderr_tail(self) -> str:
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 4096))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def kill(self) -> None:
        """SIGKILL the worker's process group (the worker and anything it started), then reap it."""
        if self.state == "dead":
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self.state = "dead"

    def exit_description(self) -> str:
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            code = None
        text = describe_exit(code)
        tail = self.stderr_tail()
        return f"{text} ({_clip(tail, 200)})" if tail else text


def _shutdown(workers: list[_Worker], grace: float = 1.0) -> None:
    """Close every worker's stdin (they exit on end of input), wait up to ``grace`` seconds for their
    output to end, then SIGKILL every process group (stragglers and anything they started)."""
    live = [w for w in workers if w.state != "dead"]
    for w in live:
        try:
            if w.proc.stdin is not None:
                w.proc.stdin.close()
        except OSError:
            pass
    deadline = time.monotonic() + grace
    waiting = [w for w in live if not w.eof]
    while waiting and time.monotonic() < deadline:
        readable, _, _ = select.select([w.fd for w in waiting], [], [], max(0.0, deadline - time.monotonic()))
        for w in waiting:
            if w.fd in readable:
                w.read_lines(MAX_LINE)
        waiting = [w for w in waiting if not w.eof]
    for w in live:
        w.kill()
    workers.clear()


class JsonLinesPool:
    """``workers`` long-lived processes running ``command``; see the module docstring.

    ``request_many`` sends each payload to an idle worker (one request per worker at a time) and
    returns one :class:`Reply` per payload, in order. Not thread-safe: one caller at a time.
    """

    def __init__(self, command: Sequence[str], *, workers: int = 2, timeout: float = 10.0,
                 startup_timeout: float = 120.0, max_start_failures: int = 3, log_dir: str | Path | None = None,
                 env: dict[str, str] | None = None, max_line: int = MAX_LINE, name: str = "worker",
                 check_ready: Callable[[dict[str, Any]], str | None] | None = None, keep_logs: bool = False) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.command = list(command)
        self.n_workers = workers
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self.max_start_failures = max_start_failures
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="progrl-pool-"))
        self.keep_logs = keep_logs
        self.env = env
        self.max_line = max_line
        self.name = name
        self.check_ready = check_ready
        self.stats = {"started": 0, "restarts": 0, "timeout": 0, "crash": 0, "error": 0, "requests": 0}
        self._workers: list[_Worker] = []
        self._slots: list[int] = []  # log slot of each worker (so logs are reused, not piled up)
        self._start_failures = 0
        self._last_start_failure = ""
        self._next_id = 0
        self._validate: Callable[[dict[str, Any]], str | None] | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        atexit.register(self._finalizer)

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, slot: int) -> _Worker:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        w = _Worker(self.command, self.env, self._log_path(slot))
        self.stats["started"] += 1
        return w

    def _log_path(self, slot: int) -> Path:
        return self.log_dir / f"{self.name.replace(' ', '-')}-{slot}.log"

    def start(self) -> None:
        """Start the missing workers; returns at once (they warm up in the background)."""
        if self._closed:
            raise PoolError(f"the {self.name} pool is closed")
        while len(self._workers) < self.n_workers:
            slot = len(self._workers)
            self._workers.append(self._spawn(slot))
            self._slots.append(slot)

    def wait_ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until every worker is ready; returns their ready objects. Raises :class:`PoolError`."""
        with self._lock:
            self.start()
            end = time.monotonic() + (timeout if timeout is not None else self.startup_timeout)
            while any(w.state == "starting" for w in self._workers):
                if time.monotonic() > end:
                    raise PoolError(f"{self.name}s not ready after {timeout}s")
                self._wait_events({}, [], None)
            return [w.ready_info for w in self._workers]

    def _replace(self, w: _Worker) -> None:
        w.kill()
        i = self._workers.index(w)
        self._workers[i] = self._spawn(self._slots[i])
        self.stats["restarts"] += 1

    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.pid for w in self._workers if w.state != "dead"]

    def close(self) -> None:
        """Stop every worker (idempotent); their log files go too unless ``keep_logs``."""
        self._closed = True
        self._finalizer()
        if not self.keep_logs:
            for slot in set(self._slots):
                try:
                    self._log_path(slot).unlink()
                except OSError:
                    pass
            try:
                self.log_dir.rmdir()  # only when nothing else is in it
            except OSError:
                pass

    def __enter__(self) -> "JsonLinesPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def request(self, payload: dict[str, Any], timeout: float | None = None,
                validate: Callable[[dict[str, Any]], str | None] | None = None) -> Reply:
        return self.request_many([payload], timeout, validate)[0]

    def request_many(self, payloads: Sequence[dict[str, Any]], timeouts: float | Sequence[float] | None = None,
                     validate: Callable[[dict[str, Any]], str | None] | None = None) -> list[Reply]:
        """One reply per payload (in order); failures are replies, never exceptions (except
        :class:`PoolError` when workers cannot start at all).

        ``validate(obj)`` checks each answer's content (the pool checks only that it is one JSON
        object with the right id): a returned problem makes that reply an ``error`` and the worker
        is replaced, like garbage on the channel."""
        n = len(payloads)
        if isinstance(timeouts, (int, float)) or timeouts is None:
            limits = [float(timeouts if timeouts is not None else self.timeout)] * n
        else:
            limits = [float(t) for t in timeouts]
        replies: list[Reply | None] = [None] * n
        queue: deque[int] = deque(range(n))
        sent_at: dict[int, float] = {}
        self._validate = validate
        with self._lock:
            self.start()
            try:
                while queue or any(w.state == "busy" for w in self._workers):
                    for w in list(self._workers):
                        if not queue:
                            break
                        if w.state == "idle":
                            if self._replace_if_out_of_step(w, *w.read_lines(self.max_line)):
                                continue
                            i = queue.popleft()
                            self._next_id += 1
                            w.request_id, w.index, w.state = self._next_id, i, "busy"
                            sent_at[i] = w.since = time.monotonic()
                            w.deadline = w.since + limits[i]
                            if not w.send({**payloads[i], "id": w.request_id}):  # died while idle
                                queue.appendleft(i)
                                self._replace(w)
                    self._wait_events(sent_at, replies, queue)
            except BaseException:
                for w in list(self._workers):  # abandoned requests: those workers are out of step
                    if w.state == "busy":
                        self._replace(w)
                raise
        self.stats["requests"] += n
        return [r if r is not None else Reply(None, "error", "no reply (internal error)") for r in replies]

    def _replace_if_out_of_step(self, w: _Worker, lines: list[bytes], overflow: bool) -> bool:
        """An idle worker that wrote anything (or died) is out of step: replace it; True if it was."""
        if lines or overflow or w.eof:
            self._replace(w)
            return True
        return False

    def _deadline(self, w: _Worker) -> float:
        return w.since + self.startup_timeout if w.state == "starting" else w.deadline

    def _wait_events(self, sent_at: dict[int, float], replies: list, queue: deque[int] | None) -> None:
        active = [w for w in self._workers if w.state in ("starting", "busy")]
        if not active:
            return
        deadline = min(self._deadline(w) for w in active)
        fds = [w.fd for w in self._workers if w.state != "dead" and not w.eof]
        if fds:
            select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
        for w in list(self._workers):
            if w.state == "dead":
                continue
            lines, overflow = w.read_lines(self.max_line)
            if w.state == "starting":
                self._check_starting(w, lines, overflow)
            elif w.state == "busy":
                self._check_busy(w, lines, overflow, sent_at, replies)
            else:
                self._replace_if_out_of_step(w, lines, overflow)

    def _start_failed(self, w: _Worker, reason: str) -> None:
        self._start_failures += 1
        self._last_start_failure = reason
        if self._start_failures >= self.max_start_failures:
            w.kill()
            raise PoolError(f"{self.name} failed to start {self._start_failures} times in a row: {reason}")
        self._replace(w)

    def _check_starting(self, w: _Worker, lines: list[bytes], overflow: bool) -> None:
        if lines:
            info = _parse_object(lines[0])
            problem = None
            if not isinstance(info, dict) or info.get("ready") is not True:
                problem = f"expected a ready line, got {_clip(lines[0].decode('utf-8', 'replace'), 120)!r}"
            elif self.check_ready is not None:
                problem = self.check_ready(info)
            if problem is None and len(lines) > 1:
                problem = "unexpected output after the ready line"
            if problem is not None:
                w.kill()
                self._start_failed(w, problem)
                return
            w.ready_info, w.state = info, "idle"
            self._start_failures = 0
            return
        if overflow:
            w.kill()
            self._start_failed(w, "output line too long before ready")
        elif w.eof or w.proc.poll() is not None:
            self._start_failed(w, w.exit_description())
        elif time.monotonic() > w.since + self.startup_timeout:
            w.kill()
            self._start_failed(w, f"not ready after {self.startup_timeout:g}s")

    def _finish(self, w: _Worker, reply: Reply, sent_at: dict[int, float], replies: list) -> None:
        assert w.index is not None
        reply.seconds = time.monotonic() - sent_at.get(w.index, w.since)
        replies[w.index] = reply
        if reply.kind is not None:
            self.stats[reply.kind] += 1
        w.request_id, w.index = None, None

    def _check_busy(self, w: _Worker, lines: list[bytes], overflow: bool, sent_at: dict[int, float],
                    replies: list) -> None:
        if lines:
            obj = _parse_object(lines[0])
            if isinstance(obj, dict) and obj.get("id") == w.request_id and type(obj.get("id")) is int:
                try:
                    problem = self._validate(obj) if self._validate is not None else None
                except Exception as exc:  # a validator bug must not take the pool down
                    problem = f"validation failed ({type(exc).__name__}: {exc})"
                if problem is not None:
                    self._finish(w, Reply(None, "error", f"malformed reply from the {self.name}: {problem} "
                                                         f"(worker replaced)"), sent_at, replies)
                    self._replace(w)
                    return
                self._finish(w, Reply(obj), sent_at, replies)
                w.state = "idle"
                if len(lines) > 1 or overflow:  # the answer came, followed by garbage: a broken worker
                    self._replace(w)
                return
            text = _clip(lines[0].decode("utf-8", "replace"), 120)
            self._finish(w, Reply(None, "error", f"garbage on the {self.name} channel: {text!r} (worker replaced)"),
                         sent_at, replies)
            self._replace(w)
            return
        if overflow:
            self._finish(w, Reply(None, "error", f"a reply line longer than {self.max_line} bytes (worker replaced)"),
                         sent_at, replies)
            self._replace(w)
        elif w.eof or w.proc.poll() is not None:
            self._finish(w, Reply(None, "crash", w.exit_description()), sent_at, replies)
            self._replace(w)
        elif time.monotonic() > w.deadline:
            limit = w.deadline - w.since
            self._finish(w, Reply(None, "timeout", f"no reply within {limit:g}s (worker killed)"), sent_at, replies)
            self._replace(w)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_object(line: bytes) -> Any:
    """The JSON value of one line (strict: NaN and Infinity are rejected), or None."""
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None

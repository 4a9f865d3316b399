"""Process-level safety measures for code that runs reward functions in a worker.

Used by the process backend's workers and the Ray actors: a memory cap (RLIMIT_AS),
discarding stdout/stderr floods, a process group so that the reward's own subprocesses die
with the worker, and dying with the parent. POSIX only; each helper is a no-op where the
platform lacks the facility.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

MB = 1024 * 1024


def mapped_bytes() -> int | None:
    """This process's current virtual address-space size (Linux ``VmSize``), or None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def limit_address_space(extra_mb: int) -> int | None:
    """Cap the address space at (what is mapped now + ``extra_mb``) MiB; returns the old soft limit.

    A reward that allocates beyond the cap gets ``MemoryError`` (or its C equivalent)
    instead of pushing the machine into the OOM killer. Relative to the current size, so
    that heavy imports done before (numpy, a game engine binding) do not eat the budget.
    Returns None when the limit could not be set.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    base = mapped_bytes()
    if base is None:
        base = 0
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = base + extra_mb * MB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        return None
    return soft


def restore_address_space(soft: int | None) -> None:
    """Undo :func:`limit_address_space` (raising the soft limit back is always allowed)."""
    if soft is None:
        return
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ValueError, OSError):
        pass


def discard_output() -> None:
    """Point file descriptors 1 and 2 at /dev/null (C-level writes and subprocesses included)."""
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def _set_parent_death_signal() -> None:
    """Linux: SIGKILL this process when the thread that started it dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _watch_parent(parent_pid: int, period: float) -> None:
    while True:
        time.sleep(period)
        if os.getppid() != parent_pid:
            kill_own_group()


def kill_own_group() -> None:
    """SIGKILL this process's group (this process and the subprocesses it started)."""
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(1)


def isolate_worker(parent_pid: int, parent_death_signal: bool) -> None:
    """Make this (freshly started) worker its own process group and tie its life to the parent.

    - a new process group: the supervisor kills the whole group on timeout, so that a
      compiler or game engine the reward started does not outlive it; it also keeps the
      terminal's Ctrl-C away from workers (the trainer handles it and closes the pool);
    - SIGINT ignored, for the same reason when the group is shared;
    - parent death: ``PR_SET_PDEATHSIG`` (when the parent asked for it, i.e. the pool was
      created by the parent's main thread) plus a watchdog thread polling ``getppid``.
    """
    try:
        os.setpgrp()
    except (AttributeError, OSError):
        pass
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    if parent_death_signal:
        _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before we got here
        kill_own_group()
    threading.Thread(target=_watch_parent, args=(parent_pid, 0.5), daemon=True,
                     name="progrl-parent-watch").start()


@contextlib.contextmanager
def output_discarded(enabled: bool = True) -> Iterator[None]:
    """Temporarily point fds 1 and 2 (and ``sys.stdout``/``sys.stderr``) at /dev/null.

    For long-lived processes that must keep their own output afterwards (Ray actors):
    everything written during the block, by Python, C code or subprocesses, is discarded.
    """
    if not enabled:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _flush(stream: object) -> None:
    try:
        stream.flush()  # type: ignore[attr-defined]
    except Exception:
        pass

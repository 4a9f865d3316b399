"""Process-level safety measures for code that runs reward functions in a worker.

Used by the process backend's workers and the Ray actors: a memory cap (RLIMIT_AS),
discarding stdout/stderr floods, a session of its own so that the reward's own
subprocesses die with the worker, dying with the parent, and (best effort, without the
sandbox) finding and killing every descendant, also those that left the worker's session:
the worker is their *child subreaper*, so orphans stay below it. POSIX only; each helper is
a no-op where the platform lacks the facility.
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


def _prctl(option: int, arg: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except Exception:
        return False


def _set_parent_death_signal() -> None:
    """Linux: SIGKILL this process when the thread that started it dies."""
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to this process instead of init (PR_SET_CHILD_SUBREAPER)."""
    return _prctl(36, 1)


def _watch_parent(parent_pid: int, period: float) -> None:
    while True:
        time.sleep(period)
        if os.getppid() != parent_pid:
            kill_own_group()


def kill_own_group() -> None:
    """SIGKILL this process's descendants and group (the subprocesses it started), then exit."""
    try:
        kill_tree(os.getpid(), include_root=False)
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(1)


def isolate_worker(parent_pid: int | None, parent_death_signal: bool) -> None:
    """Tie this (freshly started) worker's life to the parent, and keep its descendants below it.

    The worker was started in a session of its own (``start_new_session``): the supervisor
    kills the whole process group on timeout, so that a compiler or game engine the reward
    started does not outlive it, and the terminal's Ctrl-C does not reach it (the trainer
    handles Ctrl-C and closes the pool). Here:

    - SIGINT ignored, for the same reason when the group is shared;
    - child subreaper: a descendant that leaves the session (``setsid``) and loses its
      parent stays below this worker, where :func:`kill_tree` finds it;
    - parent death: ``PR_SET_PDEATHSIG`` (when the parent asked for it, i.e. the pool was
      created by the parent's main thread) plus a watchdog thread polling ``getppid``
      (``parent_pid`` None: inside the sandbox, whose own init is the parent).
    """
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    become_subreaper()
    if parent_death_signal:
        _set_parent_death_signal()
    expected = os.getppid() if parent_pid is None else parent_pid
    if os.getppid() != expected:  # the parent died before we got here
        kill_own_group()
    threading.Thread(target=_watch_parent, args=(expected, 0.5), daemon=True,
                     name="progrl-parent-watch").start()


# ----------------------------------------------------------------------------- descendants (Linux /proc)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc (empty where there is no /proc)."""
    out: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            out[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (children first), found through /proc."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out, frontier = [], [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in out and child != root:
                out.append(child)
                frontier.append(child)
    return out


def kill_tree(root: int, include_root: bool = True) -> None:
    """SIGKILL ``root`` and all its descendants, whatever their session or process group.

    Stops them first (SIGSTOP, repeated until no new process appears) so that none can fork
    away while the tree is being killed. ``root`` must not have been reaped yet (a zombie
    is fine), or its pid might belong to someone else by now.
    """
    seen: list[int] = [root] if include_root else []
    for pid in seen:
        _signal(pid, signal.SIGSTOP)
    for _ in range(10):
        new = [p for p in descendants(root) if p not in seen]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        seen += new
    for pid in seen:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


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

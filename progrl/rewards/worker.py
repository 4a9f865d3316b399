"""The child side of the process backend: ``python -m progrl.rewards.worker``.

Started by :mod:`progrl.rewards.process_pool` (directly, or inside a bubblewrap sandbox)
with three channels:

- fd 0: messages from the trainer (:func:`progrl.rewards.wire.frame`: length-prefixed
  pickles, which only this side unpickles): first the set-up (the functions to load, the
  trainer's ``sys.path``, the memory cap, ...), then ``(job_id, func_index, prompts,
  completions, columns)`` per job, or ``None`` to stop;
- fd 1: replies to the trainer, JSON lines only (:mod:`progrl.rewards.wire`);
- the *stamps*: 16 bytes of shared memory (a memfd) holding ``[index, time.monotonic()]``,
  written before each reward call (and while the functions load), read by the trainer to
  enforce the timeout and, after a kill or a crash, to know which sample was running.

Both channels are moved away from fds 0 and 1 before any reward code runs: fds 0, 1 and 2
then point to /dev/null (or 1 and 2 to the trainer's stderr with ``show_output``), so a
reward that prints cannot corrupt the protocol by accident. (It can on purpose, by
finding the fds; the trainer validates every message and replaces a worker that sends
anything malformed.)
"""

from __future__ import annotations

import atexit
import mmap
import os
import signal
import struct
import sys
import time
import traceback

STAMPS = struct.Struct("dd")


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        data = os.read(fd, min(left, 1 << 20))
        if not data:  # the trainer went away
            raise EOFError
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill_descendants() -> None:
    from progrl.rewards.isolation import kill_tree

    kill_tree(os.getpid(), include_root=False)


def main() -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    from progrl.rewards.wire import read_frame

    try:
        setup = read_frame(lambda n: _read_exact(0, n))
    except EOFError:
        return
    jobs, replies = os.dup(0), os.dup(1)  # non-inheritable copies: the reward's subprocesses do not get them
    null = os.open(os.devnull, os.O_RDWR)
    show = bool(setup.get("show_output"))
    os.dup2(null, 0)
    os.dup2(2 if show else null, 1)
    if not show:
        os.dup2(null, 2)
    os.close(null)
    serve(setup, jobs, replies)


def serve(setup: dict, jobs: int, replies: int) -> None:
    """Load the functions, say ready (or fatal), then answer jobs until told to stop."""
    import pickle

    from progrl.rewards.failures import failure, safe_str, type_name
    from progrl.rewards.isolation import isolate_worker, limit_address_space
    from progrl.rewards.spec import call_chunk, info, load
    from progrl.rewards.wire import encode_fatal, encode_ready, encode_reply, read_frame

    isolate_worker(setup.get("parent_pid"), bool(setup.get("parent_death_signal")))
    atexit.register(_kill_descendants)  # first registered, so it runs last: after the rewards' own handlers
    stamps = mmap.mmap(setup["stamps_fd"], STAMPS.size)
    os.close(setup["stamps_fd"])
    pack, monotonic = STAMPS.pack_into, time.monotonic
    for path in setup.get("sys_path", []):
        if path not in sys.path:
            sys.path.append(path)

    def stamp(i: int) -> None:
        pack(stamps, 0, float(i), monotonic())

    loaded = []
    try:
        specs = pickle.loads(setup["functions"])
        t0 = monotonic()
        for i, spec in enumerate(specs):
            pack(stamps, 0, float(i), t0)  # the trainer times the whole load from t0
            loaded.append(load(spec))
    except BaseException as exc:  # noqa: BLE001 - report, then exit: the trainer raises RewardSpecError
        msg = safe_str(exc) if exc.args else "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if not msg.startswith("reward function"):
            msg = f"reward worker could not load its functions: {type_name(exc)}: {msg}"
        _write_all(replies, encode_fatal(msg))
        return
    if setup.get("memory_mb"):
        limit_address_space(int(setup["memory_mb"]))
    _write_all(replies, encode_ready(os.getpid(), [info(lf) for lf in loaded]))

    while True:
        try:
            msg = read_frame(lambda n: _read_exact(jobs, n))
        except (EOFError, OSError):  # the trainer went away
            return
        if msg is None:
            return
        job_id, func, prompts, completions, columns = msg
        try:
            outcomes = call_chunk(loaded[func], prompts, completions, columns, stamp, interruptible=False)
        except BaseException as exc:  # noqa: BLE001 - e.g. KeyboardInterrupt from a result's __float__
            outcomes = [failure("error", f"reading the reward's result raised {type_name(exc)}: "
                                         f"{safe_str(exc)}")] * len(prompts)
        recycle = any(o.kind == "crash" for o in outcomes)
        _write_all(replies, encode_reply(job_id, outcomes, recycle))


if __name__ == "__main__":
    main()

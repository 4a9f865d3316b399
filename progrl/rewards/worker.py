"""The child side of the process backend: one worker's main loop.

Protocol over one duplex pipe (pickled tuples):

- worker -> parent, once: ``("ready", pid)`` after loading every function and setting
  the memory cap, or ``("fatal", message)`` if a function cannot be loaded;
- parent -> worker: ``(job_id, func_index, prompts, completions, columns)``, or ``None``
  to stop;
- worker -> parent: ``(job_id, outcomes, recycle)``; ``recycle`` asks the parent to
  replace this worker (it ran out of memory).

Before each reward call the worker writes ``[sample index, time.monotonic()]`` into a
small shared array (``stamps``); the parent reads it to enforce the per-call timeout and,
after a kill or a crash, to know which sample was running.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from typing import Any

from progrl.rewards.isolation import discard_output, isolate_worker, limit_address_space
from progrl.rewards.spec import FunctionSpec, call_chunk, load


def worker_main(conn: Any, functions: Sequence[FunctionSpec], stamps: Any, options: dict[str, Any]) -> None:
    """Entry point of a worker process (the ``target`` of a spawn-context Process)."""
    isolate_worker(options["parent_pid"], options.get("parent_death_signal", False))
    if not options.get("show_output", False):
        discard_output()
    try:
        loaded = [load(f) for f in functions]
    except BaseException as exc:  # report, then exit: the parent raises RewardBackendError
        msg = str(exc) if exc.args else "".join(traceback.format_exception_only(type(exc), exc)).strip()
        conn.send(("fatal", f"reward worker could not load its functions: {msg}"))
        return
    if options.get("memory_mb"):
        limit_address_space(int(options["memory_mb"]))
    conn.send(("ready", os.getpid()))

    monotonic = time.monotonic

    def stamp(i: int) -> None:
        stamps[0] = i
        stamps[1] = monotonic()

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if msg is None:
            return
        job_id, func, prompts, completions, columns = msg
        outcomes = call_chunk(loaded[func], prompts, completions, columns, stamp)
        recycle = any(o.kind == "crash" for o in outcomes)
        conn.send((job_id, outcomes, recycle))

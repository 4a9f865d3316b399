"""The ``inline`` backend: reward functions run in the calling process - for trusted code only.

For trusted, cheap rewards (the built-in tasks). The functions are imported here, in the
trainer. Exceptions, NaN, None, wrong types and wrong lengths are classified exactly as in
the other backends, and ``MemoryError`` is a ``crash``. What it cannot do: stop a call
that hangs (there is no safe way to interrupt arbitrary code in-process; a call that
takes longer than ``timeout`` is only reported in the log), cap memory, survive a
segfault, or keep the reward away from the trainer's memory, files and signals. The
functions' stdout/stderr (Python level) is discarded during calls unless ``show_output``.

One guard: while a reward function is imported or called, ``os._exit`` raises
:class:`RewardExit` instead of ending the process (``sys.exit`` raises ``SystemExit``
anyway), so that a reward calling it becomes an ``error`` failure instead of ending the
trainer (or ``progrl score``) with exit code 0 and no output. Only ``os._exit`` in *this*
process is caught (a child forked by the reward exits normally); ``posix._exit``, a
signal or C code can still end the process: use the process backend for such code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence

from progrl.rewards.jobs import Job, Results
from progrl.rewards.spec import FunctionSpec, LoadedFunction, call_chunk, info, load
from progrl.rewards.wire import FunctionInfo

log = logging.getLogger("progrl.rewards")


class RewardExit(Exception):
    """Raised in place of ``os._exit(code)`` called by a reward function on the inline backend."""


@contextlib.contextmanager
def silenced(enabled: bool) -> Iterator[None]:
    """Send Python-level ``sys.stdout``/``sys.stderr`` to /dev/null while active."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
            contextlib.redirect_stderr(devnull):
        yield


@contextlib.contextmanager
def exit_guard() -> Iterator[None]:
    """While active, ``os._exit`` in this process raises :class:`RewardExit` (in a forked child it exits)."""
    real_exit, pid = os._exit, os.getpid()

    def guarded_exit(code: int = 0) -> None:
        if os.getpid() != pid:  # a child the reward forked: exit as asked
            real_exit(code)
        raise RewardExit(f"the reward called os._exit({code!r}), which would end the trainer (inline backend: "
                         "rewards run in the trainer process; use backend = \"process\")")

    os._exit = guarded_exit  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = real_exit


class InlineBackend:
    """Loads the functions in this process and runs jobs one after another."""

    def __init__(self, specs: Sequence[FunctionSpec], timeout: float, batch_size: int,
                 show_output: bool = False) -> None:
        with exit_guard():
            self.loaded: list[LoadedFunction] = [load(s) for s in specs]
        self.timeout = timeout
        self.batch_size = batch_size
        self.show_output = show_output

    def max_chunk(self, func: int) -> int:
        return self.batch_size

    def start(self) -> None:
        pass

    def describe(self) -> list[FunctionInfo]:
        return [info(lf) for lf in self.loaded]

    def run(self, jobs: list[Job]) -> Results:
        results: Results = {}
        for job in jobs:
            loaded = self.loaded[job.func]
            t0 = time.monotonic()
            with silenced(not self.show_output), exit_guard():
                outcomes = call_chunk(loaded, job.prompts, job.completions, job.columns)
            elapsed = time.monotonic() - t0
            calls = 1 if loaded.batched else max(len(job.prompts), 1)
            if elapsed / calls > self.timeout:
                log.warning("reward %r took %.1fs per call, over the %.1fs timeout; the inline backend "
                            "cannot stop slow calls (use backend = \"process\")",
                            loaded.spec.name, elapsed / calls, self.timeout)
            for pos, outcome in zip(job.positions, outcomes):
                results[(job.func, pos)] = outcome
        return results

    def close(self) -> None:
        pass

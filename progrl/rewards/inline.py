"""The ``inline`` backend: reward functions run in the calling process.

For trusted, cheap rewards (the built-in tasks). Exceptions, NaN, None, wrong types and
wrong lengths are classified exactly as in the other backends, and ``MemoryError`` is a
``crash``. What it cannot do: stop a call that hangs (there is no safe way to interrupt
arbitrary code in-process; a call that takes longer than ``timeout`` is only reported in
the log), cap memory, or survive a segfault. The functions' stdout/stderr (Python level)
is discarded during calls unless ``show_output`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence

from progrl.rewards.jobs import Job, Results
from progrl.rewards.spec import LoadedFunction, call_chunk

log = logging.getLogger("progrl.rewards")


@contextlib.contextmanager
def silenced(enabled: bool) -> Iterator[None]:
    """Send Python-level ``sys.stdout``/``sys.stderr`` to /dev/null while active."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
            contextlib.redirect_stderr(devnull):
        yield


class InlineBackend:
    """Runs jobs one after another in this process."""

    def __init__(self, loaded: Sequence[LoadedFunction], timeout: float, batch_size: int,
                 show_output: bool = False) -> None:
        self.loaded = list(loaded)
        self.timeout = timeout
        self.batch_size = batch_size
        self.show_output = show_output

    def max_chunk(self, func: int) -> int:
        return self.batch_size

    def start(self) -> None:
        pass

    def run(self, jobs: list[Job]) -> Results:
        results: Results = {}
        for job in jobs:
            loaded = self.loaded[job.func]
            t0 = time.monotonic()
            with silenced(not self.show_output):
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

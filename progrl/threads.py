"""How many CPU threads torch uses in each process.

``threads`` in the config sets torch's intra-op thread count; unset, progrl chooses
:func:`default_threads`: the cores this process may run on, divided between the training
processes of its machine (``LOCAL_WORLD_SIZE`` under ``torchrun`` / ``accelerate launch``).
A process never asks for more threads than it has cores: on a machine shared with other
jobs, threads that outnumber the free cores wait for each other at every parallel region
(docs/scaling.md, "CPU threads", has the measurements behind this choice).
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process is allowed to run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(local_processes: int = 1) -> int:
    """Torch threads per training process when the config leaves ``threads`` unset."""
    return max(1, usable_cores() // max(1, local_processes))


def apply_threads(threads: int | None, local_processes: int = 1) -> int:
    """Set torch's thread count (``threads``, else :func:`default_threads`); returns it."""
    import torch

    n = threads if threads else default_threads(local_processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n

"""How many CPU threads torch uses in each process, and how they wait.

``threads`` in the config sets torch's intra-op thread count; unset, progrl keeps an
``OMP_NUM_THREADS`` the user set, and otherwise chooses :func:`default_threads`: the cores
this process may run on, divided between the training processes of its machine
(``LOCAL_WORLD_SIZE`` under ``torchrun`` / ``accelerate launch``, which set
``OMP_NUM_THREADS=1`` themselves), so N processes on a machine never ask for more threads
than it has cores.

How idle threads wait matters more than how many there are when the machine is shared:
OpenMP's threads spin while they wait for the next parallel region, taking the cores that
other jobs, and the job's own other threads, need. ``import progrl`` therefore sets
``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch is imported: on a shared 2-core
machine that took 2 threads from 27 to 113 samples/s alone and from 6 to 77 with a second
job, above 1 thread (105 and 54). docs/scaling.md, "CPU threads", has the measurements; a
dedicated machine may prefer ``OMP_WAIT_POLICY=ACTIVE`` (spinning wakes up sooner).
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
    """Set torch's thread count; returns it. ``threads`` when given; else ``OMP_NUM_THREADS`` when
    the user set it (no launcher: ``WORLD_SIZE`` unset), else :func:`default_threads` (launchers
    set ``OMP_NUM_THREADS=1`` for every process whatever the machine; progrl divides the cores)."""
    import torch

    if threads:
        n = threads
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and "WORLD_SIZE" not in os.environ:
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        n = default_threads(local_processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n

"""Helpers shared by the benchmark's sides. Standard library only (plus torch where noted).

The TRL sides run in their own virtual environments where progrl is not installed, so
they load the arithmetic task's pure module (tokenizer-free reward code) straight from
its file instead of importing the ``progrl`` package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE_PATH = ROOT / "progrl" / "tasks" / "arithmetic_core.py"


def load_arithmetic_core():
    """``progrl.tasks.arithmetic_core`` loaded from its file (no progrl import needed)."""
    name = "arithmetic_core_bench"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CORE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_task_reward():
    """The arithmetic task's training reward, ``progrl.tasks.arithmetic:task_reward``.

    Same code path: ``arithmetic_core.arithmetic_reward`` per sample with the record's
    ``reward_scale`` and ``exact_bonus`` columns. Accepts (and ignores) the extra keyword
    arguments TRL passes to reward functions.
    """
    core = load_arithmetic_core()

    def task_reward(prompts, completions, reward_scale=None, exact_bonus=None, **_columns):
        n = len(prompts)
        scales = reward_scale or [10.0] * n
        bonuses = exact_bonus or [0.0] * n
        return [core.arithmetic_reward([p], [c], scale=s, exact_bonus=b)[0]
                for p, c, s, b in zip(prompts, completions, scales, bonuses)]

    task_reward.__name__ = "task_reward"
    return task_reward


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's own
    address space. Not ``getrusage(...).ru_maxrss``: the kernel carries that over from the
    parent across fork + exec, so a child started by a big parent (run.py holds torch and
    a model) would report at least the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_result(path, **fields) -> None:
    fields.setdefault("peak_rss_mb", peak_rss_mb())
    Path(path).write_text(json.dumps(fields, indent=1))


class Clock:
    """Wall seconds since creation; ``.cpu()``: CPU seconds of this process (all threads) since creation."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0

    def cpu(self) -> float:
        return time.process_time() - self.c0


class Snapshots:
    """Model snapshots at fixed intervals of training time, for the time-to-accuracy mode.

    A plan with ``time_budget_s`` asks the side to train until that much training time has
    passed and to save its model every ``snapshot_every_s`` seconds (and at the end) into
    ``OUT/snapshots/tNNN``. The time spent saving is not training time: it is subtracted from
    the clock. Without ``time_budget_s`` nothing is saved and :meth:`tick` never stops a run.
    """

    def __init__(self, plan: dict):
        self.budget = plan.get("time_budget_s")
        self.every = plan.get("snapshot_every_s") or 60.0
        self.root = Path(plan["out_dir"]) / "snapshots"
        self.next = self.every
        self.paused = 0.0
        self.t0 = time.perf_counter()
        self.saved: list[dict] = []

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.paused = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def tick(self, save, step: int) -> bool:
        """Call after every training step with ``save(folder)``; True once the time budget is spent."""
        if self.budget is None:
            return False
        t = self.elapsed()
        done = t >= self.budget
        if t >= self.next or done:
            self.save(save, step, t)
            while self.next <= t:
                self.next += self.every
        return done

    def save(self, save, step: int, t: float | None = None) -> None:
        t = self.elapsed() if t is None else t
        s0 = time.perf_counter()
        folder = self.root / f"t{len(self.saved):03d}"
        save(folder)
        self.saved.append({"t": t, "step": step, "dir": str(folder)})
        self.paused += time.perf_counter() - s0

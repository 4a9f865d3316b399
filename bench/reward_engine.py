"""Benchmark of the reward engine: per-sample overhead and parallel speed-up.

    python bench/reward_engine.py                       # print the tables
    python bench/reward_engine.py --markdown docs/benchmarks.md   # also (re)write "## Reward engine"

1. Overhead: a cheap reward (a few hundred nanoseconds) over many samples, inline vs the
   process backend at several batch sizes; overhead = process time - inline time, per
   sample. Goal: at most 50 us/sample with batching.
2. Speed-up: a CPU-bound reward (50 ms of CPU per sample) with 1 and 2 process workers.
   Goal: close to 2x on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, however this file is loaded
import benchdoc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

THIS = str(Path(__file__).resolve())


# ----------------------------------------------------------------------------- rewards (loaded by spec)


def cheap(prompt: str, completion: str) -> float:
    return len(completion) / 100.0


def cheap_batched(prompts: list[str], completions: list[str]) -> list[float]:
    return [len(c) / 100.0 for c in completions]


def cpu_50ms(prompt: str, completion: str) -> float:
    end = time.process_time() + 0.05
    x = 0
    while time.process_time() < end:
        x += 1
    return float(len(completion))


# ----------------------------------------------------------------------------- measuring


def _samples(n: int) -> tuple[list[str], list[str]]:
    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(n)]
    completions = [f"The answer is {2 * i}, because {i} + {i} = {2 * i}." for i in range(n)]
    return prompts, completions


def _time_engine(cfg_kw: dict, fn: str, prompts: list[str], completions: list[str], repeats: int) -> float:
    """Best wall time of ``repeats`` score() calls on a warmed-up engine."""
    from progrl.rewards import RewardConfig, RewardEngine

    cfg = RewardConfig(functions=[f"{THIS}:{fn}"], timeout=60, **cfg_kw)
    with RewardEngine(cfg) as engine:
        engine.score(prompts[:64], completions[:64])  # start workers, load functions
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = engine.score(prompts, completions)
            best = min(best, time.perf_counter() - t0)
            assert res.n_failed == 0, res.errors
    return best


def overhead_table(n: int, batch_sizes: list[int], repeats: int) -> list[list[str]]:
    """Rows: inline, then the process backend (2 workers) per batch size; us/sample and overhead over inline."""
    prompts, completions = _samples(n)
    fns = ("cheap", "cheap_batched")
    inline = {fn: _time_engine({"backend": "inline"}, fn, prompts, completions, repeats) / n * 1e6 for fn in fns}
    rows = [["inline", "-", f"{inline['cheap']:.1f}", "-", f"{inline['cheap_batched']:.1f}", "-"]]
    for bs in batch_sizes:
        cells = ["process (2 workers)", str(bs)]
        for fn in fns:
            per = _time_engine({"backend": "process", "workers": 2, "batch_size": bs}, fn, prompts, completions,
                               repeats) / n * 1e6
            cells += [f"{per:.1f}", f"{per - inline[fn]:.1f}"]
        rows.append(cells)
    return rows


def speedup_table(n: int, repeats: int) -> list[list[str]]:
    prompts, completions = _samples(n)
    times = {w: _time_engine({"backend": "process", "workers": w, "batch_size": 32}, "cpu_50ms", prompts,
                             completions, repeats) for w in (1, 2)}
    return [[str(w), f"{times[w]:.2f}", f"{n * 0.05 / times[w] * 100 / w:.0f}%", f"{times[1] / times[w]:.2f}x"]
            for w in (1, 2)]


# ----------------------------------------------------------------------------- reporting


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _machine() -> str:
    return f"{os.cpu_count()}-core CPU ({benchdoc.cpu_model()}), Python {platform.python_version()}, {platform.system()}"


def cpu_snapshot() -> tuple[float, float, float]:
    """(machine CPU seconds, of which busy, of which this process and its reaped children): Linux only."""
    import resource

    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    mine = sum(getattr(resource.getrusage(who), attr) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for attr in ("ru_utime", "ru_stime"))
    return sum(ticks) / hz, (sum(ticks) - ticks[3] - ticks[4]) / hz, mine


def others_note(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    """What share of the machine's CPU other jobs used during the run (they take cores from the workers)."""
    total = after[0] - before[0]
    others = max(0.0, (after[1] - before[1]) - (after[2] - before[2]))
    return (f"Other jobs used {100 * others / max(total, 1e-9):.0f}% of the machine's CPU during the run "
            "(the machine is shared; that mostly lowers the speed-up).")


def render(n_cheap: int, over: list[list[str]], n_cpu: int, speed: list[list[str]], note: str = "") -> str:
    return "\n".join([
        "## Reward engine",
        "",
        f"Measured by `python bench/reward_engine.py --markdown docs/benchmarks.md` on a {_machine()}. {note}",
        "",
        f"**Per-sample overhead** of the `process` backend over `inline`, cheap reward (`len(completion)/100`), "
        f"{n_cheap} samples per `score()` call: wall time per sample in microseconds, best of the repeats. "
        "\"batch\" is `batch_size` (samples per message to a worker); \"overhead\" = process - inline (the two "
        "workers also run in parallel, which hides part of the cost at large batches). "
        "Goal: <= 50 us/sample with batching.",
        "",
        _table(["backend", "batch", "per-sample fn us", "overhead us", "batched fn us", "overhead us"], over),
        "",
        f"**Parallel speed-up**, CPU-bound reward (50 ms of CPU per sample), {n_cpu} samples, process "
        "backend. Goal: close to 2x with 2 workers on 2 cores.",
        "",
        _table(["workers", "seconds", "CPU efficiency", "speed-up"], speed),
        "",
    ])


def write_section(path: Path, section: str) -> None:
    """Replace the ``## Reward engine`` section of ``path`` (or append it); other sections stay."""
    benchdoc.write_section(path, "Reward engine", section)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8192, help="samples per call for the overhead test")
    ap.add_argument("--cpu-samples", type=int, default=16, help="samples for the speed-up test")
    ap.add_argument("--batch-sizes", default="1,8,32,128,512")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--markdown", metavar="FILE", help="write/replace the '## Reward engine' section of FILE")
    args = ap.parse_args()
    before = cpu_snapshot()
    over = overhead_table(args.samples, [int(b) for b in args.batch_sizes.split(",")], args.repeats)
    speed = speedup_table(args.cpu_samples, args.repeats)
    section = render(args.samples, over, args.cpu_samples, speed, others_note(before, cpu_snapshot()))
    benchdoc.publish(section, "Reward engine", args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

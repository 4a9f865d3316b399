"""Training throughput per torch thread setting, alone and with a second training job running.

    python bench/threads.py                                 # print the table
    python bench/threads.py --markdown docs/benchmarks.md   # also (re)write its section

Job A is the arithmetic task's RL loop (its default model and batch: GPT-2 2 x 128, 128
samples per step, 4 epochs of minibatches of 64), started by the CLI in a subprocess; its
rate is samples per step / the median step time (``metrics.jsonl``), so start-up does not
count. Settings of A: 1 thread; 2 threads waiting as OpenMP does by default (spin for a
while, then sleep: what torch does when it is imported before progrl); 2 threads that always
spin (``OMP_WAIT_POLICY=ACTIVE``); progrl's default (``threads`` unset: cores / processes, and
``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep at once). Conditions: "alone" (only
whatever else runs on the machine) and "with a second job": the same training, progrl's
defaults, (B) started just before A and stopped when A ends. Settings and conditions
alternate, repeated ``--repeats`` times; the best repeat counts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, however this file is loaded
import benchdoc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "CPU threads under sharing"
# name: (environment, config overrides, torch imported before progrl: OpenMP's own default waiting)
SETTINGS = {
    "threads = 1": ({"OMP_NUM_THREADS": "1"}, ["threads=1"], True),
    "threads = 2, OpenMP's default waiting (spin a while, then sleep: torch without progrl's setting)":
        ({"OMP_NUM_THREADS": "2"}, ["threads=2"], True),
    "threads = 2, OMP_WAIT_POLICY=ACTIVE (always spin)": ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"},
                                                          ["threads=2"], False),
    "progrl's default: threads = cores / processes (2), OMP_WAIT_POLICY=PASSIVE": ({}, [], False),
}
# `python -m progrl` with torch (and so OpenMP) loaded before progrl sets its default
TORCH_FIRST = "import runpy, sys, torch; sys.argv[0] = 'progrl'; runpy.run_module('progrl', run_name='__main__')"
JOB = ["sft.examples=16", "sft.epochs=1", "eval.n_prompts=64", "log.progress=false", "log.tensorboard=false",
       "log.plot=false", "log.checkpoint_every=0"]


def command(out: Path, steps: int, overrides: list[str], torch_first: bool = False) -> list[str]:
    sets = [a for o in [*JOB, *overrides] for a in ("--set", o)]
    start = [sys.executable, "-c", TORCH_FIRST] if torch_first else [sys.executable, "-m", "progrl"]
    return [*start, "train", "arithmetic", "--steps", str(steps), "--out", str(out), *sets]


def base_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    return {**env, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore", **extra}


def rate(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("phase") == "train"]
    steps = [r["time_generation"] + r["time_reward"] + r["time_update"] for r in train[1:]]  # step 1 warms up
    return 128 / statistics.median(steps)


def run_a(setting: str, steps: int, with_b: bool, work: Path) -> tuple[float, float]:
    env_a, sets_a, torch_first = SETTINGS[setting]
    b = None
    if with_b:
        b = subprocess.Popen(command(work / "b", 100000, []), env=base_env({}),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(15)  # B past its start-up, training
    load = os.getloadavg()[0]
    try:
        subprocess.run(command(work / "a", steps, sets_a, torch_first), env=base_env(env_a), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        if b is not None:
            os.killpg(b.pid, signal.SIGTERM)  # the process group of the job this benchmark started
            b.wait()
    return rate(work / "a"), load


def markdown(results: dict, args) -> str:
    from progrl.threads import default_threads

    lines = [
        f"## {SECTION}", "",
        f"Reproduce: `python bench/threads.py --markdown docs/benchmarks.md` ({args.repeats} repeats, the best counts).",
        "",
        f"The arithmetic task's RL loop (its default GPT-2 2 x 128, 128 samples per step, 4 epochs x minibatches of "
        f"64) on a {os.cpu_count()}-core CPU ({benchdoc.cpu_model()}); samples/s = 128 / the median step time. "
        "\"with a second job\": the same training with progrl's defaults running at the same time. progrl's "
        f"default here: {default_threads(1)} thread(s) for one process, sleeping while they wait. The machine was "
        "shared with other jobs throughout: the 1-minute load average when each run started is given (a 2-core "
        "machine is saturated at 2).", "",
        "| setting of the measured job | alone: samples/s | load | with a second job: samples/s | load | kept |",
        "|---|---|---|---|---|---|",
    ]
    for setting, res in results.items():
        alone, shared = max(res["alone"]), max(res["shared"])
        lines.append(f"| {setting} | {alone[0]:.0f} | {alone[1]:.1f} | {shared[0]:.0f} | {shared[1]:.1f} | "
                     f"{shared[0] / alone[0]:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    results = {s: {"alone": [], "shared": []} for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for setting in SETTINGS:
                for with_b in (False, True):
                    work = Path(tmp) / f"{rep}-{len(results[setting]['alone'])}-{with_b}-{abs(hash(setting))}"
                    got = run_a(setting, args.steps, with_b, work)
                    results[setting]["shared" if with_b else "alone"].append(got)
                    print(f"[{time.strftime('%H:%M:%S')}] {setting}, {'with a second job' if with_b else 'alone'}: "
                          f"{got[0]:.0f} samples/s (load {got[1]:.1f})", flush=True)
    benchdoc.publish(markdown(results, args), SECTION, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

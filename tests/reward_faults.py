"""Misbehaving reward functions for the reward engine's fault-injection tests.

Well-behaved value: ``len(completion)`` (so tests can check the right numbers come back).
``faulty`` / ``faulty_batched`` pick a behaviour per sample from the ``fault`` column, so
one engine can be put through every fault in turn.
"""

from __future__ import annotations

import ctypes
import math
import os
import subprocess
import sys
import time


def good(prompt: str, completion: str, **columns) -> float:
    return float(len(completion))


def good_batched(prompts: list[str], completions: list[str], **columns) -> list[float]:
    return [float(len(c)) for c in completions]


def scaled(prompt: str, completion: str, scale: float = 1.0) -> float:
    return scale * len(completion)


def faulty_slow(prompt: str, completion: str, delay: float = 0.0) -> float:
    time.sleep(delay)
    return float(len(completion))


def sleep_forever(prompt: str, completion: str, **columns) -> float:
    while True:
        time.sleep(3600)


def busy_loop(prompt: str, completion: str, **columns) -> float:
    x = 0
    while True:
        x += 1


def abort(prompt: str, completion: str, **columns) -> float:
    os.abort()


def segfault(prompt: str, completion: str, **columns) -> float:
    ctypes.string_at(0)
    return 0.0


def raise_error(prompt: str, completion: str, **columns) -> float:
    raise RuntimeError("reward exploded")


def return_nan(prompt: str, completion: str, **columns) -> float:
    return math.nan


def return_inf(prompt: str, completion: str, **columns) -> float:
    return -math.inf


def return_none(prompt: str, completion: str, **columns) -> None:
    return None


def return_string(prompt: str, completion: str, **columns) -> str:
    return "0.5"


def allocate_10gb(prompt: str, completion: str, **columns) -> float:
    block = bytearray(10 * 1024 ** 3)  # calloc: fails at once under RLIMIT_AS, touches nothing otherwise
    return float(len(block))


def flood_stdout(prompt: str, completion: str, **columns) -> float:
    chunk = "x" * (1024 * 1024 - 1)
    for _ in range(50):  # 50 MB on stdout (and a bit on stderr)
        print(chunk)
    sys.stderr.write("y" * 100_000)
    return float(len(completion))


def child_then_hang(prompt: str, completion: str, **columns) -> float:
    """Start a long-lived subprocess (like a game engine) and hang: the child must not outlive a timeout."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(columns["pid_file"], "w") as f:
        f.write(str(proc.pid))
    while True:
        time.sleep(3600)


def wrong_length(prompts: list[str], completions: list[str], **columns) -> list[float]:
    return [1.0] * (len(completions) + 1)


BEHAVIOURS = {
    "ok": good,
    "sleep": sleep_forever,
    "busy": busy_loop,
    "abort": abort,
    "segfault": segfault,
    "raise": raise_error,
    "nan": return_nan,
    "inf": return_inf,
    "none": return_none,
    "string": return_string,
    "memory": allocate_10gb,
    "flood": flood_stdout,
}


def faulty(prompt: str, completion: str, fault: str = "ok", **columns):
    """Per-sample: behave as ``BEHAVIOURS[fault]``."""
    return BEHAVIOURS[fault](prompt, completion)


def faulty_batched(prompts: list[str], completions: list[str], fault: list[str], **columns):
    """Batched: ``"length"`` anywhere -> wrong length; otherwise each sample's behaviour in turn."""
    if "length" in fault:
        return wrong_length(prompts, completions)
    return [BEHAVIOURS[f](p, c) for p, c, f in zip(prompts, completions, fault)]

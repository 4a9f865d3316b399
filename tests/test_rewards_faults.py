"""Fault injection: every misbehaviour of tests/reward_faults.py, on the inline and process backends.

For each fault: scoring returns within timeout + 1 s, the failure is classified (and only
the guilty samples fail), the same engine then scores correctly, and closing leaves no
process behind. The Ray backend gets the same treatment in test_rewards_ray.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from progrl.rewards import RewardConfig, RewardEngine

FAULTS = str(Path(__file__).with_name("reward_faults.py"))
TIMEOUT = 1.0

# fault -> failure kind (None: the value is valid)
EXPECTED = {
    "sleep": "timeout", "busy": "timeout", "abort": "crash", "segfault": "crash", "memory": "crash",
    "raise": "error", "nan": "nan", "inf": "inf", "none": "none", "string": "type", "flood": None,
}
WHOLE_CALL = {"timeout", "crash", "error", "length"}  # a batched call fails as a whole
INLINE_FAULTS = ["raise", "nan", "inf", "none", "string", "flood"]
COMPLETIONS = ["a", "bb", "ccc", "dddd"]  # good value = len(completion)


def config(backend: str, **kw) -> RewardConfig:
    return RewardConfig(backend=backend, timeout=TIMEOUT, workers=2, memory_mb=1024, **kw)


def check_fault(engine: RewardEngine, fault: str, batched: bool) -> None:
    """Sample 2 of 4 misbehaves; with batched functions (chunks [0, 1] and [2, 3]) a whole-call
    failure also takes sample 3 with it."""
    kind = "length" if fault == "length" else EXPECTED[fault]
    guilty = {2, 3} if batched and kind in WHOLE_CALL else {2}
    t0 = time.monotonic()
    res = engine.score(["p"] * 4, COMPLETIONS, {"fault": ["ok", "ok", fault, "ok"]})
    wall = time.monotonic() - t0
    # bounded by the timeout (every fault runs forever when nothing stops it); killing and
    # replacing a Ray actor takes seconds more than a process kill on a loaded 2-core machine
    # (5.7-6.1 s seen under load 5), hence its larger slack
    slack = 10.0 if engine.cfg.backend == "ray" else 1.0
    assert wall < engine.cfg.timeout + slack, f"{fault}: scoring took {wall:.2f}s"
    failed_value = None if kind and engine.policy[kind] == "skip" else engine.policy.get(kind)  # skip: one fn -> drop
    expected = [failed_value if (kind and i in guilty) else float(len(c)) for i, c in enumerate(COMPLETIONS)]
    assert res.rewards == expected, (fault, res.errors)
    assert {k: v for k, v in res.failures.items() if v} == ({kind: len(guilty)} if kind else {}), res.errors
    if kind:
        assert res.errors and f": {kind}: " in res.errors[0]
    again = engine.score(["q"] * 3, ["x", "yy", "zzz"], {"fault": ["ok"] * 3})
    assert again.rewards == [1.0, 2.0, 3.0] and again.n_failed == 0, again.errors


# ----------------------------------------------------------------------------- process listing
# psutil when installed, else /proc (Linux).

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with accelerate
    psutil = None


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state letter, command line) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0], cmd)
    return table


def descendants() -> dict[int, str]:
    """Live (not zombie) descendants of this process: pid -> command line."""
    if psutil is not None:
        out = {}
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out[p.pid] = " ".join(p.cmdline())
            except psutil.NoSuchProcess:
                pass
        return out
    table = _proc_table()
    out, frontier = {}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, state, cmd) in table.items():
            if ppid == parent and pid not in out:
                frontier.append(pid)
                if state != "Z":
                    out[pid] = cmd
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is not running)."""
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    info = _proc_table().get(pid)
    return info is not None and info[1] != "Z"


def leftovers(before: set[int], timeout: float = 5.0) -> list[str]:
    """New live descendants (multiprocessing's resource tracker aside), waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        out = [f"{pid} {cmd[:80]}" for pid, cmd in descendants().items()
               if pid not in before and "resource_tracker" not in cmd]
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


# ----------------------------------------------------------------------------- inline


@pytest.fixture(scope="module")
def inline_engine():
    with RewardEngine(config("inline"), [f"{FAULTS}:faulty"]) as eng:
        yield eng


@pytest.fixture(scope="module")
def inline_batched_engine():
    with RewardEngine(config("inline", batch_size=2), [f"{FAULTS}:faulty_batched"]) as eng:
        yield eng


@pytest.mark.parametrize("fault", INLINE_FAULTS)
def test_inline_fault(inline_engine, fault, capfd):
    check_fault(inline_engine, fault, batched=False)
    out, err = capfd.readouterr()
    assert len(out) < 1000 and len(err) < 1000  # the flood was discarded


@pytest.mark.parametrize("fault", INLINE_FAULTS + ["length"])
def test_inline_batched_fault(inline_batched_engine, fault):
    check_fault(inline_batched_engine, fault, batched=True)


# ----------------------------------------------------------------------------- process


@pytest.fixture(scope="module")
def process_engine():
    with RewardEngine(config("process"), [f"{FAULTS}:faulty"]) as eng:
        eng.start()
        yield eng


@pytest.fixture(scope="module")
def process_batched_engine():
    with RewardEngine(config("process", batch_size=2), [f"{FAULTS}:faulty_batched"]) as eng:
        eng.start()
        yield eng


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_process_fault(process_engine, fault, capfd):
    check_fault(process_engine, fault, batched=False)
    out, err = capfd.readouterr()
    assert len(out) < 1000 and len(err) < 1000


@pytest.mark.parametrize("fault", ["sleep", "segfault", "memory", "raise", "nan", "string", "flood", "length"])
def test_process_batched_fault(process_batched_engine, fault):
    check_fault(process_batched_engine, fault, batched=True)


def test_process_leaves_no_process_behind():
    before = set(descendants())
    eng = RewardEngine(config("process"), [f"{FAULTS}:faulty"])
    for fault in ("busy", "abort", "memory"):
        eng.score(["p"] * 2, ["a", "b"], {"fault": ["ok", fault]})
    assert len(eng.backend.worker_pids()) == 2
    eng.close()
    assert leftovers(before) == []

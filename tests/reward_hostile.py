"""Hostile and careless reward functions for the trust tests (issue 9, items 1-4 and 10).

Unlike tests/reward_faults.py (rewards that break), these attack the trainer: they write
crafted pickles to every file descriptor, signal the trainer, escape into their own
session, reach the network, write files, or break the classification of their result.
Columns carry the paths / tokens / ports the tests need. Import-time faults are module
*texts* (``IMPORT_FAULTS``) that the tests write to files.
"""

from __future__ import annotations

import numbers
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time


class _Touch:
    """Unpickling this creates the file ``path``: proof that someone unpickled data from the reward."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted_pickles(marker: str) -> list[bytes]:
    """The payload in every framing a receiver might expect: multiprocessing.Connection's
    4-byte length header, an 8-byte one, a bare pickle, one per line."""
    payload = pickle.dumps(_Touch(marker), protocol=2)
    return [struct.pack("!i", len(payload)) + payload, struct.pack("!Q", len(payload)) + payload,
            payload, payload + b"\n"]


def pickle_bomb(prompt: str, completion: str, marker: str) -> float:
    """Write a pickle whose loading creates ``marker`` to every open file descriptor, then answer."""
    blobs = crafted_pickles(marker)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        for blob in blobs:
            try:
                os.write(fd, blob)
            except OSError:
                pass
    return float(len(completion))


def bad_json_reply(prompt: str, completion: str, **columns) -> float:
    """Write well-formed JSON lines that are not valid replies to every descriptor (NaN, unknown kind, ...)."""
    lines = [b'[1,[NaN],false]\n', b'[1,[["pwned","x"]],false]\n', b'[1,[1.0,2.0,3.0,4.0,5.0],false]\n',
             b'["ready",1,[]]\n', b'[' * 100000 + b'\n']
    for name in os.listdir("/proc/self/fd"):
        for line in lines:
            try:
                os.write(int(name), line)
            except OSError:
                pass
    return float(len(completion))


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


def raise_unprintable(prompt: str, completion: str, **columns) -> float:
    """Raise an exception whose ``__str__`` raises."""
    raise _Unprintable()


class BrokenReal(numbers.Real):
    """A ``numbers.Real`` whose conversion to float raises."""

    def __float__(self):
        raise ValueError("cannot convert me")

    # the abstract methods of numbers.Real, none of them usable
    def _no(self, *args):
        raise ValueError("cannot use me")

    __abs__ = __add__ = __ceil__ = __eq__ = __floor__ = __floordiv__ = __le__ = __lt__ = __mod__ = __mul__ = _no
    __neg__ = __pos__ = __pow__ = __radd__ = __rfloordiv__ = __rmod__ = __rmul__ = __round__ = __rpow__ = _no
    __rtruediv__ = __truediv__ = __trunc__ = _no
    __hash__ = object.__hash__


def return_broken_real(prompt: str, completion: str, **columns):
    return BrokenReal()


def return_broken_reals(prompts: list[str], completions: list[str], **columns):
    return [BrokenReal() for _ in completions]


def exit_zero(prompt: str, completion: str, **columns) -> float:
    os._exit(0)


def raise_keyboard_interrupt(prompt: str, completion: str, **columns) -> float:
    raise KeyboardInterrupt


def stop_parent(prompt: str, completion: str, **columns) -> float:
    """SIGSTOP the process that started this one (the trainer, without the sandbox)."""
    os.kill(os.getppid(), signal.SIGSTOP)
    return float(len(completion))


def setsid_daemon(prompt: str, completion: str, token: str) -> float:
    """Leave behind a double-forked process in its own session (``token`` in its command line)."""
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', "
            f"{token!r}], start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL)")
    subprocess.run([sys.executable, "-c", code], check=True)  # the middle process exits: the daemon is orphaned
    return 1.0


def setsid_daemon_then_hang(prompt: str, completion: str, token: str) -> float:
    """:func:`setsid_daemon`, then hang until the timeout."""
    setsid_daemon(prompt, completion, token)
    while True:
        time.sleep(3600)


def connect_tcp(prompt: str, completion: str, port: int) -> float:
    """1.0 if a TCP connection to 127.0.0.1:``port`` succeeds, else 0.0."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return 1.0
    except OSError:
        return 0.0


def write_file(prompt: str, completion: str, path: str) -> float:
    """1.0 if ``path`` could be written, else 0.0."""
    try:
        with open(path, "w") as f:
            f.write("written by a reward")
        return 1.0
    except OSError:
        return 0.0


def write_scratch(prompt: str, completion: str, **columns) -> float:
    """1.0 if a temporary file (``TMPDIR``: the sandbox's scratch directory) can be written and read back."""
    with tempfile.NamedTemporaryFile("w+", delete=True) as f:
        f.write(completion)
        f.flush()
        f.seek(0)
        return float(len(f.read()))


def needs_solution(prompt: str, completion: str, solution: str) -> float:
    """Needs a column no built-in task has: fails with TypeError on every sample."""
    return 1.0 if completion == solution else 0.0


def none_unless_long(prompt: str, completion: str, **columns):
    """``None`` ("no reward here") for completions shorter than 3 characters."""
    return None if len(completion) < 3 else float(len(completion))


IMPORT_FAULTS = {
    "raise": "raise ZeroDivisionError('boom at import')\n",
    "sleep": "import time\ntime.sleep(60)\n",
    "exit0": "import os\nos._exit(0)\n",
    "segfault": "import ctypes\nctypes.string_at(0)\n",
}


def import_fault_module(kind: str) -> str:
    """Text of a reward module that misbehaves at import (``kind`` from IMPORT_FAULTS), with ``f``."""
    return IMPORT_FAULTS[kind] + "\n\ndef f(prompt, completion, **columns):\n    return 1.0\n"


# A reward that works for the first ``OK_CALLS`` calls of its process (the held-out evaluation
# before RL), then raises on every call: the first RL step fails as a whole. Written to a file
# by the test, so that each run gets a fresh counter.
FAILS_AFTER = '''
OK_CALLS = {ok_calls}
calls = 0


def score(prompt, completion, **columns):
    global calls
    calls += 1
    if calls > OK_CALLS:
        raise RuntimeError("the checker broke")
    return 0.5
'''

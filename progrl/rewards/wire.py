"""The data-only wire format between the trainer and its reward workers (docs/rewards.md, "Trust").

A reward function runs with the worker's privileges: it can write anything to the
worker's reply channel, or take over the worker's code. So the trainer never deserialises
executable data from a worker: replies are **JSON lines** (one ``json.dumps`` per line,
ASCII only), parsed with :func:`json.loads` and then checked field by field. Anything else
(a pickle, a half line, a wrong job id, a NaN, an unknown failure kind, a message that is
too long, a list of the wrong length) raises :class:`ProtocolError`; the backend then
treats the worker as crashed and replaces it.

Worker -> trainer messages (each a JSON array on one line):

- ``["ready", pid, [[name, batched, accepts], ...]]`` once, after the worker imported the
  functions: what the trainer needs to know about each one (``accepts`` is the list of
  keyword names the function takes, or ``null`` when it takes ``**kwargs``);
- ``["fatal", message]`` once, instead, when a function cannot be loaded;
- ``[job_id, outcomes, recycle]`` per job: one outcome per sample, a finite number for a
  reward or ``[kind, message]`` for a failure; ``recycle`` asks for a new worker.

Trainer -> worker messages are length-prefixed pickles (:func:`frame`): only the *worker*
unpickles, and it trusts the trainer that started it. They carry the job (the samples'
columns may be any picklable Python values, as before) and, first, the functions to load.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from progrl.rewards.failures import FAILURE_KINDS, MAX_MESSAGE, Outcome, clean_message

MAX_NAME = 1000  # longest function / keyword name accepted in a "ready" message
MAX_KEYWORDS = 10_000  # most keyword names per function in a "ready" message
MAX_FATAL = 4000  # longest "fatal" message kept
_HEADER = struct.Struct("!Q")
_KINDS = frozenset(FAILURE_KINDS)


class ProtocolError(ValueError):
    """A worker sent something that is not a valid message: the worker is treated as crashed."""


@dataclass(frozen=True)
class FunctionInfo:
    """What the trainer knows about a reward function it did not import itself (plain data)."""

    name: str
    batched: bool
    accepts: frozenset[str] | None  # keyword names it takes; None = anything (**kwargs)


# ----------------------------------------------------------------------------- trainer -> worker


def frame(obj: Any) -> bytes:
    """A message for a worker: 8-byte big-endian length, then the pickle."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def read_frame(read_exact: Any) -> Any:
    """Worker side: read one :func:`frame` with ``read_exact(n) -> bytes`` and unpickle it."""
    (size,) = _HEADER.unpack(read_exact(_HEADER.size))
    return pickle.loads(read_exact(size))


# ----------------------------------------------------------------------------- worker -> trainer (encoding)


def outcome_data(o: Outcome) -> float | list[str]:
    """An outcome as plain data: the value, or ``[kind, message]``."""
    if o.kind is None:
        return o.value  # type: ignore[return-value]
    return [o.kind, clean_message(o.message or "")]


def encode(message: list) -> bytes:
    """One message as a JSON line (ASCII; NaN and infinities are refused)."""
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode("ascii") + b"\n"


def encode_reply(job_id: int, outcomes: Sequence[Outcome], recycle: bool) -> bytes:
    return encode([job_id, [outcome_data(o) for o in outcomes], bool(recycle)])


def encode_ready(pid: int, infos: Sequence[FunctionInfo]) -> bytes:
    return encode(["ready", pid, [[i.name, i.batched, None if i.accepts is None else sorted(i.accepts)]
                                  for i in infos]])


def encode_fatal(message: str) -> bytes:
    return encode(["fatal", message])


# ----------------------------------------------------------------------------- worker -> trainer (decoding)


def _no_constants(name: str) -> Any:
    raise ProtocolError(f"non-finite number {name}")


def decode(line: bytes) -> Any:
    """Parse one line (without its newline) as JSON; ProtocolError for anything else."""
    try:
        text = line.decode("ascii")
        return json.loads(text, parse_constant=_no_constants)
    except ProtocolError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:  # not JSON (a pickle, garbage, too deep)
        raise ProtocolError(f"not a JSON message ({type(exc).__name__})") from None


def _is_int(x: Any) -> bool:
    return type(x) is int


def parse_outcome(item: Any) -> Outcome:
    """One outcome of a reply: a finite number, or ``[kind, message]``."""
    tp = type(item)
    if tp is float or tp is int:
        value = float(item)
        if not math.isfinite(value):
            raise ProtocolError("non-finite reward value")
        return Outcome(value)
    if tp is list and len(item) == 2 and type(item[0]) is str and type(item[1]) is str:
        kind, message = item
        if kind not in _KINDS:
            raise ProtocolError(f"unknown failure kind {kind[:40]!r}")
        if len(message) > MAX_MESSAGE:
            raise ProtocolError("failure message too long")
        return Outcome(None, kind, clean_message(message))
    raise ProtocolError(f"an outcome must be a number or [kind, message], got {tp.__name__}")


def parse_outcomes(items: Any, n: int) -> list[Outcome]:
    """A list of exactly ``n`` outcomes (the Ray backend's reply, and part of a process reply)."""
    if type(items) is not list:
        raise ProtocolError("outcomes must be a list")
    if len(items) != n:
        raise ProtocolError(f"{len(items)} outcomes for {n} samples")
    return [parse_outcome(x) for x in items]


def parse_reply(message: Any, job_id: int, n: int) -> tuple[list[Outcome], bool]:
    """A job reply ``[job_id, outcomes, recycle]`` for the job ``job_id`` of ``n`` samples."""
    if type(message) is not list or len(message) != 3:
        raise ProtocolError("a reply must be [job_id, outcomes, recycle]")
    got, items, recycle = message
    if not _is_int(got) or got != job_id:
        raise ProtocolError("reply for another job")
    if type(recycle) is not bool:
        raise ProtocolError("recycle must be true or false")
    return parse_outcomes(items, n), recycle


def _parse_info(item: Any, name: str) -> FunctionInfo:
    if type(item) is not list or len(item) != 3:
        raise ProtocolError("function info must be [name, batched, accepts]")
    got, batched, accepts = item
    if type(got) is not str or got != name:
        raise ProtocolError("function info for another function")
    if type(batched) is not bool:
        raise ProtocolError("batched must be true or false")
    if accepts is None:
        return FunctionInfo(name, batched, None)
    if type(accepts) is not list or len(accepts) > MAX_KEYWORDS or \
            not all(type(k) is str and 0 < len(k) <= MAX_NAME for k in accepts):
        raise ProtocolError("accepts must be null or a list of keyword names")
    return FunctionInfo(name, batched, frozenset(accepts))


def parse_start(message: Any, names: Sequence[str]) -> tuple[str, Any]:
    """The first message of a worker: ``("ready", [FunctionInfo, ...])`` or ``("fatal", message)``."""
    if type(message) is not list or not message or type(message[0]) is not str:
        raise ProtocolError("expected a ready or fatal message")
    tag = message[0]
    if tag == "fatal" and len(message) == 2 and type(message[1]) is str:
        text = " ".join(message[1].split())  # one line
        if len(text) > MAX_FATAL:
            text = text[: MAX_FATAL - 3] + "..."
        if not text.isascii():
            text = text.encode("utf-8", "replace").decode("utf-8")
        return "fatal", text
    if tag == "ready" and len(message) == 3 and _is_int(message[1]) and type(message[2]) is list:
        infos = message[2]
        if len(infos) != len(names):
            raise ProtocolError(f"{len(infos)} function infos for {len(names)} functions")
        return "ready", [_parse_info(item, name) for item, name in zip(infos, names)]
    raise ProtocolError("expected a ready or fatal message")


class LineReader:
    """Splits a byte stream from a worker into lines, refusing non-JSON bytes as soon as they arrive.

    ``json.dumps`` with ``ensure_ascii`` writes printable ASCII only, every message starts
    with ``[``, and no line is longer than ``max_line`` bytes: anything else (a pickle's
    ``\\x80`` opcode, a flood) raises :class:`ProtocolError` at once, without waiting for
    a newline that may never come.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def pending(self) -> bool:
        """True when part of a line has arrived."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete lines (without newlines) it finished."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            self._check(piece)
            self._buf += piece
            if len(self._buf) > self.max_line:
                raise ProtocolError("message too long")
            if end < 0:
                return lines
            if not self._buf:
                raise ProtocolError("empty line")
            lines.append(bytes(self._buf))
            self._buf.clear()
            start = end + 1
            if start == len(data):
                return lines

    def _check(self, piece: bytes) -> None:
        if not piece:
            return
        if not self._buf and piece[:1] != b"[":
            raise ProtocolError("a message must start with '['")
        if piece.translate(None, _PRINTABLE):  # something left after deleting printable ASCII
            raise ProtocolError("non-printable byte in a message")


_PRINTABLE = bytes(range(0x20, 0x7F))


MAX_START_BYTES = 16 * 1024 * 1024  # longest ready / fatal line


def max_reply_bytes(n: int) -> int:
    """Longest valid reply line for a job of ``n`` samples (each failure message may be fully escaped)."""
    return 256 + n * (MAX_MESSAGE * 12 + 64)

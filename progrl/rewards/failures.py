"""What a reward call can return, and how a returned value or raised exception is classified.

Everything here is pure and cheap: it runs once per sample, in the worker processes as
well as in the trainer. A reward *outcome* is either a finite float (``kind is None``) or
one of the failure kinds of :data:`FAILURE_KINDS`, with a short human-readable message.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

#: Every way a reward evaluation can fail, in the order they are reported.
#:
#: - ``timeout``: the call ran past the hard time limit (the worker was killed);
#: - ``error``: the function raised an exception;
#: - ``crash``: the worker process died (abort, segfault, OOM kill) or the function ran out
#:   of memory (``MemoryError`` is a crash: the worker is replaced afterwards);
#: - ``nan`` / ``inf``: a NaN or +-infinite value (also an int too large for a float);
#: - ``none``: ``None`` was returned for a sample;
#: - ``type``: not a number (a string, a bool, a list, ...);
#: - ``length``: a batched function returned a list of the wrong length (every sample of
#:   that call gets this failure).
FAILURE_KINDS: tuple[str, ...] = ("timeout", "error", "crash", "nan", "inf", "none", "type", "length")

#: Longest message kept per failure (tracebacks and reprs are cut to this).
MAX_MESSAGE = 500


class Outcome(NamedTuple):
    """One evaluation of one reward function on one sample."""

    value: float | None  # the finite reward, or None when ``kind`` is set
    kind: str | None = None  # one of FAILURE_KINDS, or None for a valid value
    message: str | None = None  # what went wrong, for the logs


class SampleFailure(NamedTuple):
    """Returned by a reward function in place of a value: "this sample failed, of this kind".

    For rewards that drive an engine of their own (e.g. the Ludii worker pool, which kills a
    worker that runs past its time limit): the failure is counted under ``kind`` (one of
    :data:`FAILURE_KINDS`; an unknown kind counts as ``error``) and replaced by the failure
    policy's value, exactly like a failure the reward engine saw itself.
    """

    kind: str
    message: str = ""


def failure(kind: str, message: str) -> Outcome:
    """An :class:`Outcome` for a failure of ``kind`` (checked) with a message cut to size."""
    if kind not in FAILURE_KINDS:
        raise ValueError(f"unknown failure kind {kind!r}")
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return Outcome(None, kind, message)


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break classification
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _from_float(f: float) -> Outcome:
    if f != f:
        return Outcome(None, "nan", "returned NaN")
    if f == math.inf or f == -math.inf:
        return Outcome(None, "inf", f"returned {f}")
    return Outcome(f, None, None)


def classify_value(value: Any) -> Outcome:
    """Classify what a reward function returned for one sample.

    Accepted as numbers: ``int``, ``float``, any ``numbers.Real`` (numpy scalars,
    ``Fraction``) and 0-dimensional arrays/tensors holding a real number. ``bool`` (and
    numpy's ``bool_``) is a ``type`` failure: a True/False reward is almost always a bug.
    """
    tp = type(value)
    if tp is float:
        return _from_float(value)
    if tp is SampleFailure:
        kind = value.kind if value.kind in FAILURE_KINDS else "error"
        return failure(kind, str(value.message) or f"reported {value.kind!r}")
    if value is None:
        return Outcome(None, "none", "returned None")
    if tp is bool or tp.__name__ in ("bool_", "bool8"):
        return Outcome(None, "type", f"returned a bool ({value!r}); return a float")
    if isinstance(value, numbers.Real):
        try:
            return _from_float(float(value))
        except OverflowError:
            return Outcome(None, "inf", f"returned a number too large for a float: {_short_repr(value)}")
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch 0-d
        try:
            item = value.item()
        except Exception:
            item = None
        if item is not None and not isinstance(item, (bool, complex)):
            return classify_value(item)
    return Outcome(None, "type", f"returned {tp.__name__}: {_short_repr(value)}")


def classify_batch(result: Any, n: int) -> list[Outcome]:
    """Classify the return value of a batched call over ``n`` samples.

    A list or tuple (or anything with ``tolist()``, e.g. a numpy array or tensor) of
    exactly ``n`` values is classified value by value. Any other container type makes every
    sample a ``type`` failure; a wrong length makes every sample a ``length`` failure.
    """
    if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
        try:
            result = result.tolist()
        except Exception:
            pass
    if not isinstance(result, (list, tuple)):
        out = failure("type", f"batched reward returned {type(result).__name__} "
                              f"({_short_repr(result)}), expected a list of {n} values")
        return [out] * n
    if len(result) != n:
        out = failure("length", f"batched reward returned {len(result)} values for {n} samples")
        return [out] * n
    return [classify_value(v) for v in result]


def classify_exception(exc: BaseException) -> Outcome:
    """An exception raised by a reward function: ``crash`` for MemoryError, else ``error``."""
    kind = "crash" if isinstance(exc, MemoryError) else "error"
    detail = str(exc)
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if kind == "crash":
        text = "out of memory (" + text + ")"
    return failure(kind, text)


def empty_counts() -> dict[str, int]:
    """A failure-count dict with every kind of :data:`FAILURE_KINDS` at zero."""
    return {k: 0 for k in FAILURE_KINDS}


def format_failures(counts: dict[str, int]) -> str:
    """``"timeout=2, nan=1"`` (only non-zero kinds), or ``"no failures"`` when all are zero."""
    parts = [f"{k}={counts.get(k, 0)}" for k in FAILURE_KINDS if counts.get(k, 0)]
    return ", ".join(parts) if parts else "no failures"

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


def clean_message(message: str) -> str:
    """``message`` cut to :data:`MAX_MESSAGE` characters, lone surrogates replaced (so it can be printed)."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    if not message.isascii():
        message = message.encode("utf-8", "replace").decode("utf-8")
    return message


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
    return Outcome(None, kind, clean_message(message))


def type_name(value: Any) -> str:
    """``type(value).__name__``, even for a type whose ``__name__`` is hostile."""
    try:
        name = type(value).__name__
    except BaseException:  # noqa: BLE001 - a metaclass property may raise anything
        return "object"
    return name if isinstance(name, str) else "object"


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
        if not isinstance(text, str):
            raise TypeError
    except BaseException:  # noqa: BLE001 - a broken __repr__ must not break classification
        text = f"<{type_name(value)}>"
    return text if len(text) <= 80 else text[:77] + "..."


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a note saying it could not be computed (a ``__str__`` that raises)."""
    try:
        text = str(exc)
    except BaseException as inner:  # noqa: BLE001
        return f"<the exception's message could not be shown: its __str__ raised {type_name(inner)}>"
    return text


def _from_float(f: float) -> Outcome:
    if f != f:
        return Outcome(None, "nan", "returned NaN")
    if f == math.inf or f == -math.inf:
        return Outcome(None, "inf", f"returned {f}")
    return Outcome(f, None, None)


def classify_value(value: Any) -> Outcome:
    """Classify what a reward function returned for one sample; never raises.

    Accepted as numbers: ``int``, ``float``, any ``numbers.Real`` (numpy scalars,
    ``Fraction``) and 0-dimensional arrays/tensors holding a real number. ``bool`` (and
    numpy's ``bool_``) is a ``type`` failure: a True/False reward is almost always a bug.
    A value that cannot be inspected or converted (its ``__float__`` raises, say) is a
    ``type`` failure naming what went wrong.
    """
    try:
        return _classify_value(value)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - hostile __float__, __class__, __eq__, ...
        return failure("type", f"returned {type_name(value)}, which could not be converted to a float "
                               f"({type_name(exc)}: {safe_str(exc)})")


def _classify_value(value: Any) -> Outcome:
    tp = type(value)
    if tp is float:
        return _from_float(value)
    if tp is SampleFailure:
        kind, message = value  # a tuple subclass: fields of any type, taken as data only
        kind = kind if type(kind) is str and kind in FAILURE_KINDS else "error"
        message = message if type(message) is str else safe_str(message)
        return failure(kind, message or f"reported {kind!r}")
    if value is None:
        return Outcome(None, "none", "returned None")
    if tp is bool or tp.__name__ in ("bool_", "bool8"):
        return Outcome(None, "type", f"returned a bool ({value!r}); return a float")
    if isinstance(value, numbers.Real):
        try:
            f = float(value)
        except OverflowError:
            return Outcome(None, "inf", f"returned a number too large for a float: {_short_repr(value)}")
        if type(f) is not float:  # a float subclass could carry behaviour; keep the number only
            f = float.__float__(f)
        return _from_float(f)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch 0-d
        try:
            item = value.item()
        except Exception:
            item = None
        if item is not None and not isinstance(item, (bool, complex)):
            return classify_value(item)
    return Outcome(None, "type", f"returned {tp.__name__}: {_short_repr(value)}")


def classify_batch(result: Any, n: int) -> list[Outcome]:
    """Classify the return value of a batched call over ``n`` samples; never raises.

    A list or tuple (or anything with ``tolist()``, e.g. a numpy array or tensor) of
    exactly ``n`` values is classified value by value. Any other container type makes every
    sample a ``type`` failure; a wrong length makes every sample a ``length`` failure.
    """
    try:
        return _classify_batch(result, n)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a list subclass with a hostile __len__, ...
        out = failure("type", f"batched reward returned {type_name(result)}, which could not be read "
                              f"({type_name(exc)}: {safe_str(exc)})")
        return [out] * n


def _classify_batch(result: Any, n: int) -> list[Outcome]:
    if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
        try:
            result = result.tolist()
        except Exception:
            pass
    if type(result) not in (list, tuple) and isinstance(result, (list, tuple)):
        result = list(result)  # a subclass: keep the items, not its methods
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
    detail = safe_str(exc)
    name = type_name(exc)
    text = f"{name}: {detail}" if detail else name
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

"""Naming, loading and calling reward functions.

A reward function is named by a string, ``"path/to/file.py:function"`` or
``"package.module:function"`` (``"package.module.function"`` works too), or given as a
Python callable. It is either

- *batched*, TRL's GRPO shape: ``fn(prompts, completions, **columns) -> list[float | None]``
  (called with keyword arguments; the first parameter is named ``prompts``, ``completions``,
  ``completion_ids`` or ``prompt_ids`` -- TRL's token-id rewards take ``completion_ids``), or
- *per-sample*: ``fn(prompt, completion, **columns) -> float`` (the first two arguments
  positionally, one column value per keyword).

The detection can be overridden by the config field ``batched`` or by an attribute
``progrl_batched = True/False`` on the function. Keyword arguments a function cannot take
(it has no ``**kwargs`` and no parameter of that name) are not passed to it.

This module runs in the trainer *and* in the worker processes; it imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from progrl.pyfile import FileImportError, import_file, resolve_path
from progrl.rewards.failures import Outcome, classify_batch, classify_exception, classify_value
from progrl.rewards.wire import FunctionInfo

BATCHED_FIRST_PARAMS = ("prompts", "completions", "completion_ids", "prompt_ids")


class RewardSpecError(ValueError):
    """A reward function that cannot be found or used; the message names the spec."""


@dataclass(frozen=True)
class FunctionSpec:
    """A reward function as sent to the workers: picklable, not yet loaded."""

    name: str
    target: str | Callable  # a spec string (absolute file path when it names a file) or a callable
    weight: float = 1.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    batched: bool | None = None  # None: detect from the signature
    source: str | None = None  # the spec as the user wrote it, for messages


@dataclass(frozen=True)
class LoadedFunction:
    """A reward function loaded in this process, ready to call."""

    spec: FunctionSpec
    fn: Callable
    batched: bool
    accepts: frozenset[str] | None  # keyword names it takes; None = anything (**kwargs)


# ----------------------------------------------------------------------------- naming


def split_spec(spec: str) -> tuple[str, str]:
    """``"a/b.py:fn"`` -> ``("a/b.py", "fn")``; ``"pkg.mod:fn"`` or ``"pkg.mod.fn"`` -> ``("pkg.mod", "fn")``."""
    text = spec.strip()
    if ":" in text:
        where, _, attr = text.rpartition(":")
    elif "." in text and not text.endswith(".py"):
        where, _, attr = text.rpartition(".")
    else:
        where, attr = "", ""
    if not where or not attr:
        raise RewardSpecError(f"reward function {spec!r}: expected 'path/to/file.py:function' "
                              "or 'package.module:function'")
    return where, attr


def is_file_spec(where: str) -> bool:
    """True when the part before ``:`` names a Python file rather than a module."""
    return where.endswith(".py") or "/" in where or os.sep in where


def absolute_spec(spec: str) -> str:
    """The spec with a file path made absolute (so workers in other directories find it)."""
    where, attr = split_spec(spec)
    if is_file_spec(where):
        return f"{resolve_path(where)}:{attr}"
    return f"{where}:{attr}"


def _load_file(path: str, spec: str) -> Any:
    path = resolve_path(path)
    try:
        return import_file(path, "progrl_reward")
    except FileImportError as exc:
        raise RewardSpecError(f"reward function {spec!r}: {exc}") from None
    except BaseException as exc:
        raise RewardSpecError(f"reward function {spec!r}: importing {path} failed: "
                              f"{type(exc).__name__}: {exc}") from exc


def _load_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise RewardSpecError(f"reward function {spec!r}: no module named {exc.name!r}") from exc
        raise RewardSpecError(f"reward function {spec!r}: importing module {name!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        raise RewardSpecError(f"reward function {spec!r}: importing module {name!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc


def resolve(target: str, label: str | None = None) -> Callable:
    """Import the file or module named by ``target`` and return the function; RewardSpecError if impossible.

    ``label`` is how the function is named in error messages (default: ``target``).
    """
    spec = label or target
    where, attr = split_spec(target)
    obj = _load_file(where, spec) if is_file_spec(where) else _load_module(where, spec)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RewardSpecError(f"reward function {spec!r}: {where} has no attribute {attr!r}") from None
    if not callable(obj):
        raise RewardSpecError(f"reward function {spec!r}: {attr!r} is a {type(obj).__name__}, not a function")
    return obj


def callable_name(fn: Callable) -> str:
    """A readable name for a callable (functools.partial and callable objects included)."""
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__name__", None) or type(inner).__name__


# ----------------------------------------------------------------------------- signatures


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature
        return None


def detect_batched(fn: Callable, override: bool | None = None) -> bool:
    """Batched if ``override`` says so, else the attribute ``progrl_batched``, else the first parameter's name."""
    if override is not None:
        return bool(override)
    attr = getattr(fn, "progrl_batched", None)
    if attr is not None:
        return bool(attr)
    sig = _signature(fn)
    if sig is None:
        return False
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return bool(params) and params[0].name in BATCHED_FIRST_PARAMS


def accepted_keywords(fn: Callable) -> frozenset[str] | None:
    """Names ``fn`` accepts as keywords, or None when it takes ``**kwargs`` (or is opaque)."""
    sig = _signature(fn)
    if sig is None:
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
    return frozenset(names)


def load(spec: FunctionSpec) -> LoadedFunction:
    """Resolve (if named by a string) and inspect a reward function."""
    fn = resolve(spec.target, spec.source) if isinstance(spec.target, str) else spec.target
    if not callable(fn):
        raise RewardSpecError(f"reward function {spec.name!r}: {type(fn).__name__} is not callable")
    return LoadedFunction(spec, fn, detect_batched(fn, spec.batched), accepted_keywords(fn))


def info(loaded: LoadedFunction) -> FunctionInfo:
    """What the trainer needs to know about a loaded function, as plain data."""
    return FunctionInfo(loaded.spec.name, loaded.batched, loaded.accepts)


def precheck(spec: FunctionSpec) -> None:
    """The checks that need no import of the reward's code (the workers import it).

    A file spec must name an existing file; a module spec's top-level package must be
    findable (finding it runs none of its code). Everything else (attributes, import
    errors) is reported by the worker that loads the function.
    """
    if not isinstance(spec.target, str):
        return
    label = spec.source or spec.target
    where, _ = split_spec(spec.target)
    if is_file_spec(where):
        path = resolve_path(where)
        if not os.path.isfile(path):
            raise RewardSpecError(f"reward function {label!r}: file not found: {path}")
        return
    top = where.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise RewardSpecError(f"reward function {label!r}: no module named {top!r}")


# ----------------------------------------------------------------------------- calling


def _keep(name: str, accepts: frozenset[str] | None) -> bool:
    return accepts is None or name in accepts


def call_chunk(
    loaded: LoadedFunction,
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
    stamp: Callable[[int], None] | None = None,
    interruptible: bool = True,
) -> list[Outcome]:
    """Evaluate ``loaded`` on a chunk of samples; never raises (except KeyboardInterrupt).

    A batched function is called once for the whole chunk, a per-sample function once per
    sample. ``stamp(i)`` is called just before the call covering sample ``i`` (for batched
    functions: ``stamp(0)`` once) so that a supervisor can time each call and know which
    sample was running when a worker hung or died. With ``interruptible`` False (workers,
    which ignore SIGINT, so that only the reward itself can raise it) KeyboardInterrupt is
    an ``error`` like any other exception.
    """
    reraise: tuple[type[BaseException], ...] = (KeyboardInterrupt,) if interruptible else ()
    n = len(prompts)
    accepts = loaded.accepts
    extra = {k: v for k, v in loaded.spec.kwargs.items() if _keep(k, accepts)}
    names = [k for k in columns if _keep(k, accepts) and k not in extra]
    fn = loaded.fn
    if loaded.batched:
        kwargs: dict[str, Any] = {k: list(columns[k]) for k in names}
        if _keep("prompts", accepts):
            kwargs["prompts"] = list(prompts)
        if _keep("completions", accepts):
            kwargs["completions"] = list(completions)
        kwargs.update(extra)
        if stamp is not None:
            stamp(0)
        try:
            result = fn(**kwargs)
        except reraise:
            raise
        except BaseException as exc:
            return [classify_exception(exc)] * n
        return classify_batch(result, n)

    out: list[Outcome] = []
    append = out.append
    for i in range(n):
        if stamp is not None:
            stamp(i)
        kw = {k: columns[k][i] for k in names}
        if extra:
            kw.update(extra)
        try:
            value = fn(prompts[i], completions[i], **kw)
        except reraise:
            raise
        except BaseException as exc:
            append(classify_exception(exc))
            continue
        append(classify_value(value))
    return out

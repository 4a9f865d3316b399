"""The reward engine: every reward in progrl goes through :class:`RewardEngine`.

It names the configured functions, has the backend load them (the process and Ray
backends import them in their workers, never in the trainer; failing early, with one
:class:`~progrl.rewards.spec.RewardSpecError` line, when one cannot be loaded), cuts each
batch into jobs, runs them on a backend (inline, process pool or Ray), turns failures into
values with the configured policy, caches, weights and counts. It never raises because a
reward function misbehaved: that is reported in :attr:`RewardResult.failures`, in
:attr:`RewardEngine.totals` and once per (function, failure kind) in the log. Only
:meth:`RewardEngine.check_failures`, called by the trainer after each scoring, raises
:class:`RewardFailureError` when a whole step failed for one reason.

Not thread-safe: one engine is used by one thread at a time.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from progrl.rewards.cache import RewardCache, sample_keys
from progrl.rewards.config import RewardConfig
from progrl.rewards.failures import Outcome, empty_counts, failure, format_failures
from progrl.rewards.jobs import Backend, Job, RewardBackendError
from progrl.rewards.policy import SKIP, apply_policy, combine, count_failures
from progrl.rewards.spec import FunctionSpec, RewardSpecError, absolute_spec, callable_name, precheck, split_spec
from progrl.rewards.wire import FunctionInfo

log = logging.getLogger("progrl.rewards")

MAX_ERRORS = 10  # failure messages kept per RewardResult

DefaultFunction = tuple[str | Callable, float] | str | Callable


class RewardFailureError(RuntimeError):
    """A step in which (at least ``max_failure_fraction`` of) the samples failed, all for one reason.

    ``str()`` is the one line to show, e.g. ``reward error: correct: error: TypeError: ...
    (16 of 16 samples failed; set reward.max_failure_fraction to change this)``.
    """


@dataclass
class RewardResult:
    """Rewards of one batch."""

    rewards: list[float | None]  # weighted sum per sample; None = dropped from the update
    failures: dict[str, int]  # failed evaluations by kind (every kind present), one per (sample, function)
    per_function: dict[str, list[float | None]]  # each function's values after the failure policy (None: none)
    errors: list[str] = field(default_factory=list)  # up to MAX_ERRORS "name: kind: message" lines
    cache_hits: int = 0  # evaluations answered from the cache
    seconds: float = 0.0  # wall time of score()
    failed_samples: int = 0  # samples with at least one failure other than "none"
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)  # (function, kind) -> its first message
    function_failures: dict[str, dict[str, int]] = field(default_factory=dict)  # failures by function, then kind

    @property
    def n_failed(self) -> int:
        return sum(self.failures.values())


# ----------------------------------------------------------------------------- building


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def build_specs(cfg: RewardConfig, default_functions: Iterable[DefaultFunction] = ()) -> list[FunctionSpec]:
    """The functions to run: the config's, or else the task's defaults; names made unique."""
    taken: set[str] = set()
    specs: list[FunctionSpec] = []
    if cfg.functions:
        for f in cfg.functions:
            target = absolute_spec(f.fn)
            name = _unique(f.name or split_spec(f.fn)[1], taken)
            specs.append(FunctionSpec(name, target, f.weight, dict(f.kwargs), f.batched, source=f.fn))
        return specs
    for item in default_functions:
        target, weight = item if isinstance(item, tuple) else (item, 1.0)
        source = target if isinstance(target, str) else None
        if isinstance(target, str):
            name, target = split_spec(target)[1], absolute_spec(target)
        else:
            name = callable_name(target)
        specs.append(FunctionSpec(_unique(name, taken), target, float(weight), source=source))
    return specs


def _check_picklable(spec: FunctionSpec) -> None:
    if isinstance(spec.target, str):
        return
    try:
        pickle.dumps(spec.target)
    except Exception as exc:
        raise RewardSpecError(
            f"reward function {spec.name!r}: the process backend needs a picklable function (defined at "
            f"module level, not a lambda or closure); name it as 'file.py:function' or use backend = "
            f"\"inline\" ({type(exc).__name__}: {exc})") from None


def make_backend(cfg: RewardConfig, specs: Sequence[FunctionSpec]) -> Backend:
    """The backend named by ``cfg.backend`` for these functions (not loaded yet; :meth:`Backend.describe` does).

    The inline backend imports the functions here, in this process. The process and Ray
    backends only check what needs no import (files exist, packages are installed); their
    workers import the functions.
    """
    common = dict(workers=cfg.workers, timeout=cfg.timeout, batch_size=cfg.batch_size, memory_mb=cfg.memory_mb,
                  show_output=cfg.show_output)
    if cfg.backend == "inline":
        from progrl.rewards.inline import InlineBackend

        return InlineBackend(specs, timeout=cfg.timeout, batch_size=cfg.batch_size, show_output=cfg.show_output)
    for s in specs:
        precheck(s)
    if cfg.backend == "process":
        from progrl.rewards.process_pool import ProcessBackend

        for s in specs:
            _check_picklable(s)
        if cfg.sandbox:
            from progrl.rewards.sandbox import sandbox_problem

            problem = sandbox_problem(cfg.sandbox_network)
            if problem is not None:
                raise RewardSpecError(problem)
        return ProcessBackend(specs, load_timeout=cfg.effective_load_timeout, sandbox=cfg.sandbox,
                              sandbox_network=cfg.sandbox_network, **common)
    if cfg.backend == "ray":
        from progrl.rewards.ray_backend import RayBackend

        return RayBackend(specs, address=cfg.ray_address, load_timeout=cfg.effective_load_timeout, **common)
    raise ValueError(f"unknown reward backend {cfg.backend!r}")


# ----------------------------------------------------------------------------- engine


class RewardEngine:
    """Scores (prompt, completion) batches with the configured reward functions.

    ``default_functions`` (``(spec or callable, weight)`` pairs) are used when
    ``cfg.functions`` is empty. Workers start on the first :meth:`score` (or :meth:`start`);
    :meth:`close` (or leaving a ``with`` block) stops them all.
    """

    def __init__(self, cfg: RewardConfig | None = None, default_functions: Iterable[DefaultFunction] = ()) -> None:
        self.cfg = cfg if cfg is not None else RewardConfig()
        specs = build_specs(self.cfg, default_functions)
        if not specs:
            raise RewardSpecError("no reward functions: set [reward] functions = [\"file.py:function\"] "
                                  "(this task has no reward of its own)")
        self.specs = specs
        self.names = [s.name for s in specs]
        self.weights = [s.weight for s in specs]
        self.policy = self.cfg.failure_policy()
        self.totals: dict[str, int] = empty_counts()
        self.calls = 0  # score() calls
        self.evaluations = 0  # (sample, function) evaluations, cache hits included
        self._caches = [RewardCache(self.cfg.cache_size) for _ in specs] if self.cfg.cache else None
        self._parallel = 1 if self.cfg.backend == "inline" else self.cfg.workers
        self._warned: set[tuple[str, str]] = set()
        self._closed = False
        self.backend: Backend = make_backend(self.cfg, specs)
        try:  # loads the functions (in the workers for process / ray): RewardSpecError early, in one line
            self.functions: list[FunctionInfo] = self.backend.describe()
        except BaseException:
            self._closed = True
            self.backend.close()
            raise

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the workers now (they boot in the background) instead of on the first score()."""
        self.backend.start()

    def close(self) -> None:
        """Stop every worker process / actor. Idempotent."""
        if not self._closed:
            self._closed = True
            self.backend.close()

    def __enter__(self) -> RewardEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> str:
        """One line for the end of a run: evaluations and cumulative failures."""
        failed = sum(self.totals.values())
        return f"reward evaluations: {self.evaluations}, failed: {failed} ({format_failures(self.totals)})"

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: Sequence[str], completions: Sequence[str],
              columns: Mapping[str, Sequence[Any]] | None = None) -> RewardResult:
        """Rewards for each (prompt, completion); ``columns`` are extra per-sample keyword lists."""
        if self._closed:
            raise RewardBackendError("the reward engine is closed")
        t0 = time.monotonic()
        prompts, completions, cols = self._check_inputs(prompts, completions, columns)
        n = len(prompts)
        outcomes: list[list[Outcome | None]] = [[None] * n for _ in self.names]
        keys = sample_keys(prompts, completions, cols) if self._caches is not None else None
        hits = 0
        jobs: list[Job] = []
        for fi in range(len(self.names)):
            todo = []
            for i in range(n):
                if keys is not None and self._caches is not None:
                    cached = self._caches[fi].get(keys[i])
                    if cached is not None:
                        outcomes[fi][i] = Outcome(cached)
                        hits += 1
                        continue
                todo.append(i)
            jobs += self._make_jobs(fi, todo, prompts, completions, cols)

        if jobs:
            for (fi, pos), outcome in self.backend.run(jobs).items():
                outcomes[fi][pos] = outcome

        counts = empty_counts()
        errors: list[str] = []
        values = []
        failed = [False] * n
        reasons: dict[tuple[str, str], str] = {}
        by_function: dict[str, dict[str, int]] = {}
        for fi, name in enumerate(self.names):
            row = [o if o is not None else failure("error", "no result (internal error)") for o in outcomes[fi]]
            count_failures(row, counts)
            by_function[name] = empty_counts()
            count_failures(row, by_function[name])
            values.append([apply_policy(o, self.policy) for o in row])
            self._report(name, row, errors)
            for i, o in enumerate(row):
                if o.kind is not None and o.kind != "none":
                    failed[i] = True
                    reasons.setdefault((name, o.kind), f"{name}: {o.kind}: {o.message}")
            if keys is not None and self._caches is not None:
                for i, o in enumerate(row):
                    if o.kind is None and o.value is not None:
                        self._caches[fi].put(keys[i], o.value)
        for kind, c in counts.items():
            self.totals[kind] += c
        self.calls += 1
        self.evaluations += n * len(self.names)
        rewards = combine(values, self.weights)
        per_function = {name: [None if v == SKIP else v for v in row] for name, row in zip(self.names, values)}
        return RewardResult(rewards, counts, per_function, errors, hits, time.monotonic() - t0,
                            failed_samples=sum(failed), reasons=reasons, function_failures=by_function)

    def check_failures(self, result: RewardResult) -> None:
        """Raise :class:`RewardFailureError` when ``result`` failed as a whole for one reason.

        That is: at least ``max_failure_fraction`` of its samples have a failure (``None``
        results do not count: they are an answer, "no reward here"), and every failure of
        the batch has the same function and kind. The message names the first failure.
        """
        limit = self.cfg.max_failure_fraction
        n = len(result.rewards)
        if limit == "never" or n == 0 or result.failed_samples == 0 or len(result.reasons) != 1:
            return
        if result.failed_samples / n + 1e-12 < float(limit):
            return
        (first,) = result.reasons.values()
        raise RewardFailureError(f"reward error: {first} ({result.failed_samples} of {n} samples failed; "
                                 "set reward.max_failure_fraction to change this)")

    def _check_inputs(self, prompts: Sequence[str], completions: Sequence[str],
                      columns: Mapping[str, Sequence[Any]] | None) -> tuple[list[str], list[str], dict[str, list]]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"score(): {len(prompts)} prompts but {len(completions)} completions")
        cols: dict[str, list] = {}
        for k, v in (columns or {}).items():
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
                raise ValueError(f"score(): column {k!r} must be a list with one value per sample")
            if len(v) != len(prompts):
                raise ValueError(f"score(): column {k!r} has {len(v)} values for {len(prompts)} samples")
            if k in ("prompt", "completion", "prompts", "completions"):
                raise ValueError(f"score(): column name {k!r} is reserved")
            cols[k] = list(v)
        return prompts, completions, cols

    def _make_jobs(self, fi: int, todo: list[int], prompts: list[str], completions: list[str],
                   cols: dict[str, list]) -> list[Job]:
        if not todo:
            return []
        size = max(1, min(self.backend.max_chunk(fi), math.ceil(len(todo) / self._parallel)))
        accepts = self.functions[fi].accepts
        wanted = {k: v for k, v in cols.items() if accepts is None or k in accepts}  # send only what it takes
        jobs = []
        for start in range(0, len(todo), size):
            pos = todo[start:start + size]
            jobs.append(Job(fi, pos, [prompts[i] for i in pos], [completions[i] for i in pos],
                            {k: [v[i] for i in pos] for k, v in wanted.items()}))
        return jobs

    def _report(self, name: str, row: Sequence[Outcome], errors: list[str]) -> None:
        """Keep a few failure messages and log the first of each (function, kind) of the run."""
        for o in row:
            if o.kind is None:
                continue
            line = f"{name}: {o.kind}: {o.message}"
            if len(errors) < MAX_ERRORS and line not in errors:
                errors.append(line)
            if (name, o.kind) not in self._warned:
                self._warned.add((name, o.kind))
                log.warning("reward %s (first of its kind; all are counted in the failure summary)", line)

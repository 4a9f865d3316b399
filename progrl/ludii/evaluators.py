"""The two evaluators of recomposed games, behind one interface, shared per process.

- ``engine``: the Ludii engine (:class:`~progrl.ludii.engine.LudiiEngine`): compile + playouts.
- ``validator``: the pure-Python structural validator (:mod:`progrl.ludii.validator`), a proxy.

:func:`get_evaluator` returns one evaluator per :class:`EvaluatorSpec` and process, so that the
reward function and the task's metrics (both in the trainer with the default inline reward backend)
share the engine's JVMs and its result cache: the metrics of a held-out evaluation cost no second
engine run. Everything is closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from progrl.ludii.engine import EngineResult, EngineSettings, LudiiEngine
from progrl.ludii.validator import LudemeNames, Validation, validate


class EvaluatorSpec(BaseModel):
    """Which evaluator, and its settings (hashable: one evaluator per spec and process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["engine", "validator"] = "engine"
    jar: str | None = None  # the Ludii jar (engine)
    engine: EngineSettings = EngineSettings()
    names_file: str | None = None  # validator: one ludeme / constant name per line (None: no name check)
    command: tuple[str, ...] | None = None  # engine: a worker program other than Java (tests, benchmarks)


@dataclass(frozen=True)
class Judgement:
    """One evaluated game."""

    verdict: str  # engine verdicts (engine.VERDICTS), "malformed", or "proxy"
    seconds: float = 0.0  # evaluation time of this game (the original evaluation's, when cached)
    engine: EngineResult | None = None
    proxy: Validation | None = None

    @property
    def compiled(self) -> bool | None:
        if self.verdict == "malformed":
            return False
        return self.engine.compiled if self.engine is not None else None


MALFORMED = Judgement("malformed")


class EngineEvaluator:
    kind = "engine"

    def __init__(self, spec: EvaluatorSpec) -> None:
        self.spec = spec
        self.engine = LudiiEngine(spec.jar, spec.engine, command=spec.command)

    def judge_many(self, games: Sequence[str]) -> list[Judgement]:
        return [Judgement(r.verdict, r.wall_s, engine=r) for r in self.engine.evaluate_many(games)]

    def close(self) -> None:
        self.engine.close()


class ValidatorEvaluator:
    kind = "validator"

    def __init__(self, spec: EvaluatorSpec) -> None:
        self.spec = spec
        self.names = (LudemeNames.from_lines(Path(spec.names_file).read_text("utf-8").splitlines())
                      if spec.names_file else None)

    def judge_many(self, games: Sequence[str]) -> list[Judgement]:
        out = []
        for g in games:
            t0 = time.perf_counter()
            v = validate(g, self.names)
            out.append(Judgement("proxy", time.perf_counter() - t0, proxy=v))
        return out

    def close(self) -> None:
        pass


Evaluator = EngineEvaluator | ValidatorEvaluator
_EVALUATORS: dict[EvaluatorSpec, Evaluator] = {}
_LOCK = threading.Lock()


def get_evaluator(spec: EvaluatorSpec) -> Evaluator:
    """The process's evaluator for ``spec`` (created on first use)."""
    with _LOCK:
        ev = _EVALUATORS.get(spec)
        if ev is None:
            ev = EngineEvaluator(spec) if spec.kind == "engine" else ValidatorEvaluator(spec)
            _EVALUATORS[spec] = ev
        return ev


def release(spec: EvaluatorSpec) -> None:
    """Close and forget the evaluator of ``spec`` (e.g. JVMs used only to expand the data)."""
    with _LOCK:
        ev = _EVALUATORS.pop(spec, None)
    if ev is not None:
        ev.close()


def close_all() -> None:
    with _LOCK:
        for ev in _EVALUATORS.values():
            ev.close()
        _EVALUATORS.clear()


atexit.register(close_all)

"""The Ludii engine evaluator: compile a game description, play random playouts, measure it.

Runs progrl's Java worker (``java/ProgrlLudiiWorker.java``) in a :class:`~progrl.ludii.pool.JsonLinesPool`
of long-lived JVMs. Per request the worker compiles the description, then plays ``playouts``
random-agent playouts with the turn cap ``max_turns`` (Ludii ends a capped playout as a draw), and
computes from the playouts' outcomes (``EngineSettings`` defaults = the paper's preset):

- ``balance``     1 - the largest gap between two players' win rates (a win: utility 1);
- ``completion``  fraction of playouts with a winner;
- ``drawishness`` 1 - fraction of playouts in which no player gets a positive outcome
                  (the authors' name; 1 means no draws);
- ``mean_turns``  mean number of turns per playout.

Verdicts: ``playable``; ``not_playable`` (a playout raised, or fewer than 2 turns on average);
``not_compiled``; ``timeout`` (the worker's soft budget ``budget_s`` ran out - checked after the
compile and after each playout - or no answer within the hard limit ``kill_after_s``, after which
the JVM is killed and replaced); ``crash`` (the JVM died: out of memory under ``-Xmx``, a JVM
fault); ``error`` (an engine error such as a StackOverflowError, or a malformed reply).

Results of deterministic verdicts (playable / not_playable / not_compiled) are cached by
description (playouts are seeded, so a description always gets the same result).
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from progrl.ludii import toolchain
from progrl.ludii.pool import JsonLinesPool, PoolError, Reply
from progrl.ludii.validator import LudemeNames

VERDICTS = ("playable", "not_playable", "not_compiled", "timeout", "crash", "error")
CACHED_VERDICTS = frozenset({"playable", "not_playable", "not_compiled"})
_WORKER_VERDICTS = {"playable": "playable", "not_playable": "not_playable", "not_compiled": "not_compiled",
                    "budget_exceeded": "timeout", "engine_error": "error"}
_EVAL_KEYS = {"id", "ok", "verdict", "message", "players", "playouts", "balance", "completion", "drawishness",
              "mean_turns", "compile_s", "play_s", "inproc_s"}


class EngineSettings(BaseModel):
    """How games are evaluated; the defaults are the paper's preset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    playouts: int = Field(100, ge=1)  # random-agent playouts per game
    max_turns: int = Field(500, ge=1)  # turn cap per playout (a capped playout is a draw)
    budget_s: float = Field(5.0, gt=0)  # soft time budget per game (compile + playouts) -> timeout
    kill_after_s: float | None = Field(None, gt=0)  # hard limit per request; None: budget_s + 3
    workers: int = Field(2, ge=1)  # JVMs evaluating in parallel
    xmx_mb: int = Field(1024, ge=64)  # heap cap per JVM (-Xmx); beyond it the JVM exits -> crash
    seed: int = 0  # playout seed (moves and the game's own dice)
    cache_size: int = Field(100_000, ge=0)  # cached results (by description); 0 = no cache
    startup_timeout_s: float = Field(120.0, gt=0)  # JVM start + warm-up
    warmup_playouts: int = Field(20, ge=0)  # warm-up before "ready", so the first request is not charged
    verbose: bool = False  # Ludii's own output to the workers' log files instead of nowhere

    @property
    def hard_limit(self) -> float:
        return self.kill_after_s if self.kill_after_s is not None else self.budget_s + 3.0


@dataclass(frozen=True)
class EngineResult:
    verdict: str  # one of VERDICTS
    message: str | None = None
    compiled: bool | None = None  # None: unknown (the request died before compiling finished)
    players: int | None = None
    playouts: int = 0
    balance: float | None = None
    completion: float | None = None
    drawishness: float | None = None
    mean_turns: float | None = None
    compile_s: float | None = None  # measured in the JVM
    play_s: float | None = None
    inproc_s: float | None = None  # the whole evaluation in the JVM (no protocol)
    wall_s: float = 0.0  # request sent -> answer, seen from Python
    cached: bool = False

    @property
    def playable(self) -> bool:
        return self.verdict == "playable"

    @property
    def failed(self) -> bool:
        return self.verdict in ("timeout", "crash", "error")


def _is_ratio(v: Any) -> bool:
    return v is None or (type(v) in (int, float) and math.isfinite(v) and 0.0 <= v <= 1.0)


def _is_seconds(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v >= 0.0


def check_eval_reply(obj: dict[str, Any]) -> str | None:
    """Why ``obj`` is not a well-formed answer to an ``eval`` request, or None."""
    if obj.get("ok") is False:
        msg = obj.get("message")
        return None if isinstance(msg, str) and set(obj) == {"id", "ok", "message"} else "bad error reply"
    if set(obj) != _EVAL_KEYS:
        extra, missing = sorted(set(obj) - _EVAL_KEYS), sorted(_EVAL_KEYS - set(obj))
        return f"unexpected keys {extra}" if extra else f"missing keys {missing}"
    if obj["ok"] is not True or obj["verdict"] not in _WORKER_VERDICTS:
        return f"bad verdict {obj.get('verdict')!r}"
    if obj["message"] is not None and not isinstance(obj["message"], str):
        return "message is not a string"
    if obj["players"] is not None and not (type(obj["players"]) is int and 0 <= obj["players"] <= 64):
        return "bad players"
    if not (type(obj["playouts"]) is int and obj["playouts"] >= 0):
        return "bad playouts"
    for k in ("balance", "completion", "drawishness"):
        if not _is_ratio(obj[k]):
            return f"{k} is not a number in [0, 1]"
    if obj["mean_turns"] is not None and not _is_seconds(obj["mean_turns"]):
        return "bad mean_turns"
    for k in ("compile_s", "play_s", "inproc_s"):
        if not _is_seconds(obj[k]):
            return f"{k} is not a duration"
    if obj["verdict"] == "playable" and (obj["completion"] is None or obj["mean_turns"] is None
                                         or obj["playouts"] < 1):
        return "a playable verdict without playout statistics"
    return None


def result_from_reply(reply: Reply) -> EngineResult:
    if not reply.ok:
        return EngineResult(reply.kind or "error", reply.message, wall_s=reply.seconds)
    d = reply.data or {}
    if d.get("ok") is False:
        return EngineResult("error", f"worker refused the request: {d.get('message')}", wall_s=reply.seconds)
    worker_verdict = d["verdict"]
    verdict = _WORKER_VERDICTS[worker_verdict]
    message = d["message"]
    if worker_verdict == "engine_error":
        compiled = None if (message or "").startswith("compile") else True
    else:
        compiled = verdict != "not_compiled"
    return EngineResult(verdict, message, compiled, d["players"], d["playouts"], d["balance"], d["completion"],
                        d["drawishness"], d["mean_turns"], d["compile_s"], d["play_s"], d["inproc_s"], reply.seconds)


def _check_ready(info: dict[str, Any]) -> str | None:
    if info.get("protocol") != 1:
        return f"worker speaks protocol {info.get('protocol')!r}, expected 1"
    return None


class LudiiEngine:
    """Evaluates game descriptions on a pool of JVM workers (see the module docstring)."""

    def __init__(self, jar: str | Path | None, settings: EngineSettings | None = None, *,
                 command: Sequence[str] | None = None, log_dir: str | Path | None = None) -> None:
        """``jar``: the user's Ludii jar (checked; the worker is compiled against it on first use).
        ``command``: run this worker program instead (a fake worker in tests); ``jar`` may be None."""
        self.settings = settings or EngineSettings()
        self.jar = Path(jar) if jar is not None else None
        self._command = list(command) if command is not None else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._pool: JsonLinesPool | None = None
        self._cache: OrderedDict[str, EngineResult] = OrderedDict()
        self.stats = {"evaluated": 0, "cache_hits": 0, "seconds": 0.0}
        self.ready_info: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle
    def _make_pool(self) -> JsonLinesPool:
        s = self.settings
        if self._command is not None:
            command, log_dir = self._command, self.log_dir
        else:
            if self.jar is None:
                raise toolchain.LudiiSetupError("ludii: no Ludii jar given")
            classes = toolchain.compile_worker(self.jar)
            command = toolchain.java_command(self.jar, classes, xmx_mb=s.xmx_mb, verbose=s.verbose,
                                             warmup=s.warmup_playouts)
            log_dir = self.log_dir or toolchain.cache_root() / "logs" / str(os.getpid())
        return JsonLinesPool(command, workers=s.workers, timeout=s.hard_limit, startup_timeout=s.startup_timeout_s,
                             log_dir=log_dir, name="Ludii worker", check_ready=_check_ready, keep_logs=s.verbose)

    @property
    def pool(self) -> JsonLinesPool:
        if self._pool is None:
            self._pool = self._make_pool()
        return self._pool

    def start(self) -> None:
        """Start the JVMs now (they warm up in the background)."""
        self.pool.start()

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every JVM has warmed up; a JVM that cannot start is a LudiiSetupError."""
        try:
            self.ready_info = self.pool.wait_ready()
        except PoolError as err:
            raise toolchain.LudiiSetupError(f"ludii: {err}") from None
        return self.ready_info

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> "LudiiEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, game: str) -> EngineResult:
        return self.evaluate_many([game])[0]

    def evaluate_many(self, games: Sequence[str]) -> list[EngineResult]:
        """One result per description, evaluated in parallel (duplicates and cached ones once)."""
        s = self.settings
        t0 = time.monotonic()
        out: list[EngineResult | None] = [None] * len(games)
        todo: dict[str, list[int]] = {}
        for i, g in enumerate(games):
            hit = self._cache.get(g)
            if hit is not None:
                self._cache.move_to_end(g)
                out[i] = replace(hit, cached=True)
                self.stats["cache_hits"] += 1
            else:
                todo.setdefault(g, []).append(i)
        if todo:
            unique = list(todo)
            payloads = [{"op": "eval", "game": g, "playouts": s.playouts, "max_turns": s.max_turns,
                         "budget_s": s.budget_s, "seed": s.seed} for g in unique]
            try:
                replies = self.pool.request_many(payloads, s.hard_limit, check_eval_reply)
            except PoolError as err:
                replies = [Reply(None, "crash", str(err)) for _ in unique]
                self.close()
                self._pool = None  # a later call tries again from scratch
            for g, reply in zip(unique, replies):
                result = result_from_reply(reply)
                if result.verdict in CACHED_VERDICTS and s.cache_size:
                    self._cache[g] = result
                    while len(self._cache) > s.cache_size:
                        self._cache.popitem(last=False)
                for j, i in enumerate(todo[g]):
                    out[i] = result if j == 0 else replace(result, cached=True)
            self.stats["evaluated"] += len(unique)
        self.stats["seconds"] += time.monotonic() - t0
        return [r for r in out if r is not None]

    # ------------------------------------------------------------------ other requests
    def expand_many(self, texts: Sequence[str], timeout: float = 60.0) -> list[tuple[str | None, str | None]]:
        """``(expanded, message)`` per raw description: defines inlined, options and rulesets
        realised with their defaults, metadata removed (Ludii's own expander)."""
        def check(obj: dict[str, Any]) -> str | None:
            if obj.get("ok") is not True or set(obj) != {"id", "ok", "expanded", "message"}:
                return "bad expand reply"
            if not all(v is None or isinstance(v, str) for v in (obj["expanded"], obj["message"])):
                return "bad expand reply"
            return None

        try:
            replies = self.pool.request_many([{"op": "expand", "game": t} for t in texts], timeout, check)
        except PoolError as err:
            raise toolchain.LudiiSetupError(f"ludii: {err}") from None
        out = []
        for r in replies:
            if not r.ok or r.data is None:
                out.append((None, f"{r.kind}: {r.message}"))
            else:
                out.append((r.data["expanded"], r.data["message"]))
        return out

    def ludeme_names(self, timeout: float = 120.0) -> LudemeNames:
        """The ludeme and constant names of the jar's grammar."""
        def check(obj: dict[str, Any]) -> str | None:
            ok = (obj.get("ok") is True and set(obj) == {"id", "ok", "ludemes", "constants"}
                  and all(isinstance(obj[k], list) and all(isinstance(x, str) for x in obj[k])
                          for k in ("ludemes", "constants")))
            return None if ok else "bad ludemes reply"

        try:
            r = self.pool.request({"op": "ludemes"}, timeout, check)
        except PoolError as err:
            raise toolchain.LudiiSetupError(f"ludii: {err}") from None
        if not r.ok or r.data is None:
            raise toolchain.LudiiSetupError(f"ludii: could not list the ludemes of the jar ({r.kind}: {r.message})")
        return LudemeNames(frozenset(r.data["ludemes"]), frozenset(r.data["constants"]))

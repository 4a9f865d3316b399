"""The paper's game-synthesis reward, and the batched reward function the reward engine runs.

Per sample: cut the generated middle at the first balancing bracket, recompose prefix + middle +
suffix, and score the game:

    malformed (brackets / strings,     0            (never reaches the engine)
      or a middle that is not one
      bracketed form, e.g. empty)
    does not compile                   0            (``not_compiled``)
    compiles, not playable             0.05         (``not_playable``: a playout raised, or < 2 turns)
    playable                           (balance^(1/3) + completion^(1/3) + drawishness^(1/3)) / 3
                                       (NaN when a term is undefined, e.g. one-player games: the
                                       reward engine's ``nan`` failure, 0 by default, as in the paper)
    timeout / JVM crash / engine error SampleFailure("timeout" | "crash" | "error"): counted by the
                                       reward engine and replaced by its on_timeout / on_crash /
                                       on_error values (0.01 by default, the paper's value)

With the validator the score is the validator's graded credit (a proxy).

:class:`LudiiReward` is a picklable callable (the evaluator is looked up per process), batched:
the whole batch goes to the engine's JVM pool at once and is evaluated in parallel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from progrl.ludii import fim, sexpr
from progrl.ludii.evaluators import MALFORMED, EvaluatorSpec, Judgement, get_evaluator
from progrl.rewards.failures import SampleFailure

NOT_COMPILED = 0.0
NOT_PLAYABLE = 0.05


def cube_root_mean(balance: float | None, completion: float | None, drawishness: float | None) -> float:
    """The paper's aggregate of the three playout statistics; NaN when one is undefined."""
    terms = (balance, completion, drawishness)
    if any(t is None or not math.isfinite(t) for t in terms):
        return math.nan
    return sum(max(0.0, t) ** (1.0 / 3.0) for t in terms) / 3.0  # type: ignore[operator]


def score(j: Judgement, not_compiled: float = NOT_COMPILED, not_playable: float = NOT_PLAYABLE
          ) -> float | SampleFailure:
    """The reward of one judged game (see the module docstring)."""
    if j.verdict == "malformed":
        return not_compiled
    if j.proxy is not None:
        return j.proxy.score
    r = j.engine
    assert r is not None
    if r.verdict == "not_compiled":
        return not_compiled
    if r.verdict == "not_playable":
        return not_playable
    if r.verdict == "playable":
        return cube_root_mean(r.balance, r.completion, r.drawishness)
    return SampleFailure(r.verdict, r.message or r.verdict)


def trimmed_middle(completion: str) -> str:
    """The generated middle after the paper's trim (one leading space, the prompt's, removed)."""
    return fim.bracket_trim(completion[1:] if completion.startswith(" ") else completion)


def recompose_completions(prompts: Sequence[str], completions: Sequence[str], prefix: Sequence[str] | None = None,
                          suffix: Sequence[str] | None = None) -> list[str]:
    """The recomposed game of each sample: trimmed middle between its prefix and suffix (taken
    from the columns when given, else parsed from the prompt in the paper's form)."""
    games = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if prefix is not None and suffix is not None:
            pre, suf = prefix[i], suffix[i]
        else:
            pre, suf = fim.parse_prompt(p)
        games.append(fim.recompose(pre, trimmed_middle(c), suf))
    return games


def judge_games(spec: EvaluatorSpec, games: Sequence[str], middles: Sequence[str] | None = None) -> list[Judgement]:
    """Judge recomposed games: malformed ones at once, the rest by the evaluator in one batch.
    With ``middles``, a game whose middle is not one bracketed form is malformed too."""
    out: list[Judgement] = [MALFORMED] * len(games)
    todo = [i for i, g in enumerate(games)
            if sexpr.is_well_formed(g) and (middles is None or fim.is_ludeme(middles[i]))]
    if todo:
        for i, j in zip(todo, get_evaluator(spec).judge_many([games[i] for i in todo])):
            out[i] = j
    return out


class LudiiReward:
    """Batched reward: ``reward(prompts, completions, prefix=..., suffix=..., **columns)``."""

    progrl_batched = True

    def __init__(self, spec: EvaluatorSpec, not_compiled: float = NOT_COMPILED, not_playable: float = NOT_PLAYABLE,
                 name: str = "ludii", require_ludeme: bool = True) -> None:
        self.spec = spec
        self.not_compiled = not_compiled
        self.not_playable = not_playable
        self.require_ludeme = require_ludeme
        self.__name__ = name

    def judge(self, prompts: Sequence[str], completions: Sequence[str], prefix: Sequence[str] | None = None,
              suffix: Sequence[str] | None = None) -> list[Judgement]:
        games = recompose_completions(prompts, completions, prefix, suffix)
        middles = [trimmed_middle(c) for c in completions] if self.require_ludeme else None
        return judge_games(self.spec, games, middles)

    def __call__(self, prompts: list[str], completions: list[str], prefix: list[str] | None = None,
                 suffix: list[str] | None = None, **columns) -> list[float | SampleFailure]:
        return [score(j, self.not_compiled, self.not_playable) for j in self.judge(prompts, completions, prefix, suffix)]


def engine_reward(prompts: list[str], completions: list[str], prefix: list[str] | None = None,
                  suffix: list[str] | None = None, *, jar: str | None = None, evaluator: str = "engine",
                  playouts: int = 100, max_turns: int = 500, budget_s: float = 5.0, kill_after_s: float | None = None,
                  workers: int = 2, xmx_mb: int = 1024, seed: int = 0, names_file: str | None = None,
                  command: Sequence[str] | None = None, require_ludeme: bool = True,
                  **columns) -> list[float | SampleFailure]:
    """The Ludii reward as a plain function for configs and `progrl score`, e.g.

        [[reward.functions]]
        fn = "progrl.ludii.reward:engine_reward"
        kwargs = { playouts = 100, budget_s = 5.0 }

    Prompts in the paper's form (or ``prefix`` / ``suffix`` columns); the jar from ``jar`` or
    ``$LUDII_JAR``. One evaluator (and JVM pool) per distinct setting and process."""
    import os

    from progrl.ludii.engine import EngineSettings

    if evaluator == "engine" and command is None:
        from progrl.ludii import toolchain

        jar = str(toolchain.resolve_jar(jar or os.environ.get("LUDII_JAR")))
    settings = EngineSettings(playouts=playouts, max_turns=max_turns, budget_s=budget_s, kill_after_s=kill_after_s,
                              workers=workers, xmx_mb=xmx_mb, seed=seed)
    spec = EvaluatorSpec(kind=evaluator, jar=jar, engine=settings, names_file=names_file,  # type: ignore[arg-type]
                         command=tuple(command) if command is not None else None)
    return LudiiReward(spec, require_ludeme=require_ludeme)(prompts, completions, prefix, suffix)

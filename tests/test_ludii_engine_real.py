"""The real Ludii engine through progrl's evaluator. Skipped unless LUDII_JAR names a Ludii jar (CI has
none: Ludii is CC BY-NC-ND and never part of progrl). docs/ludii.md says how to get or build one."""

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from ludii_games import ENDS_AT_ONCE, GOOD, HUGE_BOARD, LINE_FOUR, NO_PLAYERS, UNKNOWN_LUDEME, WITH_DEFINE
from progrl.ludii import toolchain
from progrl.ludii.engine import EngineSettings, LudiiEngine
from progrl.ludii.reward import cube_root_mean

JAR = os.environ.get("LUDII_JAR")
HAS_JAVAC = shutil.which("javac") is not None
pytestmark = pytest.mark.skipif(not (JAR and Path(JAR).is_file() and HAS_JAVAC),
                                reason="needs LUDII_JAR (a Ludii jar) and a JDK")


def test_worker_compiles_against_the_jar_and_is_cached(tmp_path):
    classes = toolchain.compile_worker(Path(JAR), cache=tmp_path)
    built = classes / "ProgrlLudiiWorker.class"
    assert built.is_file()
    stamp = built.stat().st_mtime_ns
    assert toolchain.compile_worker(Path(JAR), cache=tmp_path) == classes  # same jar and source: no rebuild
    assert built.stat().st_mtime_ns == stamp


@pytest.fixture(scope="module")
def engine():
    e = LudiiEngine(JAR, EngineSettings(workers=2, budget_s=2.0, kill_after_s=8.0))
    e.wait_ready()
    yield e
    e.close()


def test_own_games_compile_and_play(engine):
    results = engine.evaluate_many(list(GOOD.values()) + [WITH_DEFINE])
    for r in results:
        assert r.compiled and r.playouts == 100 and r.mean_turns >= 2, r
        assert r.verdict == "playable"
        assert 0.0 <= r.balance <= 1.0 and 0.0 <= r.completion <= 1.0 and 0.0 <= r.drawishness <= 1.0
    line_four = results[0]
    assert line_four.completion > 0.5  # random players usually finish four in a row on 5x5
    last_move = results[list(GOOD).index("last-move")]
    assert last_move.balance == 0.0 and last_move.completion == 1.0  # 9 cells: the first player always moves last
    assert cube_root_mean(last_move.balance, last_move.completion, last_move.drawishness) == pytest.approx(2 / 3)
    # seeded: the same description gives the same statistics in a fresh JVM
    other = LudiiEngine(JAR, EngineSettings(workers=1, budget_s=2.0, kill_after_s=8.0))
    try:
        again = other.evaluate(LINE_FOUR)
    finally:
        other.close()
    assert (again.balance, again.completion, again.mean_turns) == (line_four.balance, line_four.completion,
                                                                   line_four.mean_turns)


def test_broken_games_verdicts(engine):
    unknown, no_players, at_once, huge = engine.evaluate_many([UNKNOWN_LUDEME, NO_PLAYERS, ENDS_AT_ONCE, HUGE_BOARD])
    assert unknown.verdict == "not_compiled" and "sqare" in unknown.message
    assert no_players.verdict == "not_compiled"
    assert at_once.verdict == "not_playable" and at_once.compiled and "fewer than 2 turns" in at_once.message
    assert huge.verdict == "timeout" and huge.compiled is None  # compiling alone outlasts the hard limit
    assert engine.evaluate(LINE_FOUR).verdict == "playable"  # the killed JVM was replaced


def test_library_games_from_the_jar():
    # six of the shortest board games of the user's jar, read at run time, with the paper's preset
    with zipfile.ZipFile(JAR) as z:
        infos = sorted((i.file_size, i.filename) for i in z.infolist()
                       if i.filename.startswith("lud/board/") and i.filename.endswith(".lud"))
        sample = [z.read(n).decode("utf-8") for _, n in infos[:60:10]]
    with LudiiEngine(JAR, EngineSettings(workers=2)) as engine:
        results = engine.evaluate_many(sample)
        assert all(r.compiled is True for r in results), [r.message for r in results]
        assert sum(r.verdict == "playable" for r in results) >= 4, [r.message for r in results]
        assert all(r.verdict in ("playable", "timeout") for r in results)
        expanded = engine.expand_many(sample[:2])
        assert all(text is not None and "(metadata" not in text for text, _ in expanded)
        names = engine.ludeme_names()
    assert {"game", "players", "equipment", "rules"} <= names.ludemes and "Orthogonal" in names.constants

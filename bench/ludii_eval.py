"""Benchmark of the Ludii engine evaluator: games per second with 1 and 2 JVM workers, and the cost of
the worker protocol over evaluating in the JVM itself.

    LUDII_JAR=/path/to/Ludii.jar python bench/ludii_eval.py --markdown docs/benchmarks.md
    python bench/ludii_eval.py            # without a jar: the fake worker (measures the pool only)

1. Throughput: a mix of cheap and slow games (our own test games, and with a jar also games of the
   jar's library read at run time: its shortest board games and a few slower ones), each evaluated
   with the paper's preset (100 random playouts, 500 turns, 5 s), cache off, 1 and 2 workers.
2. Verdicts: our own games, deliberately broken variants of them and the library sample, with the
   engine's statistics, the paper's reward and the times.
3. Overhead per request: for each game, the wall time of one request seen from Python minus the
   time the JVM spent on the same evaluation (measured inside the worker around compile + playouts,
   no protocol), and the round trip of an empty request (ping).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers
sys.path.insert(0, str(ROOT / "tests"))  # our own game descriptions
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchdoc  # noqa: E402
import ludii_games  # noqa: E402

from progrl.ludii.engine import EngineSettings, LudiiEngine  # noqa: E402

FAKE = [sys.executable, "-m", "progrl.ludii.fake_worker"]
SLOW_LIBRARY = ("board/space/connection/Hex.lud", "board/space/line/Gomoku.lud", "board/war/leaping/orthogonal/Dama.lud")


def game_mix(jar: str | None) -> list[tuple[str, str]]:
    """(label, description) pairs: cheap and slow games."""
    own = [(f"own:{k}", v) for k, v in ludii_games.GOOD.items()]
    if jar is None:
        return [(f"fake:cheap{i}", f"(game SLOW:0.02 c{i})") for i in range(6)] + \
               [(f"fake:slow{i}", f"(game SLOW:0.5 s{i})") for i in range(2)]
    with zipfile.ZipFile(jar) as z:
        infos = sorted((i.file_size, i.filename) for i in z.infolist()
                       if i.filename.startswith("lud/board/") and i.filename.endswith(".lud"))
        cheap = [n for _, n in infos[:40:10]]
        slow = [f"lud/{n}" for n in SLOW_LIBRARY if f"lud/{n}" in z.namelist()]
        lib = [(f"jar:{Path(n).stem}", z.read(n).decode("utf-8")) for n in cheap + slow]
    return own + lib


def make_engine(jar: str | None, workers: int) -> LudiiEngine:
    settings = EngineSettings(workers=workers, cache_size=0)
    return LudiiEngine(jar, settings, command=None if jar else FAKE)


def throughput(jar: str | None, games: list[str], workers: int, repeats: int) -> tuple[float, list]:
    """Best games/s over ``repeats`` passes of the whole mix; also the verdicts of the last pass."""
    with make_engine(jar, workers) as engine:
        engine.wait_ready()
        engine.evaluate_many(games[:workers])  # the JIT's first encounter with each kind of game
        best, results = 0.0, []
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = engine.evaluate_many(games)
            best = max(best, len(games) / (time.perf_counter() - t0))
    return best, results


def overhead(jar: str | None, mix: list[tuple[str, str]], repeats: int) -> tuple[list[list[str]], float]:
    """Per game: median wall per request, median in-JVM time of the same evaluation, the difference."""
    rows = []
    with make_engine(jar, 1) as engine:
        engine.wait_ready()
        pool = engine.pool
        pings = []
        for _ in range(50):
            t0 = time.perf_counter()
            assert pool.request({"op": "ping"}).ok
            pings.append(time.perf_counter() - t0)
        for label, game in mix:
            walls, inproc = [], []
            for _ in range(repeats):
                r = engine.evaluate(game)
                if r.inproc_s is None:
                    break
                walls.append(r.wall_s)
                inproc.append(r.inproc_s)
            if not walls:
                rows.append([label, "-", "-", "-", r.verdict])
                continue
            w, j = statistics.median(walls), statistics.median(inproc)
            rows.append([label, f"{w * 1e3:.1f}", f"{j * 1e3:.1f}", f"{(w - j) * 1e3:.2f}", r.verdict])
    return rows, statistics.median(pings)


def verdicts(jar: str, mix: list[tuple[str, str]]) -> list[list[str]]:
    """One row per game: verdict, reward, statistics, times (paper preset, 2 workers)."""
    from progrl.ludii import sexpr
    from progrl.ludii.reward import cube_root_mean

    broken = [("broken: unknown ludeme (sqare)", ludii_games.UNKNOWN_LUDEME),
              ("broken: no (players ...)", ludii_games.NO_PLAYERS),
              ("broken: ends before a turn", ludii_games.ENDS_AT_ONCE),
              ("broken: 400x400 board", ludii_games.HUGE_BOARD),
              ("broken: unbalanced bracket", ludii_games.UNBALANCED)]
    games = mix[:len(ludii_games.GOOD)] + [("own:with-define", ludii_games.WITH_DEFINE)] + broken + \
        mix[len(ludii_games.GOOD):]
    rows = []
    with make_engine(jar, 2) as engine:
        engine.wait_ready()
        well = [g for _, g in games if sexpr.is_well_formed(g)]
        results = iter(engine.evaluate_many(well))
        for label, g in games:
            if not sexpr.is_well_formed(g):
                rows.append([label, "malformed (never sent)", "0", "-", "-", "-", "-", "-", "-", "-"])
                continue
            r = next(results)
            reward = {"not_compiled": "0", "not_playable": "0.05"}.get(r.verdict, "0.01 (failure)")
            if r.verdict == "playable":
                reward = f"{cube_root_mean(r.balance, r.completion, r.drawishness):.3f}"
            f = (lambda x: "-" if x is None else f"{x:.2f}")
            rows.append([label, r.verdict + (f": {r.message[:60]}" if r.message else ""), reward, f(r.balance),
                         f(r.completion), f(r.drawishness), f(r.mean_turns), f(r.compile_s), f(r.play_s), f(r.wall_s)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jar", default=os.environ.get("LUDII_JAR"), help="Ludii jar (default $LUDII_JAR; none: fake)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", metavar="FILE", help="write/replace the '## Ludii evaluator' section of FILE")
    args = ap.parse_args()
    jar = args.jar if args.jar and Path(args.jar).is_file() else None
    mix = game_mix(jar)
    games = [g for _, g in mix]
    load = os.getloadavg()[0]
    t_start = time.time()
    speed = {}
    last_pass: list = []
    for w in (1, 2):
        speed[w], last_pass = throughput(jar, games, w, args.repeats)
    verdict_rows = verdicts(jar, mix) if jar else []
    rows, ping = overhead(jar, mix, args.repeats)
    kinds = ", ".join(f"{v} {sum(r.verdict == v for r in last_pass)}" for v in sorted({r.verdict for r in last_pass}))
    what = (f"the Ludii jar ({Path(jar).name}, worker compiled against it)" if jar else
            "the fake worker (no jar: the pool's own cost only)")
    section = "\n".join([
        "## Ludii evaluator",
        "",
        f"Measured by `LUDII_JAR=... python bench/ludii_eval.py --markdown docs/benchmarks.md` with {what}, on a "
        f"{os.cpu_count()}-core CPU ({benchdoc.cpu_model()}), Python {platform.python_version()}; 1-minute load "
        f"average {load:.1f} when it began, {time.time() - t_start:.0f} s in all. The machine is shared with other "
        "jobs: absolute numbers move with their load, and a 2-worker speed-up needs two free cores.",
        "",
        f"**Throughput**: {len(games)} games ("
        + (f"our {len(ludii_games.GOOD)} own test games, 4 of the shortest board games of the jar's library and "
           "3 slower ones (Hex, Gomoku, Dama)" if jar else "fake games: 6 of 20 ms and 2 of 500 ms")
        + f"), each with the paper's preset (100 random playouts, 500 turns, 5 s budget), result cache off; best of "
        f"{args.repeats} passes. Verdicts: {kinds}.",
        "",
        _table(["workers", "games/s", "speed-up"],
               [[str(w), f"{speed[w]:.2f}", f"{speed[w] / speed[1]:.2f}x"] for w in (1, 2)]),
        "",
        *(["**Verdicts and timings** through progrl's evaluator (2 workers, the paper's preset, cold cache): our own "
            "games, deliberately broken variants, and the library sample. Seconds: compile and playouts measured in "
            "the JVM, wall from Python (a killed request has no JVM times).", "",
            _table(["game", "verdict", "reward", "balance", "completion", "drawishness", "mean turns", "compile s",
                    "play s", "wall s"], verdict_rows), ""] if verdict_rows else []),
        "**Overhead of the pool over evaluating in the JVM**: one worker; per game the median over "
        f"{args.repeats} requests of the wall time seen from Python and of the time the JVM measured around the "
        f"same compile + playouts; the difference is what the protocol, JSON and process switches cost. An empty "
        f"request (ping) takes {ping * 1e3:.2f} ms round trip.",
        "",
        _table(["game", "request ms", "in JVM ms", "overhead ms", "verdict"], rows),
        "",
    ])
    benchdoc.publish(section, "Ludii evaluator", args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

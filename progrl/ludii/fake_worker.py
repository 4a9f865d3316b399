"""A stand-in for the Java worker that speaks the same JSON-lines protocol, in pure Python.

For tests and benchmarks on machines without Java or Ludii. It never plays anything: the verdict
is chosen by words in the game text, so tests can make a worker hang, crash or corrupt its channel
on purpose::

    HANG                sleep forever (the pool must time out and kill it)
    SPAWN:<file>        start a child process (``sleep``), write its pid to <file>, then hang
    CRASH               exit at once with code 7
    GARBAGE             answer with a line that is not JSON
    TWOLINES            answer, then (0.1 s later) write a second, unsolicited line
    WRONGID             answer with another request's id
    FLOOD               write 9 MB without a newline
    SLOW:<seconds>      sleep that long, then answer "playable"
    BARRIER:<dir>:<n>   create a file in <dir>, wait (up to 20 s) until <dir> holds <n> files, then
                        answer "playable": n requests only all finish if n workers run them at once
    BADSCHEMA           answer a well-formed JSON object whose balance is 7 (not in [0, 1])
    NOTCOMPILED / NOTPLAYABLE / BUDGET / ENGINEERROR / ONEPLAYER
                        answer with that verdict (ONEPLAYER: playable, balance null)
    anything else       "playable" with metrics derived from a hash of the text

Command-line flags: ``--fail-start`` (exit before ready), ``--bad-ready`` (a garbage ready line),
``--ready-delay S``.

Run as ``python -m progrl.ludii.fake_worker``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def _metrics(game: str) -> dict:
    h = hashlib.sha256(game.encode("utf-8")).digest()
    return {"players": 2, "playouts": 100, "balance": h[0] / 255, "completion": h[1] / 255,
            "drawishness": h[2] / 255, "mean_turns": 2.0 + h[3] / 8}


def evaluate(game: str) -> dict:
    base = {"verdict": "playable", "message": None, "players": None, "playouts": 0, "balance": None,
            "completion": None, "drawishness": None, "mean_turns": None, "compile_s": 0.001, "play_s": 0.0}
    if "SLOW:" in game:
        seconds = float(game.split("SLOW:", 1)[1].split()[0].rstrip(")"))
        time.sleep(seconds)
        base["play_s"] = seconds
    if "BARRIER:" in game:
        folder, n = game.split("BARRIER:", 1)[1].split()[0].rstrip(")").rsplit(":", 1)
        open(os.path.join(folder, str(os.getpid())), "w").close()
        end = time.monotonic() + 20
        while len(os.listdir(folder)) < int(n) and time.monotonic() < end:
            time.sleep(0.01)
        if len(os.listdir(folder)) < int(n):
            return {**base, "verdict": "engine_error", "message": "barrier not reached"}
    if "BADSCHEMA" in game:
        return {**base, **_metrics(game), "balance": 7}
    for word, verdict in (("NOTCOMPILED", "not_compiled"), ("NOTPLAYABLE", "not_playable"),
                          ("BUDGET", "budget_exceeded"), ("ENGINEERROR", "engine_error")):
        if word in game:
            return {**base, "verdict": verdict, "message": f"fake {verdict}"}
    if "ONEPLAYER" in game:
        return {**base, "players": 1, "playouts": 100, "completion": 0.5, "mean_turns": 5.0}
    return {**base, **_metrics(game)}


def serve(request: dict) -> dict | None:
    op = request.get("op")
    if op == "ping":
        return {"ok": True}
    if op == "expand":
        return {"ok": True, "expanded": request["game"], "message": None}
    if op == "ludemes":
        return {"ok": True, "ludemes": ["game", "players", "equipment", "board", "square", "rules", "play", "end"],
                "constants": ["Orthogonal", "Mover", "Win"]}
    if op != "eval":
        return {"ok": False, "message": f"unknown op {op!r}"}
    game = request["game"]
    if "SPAWN:" in game:
        path = game.split("SPAWN:", 1)[1].split()[0].rstrip(")")
        child = subprocess.Popen(["sleep", "600"])
        with open(path, "w") as f:
            f.write(str(child.pid))
    if "HANG" in game or "SPAWN:" in game:
        while True:
            time.sleep(60)
    if "CRASH" in game:
        os._exit(7)
    t0 = time.perf_counter()
    repeat = int(request.get("repeat", 1))
    for _ in range(repeat):
        result = evaluate(game)
    return {"ok": True, **result, "inproc_s": (time.perf_counter() - t0) / repeat}


def main(argv: list[str]) -> int:
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    if "--fail-start" in argv:
        print("fake worker: failing on purpose", file=sys.stderr)
        return 5
    if "--ready-delay" in argv:
        time.sleep(float(argv[argv.index("--ready-delay") + 1]))
    out = sys.stdout
    if "--bad-ready" in argv:
        out.write("hello, not ready\n")
        out.flush()
    else:
        out.write(json.dumps({"ready": True, "protocol": 1, "ludii_version": "fake", "warmup_s": 0.0}) + "\n")
        out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        game = request.get("game", "")
        reply = serve(request)
        rid = request.get("id")
        if "GARBAGE" in game:
            out.write("<<this is not json>>\n")
        elif "FLOOD" in game:
            out.write("x" * (9 << 20))
        elif "WRONGID" in game:
            out.write(json.dumps({"id": rid + 1, **reply}) + "\n")
        else:
            out.write(json.dumps({"id": rid, **reply}) + "\n")
            if "TWOLINES" in game:  # the extra line comes a little after the answer, while the worker is idle
                out.flush()
                time.sleep(0.1)
                out.write(json.dumps({"id": rid, "ok": True}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

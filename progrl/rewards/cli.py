"""``progrl score``: run reward functions over a JSONL file of (prompt, completion) records.

    progrl score --reward my_reward.py:score --data samples.jsonl [--backend process] [--json]

Each line of the data file is a JSON object with ``prompt`` and ``completion``, each a string
or, as in TRL's conversational datasets, a list of ``{"role", "content"}`` messages (a string
completion of a conversational prompt is given to the functions as
``[{"role": "assistant", "content": completion}]``, the shape TRL's trainers pass); every
other key (``answer``, ``completion_ids``, ...) is passed to the reward functions as a column
(keyword argument). Prints
one line per record and a failure summary; with ``--json`` the only (so the last) line on
stdout is ``{"rewards": [...], "failures": {...}}``. A bad data file or reward spec is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from progrl.chat import assistant_message, is_conversation

EXIT_USAGE = 2


class DataError(ValueError):
    """A problem with the data file, reported as one line."""


def add_score_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``score`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("score", help="score a JSONL file of prompt/completion records with reward functions",
                              description="Score a JSONL file of {prompt, completion, ...} records with reward "
                                          "functions through the reward engine.")
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward", action="append", required=True, metavar="FILE.py:FN",
                   help="reward function, 'path/to/file.py:function' or 'package.module:function' (repeatable)")
    p.add_argument("--weight", action="append", type=float, metavar="W",
                   help="weight of each --reward, in the same order (default 1 each)")
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help="one JSON object per line with 'prompt' and 'completion'; other keys become columns")
    p.add_argument("--backend", choices=["inline", "process", "ray"], default="process",
                   help="where the functions run (default: process)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="hard limit per call, seconds (default 10)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="worker processes / Ray actors (default 2)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="samples per worker message (default 32)")
    p.add_argument("--memory-mb", type=int, default=None, metavar="MB",
                   help="memory a call may add in a worker (RLIMIT_AS); default: no cap")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (ray backend)")
    p.add_argument("--json", action="store_true",
                   help='print only one JSON object {"rewards": [...], "failures": {...}} as the last line')


def read_jsonl(path: str) -> tuple[list[Any], list[Any], dict[str, list[Any]]]:
    """Prompts, completions and the other keys as columns (missing values are None)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"data file {path} is not UTF-8 text") from None
    records: list[tuple[int, dict]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(rec).__name__}")
        for key in ("prompt", "completion"):
            if not (isinstance(rec.get(key), str) or is_conversation(rec.get(key))):
                what = "missing" if key not in rec else \
                    f"neither a string nor a list of {{role, content}} messages ({type(rec[key]).__name__})"
                raise DataError(f"{path} line {lineno}: {key!r} is {what}")
        if is_conversation(rec["prompt"]) and isinstance(rec["completion"], str):
            rec = {**rec, "completion": assistant_message(rec["completion"])}
        records.append((lineno, rec))
    if not records:
        raise DataError(f"data file {path} has no records")
    names: list[str] = []
    for _, rec in records:
        names += [k for k in rec if k not in ("prompt", "completion") and k not in names]
    columns = {k: [rec.get(k) for _, rec in records] for k in names}
    return [r["prompt"] for _, r in records], [r["completion"] for _, r in records], columns


def _json_number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def run_score(args: argparse.Namespace) -> int:
    """Run ``progrl score``; returns the exit code (0 ok, 2 bad input or setup, 1 backend failure)."""
    from pydantic import ValidationError

    from progrl.rewards.config import RewardConfig
    from progrl.rewards.engine import RewardEngine
    from progrl.rewards.failures import format_failures
    from progrl.rewards.jobs import RewardBackendError
    from progrl.rewards.spec import RewardSpecError

    def fail(message: str, code: int = EXIT_USAGE) -> int:
        print(f"progrl score: error: {message}", file=sys.stderr)
        return code

    weights = args.weight or [1.0] * len(args.reward)
    if len(weights) != len(args.reward):
        return fail(f"{len(args.weight)} --weight values for {len(args.reward)} --reward functions")
    try:
        cfg = RewardConfig(functions=[{"fn": fn, "weight": w} for fn, w in zip(args.reward, weights)],
                           backend=args.backend, timeout=args.timeout, workers=args.workers,
                           batch_size=args.batch_size, memory_mb=args.memory_mb, ray_address=args.ray_address)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return fail(f"invalid option {where}: {err['msg']}")
    try:
        prompts, completions, columns = read_jsonl(args.data)
    except DataError as exc:
        return fail(str(exc))
    try:
        engine = RewardEngine(cfg)
    except (RewardSpecError, RewardBackendError) as exc:
        return fail(str(exc))
    try:
        with engine:
            result = engine.score(prompts, completions, columns)
    except RewardBackendError as exc:
        return fail(str(exc), 1)
    except ValueError as exc:
        return fail(str(exc))

    if args.json:
        payload = {"rewards": [_json_number(r) for r in result.rewards], "failures": result.failures}
        print(json.dumps(payload))
        return 0
    names = list(result.per_function)
    header = "#\treward" + ("".join(f"\t{n}" for n in names) if len(names) > 1 else "")
    print(header)
    for i, r in enumerate(result.rewards):
        cells = [str(i), "dropped" if r is None else f"{r:.6g}"]
        if len(names) > 1:
            cells += ["dropped" if v is None else f"{v:.6g}" for v in (result.per_function[n][i] for n in names)]
        print("\t".join(cells))
    valid = [r for r in result.rewards if r is not None]
    mean = f"{sum(valid) / len(valid):.6g}" if valid else "n/a"
    print(f"{len(result.rewards)} records, mean reward {mean}, {len(result.rewards) - len(valid)} dropped, "
          f"{result.seconds:.2f}s")
    print(f"failures: {format_failures(result.failures)}")
    for line in result.errors:
        print(f"  {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m progrl.rewards.cli ...`` (the same as ``progrl score ...``)."""
    parser = argparse.ArgumentParser(prog="progrl score", description=add_score_parser.__doc__)
    _add_arguments(parser)
    return run_score(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

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

The file is streamed: a first pass checks every line and collects the column names
(so that a bad line is reported before anything is scored, and every chunk passes the
same columns), a second pass scores :data:`CHUNK` records at a time and prints each
chunk's lines (or its part of the JSON line) before reading the next. Memory stays at
one chunk, whatever the size of the file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from progrl.chat import assistant_message, is_conversation

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CHUNK = 8192  # records scored per engine call


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
    p.add_argument("--load-timeout", type=float, default=None, metavar="S",
                   help="limit for importing the functions in a worker, seconds (default: --timeout)")
    p.add_argument("--sandbox", action="store_true",
                   help="run each worker in a bubblewrap sandbox: own PID namespace, no network, read-only files "
                        "(process backend; docs/rewards.md)")
    p.add_argument("--sandbox-network", action="store_true", help="with --sandbox: keep the network")
    p.add_argument("--json", action="store_true",
                   help='print only one JSON object {"rewards": [...], "failures": {...}} as the last line')


def _records(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-empty line; DataError for the first bad one."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
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
                    rec = {**rec, "completion": assistant_message(rec["completion"])}  # TRL's shape
                yield lineno, rec
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"data file {path} is not UTF-8 text") from None


def scan_jsonl(path: str) -> tuple[int, list[str]]:
    """First pass: check every record; (number of records, column names in order of first appearance)."""
    n, names, seen = 0, [], {"prompt", "completion"}
    for _, rec in _records(path):
        n += 1
        for k in rec:
            if k not in seen:
                seen.add(k)
                names.append(k)
    if not n:
        raise DataError(f"data file {path} has no records")
    return n, names


def read_chunks(path: str, names: Sequence[str], size: int) -> Iterator[tuple[list[str], list[str], dict[str, list]]]:
    """Second pass: (prompts, completions, columns) of ``size`` records at a time (missing values are None)."""
    chunk: list[dict] = []
    for _, rec in _records(path):
        chunk.append(rec)
        if len(chunk) == size:
            yield _columns(chunk, names)
            chunk = []
    if chunk:
        yield _columns(chunk, names)


def _columns(records: list[dict], names: Sequence[str]) -> tuple[list[str], list[str], dict[str, list]]:
    return ([r["prompt"] for r in records], [r["completion"] for r in records],
            {k: [r.get(k) for r in records] for k in names})


def read_jsonl(path: str) -> tuple[list[str], list[str], dict[str, list[Any]]]:
    """The whole file at once: prompts, completions and the other keys as columns (missing values are None)."""
    _, names = scan_jsonl(path)
    prompts, completions, columns = [], [], {k: [] for k in names}
    for p, c, cols in read_chunks(path, names, CHUNK):
        prompts += p
        completions += c
        for k in names:
            columns[k] += cols[k]
    return prompts, completions, columns


def _json_number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


class _Report:
    """What ``progrl score`` prints, chunk by chunk: a table, or one JSON line written in pieces."""

    def __init__(self, as_json: bool, names: list[str]) -> None:
        from progrl.rewards.engine import MAX_ERRORS
        from progrl.rewards.failures import empty_counts

        self.as_json, self.names, self.max_errors = as_json, names, MAX_ERRORS
        self.n = self.valid = 0
        self.total = 0.0
        self.seconds = 0.0
        self.failures = empty_counts()
        self.errors: list[str] = []
        out = sys.stdout
        if as_json:
            out.write('{"rewards": [')
        else:
            out.write("#\treward" + ("".join(f"\t{n}" for n in names) if len(names) > 1 else "") + "\n")

    def add(self, result: Any) -> None:
        out = sys.stdout
        rewards = result.rewards
        if self.as_json:
            out.write(("" if self.n == 0 else ", ") + ", ".join(json.dumps(_json_number(r)) for r in rewards))
        else:
            multi = len(self.names) > 1
            lines = []
            for i, r in enumerate(rewards):
                cells = [str(self.n + i), "dropped" if r is None else f"{r:.6g}"]
                if multi:
                    cells += ["dropped" if v is None else f"{v:.6g}"
                              for v in (result.per_function[n][i] for n in self.names)]
                lines.append("\t".join(cells) + "\n")
            out.write("".join(lines))
        out.flush()
        self.n += len(rewards)
        valid = [r for r in rewards if r is not None]
        self.valid += len(valid)
        self.total += sum(valid)
        self.seconds += result.seconds
        for k, v in result.failures.items():
            self.failures[k] += v
        for line in result.errors:
            if len(self.errors) < self.max_errors and line not in self.errors:
                self.errors.append(line)

    def finish(self) -> None:
        from progrl.rewards.failures import format_failures

        out = sys.stdout
        if self.as_json:
            out.write("], " + json.dumps({"failures": self.failures})[1:] + "\n")
            return
        mean = f"{self.total / self.valid:.6g}" if self.valid else "n/a"
        out.write(f"{self.n} records, mean reward {mean}, {self.n - self.valid} dropped, {self.seconds:.2f}s\n")
        out.write(f"failures: {format_failures(self.failures)}\n")
        for line in self.errors:
            out.write(f"  {line}\n")


def run_score(args: argparse.Namespace) -> int:
    """Run ``progrl score``; returns the exit code (0 ok, 2 bad input or setup, 1 backend failure, 130 Ctrl-C)."""
    from pydantic import ValidationError

    from progrl.rewards.config import RewardConfig
    from progrl.rewards.engine import RewardEngine
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
                           batch_size=args.batch_size, memory_mb=args.memory_mb, ray_address=args.ray_address,
                           load_timeout=getattr(args, "load_timeout", None), sandbox=getattr(args, "sandbox", False),
                           sandbox_network=getattr(args, "sandbox_network", False))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        return fail(f"invalid option {where}: {err['msg'].removeprefix('Value error, ')}")
    report, n = None, None
    try:
        try:
            n, names = scan_jsonl(args.data)
        except DataError as exc:
            return fail(str(exc))
        try:
            engine = RewardEngine(cfg)
        except (RewardSpecError, RewardBackendError) as exc:
            return fail(str(exc))
        with engine:
            report = _Report(args.json, list(engine.names))
            for prompts, completions, columns in read_chunks(args.data, names, CHUNK):
                report.add(engine.score(prompts, completions, columns))
        report.finish()
    except KeyboardInterrupt:
        done = report.n if report is not None else 0
        if report is not None:
            sys.stdout.write("\n")
            sys.stdout.flush()
        what = "no JSON summary was written" if args.json else "the lines above are complete"
        of = f" of {n}" if n is not None else ""
        print(f"progrl score: interrupted after {done}{of} records ({what})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DataError as exc:  # the file changed between the two passes
        return fail(str(exc))
    except RewardBackendError as exc:
        return fail(str(exc), 1)
    except ValueError as exc:  # RewardSpecError from a worker started later, bad columns
        return fail(str(exc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m progrl.rewards.cli ...`` (the same as ``progrl score ...``)."""
    parser = argparse.ArgumentParser(prog="progrl score", description=add_score_parser.__doc__)
    _add_arguments(parser)
    return run_score(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The ``progrl`` command: train, sft, eval, score, tasks.

Mistakes in configs, files, model names or reward functions end in one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from progrl.config import (RESUME_MUTABLE, ConfigError, TrainConfig, build_config, read_toml, resume_conflicts,
                           validate_model)
from progrl.storage import StorageError


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("progrl")
    except PackageNotFoundError:  # running from a source tree
        from progrl import __version__

        return __version__


def _common_run_args(p: argparse.ArgumentParser, rl: bool = True) -> None:
    p.add_argument("task", help="task name (see `progrl tasks`), path/to/file.py:Class or package.module:Class")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set algo.lr=1e-4 (repeatable)")
    if rl:
        p.add_argument("--steps", type=int, help="RL steps (config: steps)")
    p.add_argument("--seed", type=int, help="random seed (config: seed)")
    p.add_argument("--model", help="hub id, local folder, .gguf file or alias (config: model.name)")
    p.add_argument("--out", help="run directory (config: out); must be new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the progrl run already in --out (its files are deleted first)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progrl", description="RL for language models from programmed rewards.")
    parser.add_argument("--version", action="version", version=f"progrl {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="supervised warm start (if the task has one) then RL")
    _common_run_args(p)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint (only steps, log.*, eval.every, "
                        "eval.batch_size, threads, device, reward workers/output/ray_address, "
                        "model.gradient_checkpointing and rollout.generation_batch_size may change)")

    p = sub.add_parser("sft", help="only the supervised warm start; saves the model to RUN_DIR/final")
    _common_run_args(p, rl=False)

    p = sub.add_parser("eval", help="held-out evaluation of a finished (or checkpointed) run")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, help="number of held-out prompts (config: eval.n_prompts)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")

    p = sub.add_parser("tasks", help="list the tasks (built-in and plug-ins) and their options")
    p.add_argument("name", nargs="?", help="show only this task (a name or path/to/file.py:Class)")

    from progrl.rewards.cli import add_score_parser

    add_score_parser(sub)
    return parser


def load_run_config(args) -> TrainConfig:
    """Task defaults < --config < --set < short flags."""
    from progrl.tasks import task_reference

    task = task_reference(args.task)
    file_data = read_toml(args.config) if args.config else {}
    if task_reference(file_data.get("task", args.task)) != task:
        raise ConfigError(f"config error: task: the file says {file_data['task']!r} but the command says {args.task!r}")
    flags = {"task": task, "steps": getattr(args, "steps", None), "seed": args.seed, "out": args.out}
    if args.model:
        flags["model"] = {"name": args.model}
    return build_config(_defaults_of(task, file_data, args.overrides), file_data, args.overrides, flags)


def _defaults_of(task: str, file_data: dict, overrides: list[str]) -> dict:
    from progrl.config import apply_override
    from progrl.tasks import get_task

    opts: dict = dict(file_data.get("task_options", {}))
    probe: dict = {"task_options": opts}
    for o in overrides:
        if o.startswith("task_options."):
            probe = apply_override(probe, o)
    return get_task(task, probe["task_options"]).defaults()


def default_run_dir(task: str) -> Path:
    return Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


def resume_config(args) -> tuple[Path, TrainConfig]:
    """The run directory and config of ``--resume RUN``: the run's saved config, with what the
    command line asks for layered on top (--config < --set < flags) and compared to it."""
    run_dir = Path(args.resume)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"config error: --resume: {run_dir} is not a run directory (no config.toml)")
    data = read_toml(run_dir / "config.toml")
    try:
        saved = validate_model(TrainConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {run_dir / 'config.toml'})") from None
    from progrl.tasks import task_reference

    if task_reference(args.task) != saved.task:
        raise ConfigError(f"config error: task: {run_dir} is a {saved.task!r} run, not {args.task!r}; "
                          f"resume it with `progrl train {saved.task} --resume {run_dir}`")
    if args.out and Path(args.out).resolve() != run_dir.resolve():
        raise ConfigError(f"config error: --out: a resumed run stays in its own directory {run_dir}; "
                          f"drop --out, or start a new run without --resume")
    from progrl import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise ConfigError(f"config error: --resume: no checkpoint in {run_dir}")
    ckpt.read_state(latest)  # a damaged state.json is reported before the model is loaded
    file_data = read_toml(args.config) if args.config else {}
    flags = {"steps": args.steps, "seed": args.seed}
    if args.model:
        flags["model"] = {"name": args.model}
    asked = build_config(data, file_data, args.overrides, flags)
    conflicts = resume_conflicts(saved, asked)
    if conflicts:
        key, old, new = conflicts[0]
        more = f" (also {', '.join(c[0] for c in conflicts[1:])})" if len(conflicts) > 1 else ""
        raise ConfigError(f"config error: {key}: cannot change when resuming (the run has {old!r}, asked for {new!r})"
                          f"{more}; a resumed run may change only {', '.join(RESUME_MUTABLE)}: start a new run "
                          f"(--out) to change the rest")
    asked.out = str(run_dir)
    return run_dir, asked


RUN_MARKERS = ("config.toml", "metrics.jsonl", "checkpoints", "final")


def check_run_dir(run_dir: Path, task: str, overwrite: bool) -> None:
    """A new run needs a new or empty directory; ``--overwrite`` allows one that holds a progrl run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"config error: --out: {run_dir} is an existing file, not a directory")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"config error: --out: {run_dir} is not empty (an earlier run?); continue it with "
                          f"`progrl train {task} --resume {run_dir}`, or pass --overwrite to replace it")
    if not (run_dir / "config.toml").is_file() or not any((run_dir / m).exists() for m in RUN_MARKERS[1:]):
        raise ConfigError(f"config error: --overwrite: {run_dir} does not hold a progrl run (config.toml with "
                          f"metrics.jsonl, checkpoints/ or final/); not deleting it")


def clear_run_dir(run_dir: Path) -> None:
    """Delete what is in a run directory (``--overwrite``, after :func:`check_run_dir`)."""
    import shutil

    for child in run_dir.iterdir() if run_dir.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def cmd_train(args, sft_only: bool = False) -> int:
    from rich.console import Console

    from progrl.tasks import get_task
    from progrl.trainer import Trainer

    console = Console(stderr=True)
    resume = bool(getattr(args, "resume", None))
    if resume:
        if args.overwrite:
            raise ConfigError("config error: --overwrite with --resume: --resume continues the run, "
                              "--overwrite replaces it; choose one")
        run_dir, cfg = resume_config(args)
    else:
        from progrl.tasks import task_label

        cfg = load_run_config(args)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(task_label(cfg.task))
        check_run_dir(run_dir, cfg.task, args.overwrite)
        cfg.out = str(run_dir)
    if sft_only:
        cfg.steps = 0
    from progrl.distributed import setup

    dist = setup(cfg.device)  # several processes under torchrun / accelerate launch (docs/scaling.md)
    task = get_task(cfg.task, cfg.task_options)
    trainer = Trainer(cfg, task, run_dir, console=console, dist=dist)
    if dist.is_main:
        console.print(f"progrl {cfg.task}: run directory {run_dir}"
                      + (f" ({dist.world_size} processes, {dist.sharding})" if dist.enabled else ""))
        if not resume and args.overwrite:
            clear_run_dir(run_dir)  # only now: a config or model mistake above leaves the old run alone
    dist.barrier()  # every process has checked the directory, and the main one has cleared it
    try:
        summary = trainer.train(resume=resume)
    except StorageError as err:
        from progrl.checkpoint import latest_checkpoint

        if sft_only or latest_checkpoint(run_dir) is None:
            again = "start again with --overwrite"
        else:
            again = f"continue with `progrl train {cfg.task} --resume {run_dir}`"
        raise StorageError(f"{err}; free some space, then {again}") from None
    dist.close()
    if not dist.is_main:
        return 0
    before, after = summary["eval_before"], summary["eval_after"]
    for key in task.headline_metrics:
        if key in after:
            print(f"held-out {key}: before RL {before.get(key, float('nan')):.4f}  after RL {after[key]:.4f}")
    print(f"run directory: {run_dir}  ({summary['seconds']:.0f}s)")
    return 0


def cmd_eval(args) -> int:
    from progrl.api import evaluate

    metrics = evaluate(args.run_dir, n=args.n)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def describe_options(options_cls) -> list[str]:
    """One line per option of a task: name, type, default, description."""
    from progrl.docgen import UNDOCUMENTED, rows

    lines = []
    for name, tp, default, meaning in rows(options_cls):
        default = "(required)" if default == "required" else f"= {default}"
        lines.append(f"    {name}: {tp} {default}" + ("" if meaning == UNDOCUMENTED else f"  -- {meaning}"))
    return lines


def cmd_tasks(args) -> int:
    from progrl.tasks import TASKS, plugin_tasks, task_class

    plugins = plugin_tasks()
    names = [args.name] if getattr(args, "name", None) else [*TASKS, *plugins]
    for name in names:
        origin = "plug-in " + plugins[name] if name in plugins else ("" if name in TASKS else name)
        try:
            cls = task_class(name)
            summary, options = cls.summary, describe_options(cls.Options)
        except (ImportError, ConfigError) as err:  # an optional dependency is missing, a plug-in is broken
            if not plugins.get(name) and name not in TASKS:
                raise  # the one task asked for: its error is the answer
            summary, options = f"(unavailable: {str(err).splitlines()[0]})", []
        print(f"{name:18s} {summary}" + (f"  [{origin}]" if origin else ""))
        for line in options:
            print(line)
    return 0


def one_line(err: BaseException, limit: int = 500) -> str:
    """An error as one line: its lines joined (a message broken over lines is kept whole), cut at
    ``limit`` characters."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    from progrl.rewards.engine import RewardFailureError
    from progrl.rewards.jobs import RewardBackendError

    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "sft":
            return cmd_train(args, sft_only=True)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "tasks":
            return cmd_tasks(args)
        if args.command == "score":
            from progrl.rewards.cli import run_score

            return run_score(args)
    except (RewardFailureError, RewardBackendError) as err:  # a reward that cannot work: one line, no traceback
        if os.environ.get("PROGRL_DEBUG"):
            raise
        print(one_line(err, limit=1200), file=sys.stderr)  # the failure message (<= 500) and its counts
        return 2 if isinstance(err, RewardFailureError) else 1
    except (ConfigError, ValueError, FileNotFoundError, ImportError, StorageError) as err:
        if os.environ.get("PROGRL_DEBUG"):
            raise
        rank = int(os.environ.get("RANK", "0") or 0)
        if rank == 0:
            print(one_line(err), file=sys.stderr)
        elif not isinstance(err, ConfigError):  # a mistake in the config stops every process alike: said once
            print(f"[process {rank}] {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

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

from progrl.config import ConfigError, TrainConfig, build_config, read_toml, validate_model


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="task name (see `progrl tasks`)")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set algo.lr=1e-4 (repeatable)")
    p.add_argument("--steps", type=int, help="RL steps (config: steps)")
    p.add_argument("--seed", type=int, help="random seed (config: seed)")
    p.add_argument("--model", help="hub id, local folder, .gguf file or alias (config: model.name)")
    p.add_argument("--out", help="run directory (config: out)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progrl", description="RL for language models from programmed rewards.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="supervised warm start (if the task has one) then RL")
    _common_run_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")

    p = sub.add_parser("sft", help="only the supervised warm start; saves the model to RUN_DIR/final")
    _common_run_args(p)

    p = sub.add_parser("eval", help="held-out evaluation of a finished (or checkpointed) run")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, help="number of held-out prompts (config: eval.n_prompts)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")

    sub.add_parser("tasks", help="list the built-in tasks")

    from progrl.rewards.cli import add_score_parser

    add_score_parser(sub)
    return parser


def load_run_config(args) -> TrainConfig:
    """Task defaults < --config < --set < short flags."""
    from progrl.tasks import task_class

    cls = task_class(args.task)
    file_data = read_toml(args.config) if args.config else {}
    if file_data.get("task", args.task) != args.task:
        raise ConfigError(f"config error: task: the file says {file_data['task']!r} but the command says {args.task!r}")
    flags = {"task": args.task, "steps": args.steps, "seed": args.seed, "out": args.out}
    if args.model:
        flags["model"] = {"name": args.model}
    return build_config(_defaults_of(cls, file_data, args.overrides), file_data, args.overrides, flags)


def _defaults_of(cls, file_data: dict, overrides: list[str]) -> dict:
    from progrl.config import apply_override
    from progrl.tasks import get_task

    opts: dict = dict(file_data.get("task_options", {}))
    probe: dict = {"task_options": opts}
    for o in overrides:
        if o.startswith("task_options."):
            probe = apply_override(probe, o)
    return get_task(cls.name, probe["task_options"]).defaults()


def default_run_dir(task: str) -> Path:
    return Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args, sft_only: bool = False) -> int:
    from rich.console import Console

    from progrl.tasks import get_task
    from progrl.trainer import Trainer

    console = Console(stderr=True)
    if getattr(args, "resume", None):
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").exists():
            raise ConfigError(f"config error: --resume: {run_dir} is not a run directory (no config.toml)")
        data = read_toml(run_dir / "config.toml")
        if args.steps is not None:
            data["steps"] = args.steps
        cfg = validate_model(TrainConfig, data)
    else:
        cfg = load_run_config(args)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.task)
        cfg.out = str(run_dir)
    if sft_only:
        cfg.steps = 0
    task = get_task(cfg.task, cfg.task_options)
    console.print(f"progrl {cfg.task}: run directory {run_dir}")
    trainer = Trainer(cfg, task, run_dir, console=console)
    summary = trainer.train(resume=bool(getattr(args, "resume", None)))
    before, after = summary["eval_before"], summary["eval_after"]
    for key in task.headline_metrics:
        if key in after:
            print(f"held-out {key}: before RL {before.get(key, float('nan')):.4f}  after RL {after[key]:.4f}")
    print(f"run directory: {run_dir}  ({summary['seconds']:.0f}s)")
    return 0


def cmd_eval(args) -> int:
    from progrl.checkpoint import latest_checkpoint
    from progrl.tasks import get_task
    from progrl.trainer import Trainer

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.toml").exists():
        raise ConfigError(f"error: {run_dir} is not a run directory (no config.toml)")
    cfg = validate_model(TrainConfig, read_toml(run_dir / "config.toml"))
    if args.n:
        cfg.eval.n_prompts = args.n
    task = get_task(cfg.task, cfg.task_options)
    final = run_dir / "final"
    cfg.sft.examples = 0
    if final.exists():
        cfg.model.name = str(final)
        cfg.model.lora = False if not (final / "adapter_config.json").exists() else cfg.model.lora
        trainer = Trainer(cfg, task, run_dir)
    else:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise ConfigError(f"error: {run_dir} has neither a final model nor a checkpoint")
        trainer = Trainer(cfg, task, run_dir)
        trainer.resume_from(path)
    try:
        metrics = trainer.evaluate()
    finally:
        trainer.rewards.close()
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def cmd_tasks(_args) -> int:
    from progrl.tasks import TASKS, task_class

    for name in TASKS:
        try:
            summary = task_class(name).summary
        except ImportError as err:  # an optional dependency is missing
            summary = f"(unavailable: {err})"
        print(f"{name:18s} {summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
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
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as err:
        if os.environ.get("PROGRL_DEBUG"):
            raise
        print(str(err).splitlines()[0] if str(err) else type(err).__name__, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The Python API: build a config, train, evaluate, load the model -- no CLI needed (docs/python-api.md).

    import progrl

    def correct(completions, answer, **kwargs):
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    run = progrl.train(dataset="problems.jsonl", rewards=[correct], model="smollm2-135m", steps=20,
                       rollout={"max_new_tokens": 16}, out="runs/mine")
    run.eval_after                      # held-out metrics after RL
    progrl.evaluate(run.run_dir)        # evaluate again (a finished or checkpointed run)
    model, tokenizer = progrl.load_model(run.run_dir)

Configs are layered as on the command line: field defaults < the task's defaults < a TOML file
or dict < keyword values. Keyword values are sections as dicts (``rollout={"max_new_tokens": 16}``),
dotted keys (``**{"algo.lr": 1e-5}``) or top-level fields (``steps=20``); ``model="NAME"`` is
short for ``model={"name": "NAME"}``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from progrl.config import ConfigError, TrainConfig, apply_override, build_config, deep_merge, read_toml, \
    validate_model

RewardLike = Callable | str | tuple[Callable | str, float]


def _values_to_dict(values: dict[str, Any]) -> dict:
    data: dict = {}
    for key, value in values.items():
        if key == "model" and isinstance(value, str):
            value = {"name": value}
        if "." in key:
            parts = key.split(".")
            nested: dict = {}
            cursor = nested
            for p in parts[:-1]:
                cursor = cursor.setdefault(p, {})
            cursor[parts[-1]] = value
            data = deep_merge(data, nested)
        else:
            data = deep_merge(data, {key: value})
    return data


def _source_dict(source) -> dict:
    if source is None:
        return {}
    if isinstance(source, TrainConfig):
        from progrl.config import config_to_dict

        return config_to_dict(source)
    if isinstance(source, dict):
        return dict(source)
    return read_toml(source)


def task_name_of(task) -> str:
    """How a run directory names a task object so that ``progrl eval`` / ``--resume`` find it again."""
    from progrl.tasks import TASKS, task_class

    cls = type(task)
    if cls.name in TASKS and task_class(cls.name) is cls:
        return cls.name
    module = inspect.getmodule(cls)
    file = getattr(module, "__file__", None)
    if module is not None and module.__name__.startswith("progrl_task_") and file:
        return f"{file}:{cls.__qualname__}"  # loaded from a file by name
    if module is not None and module.__name__ != "__main__":
        return f"{module.__name__}:{cls.__qualname__}"
    if file:
        return f"{file}:{cls.__qualname__}"
    return cls.name or cls.__qualname__


def make_config(source: str | Path | dict | TrainConfig | None = None, *, task: str | Any | None = None,
                **values) -> TrainConfig:
    """A validated :class:`~progrl.config.TrainConfig` from a TOML file / dict and keyword values.

    ``task`` (a name or a Task object) contributes its defaults, as on the command line. A wrong
    key or value raises :class:`~progrl.config.ConfigError` with one line naming it.
    """
    from progrl.tasks import Task, get_task

    data = deep_merge(_source_dict(source), _values_to_dict(values))
    defaults: dict = {}
    if isinstance(task, Task):
        defaults = task.defaults()
        data.setdefault("task", task_name_of(task))
    else:
        name = task or data.get("task")
        if name:
            data["task"] = name
            defaults = get_task(name, data.get("task_options", {})).defaults()
    return build_config(defaults, data)


@dataclass
class Run:
    """A finished run: where it is and what it measured."""

    run_dir: Path
    config: TrainConfig
    summary: dict = field(default_factory=dict)

    @property
    def eval_before(self) -> dict:
        return self.summary.get("eval_before", {})

    @property
    def eval_after(self) -> dict:
        return self.summary.get("eval_after", {})

    def metrics(self, phase: str | None = "train") -> list[dict]:
        """The rows of metrics.jsonl (``phase=None``: all of them)."""
        from progrl.tracking import read_jsonl

        return [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if phase is None or r.get("phase") == phase]

    def eval_samples(self) -> list[dict]:
        from progrl.tracking import read_jsonl

        return read_jsonl(self.run_dir / "eval_samples.jsonl")

    def load_model(self):
        return load_model(self.run_dir)


def _dataset_task(dataset, eval_dataset, options: dict):
    from progrl.tasks.dataset import DatasetOptions, DatasetTask

    def rows_of(d):
        if d is None or isinstance(d, (str, Path)):
            return None
        if hasattr(d, "to_list"):  # a datasets.Dataset or a pandas DataFrame ("records" orientation)
            try:
                return d.to_list()
            except TypeError:
                pass
        if hasattr(d, "to_dict"):
            return d.to_dict("records")
        return [dict(r) for r in d]

    opts = dict(options)
    if isinstance(dataset, (str, Path)):
        opts["path"] = str(dataset)
    elif "path" not in opts:
        opts["path"] = "<memory>"
    if isinstance(eval_dataset, (str, Path)):
        opts["eval_path"] = str(eval_dataset)
    validated = validate_model(DatasetOptions, opts, prefix="task_options.")
    return DatasetTask(validated, rows=rows_of(dataset), eval_rows=rows_of(eval_dataset)), validated.model_dump(
        exclude_none=True)


def _reward_parts(rewards: list[RewardLike] | None) -> tuple[list[dict], list]:
    """Named functions (strings) go to the config; callables to the engine directly."""
    named, callables = [], []
    for r in rewards or []:
        fn, weight = r if isinstance(r, tuple) else (r, 1.0)
        if isinstance(fn, str):
            named.append({"fn": fn, "weight": float(weight)})
        elif callable(fn):
            callables.append((fn, float(weight)))
        else:
            raise ConfigError(f"config error: rewards: {fn!r} is neither a callable nor 'file.py:function'")
    if named and callables:
        raise ConfigError("config error: rewards: give either callables or 'file.py:function' names, not both")
    return named, callables


def train(config: str | Path | dict | TrainConfig | None = None, *, task: str | Any | None = None,
          dataset: Any = None, eval_dataset: Any = None, rewards: list[RewardLike] | None = None,
          out: str | Path | None = None, resume: bool = False, verbose: bool = True, **values) -> Run:
    """Train and return a :class:`Run`.

    - ``task``: a task name (``"arithmetic"``, ``"path/to/file.py:MyTask"``) or a Task object;
    - ``dataset``: instead of a task, the ``dataset`` task on a file / folder / dataset id (a path
      string), a list of row dicts, or a ``datasets.Dataset``; ``eval_dataset`` the held-out rows
      likewise (default: a held-out fraction of ``dataset``); other ``task_options`` go in
      ``task_options={...}``;
    - ``rewards``: reward functions, callables or ``"file.py:function"`` names, each optionally as
      ``(fn, weight)``; callables defined in a notebook or script (``__main__``) cannot be imported
      by worker processes, so with them the reward backend defaults to ``inline`` (say
      ``reward={"backend": "process"}`` for module-level functions of an importable module);
    - ``resume=True`` continues the run in ``out`` from its latest checkpoint (the config and
      task come from ``out/config.toml`` unless given);
    - everything else is config (see :func:`make_config`).
    """
    from rich.console import Console

    from progrl.tasks import Task, get_task
    from progrl.trainer import Trainer

    named, callables = _reward_parts(rewards)
    if resume:
        if out is None:
            raise ConfigError("config error: out: resume=True needs the run directory (out=...)")
        saved = Path(out) / "config.toml"
        if not saved.exists():
            raise ConfigError(f"config error: out: {out} is not a run directory (no config.toml)")
        data = deep_merge(read_toml(saved), _values_to_dict(values))
        cfg = validate_model(TrainConfig, data)
    else:
        source = _source_dict(config)
        if named:
            values = {**values, "reward": deep_merge(values.get("reward", {}), {"functions": named})}
        task_options = deep_merge(source.get("task_options", {}), values.pop("task_options", {}))
        if dataset is not None:
            task, task_options = _dataset_task(dataset, eval_dataset, task_options)
        reward_values = deep_merge(source.get("reward", {}), values.get("reward", {}))
        if callables and "backend" not in reward_values and any(
                getattr(fn, "__module__", None) == "__main__" for fn, _ in callables):
            values = {**values, "reward": deep_merge(values.get("reward", {}), {"backend": "inline"})}
        if out is not None:
            values["out"] = str(out)
        cfg = make_config({**source, "task_options": task_options}, task=task, **values)
        if cfg.out is None:
            from progrl.cli import default_run_dir
            from progrl.tasks import task_label

            cfg.out = str(default_run_dir(task_label(cfg.task)))
    if task is None or isinstance(task, str):
        task = get_task(cfg.task, cfg.task_options)
    elif not isinstance(task, Task):
        raise ConfigError(f"config error: task: expected a task name or a progrl Task, got {type(task).__name__}")
    from progrl.distributed import setup

    run_dir = Path(cfg.out)
    dist = setup(cfg.device)  # several processes when a launcher (torchrun, accelerate launch) started this script
    trainer = Trainer(cfg, task, run_dir, console=Console(stderr=True) if verbose else None,
                      reward_functions=callables or None, dist=dist)
    summary = trainer.train(resume=resume)
    dist.close()
    return Run(run_dir, cfg, summary)


def _run_config(run_dir: Path) -> TrainConfig:
    if not (run_dir / "config.toml").exists():
        raise ConfigError(f"error: {run_dir} is not a run directory (no config.toml)")
    return validate_model(TrainConfig, read_toml(run_dir / "config.toml"))


def evaluate(run_dir: str | Path, *, task: Any = None, rewards: list[RewardLike] | None = None,
             n: int | None = None) -> dict:
    """Held-out evaluation of a run (its final model, else its latest checkpoint).

    The task is found again from the run's config; pass ``task`` (and ``rewards`` callables) for a
    run trained on in-memory data or callables, which a config file cannot name."""
    from progrl.checkpoint import latest_checkpoint
    from progrl.tasks import Task, get_task
    from progrl.trainer import Trainer

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    if n:
        cfg.eval.n_prompts = n
    named, callables = _reward_parts(rewards)
    if named:
        cfg.reward = validate_model(type(cfg.reward), {**cfg.reward.model_dump(), "functions": named})
    if task is None:
        task = get_task(cfg.task, cfg.task_options)
    elif isinstance(task, str):
        task = get_task(task, cfg.task_options)
    elif not isinstance(task, Task):
        raise ConfigError(f"config error: task: expected a task name or a progrl Task, got {type(task).__name__}")
    final = run_dir / "final"
    cfg.sft.examples = 0
    cfg.log.report_to = []
    if final.exists():
        cfg.model.name = str(final)
        cfg.model.lora = False  # final/ holds the adapter merged into the weights
        trainer = Trainer(cfg, task, run_dir, reward_functions=callables or None)
    else:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise ConfigError(f"error: {run_dir} has neither a final model nor a checkpoint")
        trainer = Trainer(cfg, task, run_dir, reward_functions=callables or None)
        trainer.resume_from(path, optimizer=False)  # the weights are all evaluation needs
    try:
        return trainer.evaluate()
    finally:
        trainer.rewards.close()


def load_model(run_dir: str | Path):
    """``(model, tokenizer)`` of a run's final model (Hugging Face transformers objects)."""
    from progrl.modeling import load_causal_lm

    final = Path(run_dir) / "final"
    if not final.exists():
        raise ConfigError(f"error: {run_dir} has no final model (train it to the end first)")
    return load_causal_lm(str(final))

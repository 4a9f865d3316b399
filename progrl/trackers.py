"""Experiment trackers: TensorBoard, Weights & Biases, MLflow, trackio (``log.report_to``).

Each is an optional extra (``pip install progrl[wandb]`` ...); TensorBoard is the default.
Every tracker gets the same scalars as ``metrics.jsonl``, named ``<phase>/<key>`` (``train/
reward_mean``, ``eval/rewards/correct/mean``), and the run's config once. None of them needs a
network: wandb honours ``WANDB_MODE=offline``, MLflow logs to ``MLFLOW_TRACKING_URI`` (a
``file:`` store, which MLflow 3 accepts with ``MLFLOW_ALLOW_FILE_STORE=true``, or ``sqlite:``
with the full ``mlflow`` package; default: MLflow's own default), trackio to its local store
(``TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``).

Resume: the wandb run id and the MLflow run id are kept in ``RUN_DIR/trackers.json`` so a
resumed run continues the same tracker run instead of starting a new one.

A tracker named in ``report_to`` whose package is missing stops the run at start with one line
(``config error: log.report_to: 'wandb' needs the wandb package (pip install progrl[wandb])``);
a tracker that fails while logging is switched off with one warning: the JSONL files stay the
record of the run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

log = logging.getLogger("progrl")

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_available(names: list[str]) -> None:
    """A config error naming the first tracker in ``names`` whose package is not installed."""
    from progrl.config import ConfigError

    for name in names:
        pkg = PACKAGES[name]
        if importlib.util.find_spec(pkg) is None:
            raise ConfigError(f"config error: log.report_to: {name!r} needs the {pkg} package "
                              f"(pip install progrl[{name}])")


def scalars(metrics: dict, phase: str) -> dict[str, float]:
    """The finite numbers of a metrics row, named ``<phase>/<key>``."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{phase}/{k}"] = float(v)
    return out


class _State:
    """``trackers.json``: ids that let a resumed run continue its tracker runs."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "trackers.json"
        try:
            self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (json.JSONDecodeError, OSError):
            self.data = {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data))


class TensorBoardTracker:
    def __init__(self, run_dir: Path, **_):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict, state: _State):
        import wandb

        run_id = state.get("wandb_id")
        self.run = wandb.init(project=project, name=name, config=config, dir=str(run_dir), id=run_id,
                              resume="allow" if run_id else None, reinit="create_new")
        state.put("wandb_id", self.run.id)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict, state: _State):
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient()
        run_id = state.get("mlflow_run_id")
        if run_id is None:
            exp = self.client.get_experiment_by_name(project)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(project)
            run = self.client.create_run(exp_id, run_name=name)
            run_id = run.info.run_id
            state.put("mlflow_run_id", run_id)
            for k, v in flatten(config).items():
                self.client.log_param(run_id, k, str(v)[:500])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker:
    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict, state: _State):
        import trackio

        self.trackio = trackio
        resume = "allow" if state.get("trackio_name") else "never"
        self.run = trackio.init(project=project, name=name, config=config, resume=resume, embed=False,
                                auto_log_cpu=False, auto_log_gpu=False)
        state.put("trackio_name", name)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker,
            "trackio": TrackioTracker}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def open_trackers(run_dir: Path, names: list[str], *, project: str, name: str, config: dict) -> list:
    """Start the named trackers (TensorBoard quietly skipped when not installed, as before)."""
    from progrl.config import ConfigError

    state = _State(run_dir)
    out = []
    for tracker in dict.fromkeys(names):
        try:
            out.append((tracker, TRACKERS[tracker](run_dir, project=project, name=name, config=config,
                                                   state=state)))
        except ImportError as exc:
            if tracker == "tensorboard":
                continue  # the JSONL files are the record
            for _, t in out:
                t.close()
            raise ConfigError(f"config error: log.report_to: {tracker!r} needs the {PACKAGES[tracker]} package "
                              f"(pip install progrl[{tracker}]): {exc}") from None
        except Exception as exc:  # a tracker that cannot start (bad URI, refused store): one line, nothing lost
            for _, t in out:
                t.close()
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(f"config error: log.report_to: {tracker} could not start: "
                              f"{type(exc).__name__}: {first}") from None
    return out

"""Trackers beyond TensorBoard, offline: wandb (offline mode), MLflow (file store), trackio (local store).

Each is an optional extra; a test whose package is missing is skipped (the dev extra installs all
three, so CI runs them)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from progrl.cli import main
from progrl.config import ConfigError
from progrl.tracking import Tracker, read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import make_model_dir  # noqa: E402

ROWS = [(1, {"reward_mean": 0.5, "rewards/correct/mean": 0.25, "dropped": 0}, "train"),
        (2, {"reward_mean": 0.75, "rewards/correct/mean": 0.5, "dropped": 1}, "train"),
        (2, {"accuracy": 0.9, "note": "text is not a scalar"}, "eval")]


def log_rows(run_dir, names, rows=ROWS, **kw):
    t = Tracker(run_dir, report_to=names, project="progrl-test", config={"algo": {"lr": 1e-5}}, **kw)
    for step, metrics, phase in rows:
        t.log(step, metrics, phase=phase)
    t.close()


def test_mlflow_file_store_gets_every_scalar_and_a_resumed_run_continues(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    log_rows(run, ["mlflow"])
    run_id = json.loads((run / "trackers.json").read_text())["mlflow_run_id"]
    log_rows(run, ["mlflow"], rows=[(3, {"reward_mean": 1.0}, "train")])  # as a resumed run would
    assert json.loads((run / "trackers.json").read_text())["mlflow_run_id"] == run_id

    import mlflow

    client = mlflow.MlflowClient()
    hist = client.get_metric_history(run_id, "train/reward_mean")
    assert [(m.step, m.value) for m in hist] == [(1, 0.5), (2, 0.75), (3, 1.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/rewards/correct/mean")] == \
        [(1, 0.25), (2, 0.5)]
    assert [m.value for m in client.get_metric_history(run_id, "eval/accuracy")] == [0.9]
    r = client.get_run(run_id)
    assert r.data.params["algo.lr"] == "1e-05" and "eval/note" not in r.data.metrics
    assert client.get_experiment(r.info.experiment_id).name == "progrl-test"


def test_wandb_offline_run_is_written_and_resumed(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    log_rows(run, ["wandb"])
    run_id = json.loads((run / "trackers.json").read_text())["wandb_id"]
    files = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    keys = (b"train/reward_mean", b"train/rewards/correct/mean", b"eval/accuracy")
    for _ in range(100):  # wandb's service finishes writing the offline record stream just after finish()
        data = files[0].read_bytes()
        if all(k in data for k in keys):
            break
        time.sleep(0.1)
    assert all(k in data for k in keys)
    log_rows(run, ["wandb"], rows=[(3, {"reward_mean": 1.0}, "train")])
    assert json.loads((run / "trackers.json").read_text())["wandb_id"] == run_id  # same run continued
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # `wandb sync` joins them


def test_training_reports_to_trackio(tmp_path):
    """A real run with ``log.report_to = ["tensorboard", "trackio"]``: trackio's local store holds
    the same per-step reward means as metrics.jsonl."""
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    (tmp_path / "r.py").write_text("def one(completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": f"say {c}"}) + "\n" for c in "abcdef"))
    model = make_model_dir(tmp_path / "model")
    run = tmp_path / "tracked-run"
    assert main(["train", "dataset", "--model", str(model), "--out", str(run), "--steps", "2",
                 "--set", f"task_options.path={tmp_path / 'd.jsonl'}", "--set", f'reward.functions=["{tmp_path}/r.py:one"]',
                 "--set", "reward.backend=inline", "--set", "rollout.batch_size=2", "--set", "rollout.max_new_tokens=3",
                 "--set", 'log.report_to=["tensorboard", "trackio"]', "--set", 'log.project="progrl-trackio-test"',
                 "--set", "log.progress=false", "--set", "log.plot=false", "--set", "log.checkpoint_every=0",
                 "--set", "threads=1"]) == 0
    assert os.environ["TRACKIO_DIR"]  # conftest keeps trackio's store out of the home folder
    logs = SQLiteStorage.get_logs("progrl-trackio-test", "tracked-run")
    train = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "train"}
    got = {row["step"]: row["train/reward_mean"] for row in logs if "train/reward_mean" in row}
    assert got == pytest.approx({s: r["reward_mean"] for s, r in train.items()})
    assert any("train/rewards/one/mean" in row for row in logs)
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_a_missing_or_broken_tracker_is_one_line(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    from progrl.trackers import check_available

    with pytest.raises(ConfigError, match=r"log.report_to: 'wandb' needs the wandb package \(pip install progrl\[wandb\]\)"):
        check_available(["wandb"])
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert main(["train", "arithmetic", "--set", "log.report_to=['neptune']"]) == 2
    assert "log.report_to.0: Input should be" in capsys.readouterr().err
    if importlib.util.find_spec("mlflow") is not None:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'refused'}")
        with pytest.raises(ConfigError, match="log.report_to: mlflow could not start"):
            Tracker(tmp_path / "run", report_to=["mlflow"])

"""What a run writes while it trains: metrics.jsonl, samples.jsonl, TensorBoard, a PNG plot.

Layout of a run directory::

    config.toml        the full, validated config of the run
    metrics.jsonl      one JSON object per RL step (and "phase": "eval" rows for evaluations)
    samples.jsonl      a few sampled generations per step with their rewards (total and per function)
    eval_samples.jsonl every held-out generation of every evaluation, with its rewards
    tb/                TensorBoard event files (when tensorboard is installed)
    trackers.json      ids of the wandb / MLflow runs, so a resumed run continues them
    plot.png           reward and evaluation curves, drawn at the end of the run
    checkpoints/       resumable checkpoints (see progrl.checkpoint)
    final/             the trained model and tokenizer in Hugging Face format
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from progrl.storage import append_text, atomic_write, atomic_write_text

log = logging.getLogger("progrl")


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return rows


class Tracker:
    """Appends metrics and samples to JSONL files and mirrors scalars to the trackers of
    ``report_to`` (:mod:`progrl.trackers`: TensorBoard, wandb, MLflow, trackio)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, report_to: list[str] | None = None,
                 project: str = "progrl", run_name: str | None = None, config: dict | None = None):
        from progrl.trackers import open_trackers

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.eval_samples_path = self.run_dir / "eval_samples.jsonl"
        names = list(report_to) if report_to is not None else ["tensorboard"]
        if not tensorboard:
            names = [n for n in names if n != "tensorboard"]
        self.trackers = open_trackers(self.run_dir, names, project=project,
                                      name=run_name or self.run_dir.resolve().name, config=config or {})
        self.tb = next((t.writer for n, t in self.trackers if n == "tensorboard"), None)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows written after the checkpoint's step (they will be redone).
        Each file is rewritten atomically: a crash here leaves the old file."""
        for path in (self.metrics_path, self.samples_path, self.eval_samples_path):
            if not path.exists():
                continue
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def log(self, step: int, metrics: dict, phase: str = "train") -> None:
        from progrl.trackers import scalars

        row = {"step": step, "phase": phase, **{k: _clean(v) for k, v in metrics.items()}}
        append_text(self.metrics_path, json.dumps(row) + "\n")
        values = scalars(metrics, phase)
        for name, tracker in list(self.trackers):
            try:
                tracker.log(step, values)
            except Exception as exc:  # a tracker must never stop training: the JSONL is the record
                log.warning("tracker %s failed (%s: %s); it is switched off for this run", name,
                            type(exc).__name__, exc)
                self.trackers.remove((name, tracker))

    def log_eval_samples(self, step: int, samples: list[dict]) -> None:
        """Every generation of one evaluation, with its rewards, to eval_samples.jsonl."""
        append_text(self.eval_samples_path, "".join(
            json.dumps({"step": step, "index": i, **{k: _clean(v) for k, v in s.items()}}) + "\n"
            for i, s in enumerate(samples)))

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if not samples:
            return
        append_text(self.samples_path, "".join(json.dumps({"step": step, **s}) + "\n" for s in samples))

    def close(self) -> None:
        for name, tracker in self.trackers:
            try:
                tracker.close()
            except Exception as exc:
                log.warning("tracker %s failed to close (%s: %s)", name, type(exc).__name__, exc)
        self.trackers = []


class NullTracker:
    """What the processes other than the main one log: nothing (the main process writes the run)."""

    def truncate_after(self, step: int) -> None:
        return None

    def log(self, step: int, metrics: dict, phase: str = "train") -> None:
        return None

    def log_samples(self, step: int, samples: list[dict]) -> None:
        return None

    def log_eval_samples(self, step: int, samples: list[dict]) -> None:
        return None

    def close(self) -> None:
        return None


def plot_run(run_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """Draw the reward curve (mean with a ± std band) and the evaluation curves to a PNG."""
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if r.get("phase") == "train" and r.get("reward_mean") is not None]
    evals = [r for r in rows if r.get("phase") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_fn = sorted({k for r in evals for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    eval_keys = [k for k in ("accuracy", "mean_reward", *(per_fn if len(per_fn) > 1 else []))
                 if any(r.get(k) is not None for r in evals)]
    fig, axes = plt.subplots(1, 1 + len(eval_keys), figsize=(5 * (1 + len(eval_keys)), 3.6), squeeze=False)
    ax = axes[0][0]
    if train:
        s = [r["step"] for r in train]
        ax.plot(s, [r["reward_mean"] for r in train], label="reward mean")
        fn_keys = sorted({k for r in train for k in r if k.startswith("rewards/") and k.endswith("/mean")})
        if len(fn_keys) > 1:
            for k in fn_keys:
                pts = [(r["step"], r[k]) for r in train if r.get(k) is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, ls="--", label=k[8:-5])
        if all(r.get("reward_std") is not None for r in train):
            ax.fill_between(s, [r["reward_mean"] - r["reward_std"] for r in train],
                            [r["reward_mean"] + r["reward_std"] for r in train], alpha=0.15, label="± std")
    ax.set_xlabel("RL step")
    ax.set_title("training reward")
    ax.legend(loc="lower right")
    for i, k in enumerate(eval_keys, start=1):
        pts = [(r["step"], r[k]) for r in evals if r.get(k) is not None]
        axes[0][i].plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        axes[0][i].set_xlabel("RL step")
        label = k[8:-5] if k.startswith("rewards/") else k.replace("_", " ")
        axes[0][i].set_title(f"held-out {label}")
    fig.tight_layout()
    out = Path(path) if path else run_dir / "plot.png"
    try:
        atomic_write(out, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return out

"""What a run writes while it trains: metrics.jsonl, samples.jsonl, TensorBoard, a PNG plot.

Layout of a run directory::

    config.toml        the full, validated config of the run
    metrics.jsonl      one JSON object per RL step (and "phase": "eval" rows for evaluations)
    samples.jsonl      a few sampled generations per step with their rewards
    tb/                TensorBoard event files (when tensorboard is installed)
    plot.png           reward and evaluation curves, drawn at the end of the run
    checkpoints/       resumable checkpoints (see progrl.checkpoint)
    final/             the trained model and tokenizer in Hugging Face format
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from progrl.storage import append_text, atomic_write, atomic_write_text


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
    """Appends metrics and samples to JSONL files and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            except Exception:  # tensorboard not installed: the JSONL files are the record
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows written after the checkpoint's step (they will be redone).
        Each file is rewritten atomically: a crash here leaves the old file."""
        for path in (self.metrics_path, self.samples_path):
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def log(self, step: int, metrics: dict, phase: str = "train") -> None:
        row = {"step": step, "phase": phase, **{k: _clean(v) for k, v in metrics.items()}}
        append_text(self.metrics_path, json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"{phase}/{k}", v, step)
            self.tb.flush()

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if not samples:
            return
        append_text(self.samples_path, "".join(json.dumps({"step": step, **s}) + "\n" for s in samples))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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

    eval_keys = [k for k in ("accuracy", "mean_reward") if any(r.get(k) is not None for r in evals)]
    fig, axes = plt.subplots(1, 1 + len(eval_keys), figsize=(5 * (1 + len(eval_keys)), 3.6), squeeze=False)
    ax = axes[0][0]
    if train:
        s = [r["step"] for r in train]
        ax.plot(s, [r["reward_mean"] for r in train], label="reward mean")
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
        axes[0][i].set_title(f"held-out {k.replace('_', ' ')}")
    fig.tight_layout()
    out = Path(path) if path else run_dir / "plot.png"
    try:
        atomic_write(out, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return out

"""Atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-NNNNNN`` holding the policy weights (value
head and, for LoRA, the adapter included), the optimiser and learning-rate scheduler
states, the KL controller and the trainer state. It is written to a temporary folder
and renamed into place, and ``checkpoints/latest`` (a one-line file) is replaced
atomically afterwards, so a crash at any moment leaves the previous checkpoint usable.

Every random choice of a step is drawn from generators seeded by ``(seed, step)``, so a
resumed run needs no saved RNG stream to repeat the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | Path, step: int, *, policy, optimizer, scheduler, kl_controller,
                    state: dict, keep: int = 1) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` of them."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(policy.state_dict(), tmp / "policy.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "kl": kl_controller.state_dict()}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name + "\n")
    old = sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    marker = root / "latest"
    if marker.exists():
        p = root / marker.read_text().strip()
        if (p / "state.json").exists():
            return p
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(path: str | Path, *, policy, optimizer=None, scheduler=None, kl_controller=None) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the trainer state dict."""
    path = Path(path)
    policy.load_state_dict(torch.load(path / "policy.pt", map_location="cpu", weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    if kl_controller is not None:
        kl_controller.load_state_dict(state["kl"])
    return state

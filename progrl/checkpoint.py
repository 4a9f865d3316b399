"""Atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-NNNNNN`` holding the policy weights (value
head and, for LoRA, the adapter included), the optimiser and learning-rate scheduler
states, the KL controller and the trainer state. A checkpoint that exists stays loadable
until its replacement is complete, whatever moment a crash or a kill -9 picks:

1. everything is written to ``.tmp-step-N``; ``state.json`` comes last and is itself
   written atomically, so a folder with a ``state.json`` is complete;
2. an existing ``step-N`` (the same step saved twice) is renamed aside to ``.old-step-N``;
3. ``.tmp-step-N`` is renamed to ``step-N``; ``checkpoints/latest`` (a one-line file, for
   people) is replaced atomically;
4. ``.old-step-N`` and checkpoints beyond the newest ``keep`` are deleted, each renamed to
   ``.del-*`` first so a half-deleted folder is never taken for a checkpoint.

:func:`latest_checkpoint` takes the complete folder of the highest step among ``step-*``,
``.tmp-step-*`` and ``.old-step-*`` (so every interleaving above leaves one), and the next
save or a resume (:func:`recover`) tidies what a crash left (:func:`tidy`). A write that fails (a full disk) removes its
temporary folder, keeps the previous checkpoint and raises
:class:`~progrl.storage.StorageError`; a damaged checkpoint raises :class:`CheckpointError`
naming the file. Both are one line.

Every random choice of a step is drawn from generators seeded by ``(seed, step)``, so a
resumed run needs no saved RNG stream to repeat the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from progrl.storage import StorageError, atomic_write_text, describe, remove_tree, torch_save

FILES = ("policy.pt", "optimizer.pt", "scheduler.pt", "state.json")
_NAME = re.compile(r"^(?:\.(tmp|old)-)?step-(\d+)$")
_PREFERENCE = {None: 2, "tmp": 1, "old": 0}  # same step: the live name, then the new copy, then the old


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (damaged, truncated, not from this model); one line."""


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in FILES)


def tidy(root: Path) -> None:
    """Finish or undo what an interrupted save left in ``root`` (``checkpoints/``): a complete
    ``.tmp-step-N`` or ``.old-step-N`` whose ``step-N`` is missing is renamed into place,
    every other leftover is deleted."""
    if not root.is_dir():
        return
    leftovers = []
    for p in root.iterdir():
        if p.name.startswith(".del-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith(".") and ".tmp-" in p.name:
            p.unlink(missing_ok=True)  # an atomic write of `latest` that did not finish
        else:
            m = _NAME.match(p.name)
            if m and m.group(1):
                leftovers.append((-_PREFERENCE[m.group(1)], p, root / f"step-{m.group(2)}"))
    for _rank, p, live in sorted(leftovers):  # .tmp before .old
        if not live.exists() and is_complete(p):
            os.replace(p, live)
        else:
            remove_tree(p)


def save_checkpoint(run_dir: str | Path, step: int, *, policy, optimizer, scheduler, kl_controller,
                    state: dict, keep: int = 1) -> Path:
    """Write checkpoint ``step`` (see the module docstring) and keep only the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:06d}"
    final, tmp, old = root / name, root / f".tmp-{name}", root / f".old-{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tidy(root)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        torch_save(policy.state_dict(), tmp / "policy.pt")
        torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_text(tmp / "state.json", json.dumps({**state, "step": step, "kl": kl_controller.state_dict()}))
    except (OSError, StorageError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
        previous = latest_checkpoint(run_dir)
        kept = f"; kept the previous checkpoint {previous}" if previous is not None else ""
        raise StorageError(describe(cause, final) + kept) from exc
    try:
        if final.exists():
            os.replace(final, old)  # the complete copy stays loadable under .old- until tmp is in place
        os.replace(tmp, final)
        remove_tree(old)
        _publish(root, name, keep)
    except OSError as exc:  # renames and a one-line file: the complete checkpoint is already on disk
        raise StorageError(describe(exc, final)) from exc
    return final


def _publish(root: Path, name: str, keep: int) -> None:
    """Point ``latest`` at ``name`` and delete the checkpoints beyond the newest ``keep``."""
    marker = root / "latest"
    if not marker.is_file() or marker.read_text().strip() != name:
        atomic_write_text(marker, name + "\n")
    done = sorted((int(m.group(2)), p) for p in root.iterdir()
                  if (m := _NAME.match(p.name)) and not m.group(1) and p.is_dir())
    for _s, p in done[:-keep]:
        remove_tree(p)


def recover(run_dir: str | Path, keep: int = 1) -> Path | None:
    """Before resuming: finish what an interrupted save left (:func:`tidy`), point ``latest``
    at the newest complete checkpoint, apply the retention rule; returns that checkpoint."""
    root = Path(run_dir) / "checkpoints"
    try:
        tidy(root)
        latest = latest_checkpoint(run_dir)
        if latest is not None:
            _publish(root, latest.name, keep)
    except OSError as exc:
        raise StorageError(describe(exc, root)) from exc
    return latest


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None (reads only; see the module docstring)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    best = None
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and is_complete(p):
            rank = (int(m.group(2)), _PREFERENCE[m.group(1)])
            if best is None or rank > best[0]:
                best = (rank, p)
    return best[1] if best else None


def load_torch(path: Path):
    """``torch.load`` of a file progrl wrote (tensors only); a damaged file is a CheckpointError."""
    import torch

    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip errors (RuntimeError), UnpicklingError, EOFError, ...
        raise CheckpointError(f"checkpoint file {path} is damaged or truncated ({_first_line(exc)})") from None


def read_state(path: Path) -> dict:
    f = Path(path) / "state.json"
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {f}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{f} is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or not isinstance(state.get("kl"), dict):
        raise CheckpointError(f"{f} is not a progrl checkpoint state (needs an integer 'step' and a 'kl' object)")
    return state


def load_checkpoint(path: str | Path, *, policy, optimizer=None, scheduler=None, kl_controller=None) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the trainer state dict."""
    path = Path(path)
    state = read_state(path)
    _restore(policy, load_torch(path / "policy.pt"), path / "policy.pt")
    if optimizer is not None:
        _restore(optimizer, load_torch(path / "optimizer.pt"), path / "optimizer.pt")
    if scheduler is not None:
        _restore(scheduler, load_torch(path / "scheduler.pt"), path / "scheduler.pt")
    if kl_controller is not None:
        _restore(kl_controller, state["kl"], path / "state.json")
    return state


def _restore(obj, state_dict, path: Path) -> None:
    try:
        obj.load_state_dict(state_dict)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint file {path} does not fit this run's model "
                              f"({_first_line(exc)})") from None

"""Writing run files so that a crash or a full disk never leaves a half-written one behind.

Every file of a run directory is written through these helpers:

- :func:`atomic_write_text` / :func:`atomic_torch_save` / :func:`atomic_write` write to a
  temporary name next to the target and ``os.replace`` it into place, so a reader sees the
  old file or the new one, never a part;
- :func:`append_text` appends to a log (metrics.jsonl, samples.jsonl) and, when the write
  fails, cuts the file back to where it was;
- :func:`remove_tree` renames a folder to a ``.del-*`` name before deleting it, so a kill in
  the middle of the deletion leaves a folder that nothing mistakes for a live one.

A failed write raises :class:`StorageError`: one line naming the path, and "no space left on
device" when the disk (or a quota) is full. torch's own file writer turns ENOSPC into a
cryptic ``RuntimeError`` ("unexpected pos ..."), so torch objects are saved through a Python
file object, whose ``OSError`` keeps its errno.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class StorageError(RuntimeError):
    """A run file could not be written; the message is one line naming the path."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or a quota) is full: ``OSError`` ENOSPC / EDQUOT, or a
    library's wrapper that kept only the text (safetensors: "No space left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno in FULL:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def describe(exc: BaseException, path: Path | str) -> str:
    """One line for a failed write of ``path``."""
    if disk_full(exc):
        return f"no space left on device: could not write {path}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"could not write {path}: {exc.strerror}"
    text = str(exc).strip()
    return f"could not write {path}: {text.splitlines()[0] if text else type(exc).__name__}"


@contextmanager
def writing(path: Path | str, cleanup=None):
    """Turn an ``OSError`` inside the block into a :class:`StorageError` about ``path``,
    after calling ``cleanup()`` to remove what was half written (a StorageError from a nested
    write is cleaned up after the same way and passes through unchanged)."""
    try:
        yield
    except (OSError, StorageError) as exc:
        if cleanup is not None:
            try:
                cleanup()
            except OSError:
                pass
        if isinstance(exc, StorageError):
            raise
        raise StorageError(describe(exc, path)) from exc


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path | str, write) -> None:
    """Call ``write(f)`` with a binary file object for a temporary file, then move it into place."""
    path = Path(path)
    tmp = _tmp_name(path)
    with writing(path, cleanup=lambda: tmp.unlink(missing_ok=True)):
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind a wrapper exception (``__cause__`` / ``__context__`` chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _torch_save_to(obj, f) -> None:
    """``torch.save`` into a Python file object. When a write fails, torch raises the
    ``OSError`` and then, closing its zip writer, a ``RuntimeError`` ("unexpected pos ...")
    on top of it: the ``OSError`` is what gets raised here."""
    import torch

    try:
        torch.save(obj, f)
    except OSError:
        raise
    except Exception as exc:
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise cause from None


def torch_save(obj, path: Path | str) -> None:
    """``torch.save`` to ``path`` such that a full disk is an ``OSError(ENOSPC)``."""
    with open(path, "wb") as f:
        _torch_save_to(obj, f)


def atomic_torch_save(obj, path: Path | str) -> None:
    atomic_write(path, lambda f: _torch_save_to(obj, f))


def append_text(path: Path | str, text: str) -> None:
    """Append ``text`` to a log file; on failure the file is cut back to its old length."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0

    def cut_back():
        if path.exists():
            os.truncate(path, size)

    with writing(path, cleanup=cut_back):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def remove_tree(path: Path | str) -> None:
    """Delete a folder; first renamed to ``.del-<name>`` so a half-deleted folder never
    keeps a name that means something."""
    path = Path(path)
    if not path.exists():
        return
    doomed = path.with_name(f".del-{path.name.lstrip('.')}")
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)

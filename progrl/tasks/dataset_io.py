"""Reading prompt datasets: JSONL, JSON, CSV, Parquet, a dataset folder or a Hugging Face dataset id.

:func:`load_rows` returns plain rows (``list[dict]``). Local files are read with the standard
library (JSONL, JSON, CSV) or pyarrow (Parquet), so a JSONL dataset needs nothing optional;
a folder written by ``datasets.Dataset.save_to_disk``, a folder of data files, or a Hub id go
through the ``datasets`` library (``pip install progrl[data]``). Every problem is one
:class:`DatasetError` line naming the file (and the line, for JSONL).

Conversational prompts (TRL's format) are lists of ``{"role", "content"}`` messages;
:func:`is_conversation` recognises them, and a CSV cell holding such a list as JSON text is
decoded into one.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from progrl.chat import is_conversation  # noqa: F401  (re-exported: the tasks use it from here)

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DatasetError(ValueError):
    """A dataset that cannot be read or used, as one line."""


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):  # {"column": [values...]} (column-oriented) or {"data": [rows]}
        if isinstance(data.get("data"), list):
            data = data["data"]
        elif data and all(isinstance(v, list) for v in data.values()):
            n = {len(v) for v in data.values()}
            if len(n) != 1:
                raise DatasetError(f"{path}: columns have different lengths")
            data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(f"{path}: expected a list of objects (or JSONL, one object per line)")
    return data


def _csv_cell(text: str) -> Any:
    """A CSV cell: JSON lists/objects (e.g. a conversation) decoded, everything else kept as text."""
    s = text.strip()
    if s[:1] in "[{":
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return text
    return text


def _read_csv(path: Path) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DatasetError(f"{path}: no header row")
            return [{k: _csv_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in reader]
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not valid CSV ({exc})") from None


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{path}: reading Parquet needs pyarrow (pip install progrl[data])") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types
        raise DatasetError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None


def _require_datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"{what}: reading it needs the datasets library (pip install progrl[data])") from None
    return datasets


def _from_datasets(source: str, split: str | None) -> list[dict]:
    datasets = _require_datasets(source)
    folder = Path(source)
    try:
        if folder.is_dir() and ((folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(folder))  # written by save_to_disk
        else:
            ds = datasets.load_dataset(source)
    except Exception as exc:  # missing files, no network, unknown id: datasets raises many types
        raise DatasetError(f"{source}: cannot load it as a dataset ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(ds, datasets.DatasetDict) or hasattr(ds, "keys"):
        names = list(ds.keys())
        name = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if name is None or name not in names:
            raise DatasetError(f"{source}: no split {split!r}; it has {', '.join(names)}")
        ds = ds[name]
    return ds.to_list()


def load_rows(source: str, split: str | None = None) -> list[dict]:
    """The rows of a file, dataset folder or Hub dataset id (``split`` picks a split of the latter two)."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        suffix = path.suffix.lower()
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
        if suffix not in readers:
            raise DatasetError(f"{path}: unknown file type {suffix!r}; expected one of {', '.join(FILE_SUFFIXES)}")
        rows = readers[suffix](path)
    elif path.is_dir():
        rows = _from_datasets(str(path), split)
    elif path.suffix.lower() in FILE_SUFFIXES or os.sep in source and not _looks_like_hub_id(source):
        raise DatasetError(f"dataset file not found: {path}")
    else:
        rows = _from_datasets(source, split)
    if not rows:
        raise DatasetError(f"{source}: no rows")
    return rows


def _looks_like_hub_id(text: str) -> bool:
    """``owner/name`` (one slash, no dots-only parts): the shape of a Hub dataset id."""
    parts = text.split("/")
    return len(parts) == 2 and all(p and p not in (".", "..") for p in parts) and not text.startswith(("/", "~"))

"""Importing a user's Python file (a reward module, a task plug-in) as a module of its own.

The module is named ``<prefix>_<file stem>_<hash of the absolute path>`` (two files with the
same name stay apart), imported once per process (``sys.modules``), and the file's folder is
put on ``sys.path`` first, as ``python file.py`` would, so that sibling modules import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from types import ModuleType


class FileImportError(Exception):
    """The file is missing or is not a Python module (its message says which, with the path)."""


def resolve_path(path: str) -> str:
    """``path`` with ``~`` expanded, made absolute."""
    return os.path.abspath(os.path.expanduser(path))


def import_file(path: str, prefix: str) -> ModuleType:
    """The module of the Python file ``path``.

    Raises :class:`FileImportError` when the file is missing or cannot be loaded as a module;
    an exception raised by the module's own code propagates unchanged (the half-imported
    module is removed from ``sys.modules`` first), for the caller to report.
    """
    path = resolve_path(path)
    if not os.path.isfile(path):
        raise FileImportError(f"file not found: {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    mod_name = f"{prefix}_{''.join(c if c.isalnum() else '_' for c in stem)}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    folder = os.path.dirname(path)
    if folder not in sys.path:  # like `python file.py`: sibling modules import
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise FileImportError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module

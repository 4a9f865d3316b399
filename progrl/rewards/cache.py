"""A bounded least-recently-used cache of reward values, one per reward function.

The key of a sample is ``(prompt, completion, extra column values)``: two samples with the
same text but different reference answers are different keys. Only valid (finite) values
are cached; failures (a timeout may be transient) are evaluated again next time. Samples
whose column values cannot be hashed are never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a column value (lists -> tuples, dicts -> sorted item tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, set):
        return frozenset(freeze(v) for v in value)
    hash(value)  # raises TypeError for other unhashable values
    return value


def sample_keys(prompts: Sequence[str], completions: Sequence[str],
                columns: Mapping[str, Sequence[Any]]) -> list[Hashable | None]:
    """One cache key per sample (``None`` where something in it is unhashable)."""
    names = sorted(columns)
    keys: list[Hashable | None] = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        try:
            key = (p, c, tuple(freeze(columns[k][i]) for k in names))
            hash(key)  # prompts/completions that are not strings may be unhashable
        except TypeError:
            key = None
        keys.append(key)
    return keys


class RewardCache:
    """LRU map ``key -> value`` holding at most ``max_items`` entries."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._data: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable | None) -> float | None:
        """The cached value, or None (a miss)."""
        if key is None:
            return None
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Hashable | None, value: float) -> None:
        if key is None:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_items:
            self._data.popitem(last=False)

"""The failure policy: turning outcomes into reward values, and weighting several functions.

Pure functions, no I/O. ``policy`` maps each failure kind to the value that replaces the
failed evaluation, or to ``None`` ("drop": the sample gets no reward and leaves the update).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from progrl.rewards.failures import Outcome


def apply_policy(outcome: Outcome, policy: Mapping[str, float | None]) -> float | None:
    """The value an outcome contributes: its own value, or the policy's value for its failure."""
    if outcome.kind is None:
        return outcome.value
    return policy[outcome.kind]


def combine(per_function: Sequence[Sequence[float | None]], weights: Sequence[float]) -> list[float | None]:
    """Weighted sum over functions, sample by sample.

    A sample is dropped (``None``) as soon as any function's value for it is ``None``.
    """
    if len(per_function) != len(weights):
        raise ValueError("one weight per function expected")
    if not per_function:
        return []
    n = len(per_function[0])
    out: list[float | None] = []
    for i in range(n):
        total: float | None = 0.0
        for values, w in zip(per_function, weights):
            v = values[i]
            if v is None:
                total = None
                break
            total += w * v
        out.append(total)
    return out


def count_failures(outcomes: Sequence[Outcome], counts: dict[str, int]) -> None:
    """Add the failures among ``outcomes`` to ``counts`` (in place)."""
    for o in outcomes:
        if o.kind is not None:
            counts[o.kind] = counts.get(o.kind, 0) + 1

"""The failure policy: turning outcomes into reward values, and weighting several functions.

Pure functions, no I/O. ``policy`` maps each failure kind to the value that replaces the
failed evaluation, to ``None`` ("drop": the sample gets no reward and leaves the update),
or to :data:`SKIP` ("skip": this function adds nothing to the sample's weighted sum; a
sample that every function skips is dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Union

from progrl.rewards.failures import Outcome

SKIP: Literal["skip"] = "skip"

PolicyValue = Union[float, None, Literal["skip"]]  # a value, None = drop the sample, SKIP = add nothing


def apply_policy(outcome: Outcome, policy: Mapping[str, PolicyValue]) -> PolicyValue:
    """The value an outcome contributes: its own value, or the policy's value for its failure."""
    if outcome.kind is None:
        return outcome.value
    return policy[outcome.kind]


def combine(per_function: Sequence[Sequence[PolicyValue]], weights: Sequence[float]) -> list[float | None]:
    """Weighted sum over functions, sample by sample.

    A sample is dropped (``None``) as soon as any function's value for it is ``None``
    ("drop"), and also when every function's value is :data:`SKIP`; a :data:`SKIP` among
    real values adds nothing (the weights are not renormalised, as in TRL's ``nansum``).
    """
    if len(per_function) != len(weights):
        raise ValueError("one weight per function expected")
    if not per_function:
        return []
    n = len(per_function[0])
    out: list[float | None] = []
    for i in range(n):
        total: float | None = 0.0
        scored = False
        for values, w in zip(per_function, weights):
            v = values[i]
            if v is None:
                total = None
                break
            if v is SKIP or v == SKIP:
                continue
            total += w * v
            scored = True
        out.append(total if scored else None)
    return out


def count_failures(outcomes: Sequence[Outcome], counts: dict[str, int]) -> None:
    """Add the failures among ``outcomes`` to ``counts`` (in place)."""
    for o in outcomes:
        if o.kind is not None:
            counts[o.kind] = counts.get(o.kind, 0) + 1

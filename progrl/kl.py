"""KL coefficient controllers (classic TRL / Ziegler et al. 2019).

The per-token estimators themselves live in :func:`progrl.losses.kl_penalty`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FixedKLController:
    """A constant coefficient ``beta``."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002 - same interface
        return None

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Adaptive coefficient: steer the observed KL toward ``target``.

    After each batch of ``n_steps`` samples with mean sequence KL ``current_kl``:
    ``e = clip(current_kl / target - 1, -0.2, 0.2)``, ``beta *= 1 + e * n_steps / horizon``.
    Classic defaults: ``beta_0 = 0.2``, ``target = 6``, ``horizon = 10000``.
    """

    value: float = 0.2
    target: float = 6.0
    horizon: float = 10000.0

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def make_kl_controller(kind: str, init: float, target: float, horizon: float):
    """Build the controller named in the config (``fixed`` or ``adaptive``)."""
    if kind == "fixed":
        return FixedKLController(init)
    if kind == "adaptive":
        return AdaptiveKLController(init, target, horizon)
    raise ValueError(f"unknown KL controller {kind!r}; choose fixed or adaptive")

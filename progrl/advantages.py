"""Advantage estimators, as pure tensor functions.

Per-token rewards ``rewards`` have shape ``(B, T)``: the programmed score sits at the
last response token and, when the KL penalty is applied in the reward, every token
carries ``-beta * KL_t`` too (see :func:`token_rewards`). ``mask`` marks real response
tokens. For the group estimators the ``B`` sequences are ``B / G`` groups of ``G``
samples of the same prompt, stored contiguously: ``[p0 s0, p0 s1, ..., p1 s0, ...]``.

Estimators (``estimator`` in the config):

- ``gae``: generalised advantage estimation with a learned value (PPO).
- ``grpo``: group-normalised sequence return ``(R_i - mean_g) / (std_g + eps)``.
- ``dr_grpo``: ``R_i - mean_g`` (Dr. GRPO: no std scaling).
- ``rloo``: leave-one-out baseline ``R_i - mean_{j != i} R_j``.
- ``reinforce_pp``: REINFORCE++: token returns-to-go of the per-token reward
  (with the KL penalty inside), normalised over the whole batch.
"""

from __future__ import annotations

import torch

from progrl.losses import masked_whiten

ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp")
CRITIC_ESTIMATORS = ("gae",)


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl_t`` on every token, plus the score on the last one.

    ``scores`` has shape ``(B,)``; ``mask`` is ``(B, T)`` with at least one valid token
    per row. Padding positions get 0.
    """
    mask = mask.to(scores.dtype)
    rewards = torch.zeros_like(mask)
    if kl is not None and kl_coef != 0.0:
        rewards = rewards - kl_coef * kl.to(scores.dtype) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V`` is 0 after the last token),
    ``A_t = delta_t + gamma * lam * A_{t+1}``; returns ``(advantages, returns)`` with
    ``returns = advantages + values``. Padding positions are 0 in both.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0.0)
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = sum_{s >= t} gamma^(s - t) r_s`` within each response."""
    mask = mask.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] * mask[:, t] + gamma * running
        out[:, t] = running
    return out * mask


def group_baseline(returns: torch.Tensor, group_size: int, estimator: str, eps: float = 1e-4,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """Sequence advantages of the group estimators from sequence returns ``(B,)``.

    ``valid`` (``(B,)`` bool, default all true) marks the samples that have a reward; a
    dropped sample gets advantage 0 and is left out of its group's statistics, so a group
    with ``k`` valid members of ``G`` is treated as a group of ``k`` (TRL 1.16's
    ``GRPOTrainer`` / ``RLOOTrainer`` do the same with NaN rewards):

    - ``grpo``: ``(R_i - mean_k) / (std_k + eps)``, ``std_k`` the unbiased std of the ``k``;
    - ``dr_grpo``: ``R_i - mean_k``;
    - ``rloo``: ``R_i - (sum_k - R_i) / (k - 1)`` (the mean of the other valid members).

    A group whose valid rewards are all identical, or that has fewer than two valid
    members, carries no signal: every member gets advantage 0.
    """
    if returns.shape[0] % group_size != 0:
        raise ValueError(f"batch of {returns.shape[0]} is not a whole number of groups of {group_size}")
    if estimator not in ("grpo", "dr_grpo", "rloo"):
        raise ValueError(f"{estimator!r} is not a group estimator")
    if estimator == "rloo" and group_size < 2:
        raise ValueError("rloo needs num_generations >= 2")
    if valid is None:
        valid = torch.ones_like(returns, dtype=torch.bool)
    v = valid.to(torch.bool).view(-1, group_size)
    vf = v.to(returns.dtype)
    r = torch.where(v, returns.view(-1, group_size), torch.zeros_like(vf))
    k = vf.sum(-1, keepdim=True)
    mean = r.sum(-1, keepdim=True) / k.clamp(min=1)
    centred = (r - mean) * vf
    if estimator == "grpo":
        std = (centred.pow(2).sum(-1, keepdim=True) / (k - 1).clamp(min=1)).sqrt()
        adv = centred / (std + eps)
        adv = torch.where(std > 0, adv, torch.zeros_like(adv))
    elif estimator == "dr_grpo":
        adv = centred
    else:  # rloo: R_i - (sum - R_i) / (k - 1) = k / (k - 1) * (R_i - mean)
        adv = centred * k / (k - 1).clamp(min=1)
    adv = torch.where(v & (k >= 2), adv, torch.zeros_like(adv))
    return adv.reshape(-1)


WHITEN_BY_DEFAULT = {"gae": True, "grpo": False, "dr_grpo": False, "rloo": False, "reinforce_pp": False}


def default_whiten(estimator: str) -> bool:
    """Whether ``estimator`` whitens its advantages over the batch by definition: classic PPO
    (``gae``) does; GRPO, Dr. GRPO and RLOO do not (their papers and TRL leave their group
    advantages as they are); ``reinforce_pp`` *is* a batch normalisation, so the switch does
    not apply to it. ``algo.whiten_advantages`` unset (``None``) means this."""
    if estimator not in WHITEN_BY_DEFAULT:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    return WHITEN_BY_DEFAULT[estimator]


def compute_advantages(estimator: str, rewards: torch.Tensor, mask: torch.Tensor,
                       values: torch.Tensor | None = None, *, group_size: int = 1, gamma: float = 1.0,
                       lam: float = 0.95, whiten: bool | None = None,
                       valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatch to one estimator; returns ``(advantages (B, T), returns (B, T) or None)``.

    ``returns`` is the value-function target and exists only for ``gae``. ``whiten``
    additionally normalises the token advantages over the batch; ``None`` (the default)
    means the estimator's own definition (:func:`default_whiten`: on for ``gae`` only). It
    never applies to ``reinforce_pp``, whose definition already is a batch normalisation.

    ``valid`` (``(B,)`` bool) marks the samples that have a reward; dropped samples get
    advantage 0, stay out of the group statistics (:func:`group_baseline`) and, as their
    ``mask`` rows must be zero, out of the whitening and the batch normalisation too.
    """
    maskf = mask.to(rewards.dtype)
    if valid is not None:
        maskf = maskf * valid.to(rewards.dtype).unsqueeze(-1)
    if whiten is None:
        whiten = default_whiten(estimator) if estimator in WHITEN_BY_DEFAULT else False
    returns = None
    if estimator == "gae":
        if values is None:
            raise ValueError("gae needs values from a value head")
        advantages, returns = gae(rewards, values, maskf, gamma, lam)
    elif estimator == "reinforce_pp":
        advantages = masked_whiten(returns_to_go(rewards, maskf, gamma), maskf)
    elif estimator in ("grpo", "dr_grpo", "rloo"):
        seq_return = (rewards * mask.to(rewards.dtype)).sum(-1)
        advantages = group_baseline(seq_return, group_size, estimator, valid=valid).unsqueeze(-1) * maskf
    else:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if whiten and estimator != "reinforce_pp":
        advantages = masked_whiten(advantages, maskf)
    return advantages, returns

"""Loss terms of the policy update, as pure tensor functions.

Shapes: ``B`` sequences, ``T`` response positions, ``V`` vocabulary entries.
Every per-token input comes with a ``mask`` of shape ``(B, T)``: 1 for a real response
token, 0 for padding after the end of a response. Positions are aligned by their index
in the response (position ``t`` is the ``t``-th generated token of each sequence).

Aggregation over tokens (``loss_agg``):

- ``"token_mean"``: sum over all valid tokens of the batch divided by their number
  (classic TRL PPO, DAPO).
- ``"seq_mean_token_mean"``: mean over tokens inside each sequence, then mean over
  sequences (original GRPO).
- ``"seq_mean_token_sum_norm"``: sum over all valid tokens divided by
  ``B * max_len`` — a constant normaliser that does not depend on response lengths
  (Dr. GRPO).
"""

from __future__ import annotations

import math

import torch

LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (0 where nothing is valid)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean when ``shift_mean``) over valid entries.

    Uses the unbiased variance like classic TRL; a single valid entry is only centred.
    """
    mean = masked_mean(x, mask)
    centred = x - mean
    n = mask.sum()
    var = (centred.pow(2) * mask).sum() / (n - 1).clamp(min=1.0)
    whitened = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token_mean",
              max_len: int | None = None) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar (see the module docstring)."""
    mask = mask.to(per_token.dtype)
    if loss_agg == "token_mean":
        return masked_mean(per_token, mask)
    if loss_agg == "seq_mean_token_mean":
        seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        has_tokens = (mask.sum(-1) > 0).to(per_token.dtype)
        return (seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)
    if loss_agg == "seq_mean_token_sum_norm":
        norm = per_token.shape[0] * (max_len if max_len is not None else per_token.shape[1])
        return (per_token * mask).sum() / norm
    raise ValueError(f"unknown loss_agg {loss_agg!r}; choose one of {LOSS_AGGREGATIONS}")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float = 0.2, loss_agg: str = "token_mean",
                clip_range_high: float | None = None,
                max_len: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective of PPO, as a loss to minimise.

    ``ratio = exp(logprobs - old_logprobs)``;
    ``loss_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps_low, 1 + eps_high))``.
    ``clip_range_high`` defaults to ``clip_range`` (symmetric clipping). ``max_len`` is the
    constant normaliser of ``seq_mean_token_sum_norm`` (the generation budget,
    ``rollout.max_new_tokens``; see :func:`aggregate`).

    Returns the loss and statistics: ``clipfrac`` (fraction of tokens where the clipped
    branch is active) and ``approx_kl`` (``mean(0.5 * (logprobs - old)^2)``, classic TRL).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, mask, loss_agg, max_len)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio.pow(2), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range_value: float | None = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss of PPO: ``0.5 * max((V - R)^2, (V_clip - R)^2)``, token mean.

    ``V_clip = old_V + clip(V - old_V, -c, c)``. ``clip_range_value=None`` disables clipping.
    """
    unclipped = (values - returns).pow(2)
    if clip_range_value is None:
        per_token = 0.5 * unclipped
        clipfrac = torch.zeros((), dtype=values.dtype)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        clipped = (v_clipped - returns).pow(2)
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).float(), mask).detach()
    return masked_mean(per_token, mask), {"vf_clipfrac": clipfrac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_entropy(logits: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token_mean",
                  max_len: int | None = None) -> torch.Tensor:
    """Mean over response tokens of ``H(pi(.|s_t))`` (the usual entropy bonus)."""
    return aggregate(entropy_from_logits(logits), mask, loss_agg, max_len)


def batch_averaged_distribution(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response position, the action distribution averaged over the batch.

    ``p_bar_t = (1 / n_t) * sum_{i : mask_it = 1} softmax(logits_it)`` with
    ``n_t = sum_i mask_it``. Returns ``(p_bar, n)`` with shapes ``(T, V)`` and ``(T,)``.
    """
    probs = torch.softmax(logits.float(), dim=-1)  # (B, T, V)
    m = mask.to(probs.dtype)
    n = m.sum(0)  # (T,)
    p_bar = (probs * m.unsqueeze(-1)).sum(0) / n.clamp(min=1.0).unsqueeze(-1)
    return p_bar, n


def batch_entropy(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's batch-entropy bonus, generalised to multi-token responses.

    Definition. For each response position ``t`` let ``p_bar_t`` be the distribution
    over the vocabulary averaged over the sequences of the (mini)batch that have a
    real token at ``t`` (see :func:`batch_averaged_distribution`). Then

        ``H_batch = sum_t n_t * H(p_bar_t) / sum_t n_t``

    i.e. the entropy of the batch-averaged distribution at each position, averaged over
    positions weighted by how many sequences are still generating there (so every
    response token counts once, as in the token-mean entropy). It is high when
    different sequences choose different actions at the same position, and it does not
    push any single state's distribution toward uniform.

    For one-token responses there is one position with ``n_0 = B`` and this is exactly
    the paper's ``H(mean_i softmax(logits_i))``.

    Returns ``(H_batch, max_prob)`` where ``max_prob`` is the same weighted average of
    ``max_a p_bar_t(a)``: the largest batch-averaged action probability, a collapse
    signal (1.0 means every sequence takes the same action).
    """
    p_bar, n = batch_averaged_distribution(logits, mask)
    h = -(p_bar * torch.log(p_bar.clamp(min=1e-30))).sum(-1)  # (T,)
    weight = n / n.sum().clamp(min=1.0)
    max_prob = (p_bar.max(-1).values * weight).sum()
    return (h * weight).sum(), max_prob.detach()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from samples of ``pi``.

    With ``log_r = ref_logprobs - logprobs`` (Schulman, "Approximating KL divergence"):

    - ``k1 = -log_r`` (unbiased, can be negative; classic TRL's reward penalty),
    - ``k2 = 0.5 * log_r^2`` (low variance, biased),
    - ``k3 = exp(log_r) - 1 - log_r`` (unbiased and always >= 0).
    """
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.pow(2)
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over valid tokens (nan when returns are constant)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)).pow(2), mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)).pow(2), mask)
    if float(var_r) == 0.0:
        return math.nan
    return float(1.0 - var_d / var_r)

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

A batch split over processes. Every averaging function takes an optional ``counts``
(:class:`BatchCounts`): the sizes of the *whole* (mini)batch the average is over. With it,
the function returns this process's share of the global average (its own numerator over
the global denominator), so the shares of all processes sum to the value one process
would compute on the whole batch. Without it the batch is the local one. The batch
entropy takes the batch-averaged distribution reduced over all processes
(``reduced``, see :func:`batch_entropy`). No function here communicates: the
reductions live in :mod:`progrl.reductions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclass(frozen=True)
class BatchCounts:
    """Sizes of a (mini)batch, the denominators of its averages: valid ``tokens``, ``sequences``
    with at least one valid token, and ``rows`` (all sequences, valid or not)."""

    tokens: float
    sequences: float
    rows: float


def batch_counts(mask: torch.Tensor) -> BatchCounts:
    """The :class:`BatchCounts` of a ``(B, T)`` response mask."""
    m = mask.float()
    return BatchCounts(tokens=float(m.sum()), sequences=float((m.sum(-1) > 0).sum()), rows=float(m.shape[0]))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, count: float | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (0 where nothing is valid).

    ``count`` (only with ``dim=None``): the number of valid entries of the whole batch when
    ``x`` is one process's part of it (the result is then this part's share of the mean)."""
    mask = mask.to(x.dtype)
    if dim is None:
        if count is not None:
            return (x * mask).sum() / max(count, 1.0)
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
              max_len: int | None = None, counts: BatchCounts | None = None) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar (see the module docstring); with
    ``counts``, this part's share of the aggregate over the whole batch."""
    mask = mask.to(per_token.dtype)
    if loss_agg == "token_mean":
        return masked_mean(per_token, mask, count=None if counts is None else counts.tokens)
    if loss_agg == "seq_mean_token_mean":
        seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        has_tokens = (mask.sum(-1) > 0).to(per_token.dtype)
        if counts is not None:
            return (seq * has_tokens).sum() / max(counts.sequences, 1.0)
        return (seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)
    if loss_agg == "seq_mean_token_sum_norm":
        rows = per_token.shape[0] if counts is None else counts.rows
        norm = rows * (max_len if max_len is not None else per_token.shape[1])
        return (per_token * mask).sum() / norm
    raise ValueError(f"unknown loss_agg {loss_agg!r}; choose one of {LOSS_AGGREGATIONS}")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float = 0.2, loss_agg: str = "token_mean",
                clip_range_high: float | None = None, max_len: int | None = None,
                counts: BatchCounts | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective of PPO, as a loss to minimise.

    ``ratio = exp(logprobs - old_logprobs)``;
    ``loss_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps_low, 1 + eps_high))``.
    ``clip_range_high`` defaults to ``clip_range`` (symmetric clipping). ``max_len`` is the
    constant normaliser of ``seq_mean_token_sum_norm`` (the generation budget,
    ``rollout.max_new_tokens``; see :func:`aggregate`). ``counts``: see the module docstring
    (the statistics are then shares too).

    Returns the loss and statistics: ``clipfrac`` (fraction of tokens where the clipped
    branch is active) and ``approx_kl`` (``mean(0.5 * (logprobs - old)^2)``, classic TRL).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, mask, loss_agg, max_len, counts)
    n = None if counts is None else counts.tokens
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask, count=n),
            "approx_kl": masked_mean(0.5 * log_ratio.pow(2), mask, count=n),
            "ratio_mean": masked_mean(ratio, mask, count=n),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range_value: float | None = 0.2,
               counts: BatchCounts | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss of PPO: ``0.5 * max((V - R)^2, (V_clip - R)^2)``, token mean.

    ``V_clip = old_V + clip(V - old_V, -c, c)``. ``clip_range_value=None`` disables clipping.
    ``counts``: see the module docstring.
    """
    n = None if counts is None else counts.tokens
    unclipped = (values - returns).pow(2)
    if clip_range_value is None:
        per_token = 0.5 * unclipped
        clipfrac = torch.zeros((), dtype=values.dtype)
    else:
        # = old + clip(V - old, -c, c), written so that a V inside the range is V itself: float rounding of
        # old + (V - old) would otherwise count ties as clipped at random (classic TRL's vf_clipfrac does)
        v_clipped = torch.clamp(values, old_values - clip_range_value, old_values + clip_range_value)
        clipped = (v_clipped - returns).pow(2)
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).float(), mask, count=n).detach()
    return masked_mean(per_token, mask, count=n), {"vf_clipfrac": clipfrac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_entropy(logits: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token_mean",
                  max_len: int | None = None, counts: BatchCounts | None = None) -> torch.Tensor:
    """Mean over response tokens of ``H(pi(.|s_t))`` (the usual entropy bonus)."""
    return aggregate(entropy_from_logits(logits), mask, loss_agg, max_len, counts)


def batch_probability_sums(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response position, the sum over the batch of the action distributions.

    ``S_t = sum_{i : mask_it = 1} softmax(logits_it)`` and ``n_t = sum_i mask_it``; returns
    ``(S, n)`` with shapes ``(T, V)`` and ``(T,)``. Sums, unlike means, add up over the parts
    of a batch split between processes (:func:`progrl.reductions.batch_distribution`).
    """
    probs = torch.softmax(logits.float(), dim=-1)  # (B, T, V)
    m = mask.to(probs.dtype)
    return (probs * m.unsqueeze(-1)).sum(0), m.sum(0)


def batch_averaged_distribution(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response position, the action distribution averaged over the batch.

    ``p_bar_t = (1 / n_t) * sum_{i : mask_it = 1} softmax(logits_it)`` with
    ``n_t = sum_i mask_it``. Returns ``(p_bar, n)`` with shapes ``(T, V)`` and ``(T,)``.
    """
    S, n = batch_probability_sums(logits, mask)
    return S / n.clamp(min=1.0).unsqueeze(-1), n


def _entropy_of_average(p_bar: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H_batch, max_prob, weight)`` of per-position averaged distributions (see batch_entropy)."""
    h = -(p_bar * torch.log(p_bar.clamp(min=1e-30))).sum(-1)  # (T,)
    weight = n / n.sum().clamp(min=1.0)
    return (h * weight).sum(), (p_bar.max(-1).values * weight).sum().detach(), weight


def batch_entropy(logits: torch.Tensor, mask: torch.Tensor,
                  reduced: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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

    A batch split over processes. ``reduced = (S, n)`` are the sums of
    :func:`batch_probability_sums` over the whole batch (every process's part, detached);
    ``logits``/``mask`` are this process's part. The value returned is then ``H_batch`` of
    the whole batch, and its gradient is this part's share of the whole gradient
    (docs/algorithms.md derives it): with ``c_t(a) = -(log p_bar_t(a) + 1) * w_t / n_t`` and
    ``w_t = n_t / sum_t n_t`` (from the whole batch, constants),

        ``dH_batch / dtheta = sum over parts k of  d/dtheta sum_{t,a} c_t(a) S^k_t(a)``

    so each process back-propagates ``sum c * S^k`` of its own sums, and the processes'
    gradients add up to the gradient of one process holding the whole batch.
    """
    if reduced is None:
        p_bar, n = batch_averaged_distribution(logits, mask)
        value, max_prob, _ = _entropy_of_average(p_bar, n)
        return value, max_prob
    S_local, _ = batch_probability_sums(logits, mask)
    S_all, n_all = reduced
    p_bar = S_all.detach() / n_all.clamp(min=1.0).unsqueeze(-1)
    value, max_prob, weight = _entropy_of_average(p_bar, n_all)
    coef = -(torch.log(p_bar.clamp(min=1e-30)) + 1.0) * (weight / n_all.clamp(min=1.0)).unsqueeze(-1)
    surrogate = (coef * S_local).sum()
    return value.detach() + (surrogate - surrogate.detach()), max_prob


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


def explained_variance_sums(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sums :func:`explained_variance` is computed from, in float64: ``[n, sum R, sum R^2,
    sum D, sum D^2]`` over valid tokens with ``D = R - V``. Sums of the parts of a batch add up."""
    m = mask.double()
    r, d = returns.double(), (returns - values).double()
    return torch.stack([m.sum(), (r * m).sum(), (r * r * m).sum(), (d * m).sum(), (d * d * m).sum()])


def explained_variance_from_sums(sums: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` from :func:`explained_variance_sums` (nan when R is constant)."""
    n, sr, srr, sd, sdd = (float(x) for x in sums)
    n = max(n, 1.0)
    var_r = srr / n - (sr / n) ** 2
    var_d = sdd / n - (sd / n) ** 2
    if var_r <= 1e-12 * max(srr / n, 1e-30):
        return math.nan
    return 1.0 - var_d / var_r


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over valid tokens (nan when returns are constant)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)).pow(2), mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)).pow(2), mask)
    if float(var_r) == 0.0:
        return math.nan
    return float(1.0 - var_d / var_r)

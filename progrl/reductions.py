"""The global reductions of a batch split over processes.

Each process samples and scores its share of a step's batch (:mod:`progrl.distributed`).
Everything defined over *the batch* must be computed over the whole batch; these are the
only places where the processes' parts meet:

- :func:`gather_batch`: the step's samples, rewards and reference log-probs, gathered on
  every process in the global order. Advantages (GAE and its whitening, the group
  baselines, REINFORCE++'s batch normalisation), the KL controller's measurement and the
  step's reward metrics are then computed by the unchanged pure functions of
  :mod:`progrl.advantages` on the whole batch, the same on every process and the same as
  one process would compute.
- :func:`minibatch_share`: the global minibatches are drawn from the whole batch with the
  step's generator (as one process draws them); each process trains on its contiguous
  share of each, with the losses averaged over the whole minibatch (:class:`BatchCounts`).
- :func:`batch_distribution`: the batch entropy's batch-averaged distribution, summed over
  the processes' shares of a minibatch (its gradient: :func:`progrl.losses.batch_entropy`).
- :func:`reduce_stats`: the update's statistics, summed over processes once per update.

With one process each of these is the identity (the same code path).
"""

from __future__ import annotations

import torch

from progrl.distributed import Dist
from progrl.losses import BatchCounts, batch_counts, batch_probability_sums, explained_variance_from_sums
from progrl.rollout import Rollout


def gather_batch(dist: Dist, rollout: Rollout, scores: torch.Tensor, ref_logprobs: torch.Tensor | None,
                 pad_id: int) -> tuple[Rollout, torch.Tensor, torch.Tensor | None]:
    """The whole step's rollout, raw scores (NaN = dropped) and reference log-probs on every
    process, rows in the global order (rank 0's share first). Prompts are left-padded and
    responses right-padded to the widest of any process."""
    if not dist.enabled:
        return rollout, scores, ref_logprobs
    whole = Rollout(  # dim 1 is padded to the widest process (every response tensor of a process has one width)
        prompt_ids=dist.gather(rollout.prompt_ids, pad_id, pad_first=True),
        prompt_mask=dist.gather(rollout.prompt_mask, 0, pad_first=True),
        response_ids=dist.gather(rollout.response_ids, pad_id),
        response_mask=dist.gather(rollout.response_mask, 0),
        logprobs=dist.gather(rollout.logprobs, 0.0),
        values=None if rollout.values is None else dist.gather(rollout.values, 0.0),
        truncated=None if rollout.truncated is None else dist.gather(rollout.truncated.long()).bool(),
    )
    ref = None if ref_logprobs is None else dist.gather(ref_logprobs, 0.0)
    return whole, dist.gather(scores), ref


def minibatch_share(dist: Dist, idx: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of a global minibatch's row indices."""
    if not dist.enabled:
        return idx
    return idx[dist.shard(len(idx))]


def minibatch_counts(mask: torch.Tensor, idx: torch.Tensor) -> BatchCounts:
    """The counts of the whole global minibatch ``idx`` (every process has the whole mask)."""
    return batch_counts(mask[idx])


def batch_distribution(dist: Dist, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, n)`` of :func:`progrl.losses.batch_probability_sums` summed over the processes'
    shares of a minibatch (detached): the ``reduced`` argument of ``batch_entropy``."""
    with torch.no_grad():
        S, n = batch_probability_sums(logits, mask)
    if not dist.enabled:
        return S, n
    both = dist.sum(torch.cat([S, n.unsqueeze(-1)], dim=-1))
    return both[:, :-1], both[:, -1]


class UpdateStats:
    """The update's statistics, one row per minibatch, reduced over processes at the end.

    ``add(shares, whole, ev_sums)``: ``shares`` are this process's shares of minibatch
    means (summed over processes), ``whole`` are values already global (kept as they are),
    ``ev_sums`` the explained-variance sums (summed, then turned into the ratio).
    """

    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor | None]] = []

    def add(self, shares: dict[str, torch.Tensor], whole: dict[str, float],
            ev_sums: torch.Tensor | None = None) -> None:
        self.rows.append(({k: v.detach().double().reshape(()) for k, v in shares.items()}, whole, ev_sums))

    def reduce(self, dist: Dist) -> dict[str, float]:
        """Mean over minibatches of each statistic, over the whole batch."""
        if not self.rows:
            return {}
        keys = list(self.rows[0][0])
        parts = [torch.stack([row[0][k] for k in keys]) if keys else torch.zeros(0, dtype=torch.float64)
                 for row in self.rows]
        if self.rows[0][2] is not None:
            parts = [torch.cat([p, row[2].to(p.device)]) for p, row in zip(parts, self.rows)]
        table = dist.sum(torch.stack(parts).to(dist.device)).cpu()
        out: dict[str, float] = {}
        for j, k in enumerate(keys):
            out[k] = _mean(float(x) for x in table[:, j])
        if self.rows[0][2] is not None:
            out["explained_variance"] = _mean(explained_variance_from_sums(r[len(keys):]) for r in table)
        for k in self.rows[0][1]:
            out[k] = _mean(row[1][k] for row in self.rows)
        return out


def _mean(values) -> float:
    """Mean over minibatches, a NaN (the explained variance of constant returns) counting as 0
    as the trainer always did."""
    vals = [v if v == v else 0.0 for v in values]
    return sum(vals) / len(vals) if vals else 0.0

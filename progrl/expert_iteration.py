"""Reward-filtered self-training: expert iteration / RAFT.

RAFT ("Reward rAnked FineTuning", Dong et al. 2023) and expert iteration (Anthony et al.
2017; ReST, Gulcehre et al. 2023; STaR, Zelikman et al. 2022) all train a policy on its own
samples that the reward rates best: sample, score, keep the samples that pass a filter, then
fine-tune on them by next-token likelihood. The reward is the only signal; no supervised data
enter. With a 0/1 "exact" filter the expected update is the gradient of the expected success
rate (REINFORCE with a 0/1 reward and no baseline), computed only on the successes.

``algo.estimator = "raft"`` runs it inside progrl's loop: every RL step samples
``rollout.batch_size x rollout.num_generations`` responses, :func:`select` keeps those whose
reward passes :class:`RAFTConfig`, and the update runs ``algo.epochs`` passes of minibatches
over the kept responses only (discarded samples cost no update work), each minimising
:func:`raft_loss`. No value head, no clipping, no advantages.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class RAFTConfig(BaseModel):
    """Which samples RAFT keeps (``algo.raft``). Both filters apply when both are set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # keep a sample only if its reward is >= this (None: no threshold). The arithmetic tasks'
    # exact answers score exactly 1.0, so 1.0 keeps the exact ones.
    min_reward: float | None = 1.0
    # keep only the best `top_k` samples of each prompt's group of num_generations (0: no ranking;
    # RAFT's original best-of-K is top_k = 1)
    top_k: int = Field(0, ge=0)
    # with any other estimator: add coef x the RAFT loss of the kept samples to its policy loss
    # (imitation of the policy's own successes beside the policy gradient; 0: off)
    coef: float = Field(0.0, ge=0.0)
    # estimator "raft": also train each step on this many kept samples of earlier steps, drawn
    # uniformly from a first-in-first-out buffer of the last `replay_capacity` kept samples
    # (ReST's growing dataset of filtered samples; 0: only this step's samples)
    replay: int = Field(0, ge=0)
    replay_capacity: int = Field(16384, ge=1)  # kept samples the replay buffer holds (first in, first out)
    # how much each kept sample counts: "uniform" (RAFT: every success alike) or
    # "inverse_probability" (1 / the probability with which it was sampled, capped at max_weight:
    # a success the policy rarely finds counts as much as the many it finds easily, which turns
    # the expected update from the gradient of the success rate into that of its logarithm)
    weight: Literal["uniform", "inverse_probability"] = "uniform"
    max_weight: float = Field(10.0, ge=1.0)  # cap of the inverse-probability weight
    # also imitate the verified start of samples that are not kept: the steps of a failed sample
    # that the task's checker accepts (Task.verified_prefix; process-level rejection sampling, one
    # token weight per verified token). Tasks without steps ignore it.
    prefixes: bool = False
    # process-level search from the failures (needs `prefixes`): from up to `branch_starts` distinct
    # verified starts of this step's failed samples, sample `branches` continuations each (at
    # `branch_temperature`; None: the rollout's), score the whole completions with the same reward,
    # and imitate the continuations the checker verifies further than their start (0: off). The
    # samples spend their exploration on the step the policy gets wrong, not on the steps before it.
    branches: int = Field(0, ge=0)
    branch_starts: int = Field(64, ge=1)  # at most this many distinct failed starts per step, drawn at random
    branch_temperature: float | None = Field(None, gt=0.0)  # the branches' sampling temperature (None: the rollout's)
    # how a branch's first token is chosen: "sample" (like the rest), or "top_k": the `branches`
    # most likely next tokens, one branch each (distinct forks where the failed step begins)
    branch_first: Literal["sample", "top_k"] = "sample"
    # imitate each distinct row (prompt and imitated tokens) of a step once: a prompt the policy
    # already solves 16 times out of 16 counts once, not 16 times, beside the rows of the failures
    distinct: bool = False

    @model_validator(mode="after")
    def _branches_need_prefixes(self):
        if self.branches and not self.prefixes:
            raise ValueError("branches > 0 samples from verified starts: set prefixes = true as well")
        return self


def select(scores: torch.Tensor, group_size: int = 1, min_reward: float | None = None,
           top_k: int = 0) -> torch.Tensor:
    """Boolean ``(B,)`` mask of the samples RAFT trains on.

    ``scores`` are the programmed rewards ``(B,)`` (``NaN`` = dropped: never kept), stored as
    ``B / group_size`` contiguous groups of samples of the same prompt. A sample is kept when
    its score is ``>= min_reward`` (if given) and it is among the ``top_k`` best of its group
    (if ``top_k > 0``; ties broken by position, the earlier sample first).
    """
    if scores.shape[0] % group_size != 0:
        raise ValueError(f"batch of {scores.shape[0]} is not a whole number of groups of {group_size}")
    keep = ~torch.isnan(scores)
    if min_reward is not None:
        keep = keep & (torch.nan_to_num(scores, nan=-torch.inf) >= min_reward)
    if top_k > 0 and top_k < group_size:
        groups = torch.nan_to_num(scores, nan=-torch.inf).view(-1, group_size)
        # stable descending sort: equal scores keep their order
        order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(group_size, device=scores.device).expand_as(order))
        keep = keep & (rank < top_k).reshape(-1)
    return keep


def importance_weights(logprobs: torch.Tensor, mask: torch.Tensor, max_weight: float) -> torch.Tensor:
    """``(B,)`` inverse sampling probabilities ``min(1 / pi_old(y | x), max_weight)`` of whole responses.

    ``logprobs`` ``(B, T)`` are the log-probabilities the responses were sampled with (after the
    sampling temperature), ``mask`` ``(B, T)`` their real tokens; ``pi_old(y | x)`` is the product
    over the response's tokens. In the expectation over sampling, weighting a kept sample by
    ``1 / pi_old`` cancels the probability of drawing it: the imitation term's expected gradient
    becomes that of ``log P(success)`` (maximum marginal likelihood) instead of ``P(success)``,
    so prompts the policy rarely solves are not drowned by those it already solves. The cap
    bounds the variance (and a weight is never below 1: the cap applies from above only).
    """
    seq = (logprobs.detach() * mask.to(logprobs.dtype)).sum(-1)
    return torch.exp(-seq).clamp(min=1.0, max=max_weight)


def prefix_token_count(tokenizer, ids: list[int], prefix: str) -> int:
    """How many of the response tokens ``ids`` spell ``prefix``: the smallest ``k`` whose decoded text
    (special tokens skipped, as completions are decoded) is exactly ``prefix``; 0 when none is.
    A special token right after the prefix (the end of the sequence) is NOT counted: a verified
    start says nothing about stopping there (imitating "step=<eos>" taught a policy to stop
    after a right step; the end of the sequence is imitated only with samples kept whole)."""
    if not prefix:
        return 0
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if text == prefix:
            return k
        if len(text) > len(prefix) or not prefix.startswith(text):
            break
    return 0


def prefix_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, width)`` float mask of each row's first ``lengths[i]`` positions."""
    return (torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(-1)).float()


def raft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the kept responses: ``-mean over their tokens of log pi(a_t|s_t)``.

    ``logprobs`` ``(b, T)`` are the current policy's log-probabilities of the taken tokens of
    kept responses, ``mask`` ``(b, T)`` their real tokens. Every kept token counts once (the
    token mean of supervised fine-tuning); a mask of weights instead of 0/1 (a row's weight on
    each of its tokens, :func:`importance_weights`) gives the weighted mean. Returns
    ``(loss, stats)``; an empty mask gives 0.
    """
    m = mask.to(logprobs.dtype)
    n = m.sum()
    loss = -(logprobs * m).sum() / n.clamp(min=1.0)
    with torch.no_grad():
        stats = {"nll": loss.detach(), "kept_tokens": n.detach()}
    return loss, stats


def kept_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
              response_mask: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor | None = None,
              lengths: torch.Tensor | None = None) -> list[tuple]:
    """The rows ``keep`` (bool ``(B,)``) of a left-padded prompt / right-padded response batch, unpadded:
    ``(prompt, response)`` token lists, or ``(prompt, response, weight)`` when ``weights`` ``(B,)`` are given.
    With ``lengths`` ``(B,)`` a response keeps only its first ``lengths[i]`` tokens (a verified prefix)."""
    idx = torch.nonzero(keep).squeeze(-1).tolist()
    rows = [(prompt_ids[i][prompt_mask[i].bool()].tolist(),
             response_ids[i][response_mask[i].bool()].tolist()[:None if lengths is None else int(lengths[i])])
            for i in idx]
    if weights is None:
        return rows
    return [(p, r, float(weights[i])) for (p, r), i in zip(rows, idx)]


def first_occurrences(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                      lengths: torch.Tensor) -> torch.Tensor:
    """``(B,)`` long: 1 for a row whose prompt and first ``lengths[i]`` response tokens no earlier
    row has, 0 for a repeat (and for rows with ``lengths[i] == 0``)."""
    seen, out = set(), []
    for i in range(prompt_ids.shape[0]):
        n = int(lengths[i])
        key = (tuple(prompt_ids[i][prompt_mask[i].bool()].tolist()), tuple(response_ids[i, :n].tolist()))
        out.append(int(n > 0 and key not in seen))
        seen.add(key)
    return torch.tensor(out, dtype=torch.long)


def row_weights(rows: list[tuple]) -> torch.Tensor:
    """``(n,)`` weights of stored rows (1 for a row stored without one)."""
    return torch.tensor([float(row[2]) if len(row) > 2 else 1.0 for row in rows])


class ReplayBuffer:
    """First-in-first-out store of kept (prompt, response[, weight]) token sequences.

    Rows are stored without padding (plain lists of token ids, so the buffer can be written to a
    checkpoint as JSON); :meth:`batch` pads a selection again: prompts on the left, responses
    on the right, as a rollout has them.
    """

    def __init__(self, capacity: int):
        self.items: deque[tuple[list[int], list[int]]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, rows: list[tuple]) -> None:
        """Store ``rows`` (from :func:`kept_rows`); the oldest rows leave when the buffer is full."""
        self.items.extend(rows)

    def draw(self, n: int, generator: torch.Generator | None = None) -> list[tuple]:
        """``n`` stored rows drawn uniformly with replacement (none when the buffer is empty)."""
        if not self.items or n <= 0:
            return []
        idx = torch.randint(len(self.items), (n,), generator=generator).tolist()
        return [self.items[i] for i in idx]

    @staticmethod
    def batch(rows: list[tuple], pad_id: int, device=None):
        """``(prompt_ids, prompt_mask, response_ids, response_mask)`` of ``rows``, padded."""
        P = max(len(row[0]) for row in rows)
        T = max(len(row[1]) for row in rows)
        prompt_ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(rows), P), dtype=torch.long)
        response_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        response_mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, (p, r, *_weight) in enumerate(rows):
            prompt_ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
            prompt_mask[i, P - len(p):] = 1
            response_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            response_mask[i, :len(r)] = 1
        return tuple(t.to(device) for t in (prompt_ids, prompt_mask, response_ids, response_mask))

    def state_dict(self) -> dict:
        return {"items": [list(x) for x in self.items]}

    def load_state_dict(self, state: dict) -> None:
        self.items.clear()
        self.items.extend((list(x[0]), list(x[1]), *x[2:]) for x in state["items"])

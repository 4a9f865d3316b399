"""Forks from the failures: RAFT's search from the verified starts of failed samples
(``algo.raft.branches``; docs/estimators.md).

A failed sample's *verified start* is its prompt plus the response tokens the task's checker
accepts (:meth:`progrl.tasks.base.Task.verified_prefix`). Of a step's distinct verified starts,
up to ``branch_starts`` drawn at random are continued ``branches`` times each; with
``branch_first = "top_k"`` the branches of a start begin with the policy's K most likely next
tokens there (distinct forks at the failed step), and are sampled on from there. Every
continuation is judged whole (start plus continuation) by the reward engine and the task's
checker, as a sample is; one that gets further than its start becomes an imitation row (distinct
rows only).

The search is written once here against three callables the trainer supplies, so it needs no
model, engine or process group of its own: ``next_token_logits(heads)`` (the policy's logits of
the next token after each token list), ``sample(heads, room)`` (continuations of at most ``room``
tokens) and ``judge(origins, whole)`` (the tokens of each whole response that count as verified:
all of them when the reward keeps it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from progrl import expert_iteration

Start = tuple[tuple[int, ...], tuple[int, ...], int]  # (prompt ids, verified start ids, index of a sample)


def failed_starts(prompt_lists: Sequence[Sequence[int]], response_lists: Sequence[Sequence[int]],
                  lengths: torch.Tensor, failed: torch.Tensor, limit: int, generator: torch.Generator) -> list[Start]:
    """The distinct verified starts (prompt plus the first ``lengths[i]`` response tokens) of the
    ``failed`` samples (bool ``(B,)``), each with the index of its first sample; when there are
    more than ``limit``, ``limit`` of them drawn with ``generator`` (kept in batch order)."""
    first: dict[tuple, int] = {}
    for i in torch.nonzero(failed).squeeze(-1).tolist():
        first.setdefault((tuple(prompt_lists[i]), tuple(response_lists[i][:int(lengths[i])])), i)
    keys = list(first)
    if len(keys) > limit:
        keys = [keys[j] for j in sorted(torch.randperm(len(keys), generator=generator)[:limit].tolist())]
    return [(p, s, first[(p, s)]) for p, s in keys]


def top_k_forks(logits: torch.Tensor, k: int, banned_ids: Sequence[int] = ()) -> list[list[int]]:
    """Each row's ``k`` most likely next tokens (``banned_ids`` never), one fork per branch, row
    after row: ``k x rows`` single-token lists."""
    logits = logits.float().clone()
    if banned_ids:
        logits[:, list(banned_ids)] = -math.inf
    return [[t] for t in logits.topk(min(k, logits.shape[-1]), dim=-1).indices.flatten().tolist()]


def search(starts: list[Start], *, branches: int, branch_first: str, max_new_tokens: int, stop_ids: Sequence[int],
           banned_ids: Sequence[int], pad_id: int, device,
           next_token_logits: Callable[[list[list[int]]], torch.Tensor],
           sample: Callable[[list[list[int]], int], list[list[int]]],
           judge: Callable[[list[int], tuple], torch.Tensor]) -> tuple[list, dict]:
    """Continue each start ``branches`` times and keep the continuations that get further.

    Returns the imitation rows (``expert_iteration.kept_rows``: prompt ids, the verified response
    ids) and the step's metrics: ``branch_starts`` (starts searched from),
    ``branch_fixed_fraction`` (share of them with at least one branch that got further) and
    ``branch_rows``."""
    stats = {"branch_starts": float(len(starts)), "branch_fixed_fraction": 0.0}
    starts = [s for s in starts if max_new_tokens - len(s[1]) > 0]  # no room left: nothing to continue
    if not starts:
        return [], stats
    K = branches
    heads = [list(p) + list(s) for p, s, _ in starts]
    first = [[] for _ in range(len(starts) * K)]  # each branch's forced first token (top_k)
    if branch_first == "top_k":
        first = top_k_forks(next_token_logits(heads), K, banned_ids)
        K = len(first) // len(starts)  # fewer tokens than branches: one branch per token
    n = len(starts) * K
    stops = [bool(f) and f[0] in stop_ids for f in first]  # a forced stop ends its branch
    room = max(max_new_tokens - len(starts[j // K][1]) - len(first[j]) for j in range(n))
    cont = sample([heads[j // K] + first[j] for j in range(n)], room) if room > 0 else [[] for _ in range(n)]
    rows = [(list(starts[j // K][0]), (list(starts[j // K][1]) + first[j] + ([] if stops[j] else cont[j]))[:max_new_tokens])
            for j in range(n)]
    whole = expert_iteration.ReplayBuffer.batch(rows, pad_id, device)  # prompt ids, mask, response ids, mask
    got = judge([starts[j // K][2] for j in range(n)], whole)  # verified tokens of each whole response
    better = got > torch.tensor([len(starts[j // K][1]) for j in range(n)])
    p_ids, p_mask, r_ids, r_mask = whole
    once = better & expert_iteration.first_occurrences(p_ids, p_mask, r_ids, got).bool()  # distinct rows only
    out = expert_iteration.kept_rows(p_ids, p_mask, r_ids, r_mask, once, lengths=got)
    stats["branch_fixed_fraction"] = float(better.view(-1, K).any(-1).float().mean())
    stats["branch_rows"] = float(len(out))
    return out, stats

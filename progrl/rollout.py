"""Batched sampling with a KV cache, and the forward pass that scores responses.

Prompts are left-padded; the attention mask hides the padding and the position ids are
counted from each sequence's first real token, so a padded sequence is computed exactly
as it would be alone. Every sampled token comes back with its log-probability under the
policy (after temperature, before top-k/top-p truncation) and, with a value head, the
value of the state it was sampled in. The update reuses these as the "old" policy and
values: no second forward pass is needed for them.

Shared prompts are computed once. The group estimators sample ``G`` responses to each
prompt, and the transformer's work on a prompt does not depend on what follows it
(causal attention), so both sampling and the scoring forward pass run the prompt part
only on the distinct prompts of the batch and hand every copy the same keys/values
(:func:`unique_rows`, :func:`select_cache`). The result is the same function, at 1/G of
the prompt cost; with one-token answers that is nearly all of the cost. The last
response token is never fed to the model when scoring: nothing is predicted from it.

Random draws. Sequence ``i`` of a batch draws its ``t``-th token by inverting the CDF of
its (filtered) distribution at ``uniforms[i, t]``, a float64 number in [0, 1) fixed before
sampling starts (:func:`sampling_uniforms`). A sequence's tokens therefore depend only on
its own row of uniforms, not on which other sequences share its batch, chunk or process:
a step sampled by 1 process or split over N processes draws the same tokens. The CDF is
summed in float64, so no token's probability is distorted by more than ~1e-16 (a
float32 cumulative sum over a 49k vocabulary can be off by ~1e-3 in total).

The KV cache of sampling lives only inside :func:`sample`; it is released before the
function returns, so the update that follows never holds it in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from progrl.policy import Policy, position_ids_from_mask


@dataclass
class SamplingParams:
    """Token-level sampling controls (ids already resolved from the tokenizer)."""

    max_new_tokens: int = 1
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()
    banned_ids: tuple[int, ...] = ()
    pad_id: int = 0
    greedy: bool = False
    # stop strings: called with the response ids so far of the rows still generating, says which
    # of them now end in a stop string (progrl.stopping.StopStrings.hits); None = no stop strings
    stop_check: Callable[[Sequence[Sequence[int]]], list[bool]] | None = None


@dataclass
class Rollout:
    """Samples of one step. Shapes: ``B`` sequences, ``P`` prompt and ``T`` response tokens."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, T) right-padded with pad_id
    response_mask: torch.Tensor  # (B, T) 1 for real tokens (the stop token included)
    logprobs: torch.Tensor  # (B, T) float32
    values: torch.Tensor | None  # (B, T) float32, only with a value head
    truncated: torch.Tensor | None = None  # (B,) bool: no stop (token or string) before max_new_tokens

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to ``-inf`` (the best token is always kept)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already >= p
        remove[..., 0] = False
        remove = remove.scatter(-1, order, remove)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sampling_uniforms(n: int, max_new_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, max_new_tokens)`` float64 uniforms in [0, 1): row ``i`` decides sequence ``i``'s tokens."""
    return torch.rand((n, max_new_tokens), generator=generator, dtype=torch.float64)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of ``probs`` ``(B, V)``, the token whose CDF interval holds ``u`` ``(B,)``.

    The first index with ``cdf > u * cdf[-1]``: a token of probability 0 has an empty
    interval and is never chosen; the CDF is summed in float64 (see the module docstring).
    """
    cdf = probs.double().cumsum(-1)
    x = (u.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample(policy: Policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
           generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> Rollout:
    """Sample responses for one batch of left-padded prompts, with a KV cache.

    ``uniforms`` ``(B, >= max_new_tokens)`` are the random numbers of the draws (see the module
    docstring); without them they are drawn from ``generator``. Greedy decoding uses none.
    """
    B = prompt_ids.shape[0]
    device = prompt_ids.device
    if not params.greedy and uniforms is None:
        uniforms = sampling_uniforms(B, params.max_new_tokens, generator)
    attention = prompt_mask.clone()
    positions = position_ids_from_mask(attention)
    cur_ids, cur_pos = prompt_ids, positions
    past = None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    stop = torch.tensor(list(params.stop_ids), dtype=torch.long, device=device)
    tokens, logps, vals, masks = [], [], [], []
    for t in range(params.max_new_tokens):
        if t == 0:
            logits, values, past = prefill(policy, prompt_ids, prompt_mask, positions,
                                           use_cache=params.max_new_tokens > 1)
        else:
            logits, values, past = policy(cur_ids, attention, position_ids=cur_pos, past_key_values=past,
                                          use_cache=True)
        logits = logits[:, -1, :].float() / params.temperature
        logprobs_all = torch.log_softmax(logits, dim=-1)
        candidates = logits
        if params.banned_ids:
            candidates = candidates.clone()
            candidates[:, list(params.banned_ids)] = float("-inf")
        if t < params.min_new_tokens and len(stop):
            candidates = candidates.clone()
            candidates[:, stop] = float("-inf")
        if params.greedy:
            token = candidates.argmax(-1)
        else:
            candidates = filter_logits(candidates, params.top_k, params.top_p)
            token = inverse_cdf(torch.softmax(candidates, dim=-1), uniforms[:, t])
        alive = ~finished
        token = torch.where(alive, token, torch.full_like(token, params.pad_id))
        tokens.append(token)
        logps.append(logprobs_all.gather(-1, token.unsqueeze(-1)).squeeze(-1) * alive)
        if values is not None:
            vals.append(values[:, -1].float() * alive)
        masks.append(alive.long())
        if len(stop):
            finished = finished | torch.isin(token, stop)
        if params.stop_check is not None and t + 1 >= params.min_new_tokens:
            rows = (~finished).nonzero().squeeze(-1).tolist()
            if rows:
                so_far = torch.stack(tokens, 1)[rows].tolist()
                hit = [r for r, h in zip(rows, params.stop_check(so_far)) if h]
                if hit:
                    finished[hit] = True
        if bool(finished.all()):
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        cur_pos = cur_pos[:, -1:] + 1
        cur_ids = token.unsqueeze(-1)
    del past, logits, values  # the KV cache goes before the caller's update starts
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=torch.stack(tokens, 1),
        response_mask=torch.stack(masks, 1),
        logprobs=torch.stack(logps, 1),
        values=torch.stack(vals, 1) if vals else None,
        truncated=~finished,
    )


def unique_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Distinct (ids, mask) rows: ``(first, inverse)`` with ``rows[first][inverse] == rows``.

    ``first`` indexes one representative of each distinct row, ``inverse`` maps every row to
    its representative's slot. ``None`` when all rows are distinct (nothing to share).
    """
    n = ids.shape[0]
    if n < 2:
        return None
    _, inverse = torch.unique(torch.cat([ids, mask.to(ids.dtype)], 1), dim=0, return_inverse=True)
    u = int(inverse.max()) + 1
    if u == n:
        return None
    first = torch.full((u,), n, dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=ids.device), reduce="amin")
    return first, inverse


def select_cache(past, index: torch.Tensor):
    """The KV cache with its batch rows ``index`` (repeats allowed; differentiable)."""
    if hasattr(past, "batch_select_indices"):  # transformers Cache objects, in place
        past.batch_select_indices(index)
        return past
    if hasattr(past, "reorder_cache"):
        past.reorder_cache(index)
        return past
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in past)  # legacy tuples


def prefill(policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, position_ids: torch.Tensor,
            use_cache: bool, shared: tuple[torch.Tensor, torch.Tensor] | None | str = "find"):
    """``policy`` on the prompts, computed once per distinct prompt and expanded to every row.

    Returns ``(logits (B, 1, V), values (B, 1) or None, past or None)``: only the last
    prompt position's logits/values (all any caller reads; the LM head runs on that position
    only). ``shared`` is :func:`unique_rows` of the prompts when the caller already has it.
    """
    if isinstance(shared, str):
        shared = unique_rows(prompt_ids, prompt_mask)
    if shared is None:
        return policy(prompt_ids, prompt_mask, position_ids=position_ids, use_cache=use_cache, logits_to_keep=1)
    first, inverse = shared
    logits, values, past = policy(prompt_ids[first], prompt_mask[first], position_ids=position_ids[first],
                                  use_cache=use_cache, logits_to_keep=1)
    logits = logits.index_select(0, inverse)
    if values is not None:
        values = values.index_select(0, inverse)
    if use_cache and past is not None:
        past = select_cache(past, inverse)
    return logits, values, past


def forward_response(policy: Policy, rollout_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                     temperature: float = 1.0, share_prompts: bool = True):
    """Logits, log-probs of the taken tokens, and values at the response positions.

    ``rollout_ids`` is prompt + response, ``(B, P + T)``. Returns ``(logits (B, T, V),
    logprobs (B, T), values (B, T) or None)``; position ``t`` is the state in which the
    ``t``-th response token was chosen. ``policy`` is anything with :class:`Policy`'s call
    signature (the reference model too). Rows that share a prompt share its computation
    (see the module docstring); the result is the same as one forward pass over all rows.
    ``share_prompts=False`` always takes the one pass: one model call per batch whatever its
    rows (sharded models need the same number of calls on every process; gradient
    checkpointing runs without a KV cache).
    """
    P = prompt_len
    T = rollout_ids.shape[1] - P
    positions = position_ids_from_mask(attention_mask)
    shared = unique_rows(rollout_ids[:, :P], attention_mask[:, :P]) if share_prompts else None
    if shared is None:
        # one pass over prompt + response, without the last response token (it predicts nothing);
        # logits and values only where a response token is chosen (the last T positions)
        logits, values, _ = policy(rollout_ids[:, :P + T - 1], attention_mask[:, :P + T - 1],
                                   position_ids=positions[:, :P + T - 1], logits_to_keep=T)
    else:
        logits, values, past = prefill(policy, rollout_ids[:, :P], attention_mask[:, :P], positions[:, :P],
                                       use_cache=T > 1, shared=shared)
        if T > 1:  # the response tokens but the last, on top of every row's copy of its prompt's cache
            logits_r, values_r, _ = policy(rollout_ids[:, P:P + T - 1], attention_mask[:, :P + T - 1],
                                           position_ids=positions[:, P:P + T - 1], past_key_values=past,
                                           use_cache=True)
            logits = torch.cat([logits, logits_r], 1)
            values = torch.cat([values, values_r], 1) if values is not None else None
    logits = logits.float()
    if temperature != 1.0:  # x / 1 is x: no (B, T, V) copy for it
        logits = logits / temperature
    targets = rollout_ids[:, P:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logits, logprobs, values


def left_pad(sequences: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(ids, mask)`` tensors."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)

"""Supervised warm start: next-token training on task texts before RL.

The paper warm-starts its arithmetic model on 256 worked examples; progrl does the same
with :class:`progrl.config.SFTConfig` (``examples``, ``epochs``, ``lr``, ``batch_size``).
"""

from __future__ import annotations

import random

import torch

from progrl.rollout import left_pad
from progrl.policy import position_ids_from_mask


def completion_starts(tokenizer, texts: list[str], template: str) -> list[int]:
    """Per text, the index of the first token after the last ``template`` (the completion), as TRL's
    ``DataCollatorForCompletionOnlyLM`` does; a text without the template gets no loss at all.
    Needs a fast tokenizer (character offsets)."""
    out = []
    for t in texts:
        cut = t.rfind(template)
        enc = tokenizer(t, add_special_tokens=True, return_offsets_mapping=True)
        if cut < 0:
            out.append(len(enc["input_ids"]))
            continue
        end = cut + len(template)
        out.append(next((i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > end or (a >= end and b > a)),
                        len(enc["input_ids"])))
    return out


def supervised_warm_start(lm, tokenizer, texts: list[str], *, epochs: int, lr: float, batch_size: int,
                          seed: int, device: torch.device, on_epoch=None,
                          completion_template: str | None = None) -> list[float]:
    """Train ``lm`` by next-token prediction on ``texts``; returns the mean loss of each epoch.

    Sequences are left-padded (padding is masked out of attention and of the loss). With
    ``completion_template`` the loss covers only the tokens after its last occurrence in each text
    (the prompt is context only). The model is left without gradients (``p.grad`` is None), so an
    optimiser that follows starts clean. ``on_epoch(epoch, loss)`` is called after every epoch.
    """
    if not texts:
        return []
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    starts = completion_starts(tokenizer, texts, completion_template) if completion_template else [0] * len(texts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    losses = []
    for epoch in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = [encoded[i] for i in chosen]
            ids, mask = left_pad(batch, pad_id, device)
            labels = ids.masked_fill(mask == 0, -100)
            if completion_template:
                width = ids.shape[1]
                for row, i in enumerate(chosen):  # left padding: text token j sits at width - len + j
                    labels[row, : width - len(encoded[i]) + starts[i]] = -100
            out = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), labels=labels)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            optimizer.step()
            total += float(out.loss.detach()) * len(batch)
            count += len(batch)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    optimizer.zero_grad(set_to_none=True)  # no gradient of the last batch left for the next optimiser to add
    return losses

"""Supervised warm start: next-token training on task texts before RL.

The paper warm-starts its arithmetic model on 256 worked examples; progrl does the same
with :class:`progrl.config.SFTConfig` (``examples``, ``epochs``, ``lr``, ``batch_size``).
"""

from __future__ import annotations

import random

import torch

from progrl.rollout import left_pad
from progrl.policy import position_ids_from_mask


def supervised_warm_start(lm, tokenizer, texts: list[str], *, epochs: int, lr: float, batch_size: int,
                          seed: int, device: torch.device, on_epoch=None) -> list[float]:
    """Train ``lm`` by next-token prediction on ``texts``; returns the mean loss of each epoch.

    Sequences are left-padded (padding is masked out of attention and of the loss). The model
    is left without gradients (``p.grad`` is None), so an optimiser that follows starts clean.
    ``on_epoch(epoch, loss)`` is called after every epoch (for progress display).
    """
    if not texts:
        return []
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    losses = []
    for epoch in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start:start + batch_size]]
            ids, mask = left_pad(batch, pad_id, device)
            labels = ids.masked_fill(mask == 0, -100)
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

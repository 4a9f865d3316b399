"""Retrying failed prompts: a small form of prioritised prompt replay.

Prioritised level replay (Jiang et al. 2021, "Prioritized Level Replay") samples training
levels again in proportion to how much the agent can still learn from them. For a task with a
verifiable success, the simplest such score is "not solved yet": a prompt whose samples all
scored below ``retry_below`` goes into a first-in-first-out queue, and each later step fills up
to ``retry_fraction`` of its prompts from that queue before drawing fresh ones, at most
``retry_attempts`` times per prompt. The extra attempts are ordinary samples (they count in the
sample budget); they are spent only where the policy still fails, which is where a success
teaches the most. Held-out prompts are never involved.

The queue holds plain JSON records (the task's prompt dicts and an attempt count), so it is
saved in the checkpoint and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

from collections import deque

from pydantic import BaseModel, ConfigDict, Field


class RetryConfig(BaseModel):
    """``rollout.retry``: which failed prompts come back, how often and how many per step."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    fraction: float = Field(0.0, ge=0.0, le=1.0)  # at most this share of a step's prompts are retries (0: off)
    below: float = 1.0  # a prompt failed when every one of its samples scored below this
    attempts: int = Field(3, ge=1)  # retries per prompt at most (after its first attempt)
    capacity: int = Field(4096, ge=1)  # queue length; the oldest failures leave first


class RetryQueue:
    """First-in-first-out queue of failed prompt records."""

    def __init__(self, config: RetryConfig):
        self.config = config
        self.items: deque[dict] = deque(maxlen=config.capacity)

    def __len__(self) -> int:
        return len(self.items)

    def take(self, batch_size: int) -> tuple[list[dict], list[int]]:
        """Up to ``fraction x batch_size`` queued records (oldest first), removed from the queue,
        and how many attempts each has had."""
        n = min(len(self.items), int(self.config.fraction * batch_size))
        taken = [self.items.popleft() for _ in range(n)]
        return [t["record"] for t in taken], [t["attempts"] for t in taken]

    def report(self, records: list[dict], attempts: list[int], best_scores: list[float | None]) -> None:
        """After a step: queue the records whose best sample scored below ``below``.

        ``records`` are the step's prompt records (one per prompt), ``attempts`` how many times
        each had been tried before this step (0: a fresh prompt), ``best_scores`` the best score of
        each prompt's samples (None: every sample's reward failed: not queued). A prompt is
        retried at most ``attempts`` times.
        """
        if self.config.fraction == 0.0:
            return
        for rec, tries, best in zip(records, attempts, best_scores):
            if best is not None and best < self.config.below and tries < self.config.attempts:
                self.items.append({"record": rec, "attempts": tries + 1})

    def state_dict(self) -> dict:
        return {"items": list(self.items)}

    def load_state_dict(self, state: dict) -> None:
        self.items.clear()
        self.items.extend(state["items"])

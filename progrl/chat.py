"""Chat messages, TRL's conversational format: ``[{"role": "user", "content": "..."}, ...]``.

A leaf module (no progrl imports), shared by the tasks, the trainer and the reward engine's CLI.
"""

from __future__ import annotations

from typing import Any


def is_conversation(value: Any) -> bool:
    """True for a non-empty list of chat messages: dicts with a string ``role`` and a ``content``."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value))


def assistant_message(text: str) -> list[dict[str, str]]:
    """A completion in TRL's conversational shape: ``[{"role": "assistant", "content": text}]``."""
    return [{"role": "assistant", "content": text}]

"""Reward functions for the word problems, in TRL's shape (they work unchanged in TRL's GRPOTrainer).

The prompts are conversations (a system prompt is set), so each completion is
``[{"role": "assistant", "content": text}]``; plain strings are accepted too.
"""

import re

NUMBER = re.compile(r"-?\d+")


def _text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def correct(completions, answer, **kwargs) -> list[float]:
    """1 when the last number in the reply is the answer, else 0 (the accuracy)."""
    out = []
    for c, a in zip(completions, answer):
        numbers = NUMBER.findall(_text(c))
        out.append(1.0 if numbers and numbers[-1] == str(a) else 0.0)
    return out


def number_only(completions, **kwargs) -> list[float]:
    """1 when the reply is just a number (the format the system prompt asks for), else 0."""
    return [1.0 if re.fullmatch(r"\s*-?\d+\s*\.?\s*", _text(c)) else 0.0 for c in completions]

"""Stop strings: end a response when its decoded text contains one of some strings.

Stop *tokens* (``rollout.stop_tokens``, and EOS) are matched on token ids inside the sampler;
stop *strings* (``rollout.stop``) are what users mean ("stop at a newline", "stop at
``</answer>``") and may span several tokens or sit inside one, so they are matched on the
decoded continuation: after every sampled token the sampler asks :meth:`StopStrings.hits`
about the rows still generating, which decodes only their last few tokens (enough to hold
the longest stop string). The token that completes a stop string is the response's last
token; its log-probability is trained on like any other.

The text the reward functions see is then cut at the first stop string
(:meth:`StopStrings.cut`): just before it (``rollout.stop_keep = false``, the default, as in
vLLM and the OpenAI API) or just after it (``true``). Text decoded after the stop string in
the same token is dropped either way.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    def __init__(self, tokenizer, strings: Sequence[str], keep: bool = False):
        self.tokenizer = tokenizer
        self.strings = tuple(s for s in strings if s)
        self.keep = keep
        # every token decodes to at least one character except special and partial-byte tokens:
        # a margin of a few tokens covers those at the edge of the window
        self.window = max((len(s) for s in self.strings), default=0) + 4

    def __bool__(self) -> bool:
        return bool(self.strings)

    def hits(self, tails: Sequence[Sequence[int]]) -> list[bool]:
        """For each row's response ids so far, whether its decoded end contains a stop string."""
        if not tails:
            return []
        texts = self.tokenizer.batch_decode([list(t)[-self.window:] for t in tails], skip_special_tokens=True)
        return [any(s in text for s in self.strings) for text in texts]

    def cut(self, text: str) -> tuple[str, bool]:
        """``(text up to the first stop string, whether one was found)``."""
        best = None
        for s in self.strings:
            i = text.find(s)
            if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
                best = (i, s)
        if best is None:
            return text, False
        i, s = best
        return text[:i + len(s)] if self.keep else text[:i], True

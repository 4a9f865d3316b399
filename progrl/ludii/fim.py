"""Fill-in-the-middle examples of game descriptions, in the paper's prompt form.

A game description is split as ``prefix + middle + suffix``; the model sees

    ### PRE: <prefix> ### SUF: <suffix> ### MID:

and writes `` <middle>`` (one space, then the middle). The rules (docs/ludii.md, "FIM rules"):

- **The middle is one balanced ludeme**: a ``( ... )`` form inside the ``(game ...)`` form (never
  the game form itself, never inside a top-level ``(define ...)``), of ``min_chars`` to
  ``max_chars`` characters in the canonical one-line text (:func:`progrl.ludii.sexpr.canonical`).
  Up to ``per_game`` middles are drawn per game, uniformly among the candidates, with a generator
  seeded by the game's id, so the examples of a game do not depend on the other games.
- **Post-processing exactly as the paper**: a generated middle is cut at the first closing
  bracket at which the running counts of ``( )`` and ``{ }`` are both back to zero
  (:func:`bracket_trim`; like the authors' code it counts brackets inside strings too, and keeps
  the whole text when no such bracket comes); then ``prefix + middle + suffix`` is recomposed
  (:func:`recompose`). A recomposed text that is not a well-formed s-expression scores 0 without
  reaching the engine, and so (progrl's rule, ``require_ludeme``) does a trimmed middle that is not
  one ludeme (:func:`is_ludeme`: ``(head ...)`` or a non-empty ``{...}``): otherwise deleting the
  masked ludeme - an empty middle, or ``()`` - is rewarded whenever the game compiles without it,
  and RL finds both (docs/results.md, "Ludii").
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from progrl.ludii import sexpr

PRE, SUF, MID = "### PRE:", "### SUF:", "### MID:"


@dataclass(frozen=True)
class FimExample:
    game: str  # id of the game the example comes from (the held-out split is by this)
    prefix: str
    middle: str
    suffix: str

    @property
    def prompt(self) -> str:
        return prompt_text(self.prefix, self.suffix)

    @property
    def text(self) -> str:
        """The supervised text: prompt, one space, the middle (the caller appends an end token)."""
        return self.prompt + " " + self.middle

    def windowed_prompt(self, context_chars: int) -> str:
        """The prompt with at most ``context_chars`` characters of prefix and of suffix around the
        middle (cut at a space, so no token is split); 0 = the whole game (the paper's form)."""
        if context_chars <= 0:
            return self.prompt
        return prompt_text(window_before(self.prefix, context_chars), window_after(self.suffix, context_chars))

    @property
    def full_game(self) -> str:
        return recompose(self.prefix, self.middle, self.suffix)


def prompt_text(prefix: str, suffix: str) -> str:
    """``### PRE: <prefix> ### SUF: <suffix> ### MID:`` (one space around each part)."""
    return f"{PRE} {prefix} {SUF} {suffix} {MID}"


def window_before(text: str, n: int) -> str:
    """The last ``n`` characters of ``text``, starting after a space (the whole text if short)."""
    if len(text) <= n:
        return text
    cut = len(text) - n
    j = text.find(" ", cut)
    return text[j + 1:] if j >= 0 else text[cut:]


def window_after(text: str, n: int) -> str:
    """The first ``n`` characters of ``text``, ending before a space (the whole text if short)."""
    if len(text) <= n:
        return text
    j = text.rfind(" ", 0, n)
    return text[:j] if j > 0 else text[:n]


def _strip_one(s: str) -> str:
    if s.startswith(" "):
        s = s[1:]
    if s.endswith(" "):
        s = s[:-1]
    return s


def parse_fim_text(text: str) -> tuple[str, str, str]:
    """``(prefix, suffix, middle)`` of a text in the paper's form (the inverse of
    ``FimExample.text``). Each marker must occur exactly once and in order; one space is removed on
    each side of the prefix and suffix and before the middle. Raises ValueError otherwise."""
    body = text.strip()
    for m in (PRE, SUF, MID):
        if body.count(m) != 1:
            raise ValueError(f"expected exactly one {m!r} (found {body.count(m)})")
    if not body.startswith(PRE):
        raise ValueError(f"the text must start with {PRE!r}")
    i, j = body.index(SUF), body.index(MID)
    if not i < j:
        raise ValueError(f"{SUF!r} must come before {MID!r}")
    prefix = _strip_one(body[len(PRE):i])
    suffix = _strip_one(body[i + len(SUF):j])
    middle = body[j + len(MID):]
    return prefix, suffix, middle[1:] if middle.startswith(" ") else middle


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``(prefix, suffix)`` of a prompt that ends with ``### MID:``."""
    prefix, suffix, rest = parse_fim_text(prompt)
    if rest.strip():
        raise ValueError("the prompt has text after '### MID:'")
    return prefix, suffix


def bracket_trim(sample: str) -> str:
    """The paper's post-processing: ``sample`` up to and including the first ``)`` or ``}`` at which
    the counts of ``( )`` and ``{ }`` are both zero; the whole ``sample`` if there is none."""
    rnd = curly = 0
    for i, c in enumerate(sample):
        if c == "(":
            rnd += 1
        elif c == ")":
            rnd -= 1
        elif c == "{":
            curly += 1
        elif c == "}":
            curly -= 1
        if c in ")}" and rnd == 0 and curly == 0:
            return sample[:i + 1]
    return sample


def recompose(prefix: str, middle: str, suffix: str) -> str:
    return prefix + middle + suffix


def is_ludeme(middle: str) -> bool:
    """Exactly one balanced form (whitespace around it allowed) that says something: ``(head ...)``
    with a ludeme name (or a define's quoted name) first, or a non-empty ``{ ... }``. Not a ludeme: the empty middle (the masked
    ludeme deleted), ``()`` and ``{}`` (which Ludii accepts in optional slots, i.e. deletion again)."""
    try:
        items = sexpr.parse(middle)
    except sexpr.SexprError:
        return False
    if len(items) != 1 or not isinstance(items[0], sexpr.Node):
        return False
    node = items[0]
    if node.bracket == "{":
        return bool(node.children)
    first = node.children[0] if node.children else None  # a ludeme name, or a define's "Name"
    return isinstance(first, sexpr.Token) and first.kind in ("atom", "string")


def same_middle(generated: str, original: str) -> bool:
    """Equal up to whitespace and comments (canonical forms), else exactly equal after strip."""
    try:
        return sexpr.canonical(generated) == sexpr.canonical(original)
    except sexpr.SexprError:
        return generated.strip() == original.strip()


def candidate_spans(text: str, min_chars: int, max_chars: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every ludeme that may be masked in ``text`` (see the module docstring)."""
    games = [n for n in sexpr.forms(text) if n.head == "game"]
    out = []
    for g in games:
        for n in g.forms():
            if n is g or n.bracket != "(" or not n.children or not isinstance(n.children[0], sexpr.Token):
                continue
            if min_chars <= n.end - n.start <= max_chars:
                out.append((n.start, n.end))
    return out


def game_rng(game_id: str, salt: str = "") -> random.Random:
    digest = hashlib.sha256(f"{salt}|{game_id}".encode("utf-8")).hexdigest()
    return random.Random(int(digest[:16], 16))


def make_examples(game_id: str, text: str, *, per_game: int, min_chars: int, max_chars: int,
                  salt: str = "") -> list[FimExample]:
    """Up to ``per_game`` examples of one game (``text`` is used as given: canonicalise it first)."""
    spans = candidate_spans(text, min_chars, max_chars)
    rng = game_rng(game_id, salt)
    chosen = sorted(rng.sample(spans, min(per_game, len(spans))))
    return [FimExample(game_id, text[:s], text[s:e], text[e:]) for s, e in chosen]

"""S-expressions of ludemes: tokens, bracket structure, strings and spans.

A Ludii game description is a tree of ``( ... )`` ludemes and ``{ ... }`` arrays whose leaves are
atoms (``2``, ``Orthogonal``, ``P1``, ``to:``, ``<Board>``, ``#1``) and double-quoted strings.
Line comments start with ``//`` (outside strings). Everything here is pure and cheap; errors are
:class:`SexprError` with the character position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

OPEN = {"(": ")", "{": "}"}
CLOSE = {")": "(", "}": "{"}


class SexprError(ValueError):
    """The text is not a well-formed s-expression (message names the position)."""


@dataclass(frozen=True)
class Token:
    kind: str  # "open" | "close" | "string" | "atom"
    text: str
    start: int
    end: int  # exclusive


@dataclass
class Node:
    """A bracketed form: ``(head ...)`` or ``{...}`` with its character span ``[start, end)``."""

    bracket: str  # "(" or "{"
    start: int
    end: int = -1
    children: list[Union["Node", Token]] = field(default_factory=list)
    depth: int = 0

    @property
    def head(self) -> str | None:
        """The first atom of a ``( ... )`` form (``game``, ``players``, ``move``), else None."""
        if self.bracket != "(" or not self.children:
            return None
        first = self.children[0]
        return first.text if isinstance(first, Token) and first.kind == "atom" else None

    def forms(self) -> Iterator["Node"]:
        """This node and every node below it, in document order."""
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.forms()

    def find(self, head: str) -> list["Node"]:
        """Every ``(head ...)`` form below this one (not this one)."""
        return [n for n in self.forms() if n is not self and n.head == head]


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text``; comments and whitespace are skipped. Raises on an unterminated string."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif c in OPEN:
            out.append(Token("open", c, i, i + 1))
            i += 1
        elif c in CLOSE:
            out.append(Token("close", c, i, i + 1))
            i += 1
        elif c == '"':
            j = text.find('"', i + 1)
            if j < 0:
                raise SexprError(f"unterminated string starting at character {i}")
            out.append(Token("string", text[i:j + 1], i, j + 1))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in OPEN and text[j] not in CLOSE and text[j] != '"':
                if text[j] == "/" and text.startswith("//", j):
                    break
                j += 1
            out.append(Token("atom", text[i:j], i, j))
            i = j
    return out


def parse(text: str) -> list[Union[Node, Token]]:
    """The top-level items of ``text`` (forms and stray atoms/strings). Raises :class:`SexprError`
    on unbalanced or mismatched brackets and unterminated strings."""
    root: list[Union[Node, Token]] = []
    stack: list[Node] = []
    for tok in tokenize(text):
        if tok.kind == "open":
            node = Node(tok.text, tok.start, depth=len(stack))
            (stack[-1].children if stack else root).append(node)
            stack.append(node)
        elif tok.kind == "close":
            if not stack:
                raise SexprError(f"unexpected '{tok.text}' at character {tok.start}")
            node = stack.pop()
            if OPEN[node.bracket] != tok.text:
                raise SexprError(f"'{node.bracket}' at character {node.start} closed by '{tok.text}' "
                                 f"at character {tok.start}")
            node.end = tok.end
        else:
            (stack[-1].children if stack else root).append(tok)
    if stack:
        raise SexprError(f"'{stack[-1].bracket}' at character {stack[-1].start} is never closed")
    return root


def is_well_formed(text: str) -> bool:
    """Brackets balanced and matched, strings closed."""
    try:
        parse(text)
    except SexprError:
        return False
    return True


def forms(text: str) -> list[Node]:
    """The top-level bracketed forms of ``text``."""
    return [x for x in parse(text) if isinstance(x, Node)]


def _needs_space(prev: Token, tok: Token) -> bool:
    if prev.kind == "open" or tok.kind == "close":
        return False
    if prev.kind == "atom" and prev.text.endswith(":"):  # a named argument: ``to:(sites Empty)``
        return False
    return True


def canonical(text: str) -> str:
    """One-line canonical form: comments dropped, tokens separated by one space, none after an
    opening bracket, before a closing one or after a ``name:`` atom. Strings are kept verbatim.
    Works on any text that tokenizes (brackets need not balance)."""
    parts: list[str] = []
    prev: Token | None = None
    for tok in tokenize(text):
        if prev is not None and _needs_space(prev, tok):
            parts.append(" ")
        parts.append(tok.text)
        prev = tok
    return "".join(parts)


def remove_forms(text: str, heads: set[str] | frozenset[str]) -> str:
    """``text`` without its top-level ``(head ...)`` forms for ``head`` in ``heads``."""
    cut = [(n.start, n.end) for n in forms(text) if n.head in heads]
    out, last = [], 0
    for s, e in cut:
        out.append(text[last:s])
        last = e
    out.append(text[last:])
    return "".join(out)


def atoms(node: Node) -> Iterator[Token]:
    """Every atom below ``node``."""
    for c in node.children:
        if isinstance(c, Node):
            yield from atoms(c)
        elif c.kind == "atom":
            yield c

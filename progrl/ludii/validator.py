"""A pure-Python structural validator of game descriptions: a PROXY for the Ludii engine.

For users without Java and for tests. It checks what can be checked without the engine and gives
graded partial credit in [0, 1]; it never plays a game, so its score is not the paper's reward and
is always reported as a proxy (metric names start with ``proxy_``).

Credit (weights sum to 1; without a ludeme list the name check is left out and the rest rescaled):

    0.20  the text parses: brackets balanced and matched, strings closed (else the score is 0)
    0.10  exactly one top-level form, ``(game "<name>" ...)``
    0.15  ``(players N)`` with N an integer 1..16, or ``(players {...})``
    0.15  ``(equipment {...})``
    0.10  ``(rules ...)``
    0.10  a ``(play ...)`` inside the rules
    0.10  an ``(end ...)`` inside the rules
    0.10  the fraction of ludeme heads (and capitalised constants) found in the name list
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from progrl.ludii import sexpr

WEIGHTS = {"parses": 0.20, "game": 0.10, "players": 0.15, "equipment": 0.15, "rules": 0.10, "play": 0.10,
           "end": 0.10, "names": 0.10}
_CONSTANT = re.compile(r"^[A-Z][A-Za-z]+$")  # Orthogonal, Mover, Each (not P1, not "strings")
_LITERALS = frozenset({"True", "False", "Infinity", "Undefined"})  # values, not in the grammar's symbol list


@dataclass(frozen=True)
class LudemeNames:
    """Names the engine knows: ludeme heads (``move``, ``sites``) and constants (``Orthogonal``)."""

    ludemes: frozenset[str]
    constants: frozenset[str] = frozenset()

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> "LudemeNames":
        """One name per line; capitalised names are constants, the rest ludeme heads."""
        names = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        return cls(frozenset(n for n in names if not n[:1].isupper()), frozenset(n for n in names if n[:1].isupper()))


@dataclass(frozen=True)
class Validation:
    score: float  # graded credit in [0, 1]
    checks: dict[str, float] = field(default_factory=dict)  # each check's credit fraction in [0, 1]
    message: str | None = None  # why the first failing check failed

    @property
    def valid(self) -> bool:
        """Every structural check passed (names may still be unknown)."""
        return all(self.checks.get(k, 0.0) == 1.0 for k in WEIGHTS if k != "names")


def _players_ok(node: sexpr.Node) -> bool:
    args = node.children[1:]
    if len(args) != 1:
        return False
    a = args[0]
    if isinstance(a, sexpr.Node):
        return a.bracket == "{"
    return a.kind == "atom" and a.text.isdigit() and 1 <= int(a.text) <= 16


def validate(text: str, names: LudemeNames | None = None) -> Validation:
    """Structural checks of one description; see the module docstring for the credit."""
    weights = dict(WEIGHTS)
    if names is None:
        weights.pop("names")
    total = sum(weights.values())
    checks = {k: 0.0 for k in weights}
    try:
        top = sexpr.parse(text)
    except sexpr.SexprError as err:
        return Validation(0.0, checks, str(err))
    checks["parses"] = 1.0
    message = None
    games = [x for x in top if isinstance(x, sexpr.Node) and x.head == "game"]
    defines = [x for x in top if isinstance(x, sexpr.Node) and x.head == "define"]
    game = games[0] if games else None
    if len(games) == 1 and len(top) == 1 + len(defines):
        name = game.children[1] if len(game.children) > 1 else None
        if isinstance(name, sexpr.Token) and name.kind == "string":
            checks["game"] = 1.0
        else:
            message = "the game form has no name string"
    else:
        message = "expected exactly one top-level (game \"name\" ...) form"
    if game is not None:
        direct = {c.head: c for c in game.children if isinstance(c, sexpr.Node) and c.head}
        players = direct.get("players")
        if players is not None and _players_ok(players):
            checks["players"] = 1.0
        equipment = direct.get("equipment")
        if equipment is not None and any(isinstance(c, sexpr.Node) and c.bracket == "{" for c in equipment.children):
            checks["equipment"] = 1.0
        rules = direct.get("rules")
        if rules is not None:
            checks["rules"] = 1.0
            checks["play"] = 1.0 if rules.find("play") else 0.0
            checks["end"] = 1.0 if rules.find("end") else 0.0
        for k in ("players", "equipment", "rules", "play", "end"):
            if checks[k] == 0.0 and message is None:
                message = f"missing or malformed ({k} ...)"
    if names is not None:
        found, known = 0, 0
        for x in top:
            if not isinstance(x, sexpr.Node):
                continue
            for n in x.forms():
                if n.head is not None and n.head != "define":
                    found += 1
                    known += n.head in names.ludemes
            for a in sexpr.atoms(x):
                if _CONSTANT.match(a.text) and a.text not in _LITERALS:
                    found += 1
                    known += a.text in names.constants or a.text in names.ludemes
        checks["names"] = known / found if found else 1.0
        if checks["names"] < 1.0 and message is None:
            message = f"{found - known} of {found} names are not Ludii ludemes or constants"
    score = sum(weights[k] * checks[k] for k in weights) / total
    return Validation(round(score, 6), checks, message)

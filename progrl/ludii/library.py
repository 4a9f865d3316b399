"""Game descriptions for the task: from the user's Ludii jar, a folder of .lud files, or a file of
fill-in-the-middle texts in the paper's form.

Nothing read here is stored in progrl: games are read at run time, and what is derived from them
(expanded descriptions, name lists) is cached in the user's cache folder
(:func:`progrl.ludii.toolchain.cache_root`), never in the project.

How a raw ``.lud`` becomes a training game (docs/ludii.md, "FIM rules"):

- **expanded by the engine** (when Java and a jar are available, ``expand = "auto"`` or
  ``"engine"``): Ludii's own expander inlines ``(define ...)`` macros, realises ``(option ...)``
  choices and ``(rulesets ...)`` with their defaults and drops ``(metadata ...)`` - the form the
  authors trained on;
- **raw** (no engine, ``expand = "none"``): comments and the top-level ``(metadata ...)`` are
  removed, top-level ``(define ...)`` forms are kept (they stay in the prefix, a middle is never
  drawn from them), and games that use ``(option ...)``, ``(rulesets ...)`` or ``<...>`` option
  placeholders are skipped (counted and reported), since their text is not a game until options
  are chosen.

Either way the text is then put in canonical one-line form (:func:`progrl.ludii.sexpr.canonical`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from progrl.ludii import fim, sexpr
from progrl.ludii.toolchain import LudiiSetupError

_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*>")
_NAME = re.compile(r'^\(game "[^"]*"')


@dataclass(frozen=True)
class RawGame:
    id: str  # path inside the library without ``lud/`` and ``.lud``, e.g. "board/space/line/Tic-Tac-Toe"
    text: str  # the .lud file as written


@dataclass
class Prepared:
    """Games ready for FIM examples, and what was left out."""

    games: dict[str, str] = field(default_factory=dict)  # id -> canonical description
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LudiiSetupError(f"ludii: {where} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_jar_games(jar: Path, categories: Sequence[str] = ()) -> list[RawGame]:
    """The ``lud/<category>/...*.lud`` games inside a Ludii jar (all of ``lud/`` with no categories)."""
    prefixes = [f"lud/{c.strip('/')}/" for c in categories] or ["lud/"]
    try:
        with zipfile.ZipFile(jar) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".lud") and any(n.startswith(p) for p in prefixes))
            games = [RawGame(n[len("lud/"):-len(".lud")], _decode(z.read(n), f"{jar}!{n}")) for n in names]
    except (zipfile.BadZipFile, OSError) as err:
        raise LudiiSetupError(f"ludii: cannot read {jar}: {err}") from None
    if not games:
        raise LudiiSetupError(f"ludii: {jar} has no .lud games under {', '.join(prefixes)} "
                              f"(task_options.categories = {list(categories)})")
    return games


def read_dir_games(folder: Path) -> list[RawGame]:
    """Every ``*.lud`` file below ``folder`` (ids are their paths relative to it)."""
    if not folder.exists():
        raise LudiiSetupError(f"ludii: data folder not found: {folder}")
    if not folder.is_dir():
        raise LudiiSetupError(f"ludii: {folder} is not a folder of .lud files")
    files = sorted(p for p in folder.rglob("*.lud") if p.is_file())
    if not files:
        raise LudiiSetupError(f"ludii: no .lud files in {folder}")
    out = []
    for p in files:
        try:
            data = p.read_bytes()
        except OSError as err:
            raise LudiiSetupError(f"ludii: cannot read {p}: {err}") from None
        out.append(RawGame(str(p.relative_to(folder).with_suffix("")), _decode(data, str(p))))
    return out


def uses_options(text: str) -> bool:
    """The raw text needs option choices before it is a game."""
    try:
        tops = sexpr.parse(text)
    except sexpr.SexprError:
        return False
    for node in (t for t in tops if isinstance(t, sexpr.Node)):
        if any(n.head in ("option", "rulesets") for n in node.forms()):
            return True
        if any(_PLACEHOLDER.fullmatch(a.text) for a in sexpr.atoms(node)):
            return True
    return False


def prepare_raw(text: str) -> tuple[str | None, str | None]:
    """``(canonical description, None)`` or ``(None, reason it is skipped)`` for a raw .lud text."""
    try:
        body = sexpr.remove_forms(text, frozenset({"metadata"}))
        if uses_options(body):
            return None, "uses options"
        return _finish(body)
    except sexpr.SexprError:
        return None, "malformed"


def _finish(text: str) -> tuple[str | None, str | None]:
    try:
        tops = sexpr.parse(text)
    except sexpr.SexprError:
        return None, "malformed"
    games = [t for t in tops if isinstance(t, sexpr.Node) and t.head == "game"]
    others = [t for t in tops if not (isinstance(t, sexpr.Node) and t.head in ("game", "define"))]
    if len(games) != 1 or others:
        return None, "not one (game ...) form"
    canon = sexpr.canonical(text)
    if "###" in canon:
        return None, "contains '###'"
    return canon, None


def prepare_expanded(text: str) -> tuple[str | None, str | None]:
    """Canonical form of an engine-expanded description (metadata removed if still there)."""
    try:
        return _finish(sexpr.remove_forms(text, frozenset({"metadata"})))
    except sexpr.SexprError:
        return None, "malformed"


def dedupe_key(canonical: str) -> str:
    """Games that differ only in their name are the same game for the held-out split."""
    return _NAME.sub('(game ""', canonical, count=1)


def prepare(raw: Sequence[RawGame], expand: Callable[[list[str]], list[tuple[str | None, str | None]]] | None,
            max_chars: int) -> Prepared:
    """Expand (or take raw), canonicalise, filter by length and drop duplicates (first id wins)."""
    out = Prepared()
    expanded = expand([g.text for g in raw]) if expand is not None else None
    seen: set[str] = set()
    for k, g in enumerate(raw):
        if expanded is not None:
            text, message = expanded[k]
            canon, reason = prepare_expanded(text) if text is not None else (None, "does not expand")
        else:
            canon, reason = prepare_raw(g.text)
        if canon is None:
            out.skip(reason or "unusable")
            continue
        if len(canon) > max_chars:
            out.skip(f"longer than {max_chars} characters")
            continue
        key = dedupe_key(canon)
        if key in seen:
            out.skip("duplicate")
            continue
        seen.add(key)
        out.games[g.id] = canon
    return out


def is_held_out(game_id: str, fraction: float, salt: str = "progrl-ludii-split") -> bool:
    """A fixed, per-game coin: the split of a game does not depend on which other games exist."""
    h = int(hashlib.sha256(f"{salt}|{game_id}".encode("utf-8")).hexdigest()[:12], 16)
    return h / float(1 << 48) < fraction


def split_games(ids: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` ids; at least one of each when there are two games or more."""
    ids = sorted(ids)
    held = [i for i in ids if is_held_out(i, fraction)]
    train = [i for i in ids if not is_held_out(i, fraction)]
    if len(ids) >= 2 and not held:
        held, train = train[-1:], train[:-1]
    if len(ids) >= 2 and not train:
        train, held = held[:1], held[1:]
    return train, held


# ----------------------------------------------------------------------------- FIM files


def read_fim_file(spec: str) -> dict[str, list[fim.FimExample]]:
    """Examples already in the paper's form, by split: a ``.jsonl`` / ``.json`` file of objects with
    ``text`` (and optionally ``game`` or ``name``, and ``split``), or ``datasets:<path or name>``
    (anything ``datasets`` loads locally, with a ``text`` column). Returns ``{split: examples}``;
    the split is "" when the file has none. Examples are grouped by ``game``/``name`` when given,
    else by their recomposed game."""
    rows: list[tuple[str, dict]] = []
    if spec.startswith("datasets:"):
        rows = _datasets_rows(spec[len("datasets:"):])
    else:
        path = Path(spec)
        if not path.is_file():
            raise LudiiSetupError(f"ludii: data file not found: {path}")
        text = _decode(path.read_bytes(), str(path))
        try:
            if path.suffix == ".json":
                data = json.loads(text)
                items = data if isinstance(data, list) else [data]
            else:
                items = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except ValueError as err:
            raise LudiiSetupError(f"ludii: {path} is not JSON lines ({err})") from None
        rows = [(str(it.get("split", "")) if isinstance(it, dict) else "", it) for it in items]
    out: dict[str, list[fim.FimExample]] = {}
    for n, (split, row) in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise LudiiSetupError(f"ludii: {spec}: record {n + 1} has no string 'text'")
        try:
            prefix, suffix, middle = fim.parse_fim_text(row["text"])
        except ValueError as err:
            raise LudiiSetupError(f"ludii: {spec}: record {n + 1} is not in the ### PRE: / ### SUF: / ### MID: "
                                  f"form ({err})") from None
        game = row.get("game") or row.get("name") or dedupe_key(sexpr_canonical_or_raw(prefix + middle + suffix))
        out.setdefault(split, []).append(fim.FimExample(str(game), prefix, middle.rstrip(), suffix))
    if not any(out.values()):
        raise LudiiSetupError(f"ludii: {spec} has no records")
    return out


def sexpr_canonical_or_raw(text: str) -> str:
    try:
        return sexpr.canonical(text)
    except sexpr.SexprError:
        return text


def _datasets_rows(name: str) -> list[tuple[str, dict]]:
    try:
        import datasets
    except ImportError:
        raise LudiiSetupError("ludii: data 'datasets:...' needs the datasets package (pip install datasets)") from None
    try:
        p = Path(name)
        if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()):
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name)
    except Exception as err:  # datasets raises many kinds
        raise LudiiSetupError(f"ludii: cannot load dataset {name!r}: {str(err).splitlines()[0] if str(err) else err}"
                              ) from None
    splits = ds.items() if hasattr(ds, "items") else [("", ds)]
    return [(split, dict(row)) for split, part in splits for row in part]


# ----------------------------------------------------------------------------- caches


def load_json_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_json_cache(path: Path, data: dict) -> None:
    """Atomic write (a partial file never replaces a good one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

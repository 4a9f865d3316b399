"""The pure parts of the sentiment task (paper task 1): the VADER reward and the prompts.

* :func:`vader_reward` -- VADER compound sentiment in [-1, 1] of prompt + completion (or of the
  completion alone), batched, in the shape of a TRL GRPO reward function.
* :func:`load_prompt_texts` -- review texts from the built-in set of movie-review openings shipped
  with progrl (``progrl/data/review_openings.txt``), a ``.csv`` / ``.jsonl`` / ``.txt`` file, or the
  IMDB training split through ``datasets`` (needs network the first time).
* :func:`make_prompts` -- the paper's prompts: the first k tokens of each review, k uniform in
  [min_tokens, max_tokens], decoded back to text.
"""

from __future__ import annotations

import csv
import functools
import html
import importlib.resources
import json
import math
import os
import random
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "BUILTIN_PROMPTS_FILE",
    "clean_review_text",
    "load_prompt_source",
    "load_prompt_texts",
    "make_prompts",
    "sentiment_analyzer",
    "vader_compound",
    "vader_reward",
]

BUILTIN_PROMPTS_FILE = "review_openings.txt"
IMDB_DATASET = "stanfordnlp/imdb"


# --------------------------------------------------------------------------------------------
# reward
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def sentiment_analyzer():
    """The process-wide VADER analyzer (loading its lexicon takes ~0.1 s, so it is made once)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the sentiment task needs vaderSentiment: pip install progrl[sentiment]") from exc
    return SentimentIntensityAnalyzer()


def _as_text(x: Any) -> str:
    """Plain text from a string, a chat message or a list of chat messages (TRL conversational
    format); anything else through ``str``; ``None`` -> ``""``."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, dict):
        return _as_text(x.get("content", ""))
    if isinstance(x, (list, tuple)):
        return "".join(_as_text(item) for item in x)
    return str(x)


def vader_compound(text: Any) -> float:
    """VADER compound score of one text; 0.0 for empty text or anything VADER cannot score."""
    text = _as_text(text)
    if not text.strip():
        return 0.0
    try:
        score = float(sentiment_analyzer().polarity_scores(text)["compound"])
    except ImportError:
        raise
    except Exception:
        return 0.0
    return score if math.isfinite(score) else 0.0


def vader_reward(
    prompts: Sequence[Any] | None,
    completions: Sequence[Any],
    response_only: bool = False,
    **columns: Any,
) -> list[float]:
    """VADER compound sentiment of ``prompt + completion`` (the paper's reward) or, with
    ``response_only=True``, of the completion alone. One float in [-1, 1] per completion.

    Shaped like a TRL GRPO reward function (``prompts=``, ``completions=``, extra dataset columns as
    keywords, which are ignored). The completion is appended to the prompt as is: it continues the
    prompt's text. Odd inputs (None, empty, non-string, chat-message lists) never raise.
    """
    completions = list(completions)
    if response_only or prompts is None:
        texts = [_as_text(c) for c in completions]
    else:
        prompts = list(prompts)
        if len(prompts) != len(completions):
            raise ValueError(f"vader_reward: {len(prompts)} prompts but {len(completions)} completions")
        texts = [_as_text(p) + _as_text(c) for p, c in zip(prompts, completions)]
    return [vader_compound(t) for t in texts]


# --------------------------------------------------------------------------------------------
# prompt texts
# --------------------------------------------------------------------------------------------

_BR_RE = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_TAG_RE = re.compile(r"</?\s*(?:i|b|em|strong|p|hr|span|div)\b[^>]*>", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")


def clean_review_text(text: Any) -> str:
    """IMDB-style cleanup: ``<br />`` line breaks and simple inline HTML tags become spaces, HTML
    entities are unescaped, whitespace is collapsed."""
    text = _as_text(text)
    text = _BR_RE.sub(" ", text)
    text = _TAG_RE.sub(" ", text)
    text = html.unescape(text)
    return _WS_RE.sub(" ", text).strip()


def _builtin_lines() -> list[str]:
    try:
        resource = importlib.resources.files("progrl").joinpath("data", BUILTIN_PROMPTS_FILE)
        raw = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError, TypeError, OSError):
        fallback = Path(__file__).resolve().parent.parent / "data" / BUILTIN_PROMPTS_FILE
        try:
            raw = fallback.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"built-in prompt file {BUILTIN_PROMPTS_FILE} is missing from the progrl installation") from exc
    lines = []
    for line in raw.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


_TEXT_COLUMNS = ("review", "text", "prompt")
_JSON_KEYS = ("text", "review", "prompt")


def _is_text_column(values: list[str]) -> bool:
    """Most values read as text: at least half of the non-empty ones have two or more words
    (an id like ``c-1002-beta``, a label or a number does not)."""
    sample = [v for v in values[:500] if v and v.strip()]
    return bool(sample) and sum(len(v.split()) >= 2 for v in sample) * 2 >= len(sample)


def _read_csv(path: Path, text_column: str | None = None) -> tuple[list[str], str]:
    """The texts of one column of a CSV file and the column's name.

    The column: ``text_column`` when given; else the first one named ``review``, ``text`` or
    ``prompt`` (any case); else the column of longest texts among those whose values read as
    text (:func:`_is_text_column`). A file with none of these raises ``ValueError`` naming its
    columns: progrl never trains on ids or labels for lack of a better column.
    """
    try:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    except OverflowError:  # pragma: no cover
        pass
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            header = next(reader, None)
            rows = [row for row in reader if row]
    except (OSError, csv.Error) as exc:
        raise ValueError(f"could not read the prompt file {path}: {exc}") from exc
    if header is None:
        raise ValueError(f"prompt file {path} is empty")
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")

    def values(c: int) -> list[str]:
        return [row[c] for row in rows if len(row) > c]

    if text_column is not None:
        if text_column.strip().lower() not in lowered:
            raise ValueError(f"task_options.text_column: prompt file {path} has no column {text_column!r} "
                             f"(columns: {shown})")
        column = lowered.index(text_column.strip().lower())
    else:
        column = next((lowered.index(w) for w in _TEXT_COLUMNS if w in lowered), None)
        if column is None:
            candidates = [c for c in range(len(names)) if _is_text_column(values(c))]
            if not candidates:
                raise ValueError(f"prompt file {path} has no text column: none is named review, text or prompt, "
                                 f"and no column holds texts of two or more words (columns: {shown}); "
                                 f"name one with task_options.text_column")
            column = max(candidates, key=lambda c: (sum(map(len, values(c))) / max(len(values(c)), 1), -c))
    return values(column), names[column] or f"#{column + 1}"


def _read_jsonl(path: Path, text_column: str | None = None) -> tuple[list[str], str]:
    texts, used = [], []
    keys = (text_column,) if text_column is not None else _JSON_KEYS
    wanted = " or ".join(repr(k) for k in keys)
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"prompt file {path} line {lineno} is not valid JSON: {exc.msg}") from exc
                if isinstance(obj, str):
                    texts.append(obj)
                    continue
                if not isinstance(obj, dict):
                    raise ValueError(f"prompt file {path} line {lineno}: expected an object with a {wanted} key")
                for key in keys:
                    if key in obj:
                        texts.append(_as_text(obj[key]))
                        if key not in used:
                            used.append(key)
                        break
                else:
                    raise ValueError(
                        f"prompt file {path} line {lineno}: no {wanted} key (keys: {', '.join(map(str, obj))})"
                    )
    except OSError as exc:
        raise ValueError(f"could not read the prompt file {path}: {exc}") from exc
    return texts, ", ".join(used) or "(bare strings)"


def _read_txt(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as exc:
        raise ValueError(f"could not read the prompt file {path}: {exc}") from exc


def _load_imdb() -> list[str]:
    try:
        import datasets
    except ImportError as exc:
        raise ValueError("prompt source 'imdb' needs the datasets package: pip install progrl[sentiment]") from exc
    try:
        ds = datasets.load_dataset(IMDB_DATASET, split="train")
    except Exception as exc:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"could not download the IMDB dataset {IMDB_DATASET!r} ({type(exc).__name__}: {first[:160]}); "
            f"without network use the built-in prompts or pass a .csv/.jsonl file of reviews"
        ) from exc
    return list(ds["text"])


def load_prompt_texts(source: str | os.PathLike | None = None, text_column: str | None = None) -> list[str]:
    """Review texts to cut prompts from (see :func:`load_prompt_source`, which also says where
    they came from)."""
    return load_prompt_source(source, text_column)[0]


def load_prompt_source(source: str | os.PathLike | None = None,
                       text_column: str | None = None) -> tuple[list[str], str]:
    """Review texts to cut prompts from, and one line saying where they came from.

    ``None`` or ``"builtin"``: the ~300 movie-review openings shipped with progrl. ``"imdb"``: the
    IMDB training split (``datasets``, network needed the first time). A path: ``.csv`` (the
    column ``text_column``, else one named ``review``, ``text`` or ``prompt``, else the column of
    longest multi-word texts; a file without a text column is refused, see :func:`_read_csv`),
    ``.jsonl`` (key ``text_column``, else ``text``, ``review`` or ``prompt``; bare strings also
    accepted) or ``.txt`` (one per line). Texts are cleaned (IMDB ``<br />`` tags, HTML
    entities, whitespace) and empty ones dropped. A missing, unreadable or empty file raises
    ``ValueError`` with one line naming it.
    """
    if source is None or (isinstance(source, str) and source.strip().lower() in ("", "builtin", "built-in", "default")):
        texts, where = _builtin_lines(), "the built-in review openings"
    elif isinstance(source, str) and source.strip().lower() == "imdb":
        texts, where = _load_imdb(), f"the IMDB training split ({IMDB_DATASET}), column 'text'"
    else:
        path = Path(os.fspath(source)).expanduser()
        if not path.exists():
            raise ValueError(f"prompt file not found: {path}")
        if not path.is_file():
            raise ValueError(f"prompt source {path} is not a file (expected .csv, .jsonl or .txt)")
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            texts, column = _read_csv(path, text_column)
            where = f"{path}, column {column!r}"
        elif suffix in (".jsonl", ".ndjson"):
            texts, keys = _read_jsonl(path, text_column)
            where = f"{path}, key {keys}"
        elif suffix == ".txt":
            texts, where = _read_txt(path), f"{path}, one text per line"
        else:
            raise ValueError(f"prompt file {path} has an unsupported type {suffix or '(none)'!r}: use .csv, .jsonl or .txt")
        texts = [clean_review_text(t) for t in texts]
        texts = [t for t in texts if t]
        if not texts:
            raise ValueError(f"prompt file {path} holds no texts ({where})")
        return texts, where
    texts = [clean_review_text(t) for t in texts]
    return [t for t in texts if t], where


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    enc = tokenizer(texts, add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


def make_prompts(
    texts: Iterable[str],
    tokenizer,
    rng: random.Random,
    min_tokens: int = 2,
    max_tokens: int = 8,
) -> list[str]:
    """The paper's prompts: for each text, its first k tokens (k uniform in [min_tokens,
    max_tokens], drawn from ``rng``), decoded back to text without special tokens.

    A text shorter than k tokens is used whole; one shorter than ``min_tokens`` is skipped, so the
    result can be shorter than ``texts``. Only the start of long texts is tokenized.
    """
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    texts = [t.strip() for t in (_as_text(t) for t in texts)]
    head_chars = max(256, 48 * max_tokens)
    heads = [t[:head_chars] for t in texts]
    ids = _token_ids(tokenizer, heads) if heads else []
    # a cut text whose head gives too few tokens (e.g. long runs of symbols): tokenize it whole
    redo = [i for i, t in enumerate(texts) if len(t) > head_chars and len(ids[i]) <= max_tokens]
    if redo:
        for i, full in zip(redo, _token_ids(tokenizer, [texts[i] for i in redo])):
            ids[i] = full
    prompts = []
    for token_ids in ids:
        k = rng.randint(min_tokens, max_tokens)
        if len(token_ids) < min_tokens:
            continue
        text = tokenizer.decode(token_ids[:k], skip_special_tokens=True)
        text = text.rstrip("\ufffd")  # a cut inside a multi-byte character
        if text.strip():
            prompts.append(text)
    return prompts

"""Write docs/configuration.md from the config models, so the reference cannot drift.

    python -m progrl.docgen            # rewrite docs/configuration.md
    python -m progrl.docgen --check    # exit 1 when the file is out of date (the test does the same)

Every field of every section (:class:`progrl.config.TrainConfig` and the sections it holds,
the reward engine's :class:`~progrl.rewards.config.RewardConfig` included) becomes one table row:
its TOML key, type, default and meaning. The meaning is the field's ``description`` when it has
one, else the comment written after it on its line in the source (the config modules document
their fields that way), else the comment lines right above it, else the row says
"(undocumented)" -- which the test refuses, so every new field must say what it does. The
options of the built-in tasks (``task_options``) follow, from the tasks' option models.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
UNDOCUMENTED = "(undocumented)"


@functools.lru_cache(maxsize=None)
def source_comments(cls: type) -> dict[str, str]:
    """``field name -> trailing comment`` of the ``name: type = value  # comment`` lines of a class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    lines = source.splitlines()
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except tokenize.TokenError:
        return {}
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if ":" not in stripped or stripped.startswith(("#", "def ", "@", "class ")):
            continue
        name = stripped.split(":", 1)[0].strip()
        if not (name.isidentifier() and name in getattr(cls, "model_fields", {})):
            continue
        if lineno in comments and not stripped.startswith("#"):
            out.setdefault(name, comments[lineno])
            continue
        above = []  # else the comment lines right above the field
        k = lineno - 1
        while k >= 1 and lines[k - 1].strip().startswith("#"):
            above.insert(0, lines[k - 1].strip().lstrip("#").strip())
            k -= 1
        if above:
            out.setdefault(name, " ".join(above))
    return out


def describe(cls: type[BaseModel], name: str) -> str:
    field = cls.model_fields[name]
    if field.description:
        return field.description
    for klass in cls.__mro__:
        if name in getattr(klass, "model_fields", {}):
            comment = source_comments(klass).get(name)
            if comment:
                return comment
    return UNDOCUMENTED


def type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    if text is None:
        text = str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None")


def default_text(field) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else repr(field.default_factory())
    value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return repr(value)


def _sub_model(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def rows(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every field, sections first-level flattened in order."""
    out = []
    for name, field in cls.model_fields.items():
        sub = _sub_model(field.annotation)
        if sub is not None:
            continue
        out.append((prefix + name, type_name(field.annotation), default_text(field), describe(cls, name)))
    return out


def sections(cls: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    return [(name, f.annotation) for name, f in cls.model_fields.items() if _sub_model(f.annotation)]


def _table(items) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, meaning in items:
        cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| `{cell(key)}` | `{cell(tp)}` | `{cell(default)}` | {cell(meaning)} |")
    return lines


def _doc_first_line(cls) -> str:
    return inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")


def render() -> str:
    from progrl.config import TrainConfig
    from progrl.rewards.config import RewardFunctionConfig
    from progrl.tasks import TASKS, task_class

    out = [
        "# Configuration reference",
        "",
        "<!-- generated by `python -m progrl.docgen` from the config models; do not edit by hand -->",
        "",
        "Every key of a run's config, its type, default and meaning. Values are layered (later wins):",
        "field defaults < the task's defaults (`progrl tasks`) < `--config FILE.toml` < `--set key=value` < "
        "the short flags (`--steps`, `--seed`, `--model`, `--out`). A task's own defaults may differ from the "
        "defaults below (e.g. `dataset` samples 4 responses per prompt); `RUN_DIR/config.toml` holds every "
        "value a run used.",
        "",
        "## Top level",
        "",
        *_table(rows(TrainConfig)),
    ]
    for name, sub in sections(TrainConfig):
        out += ["", f"## [{name}]", "", _doc_first_line(sub), "", *_table(rows(sub, f"{name}."))]
        for inner, inner_sub in sections(sub):  # e.g. [rollout.retry], [algo.raft]
            out += ["", f"### [{name}.{inner}]", "", _doc_first_line(inner_sub), "",
                    *_table(rows(inner_sub, f"{name}.{inner}."))]
        if name == "reward":
            out += ["", "### [[reward.functions]]", "", _doc_first_line(RewardFunctionConfig), "",
                    *_table(rows(RewardFunctionConfig, "reward.functions[]."))]
    out += ["", "## task_options", "", "Validated by the task's own options model; the built-in tasks' options:"]
    for task in TASKS:
        try:
            cls = task_class(task)
        except ImportError:  # pragma: no cover - an optional dependency of a task is missing
            continue
        out += ["", f"### {task}", "", cls.summary, "", *_table(rows(cls.Options, "task_options."))]
    return "\n".join(out) + "\n"


def undocumented(text: str) -> list[str]:
    return [line for line in text.splitlines() if UNDOCUMENTED in line]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m progrl.docgen", description="write docs/configuration.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is out of date instead of writing it")
    ap.add_argument("--out", type=Path, default=DOC_PATH)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m progrl.docgen", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

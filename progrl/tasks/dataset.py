"""The ``dataset`` task: your prompts, your columns, your reward functions.

    progrl train dataset --model smollm2-135m --set task_options.path=problems.jsonl \\
        --set 'reward.functions=["rewards.py:correct"]'

Prompts come from a JSONL / JSON / CSV / Parquet file, a dataset folder or a Hugging Face
dataset id (:mod:`progrl.tasks.dataset_io`). The prompt column (``prompt`` by default) holds a
string or a conversation (a list of ``{"role", "content"}`` messages, TRL's conversational
format). Every other column reaches the reward functions by name (``answer=[...]``), as in
TRL's GRPO trainer; the names ``prompt(s)``/``completion(s)`` are reserved and not passed.

- *Chat*: a conversational prompt is rendered with the model's chat template and its
  generation prompt; a plain string prompt is given as it is, unless ``system_prompt`` is
  set or ``chat_template = true``, which turn it into a user message (after the system
  message) of a conversation. ``chat_template = false`` never uses the template (a system
  prompt is then written before the text, followed by a blank line). The reward functions
  see the prompt as the conversation and each completion as
  ``[{"role": "assistant", "content": text}]``, exactly TRL's shapes; string prompts and
  string completions otherwise.
- *Held-out split*: ``eval_path`` (a second file/folder/id), else ``eval_split`` (a split of
  the same dataset), else ``eval_fraction`` of the rows drawn with ``split_seed``
  (independent of the run's seed, so every run of a dataset holds out the same rows).
- *Warm start*: with ``answer_column`` the supervised warm start trains on prompt + answer
  (set ``sft.examples`` to how many); without it there is none.
- *Order*: step ``s`` reads rows ``(s-1)*n ... s*n-1`` of an endless sequence of epochs, each
  a permutation of the training rows seeded by ``(seed, epoch)``: every row once per epoch,
  and a pure function of ``(seed, step)`` so a resumed run repeats the same prompts.

The task has no reward of its own: name yours in ``[reward] functions`` (or pass callables
through the Python API).
"""

from __future__ import annotations

import os
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from progrl.tasks.base import Record, Task
from progrl.tasks.dataset_io import DatasetError, is_conversation, load_rows

RESERVED_COLUMNS = ("prompt", "prompts", "completion", "completions")


class DatasetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="training data: a .jsonl/.json/.csv/.parquet file, a dataset folder or a "
                                  "Hugging Face dataset id")
    split: str | None = Field(None, description="split of a dataset folder or id (default: train)")
    eval_path: str | None = Field(None, description="held-out data in a second file, folder or id")
    eval_split: str | None = Field(None, description="held-out split of the same dataset (e.g. test)")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of the rows held out when neither "
                                                                   "eval_path nor eval_split is set")
    split_seed: int = Field(0, description="seed of the held-out draw (independent of the run's seed)")
    prompt_column: str = Field("prompt", min_length=1, description="column holding the prompt: a string or a "
                                                                   "list of {role, content} messages")
    answer_column: str | None = Field(None, description="column with a reference completion for the supervised "
                                                        "warm start (sft.examples of them)")
    system_prompt: str | None = Field(None, description="system message put before every prompt")
    chat_template: bool | None = Field(None, description="apply the model's chat template: unset = to "
                                                         "conversations (and to strings when system_prompt is set), "
                                                         "true = always, false = never")
    max_rows: int | None = Field(None, ge=1, description="use only the first N rows of the training data")

    @field_validator("path", "eval_path")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        """A local file or folder is recorded with its absolute path, so the run's config.toml finds it
        again from any directory (eval, resume); a Hub id stays as it is."""
        if v is not None and os.path.exists(os.path.expanduser(v)):
            return os.path.abspath(os.path.expanduser(v))
        return v


def as_conversation(prompt: Any, system_prompt: str | None, wrap_strings: bool) -> Any:
    """The prompt with the system message in front (a conversation), or the string unchanged."""
    if is_conversation(prompt):
        messages = [dict(m) for m in prompt]
    elif isinstance(prompt, str) and wrap_strings:
        messages = [{"role": "user", "content": prompt}]
    else:
        return prompt
    if system_prompt is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def epoch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_rows))
    random.Random(f"dataset-order-{seed}-{epoch}").shuffle(order)
    return order


class DatasetTask(Task):
    name = "dataset"
    summary = "prompts (and columns for the reward) from a JSONL/CSV/Parquet file or a datasets id; your rewards"
    Options = DatasetOptions

    options: DatasetOptions

    def __init__(self, options: BaseModel | None = None, *, rows: list[dict] | None = None,
                 eval_rows: list[dict] | None = None):
        """``rows`` / ``eval_rows`` give the data in memory instead of ``options.path`` (Python API)."""
        if options is None:
            options = DatasetOptions(path="<memory>") if rows is not None else None
        super().__init__(options)
        self.tokenizer = None
        self._rows = rows
        self._eval_rows = eval_rows
        self._train: list[Record] | None = None
        self._eval: list[Record] | None = None

    def defaults(self) -> dict:
        # A CPU-sized group-estimator setup: 8 prompts x 4 samples per step, critic-free (no value
        # head to warm up on a reward that is often 0/1), short answers, rewards in worker processes
        # (user code: the safe default of the reward engine).
        return {
            "steps": 50,
            "rollout": {"batch_size": 8, "num_generations": 4, "generation_batch_size": 64, "max_new_tokens": 32,
                        "temperature": 1.0},
            "algo": {"estimator": "grpo", "epochs": 1, "minibatch_size": 16, "lr": 1e-5, "kl_coef": 0.0},
            "sft": {"examples": 256 if self.options.answer_column else 0, "epochs": 2, "lr": 1e-5,
                    "batch_size": 8},
            "eval": {"n_prompts": 128, "batch_size": 64},
            "log": {"checkpoint_every": 10},
        }

    # --- data ----------------------------------------------------------------------
    def _records(self, rows: list[dict], where: str) -> list[Record]:
        col = self.options.prompt_column
        out = []
        for i, row in enumerate(rows):
            if col not in row:
                raise DatasetError(f"{where}: row {i} has no column {col!r} (columns: {', '.join(map(str, row))}); "
                                   f"set task_options.prompt_column")
            prompt = row[col]
            if not (isinstance(prompt, str) or is_conversation(prompt)):
                raise DatasetError(f"{where}: row {i}: {col!r} is neither a string nor a list of "
                                   f"{{role, content}} messages ({type(prompt).__name__})")
            rec: Record = {k: v for k, v in row.items() if k != col and k not in RESERVED_COLUMNS}
            rec["prompt"] = prompt
            if self.options.answer_column:
                if self.options.answer_column not in row:
                    raise DatasetError(f"{where}: row {i} has no column {self.options.answer_column!r} "
                                       f"(task_options.answer_column)")
                rec.setdefault(self.options.answer_column, row[self.options.answer_column])
            out.append(rec)
        return out

    def load_data(self) -> None:
        self.load()

    def data_summary(self) -> str | None:
        self.load()
        where = "in-memory rows" if self._rows is not None else self.options.path
        return f"dataset: {len(self._train)} training and {len(self._eval)} held-out prompts from {where}"

    def load(self) -> None:
        """Read the data and split off the held-out rows (done once, on first use)."""
        if self._train is not None:
            return
        o = self.options
        if self._rows is not None:
            rows, where = list(self._rows), "dataset"
        else:
            rows, where = load_rows(o.path, o.split), o.path
        if o.max_rows:
            rows = rows[:o.max_rows]
        train = self._records(rows, where)
        if self._eval_rows is not None:
            held = self._records(list(self._eval_rows), "eval dataset")
        elif o.eval_path:
            held = self._records(load_rows(o.eval_path, o.eval_split), o.eval_path)
        elif o.eval_split:
            held = self._records(load_rows(o.path, o.eval_split), f"{o.path} split {o.eval_split}")
        else:
            if len(train) < 2:
                raise DatasetError(f"{where}: {len(train)} row(s): too few to hold any out; "
                                   "give task_options.eval_path")
            order = list(range(len(train)))
            random.Random(f"dataset-split-{o.split_seed}").shuffle(order)
            n_eval = max(1, round(o.eval_fraction * len(train)))
            held = [train[i] for i in sorted(order[:n_eval])]
            train = [train[i] for i in sorted(order[n_eval:])]
        self._train, self._eval = train, held

    def bind_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.load()
        if self.uses_chat(self._train[0]["prompt"]) and not getattr(tokenizer, "chat_template", None):
            raise DatasetError("the model's tokenizer has no chat template, needed for conversational prompts "
                               "or a system prompt; set task_options.chat_template=false to write plain text")

    def uses_chat(self, prompt: Any) -> bool:
        """Whether this prompt is rendered with the chat template."""
        o = self.options
        if o.chat_template is False:
            if is_conversation(prompt):
                raise DatasetError("task_options.chat_template=false, but the prompts are conversations "
                                   "(lists of messages): they need the chat template")
            return False
        return is_conversation(prompt) or bool(o.chat_template) or o.system_prompt is not None

    def _prepare(self, rec: Record) -> Record:
        """The record as the trainer and the rewards see it: the prompt as a conversation when chat is used."""
        o = self.options
        prompt = rec["prompt"]
        if self.uses_chat(prompt):
            prompt = as_conversation(prompt, o.system_prompt, wrap_strings=True)
        elif o.system_prompt is not None:
            prompt = f"{o.system_prompt}\n\n{prompt}"
        return {**rec, "prompt": prompt}

    def train_records(self, n: int, seed: int, step: int) -> list[Record]:
        self.load()
        rows = self._train
        start = (step - 1) * n
        out = []
        cache: dict[int, list[int]] = {}
        for pos in range(start, start + n):
            epoch, i = divmod(pos, len(rows))
            if epoch not in cache:
                cache[epoch] = epoch_order(len(rows), seed, epoch)
            out.append(self._prepare(rows[cache[epoch][i]]))
        return out

    def eval_records(self, n: int, seed: int) -> list[Record]:
        """The first ``n`` held-out rows in file order (all of them when there are fewer; no repeats)."""
        self.load()
        return [self._prepare(r) for r in self._eval[:n]]

    # --- model input ---------------------------------------------------------------
    def render_prompt(self, prompt: Any) -> str:
        if is_conversation(prompt):
            if self.tokenizer is None:
                raise RuntimeError("DatasetTask: bind_tokenizer(tokenizer) first (the trainer does)")
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return prompt

    def encode_prompts(self, tokenizer, prompts: list) -> list[list[int]]:
        # a rendered chat template already holds its special tokens (TRL encodes it the same way)
        return [tokenizer(self.render_prompt(p), add_special_tokens=not is_conversation(p))["input_ids"]
                for p in prompts]

    def sft_texts(self, n: int, seed: int) -> list[str]:
        col = self.options.answer_column
        if not col or n <= 0:
            return []
        self.load()
        rng = random.Random(f"dataset-sft-{seed}")
        rows = self._train
        picked = rng.sample(rows, n) if n <= len(rows) else [rows[i % len(rows)] for i in range(n)]
        texts = []
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        for rec in picked:
            prep = self._prepare(rec)
            answer = str(rec[col])
            if is_conversation(prep["prompt"]):
                texts.append(self.tokenizer.apply_chat_template(
                    prep["prompt"] + [{"role": "assistant", "content": answer}], tokenize=False))
            else:
                texts.append(prep["prompt"] + answer + eos)
        return texts

    def reward_functions(self):
        return []

    def metrics(self, records, completions, rewards) -> dict[str, float]:
        n = max(len(completions), 1)
        return {"distinct_completions": len({str(c).strip() for c in completions}) / n}

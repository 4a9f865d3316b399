"""What a task provides to the trainer.

A task is a source of prompts, a programmed reward, and (optionally) its own tokenizer,
a small model built from a config, supervised warm-start texts and task metrics.
Tasks register themselves by name in :mod:`progrl.tasks`.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

Record = dict[str, Any]  # {"prompt": str or list of chat messages, **columns passed to the reward function}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Task:
    """Base class: override what the task needs."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    # held-out metrics `progrl train` prints before and after RL (those the task reports)
    headline_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "mean_reward")
    # the text after which a supervised example's completion starts (sft.completion_only), if any
    response_template: ClassVar[str | None] = None

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    # --- configuration -------------------------------------------------------------
    def defaults(self) -> dict:
        """Config values this task wants unless the user says otherwise (nested dict)."""
        return {}

    # --- model ---------------------------------------------------------------------
    def build_tokenizer(self):
        """A task-specific tokenizer, or None to use the pretrained model's own."""
        return None

    def bind_tokenizer(self, tokenizer) -> None:
        """Called by the trainer with the model's (prepared) tokenizer once the model is loaded.

        Tasks whose prompts depend on the tokenizer (e.g. "the first k tokens of a review") keep
        it here; the default does nothing."""
        return None

    # --- model input ---------------------------------------------------------------
    def render_prompt(self, prompt: Any) -> str:
        """The text the model is given for a record's prompt (default: the prompt itself)."""
        return prompt

    def encode_prompts(self, tokenizer, prompts: list) -> list[list[int]]:
        """Token ids of each prompt (default: the tokenizer on :meth:`render_prompt`, special tokens added)."""
        return [tokenizer(self.render_prompt(p), add_special_tokens=True)["input_ids"] for p in prompts]

    # --- data ----------------------------------------------------------------------
    def load_data(self) -> None:
        """Read the task's data files; the trainer calls it before loading the model, so a bad
        file is reported before minutes are spent on the model. The default does nothing."""
        return None

    def data_summary(self) -> str | None:
        """One line saying where the task's prompts come from (the trainer prints it), or None."""
        return None

    def train_records(self, n: int, seed: int, step: int) -> list[Record]:
        """``n`` training prompts for RL step ``step`` (a pure function of its arguments)."""
        raise NotImplementedError

    def eval_records(self, n: int, seed: int) -> list[Record]:
        """``n`` held-out prompts drawn with their own seed."""
        raise NotImplementedError

    def sft_texts(self, n: int, seed: int) -> list[str]:
        """Texts for the supervised warm start (empty: the task has none)."""
        return []

    # --- reward and metrics --------------------------------------------------------
    def reward_functions(self) -> list[tuple[str | Callable, float]]:
        """The task's programmed reward(s), run through the reward engine."""
        raise NotImplementedError

    def verified_prefix(self, record: Record, completion: str) -> str | None:
        """The start of ``completion`` whose steps the task's checker verifies as correct (a
        process-level verdict of the programmed reward), or None when the task has no steps.

        Used by ``algo.raft.prefixes``: the policy also imitates the verified steps of samples
        that fail as a whole. It runs in the trainer's process, like :meth:`metrics`: task code
        is trusted, reward functions are not. The default: no steps."""
        return None

    def metrics(self, records: list[Record], completions: list[str], rewards: list[float | None]) -> dict[str, float]:
        """Task metrics of a set of (greedy) completions, e.g. exact-match accuracy."""
        return {}

"""The paper's sentiment-alignment task (task 1): make a pretrained LM write positive reviews.

Prompts are the first 2-8 tokens (of the *model's* tokenizer) of movie reviews; the policy
continues them with 4-16 new tokens sampled purely (temperature 1, no top-k / top-p); the reward
is the VADER compound sentiment in [-1, 1] of prompt + response (``response_only``: of the
response alone). VADER is a lexicon rule-based scorer: cheap, pure Python, trusted, so the
reward runs inline.

Prompt texts (``task_options.prompts``): ``builtin`` (~300 review openings shipped with progrl),
a ``.csv`` / ``.jsonl`` / ``.txt`` file of reviews, or ``imdb`` (the IMDB training split through
``datasets``; network needed the first time). The texts are split once, deterministically and
independently of the run's seed, into 90% for training prompts and 10% held out for evaluation.

Prompts are cut with the model's tokenizer, so the trainer hands it to the task
(:meth:`SentimentTask.bind_tokenizer`) right after loading the model. ``train_records(n, seed,
step)`` is a pure function of its arguments (given the texts and the tokenizer): a resumed run
sees the same prompts as the uninterrupted one.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from progrl.tasks import sentiment_core as core
from progrl.tasks.base import Record, Task

POSITIVE = 0.05  # VADER's usual threshold: compound >= 0.05 is "positive", <= -0.05 "negative"
EVAL_FRACTION = 0.1
SPLIT_SEED = "progrl-sentiment-split"


class SentimentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: str = "builtin"  # builtin | path to .csv/.jsonl/.txt | imdb
    text_column: str | None = None  # CSV column / JSONL key of the texts (None: review, text or prompt)
    min_prompt_tokens: int = Field(2, ge=1)  # shortest prompt (tokens of the model's tokenizer)
    max_prompt_tokens: int = Field(8, ge=1)  # longest prompt (tokens of the model's tokenizer)
    response_only: bool = False  # score the response alone instead of prompt + response

    @field_validator("max_prompt_tokens")
    @classmethod
    def _check_range(cls, v: int, info: ValidationInfo) -> int:
        lo = info.data.get("min_prompt_tokens")
        if lo is not None and v < lo:
            raise ValueError(f"must be >= min_prompt_tokens ({lo})")
        return v


def vader_response_reward(prompts, completions, **columns) -> list[float]:
    """VADER compound of the completion alone (``task_options.response_only = true``)."""
    return core.vader_reward(prompts, completions, response_only=True)


def split_texts(texts: list[str]) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a fixed permutation (independent of the run seed), the last 10% held
    out (at least one text when there are two or more; a single text serves both)."""
    order = list(range(len(texts)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_eval = max(1, round(EVAL_FRACTION * len(texts))) if len(texts) >= 2 else 0
    train = [texts[i] for i in order[:len(texts) - n_eval]]
    held_out = [texts[i] for i in order[len(texts) - n_eval:]] or list(train)
    return train, held_out


class SentimentTask(Task):
    name = "sentiment"
    summary = "continue movie-review openings positively (paper task 1); reward: VADER compound sentiment"
    Options = SentimentOptions

    options: SentimentOptions

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self.tokenizer = None
        self.source = ""
        self._texts: list[str] | None = None
        self._train: list[str] = []
        self._eval: list[str] = []

    def defaults(self) -> dict:
        # CPU-sized setup, chosen by measurement on a 2-core CPU (docs/results.md, "Sentiment"):
        # - critic-free RLOO with 4 samples per prompt: the reward includes the prompt's own
        #   sentiment, which the leave-one-out group baseline removes at once; a value head has to
        #   learn it first, and at this batch size its loss (through the shared trunk) mostly moved
        #   the policy by noise (GAE at lr 1e-5: clip fraction 0.45 at the first step, no rise in 12 steps);
        # - 8 prompts x 4 samples = 32 responses per step, 2 epochs of minibatches of 16 (4 clipped
        #   PPO updates per step): generation is cheap on CPU, the forward + backward pass is not;
        # - lr 5e-5 (the paper's 1.41e-5 was for batches of 256 on a GPU): the reward rises within
        #   ~10 steps (~5 minutes on one thread) while the clip fraction stays ~0.15.
        # - RLOO advantages whitened over the batch (whiten_advantages = true, not RLOO's own
        #   default): every measurement above and in docs/results.md was made with whitening on
        #   (it was then the default for every estimator); whitening also makes the step size
        #   independent of the reward's scale, which RLOO alone is not.
        return {
            "model": {"name": "smollm2-135m"},
            "steps": 20,
            "rollout": {"batch_size": 8, "num_generations": 4, "generation_batch_size": 64,
                        "min_new_tokens": 4, "max_new_tokens": 16, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
            "algo": {"estimator": "rloo", "whiten_advantages": True, "epochs": 2, "minibatch_size": 16, "lr": 5e-5,
                     "kl_coef": 0.0},
            "reward": {"backend": "inline"},
            "sft": {"examples": 0},
            "eval": {"n_prompts": 64, "batch_size": 64},
            "log": {"checkpoint_every": 10},
        }

    # --- model -------------------------------------------------------------------------
    def bind_tokenizer(self, tokenizer) -> None:
        """Load the prompt texts and keep the tokenizer the prompts are cut with."""
        self.load_data()
        self.tokenizer = tokenizer
        usable = self._usable(self._texts)
        if not usable:
            raise ValueError(f"task_options.prompts: no text of {self.source} has at least "
                             f"{self.options.min_prompt_tokens} tokens")
        self._train, self._eval = split_texts(usable)

    def load_data(self) -> None:
        """Read the prompt texts (once); a file without usable texts fails here, before the model loads."""
        if self._texts is None:
            self._texts, self.source = core.load_prompt_source(self.options.prompts, self.options.text_column)

    def data_summary(self) -> str | None:
        if self.tokenizer is None:
            return None
        return (f"prompts from {self.source}: {len(self._train)} texts for training, "
                f"{len(self._eval)} held out")

    def _usable(self, texts: list[str]) -> list[str]:
        head = max(256, 48 * self.options.max_prompt_tokens)
        ids = self.tokenizer([t[:head] for t in texts], add_special_tokens=False)["input_ids"] if texts else []
        return [t for t, i in zip(texts, ids) if len(i) >= self.options.min_prompt_tokens]

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError("SentimentTask: call bind_tokenizer(tokenizer) before asking for prompts "
                               "(the trainer does this after loading the model)")

    # --- data --------------------------------------------------------------------------
    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompts(self, texts: list[str], rng: random.Random, refill) -> list[str]:
        """Cut each text to its first k tokens (k uniform in [min, max]); a prompt whose re-encoding
        falls outside [min, max] tokens (rare: a cut inside a multi-byte character) is replaced by a
        new draw, so exactly ``len(texts)`` prompts come back."""
        lo, hi = self.options.min_prompt_tokens, self.options.max_prompt_tokens
        out: list[str] = []
        todo = list(texts)
        for _attempt in range(20):
            cut = core.make_prompts(todo, self.tokenizer, rng, lo, hi)
            out += [p for p in cut if lo <= self._n_tokens(p) <= hi]
            missing = len(texts) - len(out)
            if missing <= 0:
                return out[:len(texts)]
            todo = [refill(rng) for _ in range(missing)]
        raise ValueError(f"task_options.prompts: could not cut {len(texts)} prompts of {lo}-{hi} tokens "
                         f"from {self.options.prompts!r}")

    def train_records(self, n: int, seed: int, step: int) -> list[Record]:
        self._require_tokenizer()
        rng = random.Random(f"sentiment-train-{seed}-{step}")
        pool = self._train
        texts = rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]
        return [{"prompt": p} for p in self._prompts(texts, rng, lambda r: r.choice(pool))]

    def eval_records(self, n: int, seed: int) -> list[Record]:
        self._require_tokenizer()
        rng = random.Random(f"sentiment-eval-{seed}")
        order = list(self._eval)
        rng.shuffle(order)
        texts = [order[i % len(order)] for i in range(n)]  # every held-out text once before any repeats
        return [{"prompt": p} for p in self._prompts(texts, rng, lambda r: r.choice(order))]

    # --- reward and metrics ------------------------------------------------------------
    def reward_functions(self):
        if self.options.response_only:
            return [("progrl.tasks.sentiment:vader_response_reward", 1.0)]
        return [("progrl.tasks.sentiment_core:vader_reward", 1.0)]

    def metrics(self, records, completions, rewards) -> dict[str, float]:
        n = max(len(completions), 1)
        scores = [r for r in rewards if r is not None]
        response = [core.vader_compound(c) for c in completions]
        return {
            "positive_fraction": sum(r >= POSITIVE for r in scores) / n,
            "negative_fraction": sum(r <= -POSITIVE for r in scores) / n,
            "response_compound": sum(response) / n,
            "distinct_completions": len(set(c.strip() for c in completions)) / n,
        }

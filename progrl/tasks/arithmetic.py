"""The paper's arithmetic task, in two variants.

- ``arithmetic``: the prompt is the whole worked chain up to and including the last
  ``'='``; the policy emits ONE token, the result (the paper's RL setup).
- ``arithmetic-chain``: the prompt is the expression and ``'='``; the policy writes the
  whole chain and the paper's step-checking reward scores every step.

Both use the word-level tokenizer of :mod:`progrl.tasks.arithmetic_core`, a GPT-2 built
from a config (context 64), and a supervised warm start on ``sft.examples`` worked chains.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from progrl.tasks import arithmetic_core as core
from progrl.tasks.base import Record, Task


class ArithmeticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ops: str = Field("+*", pattern=r"^[+*]{1,2}$")  # operators to draw from
    max_chars: int = Field(10, ge=3, le=40)  # expressions are truncated to this length
    max_operand: int = Field(10, ge=1, le=99)  # operands are drawn from 0..max_operand
    max_value: int = Field(100, ge=2, le=100)  # value (and every chain step) below this
    # Reward shaping for TRAINING only; held-out evaluation always uses the paper's reward.
    reward_scale: float = Field(10.0, gt=0.0)  # reward = 2 / (1 + exp(error / scale)); paper: 10
    reward_scale_final: float | None = Field(None, gt=0.0)  # anneal the scale geometrically to this...
    anneal_steps: int = Field(0, ge=0)  # ...over this many RL steps (a curriculum from coarse to exact)
    exact_bonus: float = Field(0.0, ge=0.0)  # added when the error is exactly 0
    # A curriculum on expression length for TRAINING prompts only (held-out prompts always use
    # max_chars): the length limit rises linearly from curriculum_start_chars to max_chars over
    # curriculum_steps RL steps. Scheduled by step, so it needs no held-out data.
    curriculum_start_chars: int | None = Field(None, ge=3, le=40)  # training prompts' length limit at step 0 (None: no curriculum)
    curriculum_steps: int = Field(0, ge=0)  # RL steps over which the limit rises to max_chars


class ArithmeticChainOptions(ArithmeticOptions):
    # the share of TRAINING prompts that already show the first 1..n-1 steps of the worked chain
    # (how many: uniform), so the policy writes only the rest -- a start-state ("reverse")
    # curriculum: later steps are practised from right inputs, as in the one-token task's
    # prompts, not only after the policy's own first steps. Held-out prompts never do.
    given_steps: float = Field(0.0, ge=0.0, le=1.0)


PAPER_SCALE = 10.0
DEFAULT_STEPS = 768  # x 128 = 98,304 sampled answers, within the paper's RL budget of 131,072 (95% held-out by step ~600)
CHAIN_DEFAULT_STEPS = 600  # arithmetic-chain: 600 x 512 sampled chains, the measured length of its default (docs/results.md)


def scale_at(opts: ArithmeticOptions, step: int) -> float:
    """The training reward scale at RL step ``step`` (geometric anneal, then constant)."""
    if opts.reward_scale_final is None or opts.anneal_steps == 0:
        return opts.reward_scale
    frac = min(1.0, max(0, step - 1) / opts.anneal_steps)
    return opts.reward_scale * (opts.reward_scale_final / opts.reward_scale) ** frac


def chars_at(opts: ArithmeticOptions, step: int) -> int:
    """The training prompts' length limit at RL step ``step`` (the curriculum, then max_chars)."""
    start = opts.curriculum_start_chars
    if start is None or opts.curriculum_steps == 0 or start >= opts.max_chars:
        return opts.max_chars
    frac = min(1.0, max(0, step - 1) / opts.curriculum_steps)
    return int(round(start + (opts.max_chars - start) * frac))


def task_reward(prompts: list[str], completions: list[str], reward_scale: list[float] | None = None,
                exact_bonus: list[float] | None = None, **columns) -> list[float]:
    """The paper's reward with the per-sample scale and exact bonus carried in record columns."""
    n = len(prompts)
    scales = reward_scale or [PAPER_SCALE] * n
    bonuses = exact_bonus or [0.0] * n
    return [core.arithmetic_reward([p], [c], scale=s, exact_bonus=b)[0]
            for p, c, s, b in zip(prompts, completions, scales, bonuses)]


def _expressions(n: int, rng: random.Random, opts: ArithmeticOptions, max_chars: int | None = None) -> list[str]:
    return [core.generate_expression(rng, ops=opts.ops, max_chars=max_chars or opts.max_chars,
                                     max_operand=opts.max_operand, max_value=opts.max_value)
            for _ in range(n)]


class ArithmeticTask(Task):
    name = "arithmetic"
    summary = "one-token result of a worked +/* chain (paper task 2); reward from the step checker"
    Options = ArithmeticOptions

    options: ArithmeticOptions

    def defaults(self) -> dict:
        """The embedded default job (`progrl train arithmetic`): the best setting measured in
        docs/results.md that fits in 10 minutes on a 2-core CPU: PPO (value head, 2 epochs) plus
        RAFT's imitation term on the policy's own exact answers, this step's and 128 replayed from
        earlier steps (progrl/expert_iteration.py), at lr 1e-3 (constant: a cosine decay, lr 2e-3,
        more or fewer optimiser steps per sample all learned slower), with the token-entropy bonus
        0.1 (at this budget it beat batch entropy 0.1, both together and no bonus: docs/results.md)
        and the paper's own reward scale 10: with token entropy and the RAFT term it learns much
        faster than the sharper scale 1 (98% held-out after 749 steps against ~80%).
        The paper's own setup is configs/arithmetic-paper.toml."""
        return {
            "steps": DEFAULT_STEPS,
            "model": {"arch": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 64},
            "sft": {"examples": 256, "epochs": 100, "lr": 1e-3, "batch_size": 32},
            "rollout": {"batch_size": 128, "max_new_tokens": 1, "banned_tokens": [core.PAD, core.BOS, core.UNK]},
            "algo": {"estimator": "gae", "epochs": 2, "minibatch_size": 64, "lr": 1e-3,
                     "whiten_advantages": False, "batch_entropy_coef": 0.0, "entropy_coef": 0.1, "kl_coef": 0.0,
                     "raft": {"coef": 1.0, "replay": 128, "min_reward": 1.0}},
            "reward": {"backend": "inline"},
            "eval": {"every": 100},
            "task_options": {"reward_scale": PAPER_SCALE},
        }

    def build_tokenizer(self):
        return core.build_tokenizer()

    def example(self, expr: str) -> Record:
        prompt, answer = core.one_token_example(expr)
        return {"prompt": prompt, "answer": answer}

    def train_records(self, n: int, seed: int, step: int) -> list[Record]:
        rng = random.Random(f"{self.name}-train-{seed}-{step}")
        scale = scale_at(self.options, step)
        return [{**self.example(e), "reward_scale": scale, "exact_bonus": self.options.exact_bonus}
                for e in _expressions(n, rng, self.options, chars_at(self.options, step))]

    def eval_records(self, n: int, seed: int) -> list[Record]:
        rng = random.Random(f"{self.name}-eval-{seed}")
        return [{**self.example(e), "reward_scale": PAPER_SCALE, "exact_bonus": 0.0}
                for e in _expressions(n, rng, self.options)]

    def sft_texts(self, n: int, seed: int) -> list[str]:
        rng = random.Random(f"arithmetic-sft-{seed}")
        return [core.sft_text(e) for e in _expressions(n, rng, self.options)]

    def reward_functions(self):
        return [("progrl.tasks.arithmetic:task_reward", 1.0)]

    def metrics(self, records, completions, rewards) -> dict[str, float]:
        hits = [core.exact_answer(r["prompt"], c) for r, c in zip(records, completions)]
        answers = [c.strip() for c in completions]
        return {"accuracy": sum(hits) / max(len(hits), 1), "distinct_answers": float(len(set(answers)))}


class ArithmeticChainTask(ArithmeticTask):
    name = "arithmetic-chain"
    summary = "write the whole worked chain after 'expr='; the paper's full step-checking reward"
    headline_metrics = ("chain_exact", "accuracy", "mean_reward")
    Options = ArithmeticChainOptions

    options: ArithmeticChainOptions

    def defaults(self) -> dict:
        """The whole-chain job: the one-token task's model and warm start, then reward-filtered
        self-training at the level of steps (``estimator = "raft"`` with ``raft.prefixes``): each
        step samples 4 chains for each of 128 prompts, and the policy imitates every chain the
        paper's checker scores exact (error 0, reward 1.0) and, of every other chain, the steps
        before its first wrong one (each a zero term of the paper's chain error), plus 128 rows
        replayed from earlier steps; one pass at lr 3e-4. And it searches from its failures
        (``raft.branches = 32``, ``raft.branch_first = "top_k"``): up to 32 distinct verified
        starts of failed chains are continued 32 times each, forking at the first token of the
        failed step into the policy's 32 most likely tokens there; continuations the checker
        verifies further are imitated too. Measured (docs/results.md, "Whole chains"): held-out
        chains with every step right 9.2% -> 89.6% at step 400 and 94.7% at 600. With 8-way
        forks (from up to 128 starts) the same loop stopped at ~84% (the right fact is often not
        among the 8 likeliest tokens); with 16 chains for each of 32 prompts it reached 71.5%
        from a 4.9% start, 56% without the forks. With the forks exploring where a chain fails,
        more prompts beat more samples of each; without them, many samples per prompt made the
        first difference (with 4 the loop learned no faster than RLOO). The first chain default
        (scale 1, batch entropy 0.1, lr 3e-4, PPO) destroyed its warm start within 6 steps. No
        entropy bonus: token or batch entropy at 0.01-0.1 learned no faster over the first 112
        steps (3 seeds each) and 0.3 of either stopped the learning (docs/results.md)."""
        d = super().defaults()
        d["steps"] = CHAIN_DEFAULT_STEPS
        d["rollout"] = {"batch_size": 128, "num_generations": 4, "max_new_tokens": 24,
                        "banned_tokens": [core.PAD, core.BOS, core.UNK]}
        d["algo"] = {"estimator": "raft", "epochs": 1, "minibatch_size": 64, "lr": 3e-4, "whiten_advantages": False,
                     "batch_entropy_coef": 0.0, "entropy_coef": 0.0, "kl_coef": 0.0,
                     "raft": {"replay": 128, "min_reward": 1.0, "prefixes": True, "branches": 32,
                              "branch_starts": 32, "branch_first": "top_k"}}
        d["task_options"] = {"reward_scale": PAPER_SCALE}
        return d

    def train_records(self, n: int, seed: int, step: int) -> list[Record]:
        records = super().train_records(n, seed, step)
        if not self.options.given_steps:
            return records
        rng = random.Random(f"{self.name}-given-{seed}-{step}")
        for rec in records:
            if rng.random() < self.options.given_steps:
                steps = core.worked_chain(rec["prompt"].replace(core.BOS, "")[:-1])
                if len(steps) > 2:
                    rec["prompt"] = core.BOS + "=".join(steps[:rng.randint(2, len(steps) - 1)]) + "="
        return records

    def metrics(self, records, completions, rewards) -> dict[str, float]:
        """The one-token metrics plus ``chain_exact``: the share of chains with every step right
        (the paper's chain error is 0), the whole-chain task's goal; ``accuracy`` checks only
        that the chain is well formed and its final number right."""
        exact = [core.exact_chain(r["prompt"], c) for r, c in zip(records, completions)]
        return {**super().metrics(records, completions, rewards), "chain_exact": sum(exact) / max(len(exact), 1)}

    def verified_prefix(self, record: Record, completion: str) -> str:
        """The completion's steps up to the first one the paper's checker would charge an error
        (progrl.tasks.arithmetic_core.verified_chain_prefix)."""
        return core.verified_chain_prefix(record["prompt"], completion)

    def example(self, expr: str) -> Record:
        prompt, completion = core.chain_example(expr)
        return {"prompt": prompt, "answer": completion.replace(core.EOS, "").rsplit("=", 1)[-1]}

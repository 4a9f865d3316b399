"""Typed, validated training configuration.

One pydantic model per section of the TOML file; unknown keys are errors. Values are
layered, later layers winning: field defaults < the task's defaults < ``--config FILE`` <
``--set key=value`` < the short flags (``--steps``, ``--seed``, ``--model``, ``--out``).
Any mistake becomes one :class:`ConfigError` line that names the field.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from progrl.expert_iteration import RAFTConfig
from progrl.prompt_replay import RetryConfig
from progrl.rewards.config import RewardConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration mistake, reported as one line naming the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which network to train. ``name`` empty: the task builds a small model from ``arch``."""

    name: str | None = None  # hub id, local folder, .gguf file or a short alias (see docs)
    arch: Literal["gpt2", "gpt_neox", "llama"] = "gpt2"  # architecture of a model built from scratch (when name is empty)
    n_layer: int = Field(4, ge=1)  # transformer layers of a model built from scratch
    n_embd: int = Field(256, ge=8)  # hidden size of a model built from scratch
    n_head: int = Field(4, ge=1)  # attention heads of a model built from scratch
    n_positions: int = Field(64, ge=8)  # context length of a model built from scratch
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"  # weights' dtype of a pretrained model (auto: as stored)
    # autocast of every forward pass (sampling, reference, update) over the weights kept in `dtype`:
    # float32 master weights with bf16/fp16 compute; sampling and update compute the same function
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, one more forward)
    trust_remote_code: bool = False  # allow a Hub model's own modelling code
    lora: bool = False  # train a LoRA adapter instead of all weights (peft)
    lora_r: int = Field(8, ge=1)  # LoRA rank
    lora_alpha: int = Field(16, ge=1)  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # dropout on the LoRA input (0: rollout and update see the same function)
    lora_target_modules: list[str] | str | None = None  # module names to adapt (default: peft's choice for the architecture)


class RolloutConfig(_Section):
    """Sampling: how many samples per step and how they are drawn."""

    batch_size: int = Field(128, ge=1)  # prompts per step
    num_generations: int = Field(1, ge=1)  # samples per prompt (groups for grpo/rloo)
    generation_batch_size: int = Field(256, ge=1)  # sequences per forward pass while sampling
    max_new_tokens: int = Field(1, ge=1)  # most tokens per response
    min_new_tokens: int = Field(0, ge=0)  # no stop (token or string) before this many tokens
    temperature: float = Field(1.0, gt=0.0)  # sampling temperature (log-probs are taken after it)
    top_k: int = Field(0, ge=0)  # 0 = off
    top_p: float = Field(1.0, gt=0.0, le=1.0)  # nucleus sampling mass (1 = off)
    stop_tokens: list[str] = []  # tokens that end a response (vocabulary spelling, or text of one token; EOS always does)
    stop: list[str] = []  # stop strings: text that ends a response, matched on the decoded continuation
    stop_keep: bool = False  # keep the stop string at the end of the completion the rewards see (default: cut it)
    on_truncated: Union[float, Literal["keep", "mask"]] = "keep"  # responses with no stop before max_new_tokens: keep their reward, mask them out of the loss (DAPO overlong filtering), or give them this reward
    banned_tokens: list[str] = []  # token strings never sampled
    retry: RetryConfig = RetryConfig()  # retry prompts that failed (progrl/prompt_replay.py); off by default

    @field_validator("on_truncated")
    @classmethod
    def _finite_truncated(cls, v):
        if not isinstance(v, str) and not math.isfinite(v):
            raise ValueError('must be "keep", "mask" or a finite number')
        return v


class AlgoConfig(_Section):
    """The policy update: estimator, PPO clipping, bonuses, KL, optimiser."""

    estimator: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "raft"] = "gae"  # advantage estimator: gae (PPO with a value head), a critic-free one, or raft (reward-filtered self-training) (docs/estimators.md)
    epochs: int = Field(4, ge=1)  # passes over each batch
    minibatch_size: int = Field(32, ge=1)  # sequences per optimiser step
    grad_accum_steps: int = Field(1, ge=1)  # minibatches whose gradients are summed per optimiser step
    lr: float = Field(1.41e-5, gt=0.0)  # AdamW learning rate
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # learning-rate schedule over the run's optimiser steps
    warmup_steps: int = Field(0, ge=0)  # optimiser steps
    weight_decay: float = Field(0.0, ge=0.0)  # AdamW weight decay
    adam_eps: float = Field(1e-8, gt=0.0)  # AdamW epsilon
    max_grad_norm: float | None = Field(1.0, gt=0.0)  # gradient-norm clipping (None: off)
    clip_range: float = Field(0.2, gt=0.0)  # PPO ratio clip epsilon
    clip_range_high: float | None = Field(None, gt=0.0)  # upper clip epsilon when different from clip_range (DAPO's clip-higher)
    clip_range_value: float | None = Field(0.2, gt=0.0)  # value-function clip range (None: unclipped value loss)
    vf_coef: float = Field(0.1, ge=0.0)  # weight of the value loss
    gamma: float = Field(1.0, ge=0.0, le=1.0)  # discount factor
    lam: float = Field(0.95, ge=0.0, le=1.0)  # GAE lambda
    # None: the estimator's own definition (progrl.advantages.default_whiten): on for gae, off for
    # grpo / dr_grpo / rloo; reinforce_pp always normalises over the batch (the switch does not apply)
    whiten_advantages: bool | None = None
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"  # how token losses are averaged (docs/algorithms.md)
    entropy_coef: float = 0.0  # token-entropy bonus
    batch_entropy_coef: float = 0.0  # the paper's batch-entropy bonus
    kl_coef: float = Field(0.0, ge=0.0)  # 0 and fixed controller: no reference model at all
    kl_controller: Literal["fixed", "adaptive"] = "fixed"  # fixed beta or the adaptive controller of Ziegler et al.
    kl_target: float = Field(6.0, gt=0.0)  # target KL per response of the adaptive controller
    kl_horizon: float = Field(10000.0, gt=0.0)  # horizon (samples) of the adaptive controller
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # per-token KL estimator: k1 (log ratio), k2, k3 (Schulman's)
    kl_in: Literal["reward", "loss"] = "reward"  # the KL penalty in the reward (PPO-RLHF) or in the loss (GRPO)
    raft: RAFTConfig = RAFTConfig()  # which samples estimator "raft" trains on and the imitation term (progrl/expert_iteration.py)

    @property
    def uses_critic(self) -> bool:
        return self.estimator == "gae"

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0.0


class SFTConfig(_Section):
    """Supervised warm start (next-token training on task examples) before RL."""

    examples: int = Field(256, ge=0)  # 0 = no warm start
    epochs: int = Field(40, ge=1)  # passes over the warm-start examples
    lr: float = Field(1e-3, gt=0.0)  # warm-start learning rate
    batch_size: int = Field(32, ge=1)  # warm-start sequences per optimiser step
    seed: int = 1  # data seed, separate from the RL prompts
    completion_only: bool = False  # loss only after the task's response template (e.g. "### MID:")


class EvalConfig(_Section):
    """Held-out evaluation: greedy decoding on prompts from a separate seed."""

    n_prompts: int = Field(512, ge=1)  # held-out prompts per evaluation (a task may have fewer)
    seed: int = 999_983  # seed of the held-out prompts (separate from the training prompts)
    every: int = Field(0, ge=0)  # RL steps between evaluations; 0 = only before and after
    batch_size: int = Field(256, ge=1)  # sequences per generation batch while evaluating


class LogConfig(_Section):
    """What a run writes while it trains."""

    samples_per_step: int = Field(4, ge=0)  # generations written to samples.jsonl per step
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = ["tensorboard"]  # trackers the metrics go to besides metrics.jsonl (each an optional extra)
    project: str = "progrl"  # project / experiment name in wandb, MLflow and trackio
    run_name: str | None = None  # run name in the trackers (default: the run directory's name)
    tensorboard: bool = True  # false: no TensorBoard even when report_to names it
    progress: bool = True  # progress bar (plain lines when not on a terminal)
    plot: bool = True  # draw plot.png at the end of the run
    checkpoint_every: int = Field(25, ge=0)  # steps; 0 = only at the end
    keep_checkpoints: int = Field(1, ge=1)  # newest checkpoints kept


class TrainConfig(_Section):
    """A whole run. ``task_options`` is validated by the task's own options model."""

    task: str = "arithmetic"  # task name, path/to/file.py:Class or package.module:Class (see `progrl tasks`)
    seed: int = 0  # seed of every random choice (prompts, sampling, minibatch order, model init)
    steps: int = Field(100, ge=0)  # RL steps (each: rollout, rewards, advantages, update)
    out: str | None = None  # run directory; default runs/<task>-<timestamp>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = Field(None, ge=1)  # torch CPU threads per process; None: progrl.threads.default_threads
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    reward: RewardConfig = RewardConfig()
    sft: SFTConfig = SFTConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    task_options: dict[str, Any] = {}  # the task's own options (see the task_options section below)

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not v.startswith("cuda:"):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return v


# ----------------------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in err.errors():
        loc = prefix + ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            parts.append(f"{loc}: {e['msg']}{got_s}")
    return "config error: " + "; ".join(parts)


def validate_model(model_cls: type[BaseModel], data: dict, prefix: str = "") -> BaseModel:
    """Validate ``data`` into ``model_cls``, turning any error into one ConfigError line."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, prefix)) from None


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base`` (tables merge, values replace)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML value (number, bool, list, quoted string), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict, assignment: str) -> dict:
    """Apply one ``section.key=value`` assignment to a nested dict (returns a new dict)."""
    if "=" not in assignment:
        raise ConfigError(f"config error: --set {assignment!r}: expected key=value")
    key, _, raw = assignment.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"config error: --set {assignment!r}: empty key")
    nested: dict = {}
    cursor = nested
    parts = key.split(".")
    for p in parts[:-1]:
        cursor[p] = {}
        cursor = cursor[p]
    cursor[parts[-1]] = parse_value(raw.strip())
    return deep_merge(data, nested)


def read_toml(path: str | Path) -> dict:
    """Read a TOML config file; a missing or malformed file is one ConfigError line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config error: file not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config error: {p}: not valid TOML: {err}") from None


def build_config(task_defaults: dict | None = None, file_data: dict | None = None,
                 overrides: list[str] | None = None, flags: dict | None = None) -> TrainConfig:
    """Layer the config sources (see the module docstring) and validate the result."""
    data: dict = {}
    for layer in (task_defaults or {}, file_data or {}):
        data = deep_merge(data, layer)
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    data = deep_merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    return validate_model(TrainConfig, data)  # type: ignore[return-value]


def config_to_dict(cfg: TrainConfig) -> dict:
    """A plain, TOML-writable dict of a config (None values dropped)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(cfg.model_dump(mode="json"))


# ----------------------------------------------------------------------------- resume

# What a resumed run may change: how long it runs, what it logs and how often it evaluates,
# and where / with how many threads or reward workers it runs, and how it trades memory for
# time without changing what it computes (gradient checkpointing; sampling chunk size, which no
# longer changes the samples drawn). Everything else would make the continued run a different
# run than the one its checkpoints and metrics belong to.
RESUME_MUTABLE = ("steps", "log.*", "eval.every", "eval.batch_size", "threads", "device", "reward.workers",
                  "reward.show_output", "reward.ray_address", "reward.load_timeout", "reward.max_failure_fraction",
                  "model.gradient_checkpointing", "rollout.generation_batch_size")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))  # an empty table adds nothing (same as absent)
        else:
            out[key] = v
    return out


def _mutable(key: str) -> bool:
    return any(key == m or (m.endswith(".*") and key.startswith(m[:-1])) for m in RESUME_MUTABLE)


def resume_conflicts(saved: TrainConfig, asked: TrainConfig) -> list[tuple[str, Any, Any]]:
    """Fields where ``asked`` differs from the run's ``saved`` config and may not change on
    resume: ``(dotted name, saved value, asked value)``, in field order. ``out`` is not
    compared (the run stays in its directory)."""
    a, b = _flatten(config_to_dict(saved)), _flatten(config_to_dict(asked))
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k), b.get(k)) for k in keys
            if k != "out" and not _mutable(k) and a.get(k) != b.get(k)]

"""Typed, validated training configuration.

One pydantic model per section of the TOML file; unknown keys are errors. Values are
layered, later layers winning: field defaults < the task's defaults < ``--config FILE`` <
``--set key=value`` < the short flags (``--steps``, ``--seed``, ``--model``, ``--out``).
Any mistake becomes one :class:`ConfigError` line that names the field.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Literal

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
    arch: Literal["gpt2", "gpt_neox", "llama"] = "gpt2"
    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(256, ge=8)
    n_head: int = Field(4, ge=1)
    n_positions: int = Field(64, ge=8)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | str | None = None


class RolloutConfig(_Section):
    """Sampling: how many samples per step and how they are drawn."""

    batch_size: int = Field(128, ge=1)  # prompts per step
    num_generations: int = Field(1, ge=1)  # samples per prompt (groups for grpo/rloo)
    generation_batch_size: int = Field(256, ge=1)  # sequences per forward pass while sampling
    max_new_tokens: int = Field(1, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0.0)
    top_k: int = Field(0, ge=0)  # 0 = off
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop_tokens: list[str] = []  # token strings that end a response (the EOS token always does)
    banned_tokens: list[str] = []  # token strings never sampled
    retry: RetryConfig = RetryConfig()  # retry prompts that failed (progrl/prompt_replay.py); off by default


class AlgoConfig(_Section):
    """The policy update: estimator, PPO clipping, bonuses, KL, optimiser."""

    estimator: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "raft"] = "gae"
    epochs: int = Field(4, ge=1)  # passes over each batch
    minibatch_size: int = Field(32, ge=1)  # sequences per optimiser step
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(1.41e-5, gt=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # optimiser steps
    weight_decay: float = Field(0.0, ge=0.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    clip_range: float = Field(0.2, gt=0.0)
    clip_range_high: float | None = Field(None, gt=0.0)
    clip_range_value: float | None = Field(0.2, gt=0.0)
    vf_coef: float = Field(0.1, ge=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    whiten_advantages: bool = True
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    entropy_coef: float = 0.0  # token-entropy bonus
    batch_entropy_coef: float = 0.0  # the paper's batch-entropy bonus
    kl_coef: float = Field(0.0, ge=0.0)  # 0 and fixed controller: no reference model at all
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    kl_target: float = Field(6.0, gt=0.0)
    kl_horizon: float = Field(10000.0, gt=0.0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_in: Literal["reward", "loss"] = "reward"
    raft: RAFTConfig = RAFTConfig()  # which samples estimator "raft" trains on (progrl/expert_iteration.py)

    @property
    def uses_critic(self) -> bool:
        return self.estimator == "gae"

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0.0


class SFTConfig(_Section):
    """Supervised warm start (next-token training on task examples) before RL."""

    examples: int = Field(256, ge=0)  # 0 = no warm start
    epochs: int = Field(40, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(32, ge=1)
    seed: int = 1  # data seed, separate from the RL prompts


class EvalConfig(_Section):
    """Held-out evaluation: greedy decoding on prompts from a separate seed."""

    n_prompts: int = Field(512, ge=1)
    seed: int = 999_983
    every: int = Field(0, ge=0)  # RL steps between evaluations; 0 = only before and after
    batch_size: int = Field(256, ge=1)


class LogConfig(_Section):
    """What a run writes while it trains."""

    samples_per_step: int = Field(4, ge=0)  # generations written to samples.jsonl per step
    tensorboard: bool = True
    progress: bool = True
    plot: bool = True
    checkpoint_every: int = Field(25, ge=0)  # steps; 0 = only at the end
    keep_checkpoints: int = Field(1, ge=1)


class TrainConfig(_Section):
    """A whole run. ``task_options`` is validated by the task's own options model."""

    task: str = "arithmetic"
    seed: int = 0
    steps: int = Field(100, ge=0)
    out: str | None = None  # run directory; default runs/<task>-<timestamp>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = Field(None, ge=1)  # torch CPU threads
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    reward: RewardConfig = RewardConfig()
    sft: SFTConfig = SFTConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    task_options: dict[str, Any] = {}

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

"""The policy: a Hugging Face causal LM, optionally with a value head on the shared trunk.

The value head is one linear layer on the last hidden state (classic TRL's
``AutoModelForCausalLMWithValueHead``). Estimators that need no critic build the policy
without it: no value head, no value forward, no critic optimiser state.

Mixed precision (``model.precision``): every forward of the policy and of the reference
runs under ``torch.autocast`` with the chosen dtype, here and nowhere else, so sampling,
scoring and the update compute one function (weights stay in ``model.dtype``, float32 by
default: the optimiser updates float32 master weights). The value head runs in float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from contextlib import contextmanager

import torch
from torch import nn


class ValueHead(nn.Module):
    """``V(s_t) = w . h_t + b`` on the last hidden state ``h_t`` (kept in float32)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.summary(hidden.float()).squeeze(-1)


def hidden_size_of(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        return hidden_size_of(text_config)
    raise ValueError("cannot find the hidden size in the model config")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each sequence's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class TanhGELU(nn.Module):
    """``gelu(x, approximate="tanh")`` in one fused kernel.

    The same function as transformers' ``NewGELUActivation`` (GPT-2's ``gelu_new``:
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))))``), equal up to float rounding
    (~1e-7), without its six elementwise temporaries: ~10% less time per forward/backward
    of a small GPT-2 on CPU and far less activation memory (those temporaries dominated
    the peak RSS of sampling a batch).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module) -> int:
    """Swap every ``NewGELUActivation`` in ``model`` for :class:`TanhGELU`; returns how many.

    Only the modules change: the weights and the saved config (``gelu_new``) do not, so an
    exported model loads and computes the same anywhere.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "NewGELUActivation":
                setattr(parent, name, TanhGELU())
                swapped += 1
    return swapped


def cache_kwargs(lm: nn.Module, past) -> dict:
    """The keyword that hands a causal LM its key/value cache: ``cache`` in transformers >= 5.2x
    (``past_key_values`` there is deprecated, to be removed in 5.40), ``past_key_values`` before."""
    if past is None:  # no cache to hand over: the model's default (and no deprecated keyword)
        return {}
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # a peft wrapper takes **kwargs
    return {"cache": past} if _takes_cache(type(base)) else {"past_key_values": past}


def enable_activation_checkpointing(lm: nn.Module) -> None:
    """Recompute activations in the backward pass, non-reentrant (works with DDP, LoRA's frozen
    inputs and a forward called more than once): ``activation_checkpointing_enable`` in
    transformers >= 5.2x (``gradient_checkpointing_enable`` is deprecated there), the older name
    before."""
    enable = getattr(lm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@functools.lru_cache(maxsize=None)
def _takes_cache(cls: type) -> bool:
    forward = getattr(cls, "forward", None)
    return forward is not None and "cache" in inspect.signature(forward).parameters


def cache_of(out):
    """The key/value cache a causal LM returned (``cache`` or, before transformers 5.2x,
    ``past_key_values``), without touching the deprecated name where the new one exists."""
    if "cache" in getattr(out, "__dataclass_fields__", {}):
        return out.cache
    return getattr(out, "past_key_values", None)


def keep_kwargs(logits_to_keep: int) -> dict:
    """The ``logits_to_keep`` keyword for a transformers causal LM, only when it asks for fewer positions."""
    return {"logits_to_keep": logits_to_keep} if logits_to_keep > 0 else {}


def last_positions(x: torch.Tensor, keep: int) -> torch.Tensor:
    """The last ``keep`` positions of ``(B, L, ...)`` (all when ``keep`` is 0). A no-op when the model
    already kept only those; slices when it ignored ``logits_to_keep`` (models without it)."""
    return x[:, -keep:] if 0 < keep < x.shape[1] else x


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, precision: str = "fp32"):
    """``torch.autocast`` for ``precision`` (``fp32``: no autocast)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


class Policy(nn.Module):
    """A causal LM plus an optional value head; ``forward`` returns logits and values.

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` autocast of every forward (module docstring)."""

    def __init__(self, lm: nn.Module, value_head: bool = True, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        fuse_activations(lm)
        self.lm = lm
        self.precision = precision
        self.value_head = ValueHead(hidden_size_of(lm.config)) if value_head else None

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False,
                logits_to_keep: int = 0):
        """Returns ``(logits, values or None, past_key_values)``.

        ``position_ids`` default to positions derived from the attention mask, so left
        padding never shifts the real tokens' positions. ``logits_to_keep`` > 0: logits and
        values of the last that many positions only (the LM head is not run on the others).
        """
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        with autocast(input_ids.device.type, self.precision):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, **cache_kwargs(self.lm, past_key_values),
                          output_hidden_states=self.value_head is not None, **keep_kwargs(logits_to_keep))
        logits = last_positions(out.logits, logits_to_keep)
        values = None
        if self.value_head is not None:
            values = self.value_head(last_positions(out.hidden_states[-1], logits_to_keep))
        return logits, values, cache_of(out)


class Reference:
    """The frozen reference policy used by the KL term.

    Either a frozen copy of the initial LM, or — for LoRA — the trained model itself with
    its adapter disabled (no second copy of the weights).
    """

    def __init__(self, policy: Policy, use_adapter_disable: bool = False):
        self.use_adapter_disable = use_adapter_disable
        self._policy = policy
        self.precision = policy.precision  # the same function as the policy it starts from
        if use_adapter_disable:
            self.lm = None
        else:
            self.lm = copy.deepcopy(policy.lm).eval()
            for p in self.lm.parameters():
                p.requires_grad_(False)

    @contextmanager
    def _model(self):
        if self.use_adapter_disable:
            with self._policy.lm.disable_adapter():
                yield self._policy.lm
        else:
            yield self.lm

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False,
                 logits_to_keep: int = 0):
        """Same call as :meth:`Policy.forward` (values are None), so the rollout helpers score with it."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        with self._model() as lm, autocast(input_ids.device.type, self.precision):
            out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=use_cache, **cache_kwargs(lm, past_key_values), **keep_kwargs(logits_to_keep))
        return last_positions(out.logits, logits_to_keep), None, cache_of(out)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reference's logits for a left-padded batch."""
        return self(input_ids, attention_mask)[0]

"""Several processes: the launcher's environment, the process group, and what crosses it.

progrl trains with N processes when a launcher starts N copies of the command::

    torchrun --nproc_per_node N -m progrl train TASK ...
    accelerate launch [--config_file configs/accelerate/fsdp.yaml] -m progrl train TASK ...

Each copy (a *rank*) samples, scores and trains on its share of every batch; the batch
statistics are computed over the whole batch (:mod:`progrl.reductions`). This module is
everything the trainer knows about the other processes: a :class:`Dist` made by
:func:`setup` from the launcher's environment, with Accelerate underneath (its process
group: gloo on CPU, NCCL on GPUs; its DDP / FSDP / DeepSpeed wrapping of the model).
``Dist()`` is one process: every method is then the identity and nothing is imported.

How the model is shared (``Dist.sharding``):

- ``"ddp"``: every rank holds the whole model; gradients are averaged over the ranks in
  the backward pass (PyTorch DDP through Accelerate).
- ``"fsdp"``: parameters, gradients and optimiser state are sharded over the ranks
  (PyTorch FSDP2 ``fully_shard`` through Accelerate; ``fsdp_version: 2``). Sampling and the
  reference pass gather the whole model for their duration (:meth:`Dist.full_model`).
  Accelerate 1.15 enables FSDP only on accelerators; on CPU (gloo) progrl enables it in
  Accelerate's state itself, which torch supports (tested with 2 CPU processes).
- ``"deepspeed"``: DeepSpeed ZeRO-2/3 through Accelerate. DeepSpeed needs GPUs: this path is
  written against Accelerate's and DeepSpeed's APIs (as TRL uses them) but has not been run
  by progrl's tests; its checkpoints are not written (``final/`` is), see docs/scaling.md.
  DeepSpeed's own ``bf16``/``fp16`` (weights cast, float32 master copy in the optimiser) is
  allowed: sampling and update then run the same cast module.

Gradient averaging. DDP, FSDP and DeepSpeed all *average* the gradients of the ranks. Each
rank's loss is its share of the global loss (its numerators over the global denominators,
:class:`progrl.losses.BatchCounts`), so the global gradient is the *sum* of the ranks'
gradients: :meth:`Dist.backward` multiplies the share by the number of ranks first.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from progrl.config import ConfigError

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def launched_world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def requested_sharding() -> str:
    """``fsdp`` / ``deepspeed`` when an Accelerate config asks for it, else ``ddp``."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


@dataclass
class Dist:
    """This process's place among the ranks (one process by default), and the operations
    that involve the others. All of them are collective: every rank must call them in the
    same order."""

    world_size: int = 1
    rank: int = 0
    local_world_size: int = 1
    sharding: str = "none"  # none | ddp | fsdp | deepspeed
    accelerator: Any = None
    device: torch.device = torch.device("cpu")
    grad_accum: int = 1  # DeepSpeed only: the gradient accumulation its engine was configured with

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.accelerator is not None

    # ------------------------------------------------------------------ splitting work
    def shard(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` items (``n`` divisible by ``world_size``)."""
        if n % self.world_size:
            raise ValueError(f"{n} items do not split evenly over {self.world_size} processes")
        k = n // self.world_size
        return slice(self.rank * k, (self.rank + 1) * k)

    def split(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` items, block sizes differing by at most 1."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    # ------------------------------------------------------------------ moving tensors
    def gather(self, x: torch.Tensor, pad_value: float = 0, pad_first: bool = False) -> torch.Tensor:
        """Every rank's ``x`` concatenated along dim 0, in rank order. The ranks' ``x`` have the
        same number of rows; a dim 1 of different widths is padded to the widest (at the
        start with ``pad_first``, e.g. left-padded prompts)."""
        if not self.enabled:
            return x
        acc = self.accelerator
        if x.dim() > 1:
            x = acc.pad_across_processes(x, dim=1, pad_index=pad_value, pad_first=pad_first)
        return acc.gather(x.contiguous())

    def gather_rows(self, x: torch.Tensor, pad_value: float = 0) -> torch.Tensor:
        """Like :meth:`gather` for ranks holding different numbers of rows (:meth:`split`)."""
        if not self.enabled:
            return x
        counts = self.gather(torch.tensor([x.shape[0]], device=self.device)).tolist()
        width = max(counts)
        padded = torch.nn.functional.pad(x, (*([0, 0] * (x.dim() - 1)), 0, width - x.shape[0]), value=pad_value)
        everything = self.gather(padded, pad_value)
        return torch.cat([everything[r * width:r * width + c] for r, c in enumerate(counts)])

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``x`` (a new tensor, no gradient)."""
        if not self.enabled:
            return x
        y = x.detach().clone()
        torch.distributed.all_reduce(y, op=torch.distributed.ReduceOp.SUM)
        return y

    def barrier(self) -> None:
        if self.enabled:
            self.accelerator.wait_for_everyone()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank's parameters and buffers those of rank 0 (e.g. after a warm start
        that GPU non-determinism could have let drift)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(t.data, src=0)

    # ------------------------------------------------------------------ the model
    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batch: int = 1,
                grad_accum: int = 1, max_grad_norm: float | None = None):
        """Wrap the policy and its optimiser for training (DDP / FSDP / DeepSpeed); returns
        ``(model to train, optimizer)``. Sampling keeps using the unwrapped policy."""
        if not self.enabled:
            return model, optimizer
        if self.sharding == "deepspeed":  # DeepSpeed wants the sizes Accelerate cannot infer without dataloaders
            self.grad_accum = grad_accum
            ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = micro_batch
            ds["gradient_accumulation_steps"] = grad_accum
            ds["train_batch_size"] = micro_batch * grad_accum * self.world_size
            if ds.get("gradient_clipping", "auto") == "auto":
                ds["gradient_clipping"] = max_grad_norm if max_grad_norm is not None else 0.0
        return self.accelerator.prepare(model, optimizer)

    def prepare_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen model (the reference): sharded like the policy under FSDP and ZeRO-3, else a
        whole copy on each process."""
        if self.sharding == "deepspeed":
            return self._deepspeed_inference(module)
        if self.sharding != "fsdp":
            return module.to(self.device)
        from torch.distributed.fsdp import fully_shard

        module.to(self.device)
        for block in _blocks(module):
            fully_shard(block, reshard_after_forward=True)
        fully_shard(module, reshard_after_forward=True)
        return module

    def _deepspeed_inference(self, module: torch.nn.Module):
        """A DeepSpeed engine for a frozen model: partitioned with ZeRO-3, whole below (stage 0),
        no optimiser (as TRL prepares its reference model). Not run here: DeepSpeed needs GPUs."""
        import copy

        import deepspeed

        ds = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        zero = ds.setdefault("zero_optimization", {})
        if zero.get("stage", 0) != 3:
            ds["zero_optimization"] = {"stage": 0}
        for key in ("optimizer", "scheduler"):
            ds.pop(key, None)
        engine, *_ = deepspeed.initialize(model=module, config=ds)
        engine.eval()
        return engine

    @contextlib.contextmanager
    def full_model(self, module: torch.nn.Module):
        """The whole model on every rank for the duration (sampling, the reference pass): its
        forward passes then need no collective, so ranks may run different numbers of them
        (sampling stops when a rank's own responses have ended). Identity unless sharded."""
        if self.sharding == "fsdp":
            from torch.distributed.fsdp import FSDPModule

            parts = [m for m in module.modules() if isinstance(m, FSDPModule)]
            for m in parts:
                m.unshard()
                m.set_reshard_after_forward(False, recurse=False)
            try:
                yield module
            finally:
                for m in parts:
                    m.reshard()
                    m.set_reshard_after_forward(True, recurse=False)
        elif self.sharding == "deepspeed":
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                yield module
        else:
            yield module

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate this rank's share of the global loss (see the module docstring)."""
        if not self.enabled:
            loss.backward()
        elif self.sharding == "deepspeed":  # its engine divides by the accumulation steps itself
            self.accelerator.backward(loss * self.world_size * self.grad_accum)
        else:
            self.accelerator.backward(loss * self.world_size)

    def no_sync(self, model: torch.nn.Module):
        """Skip the gradient all-reduce of a backward pass that is not the last before an
        optimiser step (gradient accumulation)."""
        if not self.enabled or self.sharding != "ddp":
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def clip_grad_norm_(self, params: list, max_norm: float) -> float:
        if not self.enabled:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    # ------------------------------------------------------------------ state for checkpoints
    def model_state(self, module: torch.nn.Module) -> dict | None:
        """The whole state dict on rank 0 (``None`` on the others); collective when sharded."""
        if self.sharding in ("none", "ddp"):
            return module.state_dict() if self.is_main else None
        if self.sharding == "deepspeed":
            return self.accelerator.get_state_dict(module)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.is_main else None

    def optimizer_state(self, module: torch.nn.Module, optimizer) -> dict | None:
        """The optimiser's whole state dict on rank 0 (``None`` elsewhere); collective when sharded."""
        if self.sharding in ("none", "ddp"):
            return optimizer.state_dict() if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        sd = get_optimizer_state_dict(module, _inner(optimizer),
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.is_main else None

    def load_optimizer_state(self, module: torch.nn.Module, optimizer, state: dict) -> None:
        """Load a whole optimiser state dict (from :meth:`optimizer_state`) into a prepared optimiser."""
        if self.sharding in ("none", "ddp"):
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, _inner(optimizer), optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            self.barrier()
            torch.distributed.destroy_process_group()


def _inner(optimizer):
    """The torch optimiser inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a model (its ``_no_split_modules`` classes), sharded one by one."""
    names = set(getattr(module, "_no_split_modules", None) or [])
    return [m for m in module.modules() if type(m).__name__ in names and m is not module]


def setup(device: str = "auto") -> Dist:
    """The :class:`Dist` of this process, from the launcher's environment.

    No launcher (or one process without FSDP/DeepSpeed): ``Dist()`` on ``device``. Otherwise an
    Accelerate ``Accelerator`` joins the process group; each rank uses its local GPU (or the
    CPU with ``device = "cpu"`` or without GPUs). A mixed-precision setting of Accelerate is
    refused: ``model.precision`` is progrl's (it must apply to sampling and update alike).
    """
    world = launched_world_size()
    sharding = requested_sharding()
    if world == 1 and sharding == "ddp":
        return Dist(device=resolve_device(device))
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"config error: device: {device!r} with {world} processes; each process uses its own "
                          f"GPU: use device = \"auto\", \"cuda\" or \"cpu\"")
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mp not in ("no", "fp32") and sharding != "deepspeed":  # DeepSpeed's bf16/fp16 casts the module itself
        raise ConfigError(f"config error: accelerate mixed_precision={mp!r}: progrl applies mixed precision itself "
                          f"(model.precision = \"{mp}\"), so that sampling and the update compute the same function; "
                          f"set mixed_precision to \"no\" in the accelerate config and pass --set "
                          f"model.precision={mp}")
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    cpu = device == "cpu" or not torch.cuda.is_available()
    # broadcast_buffers=False: the models' buffers are constants (rotary frequencies, masks), and a
    # broadcast in every forward would make ranks wait for each other while they sample
    accelerator = Accelerator(cpu=cpu, mixed_precision=mp if sharding == "deepspeed" else "no",
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    if sharding == "fsdp":
        _enable_fsdp(accelerator)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        sharding = "deepspeed"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return Dist(world_size=accelerator.num_processes, rank=accelerator.process_index, local_world_size=local,
                sharding=sharding, accelerator=accelerator, device=accelerator.device)


def _enable_fsdp(accelerator) -> None:
    """FSDP2 through Accelerate, also on CPU (see the module docstring)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.FSDP:  # Accelerate's gate: accelerators only
        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables of the config
        state.distributed_type = DistributedType.FSDP
    if state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError("config error: fsdp_version: progrl uses FSDP2 (fsdp_version: 2 in the accelerate "
                          "config, as in configs/accelerate/fsdp.yaml)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

"""Process-group plumbing for torchrun: DDP by default (gloo on CPU, nccl on GPU), FSDP2 as an option.

A single process (no ``WORLD_SIZE`` in the environment) needs none of it: every helper
here then does nothing, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
import torch.distributed as tdist
from torch import nn

T = TypeVar("T")


@dataclass
class Env:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str = "auto") -> Env:
    """Join the torchrun process group if launched by torchrun; otherwise a one-process Env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Env(device=pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Env(rank, world, local_rank, dev)


def _fully_shard(model: nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    blocks = model.blocks
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"FSDP sharding needs a model with a ModuleList of blocks, got {type(blocks).__name__}")
    for block in blocks:  # one unit per block: gathered just in time, freed after
        fully_shard(block)
    fully_shard(model)


def wrap(model: nn.Module, env: Env, cfg) -> nn.Module:
    """The module the training step calls: the model itself, DDP, or FSDP2-sharded (in place)."""
    if not env.distributed:
        return model
    if getattr(cfg, "fsdp", False):
        _fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard_like(ema: nn.Module, env: Env, cfg) -> None:
    """Shard the EMA copy exactly as the model, so the EMA update is shard-local."""
    if env.distributed and getattr(cfg, "fsdp", False):
        _fully_shard(ema)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded weights on the CPU (a collective for FSDP modules)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    # A full state dict holds plain tensors only (no DTensor shards, no nested containers).
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=_full_options()))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state keyed by parameter names, so it loads under any sharding."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def loss_scale(env: Env, images: int, global_batch: int) -> float:
    """Factor that makes DDP's gradient average equal the mean over the whole global batch."""
    return env.world_size * images / global_batch


def all_sum(env: Env, value: float) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    tdist.all_reduce(t)
    return float(t)


def all_mean(env: Env, value: float) -> float:
    return all_sum(env, value) / env.world_size


def any_true(env: Env, flag: bool) -> bool:
    return all_sum(env, float(flag)) > 0


def broadcast_object(env: Env, obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a picklable value; the others pass anything of the same type)."""
    if not env.distributed:
        return obj
    box: list[Any] = [obj if env.is_main else None]  # rank 0's value replaces None on the others
    tdist.broadcast_object_list(box, src=0, device=env.device if env.device.type == "cuda" else None)
    return box[0]


def barrier(env: Env) -> None:
    if env.distributed:
        tdist.barrier()


def cleanup(env: Env) -> None:
    if env.distributed and tdist.is_initialized():
        tdist.destroy_process_group()

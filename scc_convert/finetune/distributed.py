"""torchrun / DistributedDataParallel: joining or creating the process group, reductions."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # a process group is in use (DDP wraps the model)
    created: bool = False  # this call created it, and destroys it at the end

    @property
    def main(self) -> bool:
        return self.rank == 0


def _torchrun_env() -> bool:
    return all(k in os.environ for k in _TORCHRUN_ENV)


def _resolve_device(device: torch.device | str | None, local_rank: int, distributed: bool) -> torch.device:
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"finetune: device={device!r} but CUDA is not available; pass device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
    return dev


def _setup(device: torch.device | str | None) -> tuple[_Dist, torch.device]:
    """Join (or, under ``torchrun``, create) the process group and pick the device."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return _Dist(rank, world, local, active=True), _resolve_device(device, local, True)
    if not _torchrun_env():
        return _Dist(), _resolve_device(device, 0, False)
    if not dist.is_available():
        warnings.warn(
            "finetune: torchrun variables are set but this PyTorch build has no torch.distributed; "
            "training on one process",
            stacklevel=3,
        )
        return _Dist(), _resolve_device(device, 0, False)
    rank, world, local = (int(os.environ[k]) for k in _TORCHRUN_ENV)
    dev = _resolve_device(device, local, True)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl", device_id=dev)
    else:
        dist.init_process_group(backend="gloo")
    return _Dist(rank, world, local, active=True, created=True), dev


def _all_reduce_sum(values: Tensor, ctx: _Dist) -> Tensor:
    if ctx.active and ctx.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _broadcast_buffers(model: nn.Module, ctx: _Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart after the last step)."""
    if ctx.active and ctx.world_size > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)

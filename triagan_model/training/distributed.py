"""Process groups under torchrun (multi-node capable): gloo on CPU, nccl on GPU.

No DistributedDataParallel wrapper: like StyleGAN2-ADA/3, gradients are averaged by hand after
gradient accumulation (one all-reduce per network and phase), which keeps the G/D phase
switching (requires_grad toggling) simple. Floating-point buffers (BatchNorm statistics, the
mapping network's w_avg) are averaged after every step, so replicas stay identical.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from triagan_model.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes ($RANK, $WORLD_SIZE, ...), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(resolve_device(device))
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _mean_in_place(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Replace each tensor by its mean over ranks, with one flat all-reduce."""
    if not info.enabled or not tensors:
        return
    flat = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(flat)
    flat /= info.world_size
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.view_as(t))


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average .grad over ranks (parameters without grad are skipped)."""
    _mean_in_place([p.grad for p in params if p.grad is not None], info)


def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers over ranks (BN running stats, w_avg, SN vectors)."""
    _mean_in_place([b for b in module.buffers() if b.is_floating_point()], info)


def average_scalars(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean of each scalar over ranks (for the statistics of a tick)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if info.device.type == "cuda":
        t = t.to(info.device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}

"""Multi-process search and training with torchrun + DistributedDataParallel.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) each rank takes every
world_size-th sample of each data half, the weights are trained with DDP and α (ignored by DDP)
gets its gradient all-reduced (averaged) by hand before every α step, first or second order, so
α stays identical on every rank. Each rank seeds its RNG with seed + rank, so each draws its own,
independent noise. Backend: nccl on CUDA, gloo on CPU. Without torchrun nothing changes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import NdartsError


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    def shard(self, indices):
        """This rank's share: every world_size-th index, all ranks the same count (the tail is dropped)."""
        indices = list(indices)
        usable = len(indices) - len(indices) % self.world_size
        if usable == 0:
            raise NdartsError(f"{len(indices)} samples cannot be shared among {self.world_size} processes")
        return indices[self.rank:usable:self.world_size]

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel as DDP

        arch = [n for n, _ in model.named_parameters() if n.startswith("alphas_")]
        if arch:
            # α is updated by the architect with a hand all-reduce, not by DDP
            DDP._set_params_and_buffers_to_ignore_for_model(model, arch)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def all_reduce_mean(self, tensors) -> None:
        for t in tensors:
            if t is not None:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                t.div_(self.world_size)

    def sum_scalars(self, *values):
        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return tuple(t.tolist())

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


@contextlib.contextmanager
def distributed_context(device_name: str = "auto"):
    """Yields a DistContext under torchrun (process group set up and torn down), else None."""
    if not launched_by_torchrun():
        yield None
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield DistContext(rank, world, local_rank, device)
    finally:
        dist.destroy_process_group()

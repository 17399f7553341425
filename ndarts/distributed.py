"""Multi-process search and training with torchrun + DistributedDataParallel.

    torchrun --nproc_per_node=N -m ndarts.search ...     (or -m ndarts.train ...)

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment, WORLD_SIZE > 1):

- Devices: rank r runs on ``cuda:LOCAL_RANK`` with the nccl backend when CUDA is available (and
  ``--device`` is not ``cpu``), else on the CPU with gloo. Without torchrun nothing changes.
- Data: each rank takes every world_size-th sample of each data half (``shard``), all ranks the
  same count (the tail is dropped), so every rank takes the same number of steps per epoch and
  the global batch is world_size × --batch-size.
- Weights: trained through DDP (gradients averaged over the ranks; BatchNorm buffers broadcast
  from rank 0 at every DDP forward, DDP's default; batch statistics are per rank, as with any
  non-synchronised BatchNorm).
- α: ignored by DDP; broadcast from rank 0 once when the model is wrapped, then its gradient is
  all-reduced (averaged, ``all_reduce_mean``, the Architect's grad_hook) before every α step, so
  α is identical on every rank after every step. Second order, the same hook averages the virtual
  step's ∇_w L_train and ∇_{w'} L_val, so every rank unrolls to the same w' and takes the same
  finite-difference direction: the result is the one-process result over the global batch. The
  α-step forwards use the unwrapped model and torch.autograd.grad (no AccumulateGrad node runs,
  so no DDP hook fires): they cannot mis-sync DDP's reducer, and every rank runs the same number
  of them, so the hand all-reduces cannot deadlock.
- Noise: rank 0 seeds its RNGs with ``seed``, the others with a hash of (seed, rank)
  (``rank_seed``), so each rank draws its own, independent noise (and its own ε for the fused
  kernels, whose seeds come from torch's RNG), and no rank of one seed draws another seed's noise:
  the noise of an N-process run is N independent draws, one per shard. Each rank's skip noise
  takes the std of its own operand (its shard of the batch): σ = λ·std is per process, as every
  non-synchronised statistic is (SPEC's std over all elements of the skip operand, the tensor
  the process holds). Rank 0 draws exactly what a single-process run with the same seed draws.
  Checkpoints (the search's and the training's) keep every rank's RNG state, so a resume with the
  same number of processes continues every rank's stream; with another number, ranks > 0 are
  re-seeded from (seed, rank, epoch) and the run logs a note.
- Files: logs, metrics, genotypes and checkpoints are written by rank 0 only; every rank reads the
  checkpoint on ``--resume``. ``barrier()`` orders rank 0's writes before the other ranks' reads.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import NdartsError
from .rng import rng_state, seed_everything, set_rng_state


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
        """DDP over the weights; the architecture weights (``alphas_*``) are left out of DDP and
        broadcast from rank 0 here, since ranks seeded differently initialise them differently."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        arch = [n for n, _ in model.named_parameters() if n.startswith("alphas_")]
        if arch:
            # DDP matches the names in two forms: "alphas_normal" (its parameter list, its state
            # sync) and ".alphas_normal" (f"{module_name}.{name}" with module_name "" for the root,
            # the reducer's list). Without the second form the reducer waits for α's gradient,
            # which the w step never computes ("Expected to have finished reduction ...").
            DDP._set_params_and_buffers_to_ignore_for_model(model, arch + ["." + n for n in arch])
            with torch.no_grad():
                for n in arch:
                    dist.broadcast(model.get_parameter(n), src=0)
        grads_strided_as_weights(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def all_reduce_mean(self, tensors) -> None:
        """Averages each tensor over the ranks, in place (None entries are skipped: every rank must pass
        the same structure). One collective per dtype: the tensors travel as one flat buffer."""
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            if t is not None:
                groups.setdefault(t.dtype, []).append(t)
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def sum_scalars(self, *values):
        """The sums over the ranks of a few Python numbers (float64)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return tuple(t.tolist())

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj):
        """Every rank's ``obj``: a list indexed by rank on rank 0, None on the other ranks."""
        out = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_buffers(self, module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) to every rank."""
        with torch.no_grad():
            for b in module.buffers():
                dist.broadcast(b, src=0)

    def barrier(self) -> None:
        dist.barrier()


def grads_strided_as_weights(model) -> None:
    """Makes every weight's gradient arrive with the weight's own strides, as DDP compares them.

    A convolution's weight gradient may differ from its weight in the strides of size-1 dimensions
    only (a 1×1 conv weight [O, I, 1, 1] is both NCHW- and channels_last-contiguous; conv backward
    on channels_last activations may return either, a depthwise [C, 1, k, k] likewise): the same
    memory order, which autograd accepts as the weight's layout, but DDP's bucket view keeps the
    weight's exact strides and warns "Grad strides do not match bucket view strides" on every
    process. A hook on each such weight re-strides its gradient (a view: no copy, the same values).
    """
    for name, p in model.named_parameters():
        if p.requires_grad and p.dim() > 1 and not name.startswith("alphas_"):
            p.register_hook(_restrided_grad(tuple(p.stride())))


def _restrided_grad(stride: tuple[int, ...]):
    """The hook of grads_strided_as_weights for a weight of these strides: a gradient whose strides
    differ only where its size is 1 becomes a view with the weight's strides; others pass unchanged
    (autograd copies those into the weight's layout itself)."""

    def hook(grad):
        if grad.stride() == stride or any(n != 1 and a != b for n, a, b in zip(grad.shape, grad.stride(), stride)):
            return None
        return grad.as_strided(grad.shape, stride, grad.storage_offset())

    return hook


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of rank ``rank``: ``seed`` itself for rank 0 at the start of a run (it draws what a
    single process with that seed draws); for the other ranks, and for a resume that cannot restore
    the ranks' own RNG states (a different number of processes), a hash of (seed, rank, epoch). Not
    seed + rank: rank 1 of --seed s would draw the noise of rank 0 of --seed s + 1, and a seed sweep
    on several processes would share noise streams between neighbouring seeds."""
    if rank == 0 and epoch == 0:
        return seed
    digest = hashlib.sha256(f"ndarts rank seed {seed} {rank} {epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def restore_rank_rng(state: dict, dist_ctx, seed: int, epoch: int, log) -> None:
    """Every process's RNG state from a checkpoint (``rng``: rank 0's; ``rng_ranks``: each rank's, by
    rank): its own where the checkpoint has one per process of this run, so that the resumed run is
    the uninterrupted one; else rank 0 takes ``rng`` and the others are re-seeded (rank_seed), with a
    note through ``log`` that the shards, the global batch and the noise streams change."""
    was = state.get("world_size", 1)
    now = dist_ctx.world_size if dist_ctx is not None else 1
    saved = state.get("rng_ranks")
    if dist_ctx is not None and saved is not None and len(saved) == now:
        set_rng_state(saved[dist_ctx.rank])
        return
    if was != now:
        log(f"note: the checkpoint was written by {was} process(es), this run has {now}: the global batch "
            f"(processes × --batch-size), the shards and the noise streams differ from an uninterrupted run")
    if dist_ctx is None or dist_ctx.rank == 0:
        set_rng_state(state["rng"])
    else:
        seed_everything(rank_seed(seed, dist_ctx.rank, epoch))


def gather_rng_states(dist_ctx):
    """Every rank's RNG state, by rank, on rank 0 (None elsewhere and in one process): a collective,
    so every rank calls it, before rank 0 writes the checkpoint."""
    return dist_ctx.gather_object(rng_state()) if dist_ctx is not None else None


@contextlib.contextmanager
def distributed_context(device_name: str = "auto"):
    """Yields a DistContext under torchrun (process group set up and torn down), else None.

    ``device_name`` cpu forces gloo on the CPU; auto / cuda / cuda:N use ``cuda:LOCAL_RANK`` and
    nccl when CUDA is available (the index of cuda:N is ignored: LOCAL_RANK picks the GPU).
    """
    if not launched_by_torchrun():
        yield None
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device_name != "cpu" and not device_name.startswith(("auto", "cuda")):
        raise NdartsError(f"--device {device_name} under torchrun: use auto, cuda or cpu")
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name.startswith("cuda") and not use_cuda:
        raise NdartsError(f"--device {device_name}: CUDA is not available on this machine")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise NdartsError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                              "lower --nproc_per_node to the number of GPUs")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend="gloo")
    try:
        yield DistContext(rank, world, local_rank, device)
    finally:
        dist.destroy_process_group()

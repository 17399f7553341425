"""Bitwise-repeatable runs: the same seed gives the same α, genotype and weights (``--deterministic``).

On a CPU two runs of ndarts with the same seed already agree bit for bit. On CUDA three things
can differ from run to run:
- cuDNN: with ``torch.backends.cudnn.benchmark`` it picks each convolution's algorithm by timing it,
  and some of its weight-gradient algorithms accumulate with atomics;
- PyTorch ops that accumulate with ``atomicAdd`` (index_select's backward, among others);
- cuBLAS, whose workspace per stream must be fixed (``CUBLAS_WORKSPACE_CONFIG``).
``deterministic_mode()`` turns all three off: cuDNN's deterministic algorithms and no benchmark,
``torch.use_deterministic_algorithms(True)`` (deterministic implementations where PyTorch has them,
a RuntimeError naming the op where it has none) and cuBLAS's documented setting. The networks of
ndarts avoid the ops PyTorch refuses there: the global average pool (``global_avg_pool``), the
auxiliary head's adaptive pool (``adaptive_avg_pool_2x2``) and the loss (ndarts.losses). The α
weights' gathers (``unique_gather``) have a backward that is a gather too, in every mode. ndarts'
Triton kernels use no float atomics: every reduction of theirs runs in a fixed order.

``torch.utils.deterministic.fill_uninitialized_memory`` is turned off: it would fill every
``torch.empty`` with NaN, a kernel per allocation, and ndarts' kernels write each buffer they
allocate before they read it (a read of unwritten memory would also fail the tests against the
reference). The settings are process-wide, as ``torch.backends.cudnn.benchmark`` is;
``DeterminismState.restore`` puts back what was there before.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
import torch.nn.functional as F

# cuBLAS's setting for reproducible results (NVIDIA's cuBLAS documentation, "Results reproducibility");
# PyTorch refuses cuBLAS calls in deterministic mode without it or ":16:8"
CUBLAS_WORKSPACE = ":4096:8"
CUBLAS_REPRODUCIBLE = (":4096:8", ":16:8")


@dataclasses.dataclass
class DeterminismState:
    """The process-wide settings deterministic_mode changes, as they were."""

    algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    fill_uninitialized: bool
    cublas_workspace: str | None

    @classmethod
    def current(cls) -> DeterminismState:
        return cls(torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                   torch.utils.deterministic.fill_uninitialized_memory, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))

    def restore(self) -> None:
        torch.use_deterministic_algorithms(self.algorithms, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.utils.deterministic.fill_uninitialized_memory = self.fill_uninitialized
        if self.cublas_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self.cublas_workspace


def deterministic_mode() -> DeterminismState:
    """Deterministic algorithms everywhere (module docstring); returns the settings as they were.

    Call it before the first CUDA matrix product of the process: cuBLAS reads its workspace setting
    when it starts. A CUBLAS_WORKSPACE_CONFIG the user set to another value is replaced (PyTorch
    would refuse every cuBLAS call under it)."""
    before = DeterminismState.current()
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_REPRODUCIBLE:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.utils.deterministic.fill_uninitialized_memory = False
    return before


@contextlib.contextmanager
def deterministic_setup(enabled: bool):
    """A run's set-up in deterministic mode when `enabled`: the mode stays on for the run, and is
    undone if the set-up fails (a missing dataset, say), so that a caller in the same process is
    left as it was."""
    before = deterministic_mode() if enabled else None
    try:
        yield
    except BaseException:
        if before is not None:
            before.restore()
        raise


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 1)``; in deterministic mode a mean over H and W, whose backward
    PyTorch allows there (adaptive pooling's CUDA backward is refused: it may use atomicAdd)."""
    if torch.are_deterministic_algorithms_enabled():
        return x.mean((-2, -1), keepdim=True)
    return F.adaptive_avg_pool2d(x, 1)


class GlobalAvgPool(torch.nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` that deterministic mode allows (global_avg_pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """adaptive pooling's windows along one axis: [⌊i·size/out⌋, ⌈(i+1)·size/out⌉) for each i."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 2)``; in deterministic mode the mean of each of its four windows
    (they overlap where a side is odd, which is why PyTorch's CUDA backward uses atomicAdd there)."""
    if not torch.are_deterministic_algorithms_enabled():
        return F.adaptive_avg_pool2d(x, 2)
    h, w = x.shape[-2:]
    rows = [torch.cat([x[..., r0:r1, c0:c1].mean((-2, -1), keepdim=True) for c0, c1 in _bins(w, 2)], dim=-1)
            for r0, r1 in _bins(h, 2)]
    return torch.cat(rows, dim=-2)


def gather_inverse(index, size: int) -> torch.Tensor:
    """For distinct indices `index` into a dimension of `size` slots: each slot's position among
    the gathered ones, or len(index) (the zero slot unique_gather's backward appends) where the slot
    is not gathered. An int64 tensor of `size` entries, for unique_gather."""
    index = [int(i) for i in index]
    if len(set(index)) != len(index) or any(not 0 <= i < size for i in index):
        raise ValueError(f"gather_inverse: the indices must be distinct and in [0, {size}), got {index}")
    inverse = torch.full((size,), len(index), dtype=torch.long)
    inverse[index] = torch.arange(len(index))
    return inverse


class _UniqueGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, index, inverse):
        ctx.dim = dim
        ctx.save_for_backward(inverse)
        return x.index_select(dim, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        dim = ctx.dim % grad.dim()
        padded = F.pad(grad, [0, 0] * (grad.dim() - 1 - dim) + [0, 1])  # one zero slot at the end of dim
        return padded.index_select(dim, inverse), None, None, None


def unique_gather(x: torch.Tensor, dim: int, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``x.index_select(dim, index)`` for distinct indices, whose backward is a gather as well: the
    gradient with a zero slot appended, read at ``inverse`` (gather_inverse(index, x.shape[dim]),
    on x's device). PyTorch's own backward adds into a zeroed tensor: with atomicAdd on CUDA, and in
    deterministic mode with a sort-based index_put whose index range check may read the indices on
    the host, which a CUDA graph capture cannot do. Each slot receives one value or zero here, so
    the gradient is exactly PyTorch's."""
    return _UniqueGather.apply(x, dim, index, inverse)

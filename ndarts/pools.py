"""A node's two DARTS pools as one op: ``pools_3x3`` (max and average 3×3, padding 1, the average
over the positions inside the image, as DARTS's ``max_pool_3x3`` and ``avg_pool_3x3``).

Where the search-op kernels run (graph_kernels_enabled: a captured CUDA graph, or backend
'triton'), one Triton launch each way for both (``ndarts_kernels.pools_3x3_*``: each window read
once, the max's position kept as int8 instead of torch's int64 indices, the backward one gather
that writes the sum of both pools' gradients of x); elsewhere torch's two pools. The same values
and gradients (torch's NaN and tie rules).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backend import graph_kernels_enabled


class _Pools3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stride: int, moments: bool):
        import ndarts_kernels

        ymax, yavg, arg, *parts = ndarts_kernels.pools_3x3_forward(x, stride, moments=moments)
        ctx.save_for_backward(arg)
        ctx.shape, ctx.stride = tuple(x.shape), stride
        ctx.set_materialize_grads(False)  # an unused pool gives None, not a zero-filled gradient
        ctx.mark_non_differentiable(*parts)
        return (ymax, yavg, *parts)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_max, grad_avg, *_moments):
        import ndarts_kernels

        if grad_max is None and grad_avg is None:
            return None, None, None
        (arg,) = ctx.saved_tensors
        return ndarts_kernels.pools_3x3_backward(grad_max, grad_avg, arg, ctx.shape, ctx.stride), None, None


def pools_3x3(x: torch.Tensor, stride: int, backend: str | None = None, moments: bool = False) -> tuple:
    """(max_pool_3x3(x), avg_pool_3x3(x)) at `stride`: one Triton launch each way where the
    search-op kernels run, torch's pools elsewhere (see the module docstring). moments: then
    (max pool, avg pool, their per-channel partial moments or None, None where torch pooled):
    the statistics of their BatchNorms, from the kernel that wrote them (batch_norms_forward(moments=…))."""
    if graph_kernels_enabled(backend, x):
        return _Pools3x3.apply(x, stride, moments)
    pooled = (F.max_pool2d(x, 3, stride, 1), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False))
    return (*pooled, None, None) if moments else pooled


def darts_pools_stride(max_pool: nn.Module, avg_pool: nn.Module) -> int | None:
    """The common stride of a MaxPool2d and an AvgPool2d configured as DARTS's 3×3 pools
    (padding 1, no ceil mode, no dilation; the average without the padding), else None."""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    if type(max_pool) is not nn.MaxPool2d or type(avg_pool) is not nn.AvgPool2d:
        return None
    stride = pair(max_pool.stride)
    if (pair(max_pool.kernel_size) != (3, 3) or pair(max_pool.padding) != (1, 1) or pair(max_pool.dilation) != (1, 1)
            or max_pool.ceil_mode or max_pool.return_indices or pair(avg_pool.kernel_size) != (3, 3)
            or pair(avg_pool.padding) != (1, 1) or pair(avg_pool.stride) != stride or avg_pool.ceil_mode
            or avg_pool.count_include_pad or avg_pool.divisor_override is not None
            or stride[0] != stride[1] or stride[0] not in (1, 2)):
        return None
    return stride[0]

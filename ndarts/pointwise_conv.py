"""Pointwise (1×1) convolutions of the search network on the Triton kernels: ``SearchPointwiseConv2d``.

A subclass of ``nn.Conv2d`` (same parameters and state_dict keys) for its 1×1, stride-1, bias-free
convolutions: the batched edge convs' pointwise layers (groups = E edges, ndarts.edge_groups),
the per-edge sep/dil convs' and the cells' preprocessing convs. Where
``ndarts.backend.graph_kernels_enabled`` says so (while a CUDA graph is captured on 'auto',
always on 'triton') it runs ``ndarts_kernels.pointwise_conv_*``; elsewhere it is nn.Conv2d.
``use_search_pointwise_conv(model)`` swaps it in; ``SearchNetwork(fused_pointwise_conv=True)``
turns it on (off by default: not yet timed on a GPU).

Why: on the H200 the graphed step's convolutions took ~75 of 106 ms for bytes that take ~17 ms at
the memory bandwidth (benchmarks/RESULTS.md, step_traffic.py), and the pointwise ones are cuDNN
grouped convolutions of 16 channels per group. The Triton kernels read each input once, write
each output once, and compute in fp32 (cuDNN's default on an H100/H200 rounds its inputs to TF32).
A weight gradient is computed only when the backward pass uses it (ndarts.grad_use).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .backend import convert_modules, graph_kernels_enabled
from .grad_use import grads_used


class _PointwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        import ndarts_kernels

        ctx.save_for_backward(x, weight)
        return ndarts_kernels.pointwise_conv_forward(x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        import ndarts_kernels

        x, weight = ctx.saved_tensors
        need_input, need_weight = grads_used(ctx, 2)
        return ndarts_kernels.pointwise_conv_backward(grad, x, weight, need_input=need_input,
                                                      need_weight=need_weight)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv2d(x, weight, groups=G) for a 1×1 weight [G·CO, CI, 1, 1] (G = x's channels // CI),
    stride 1, no bias, on the Triton kernels."""
    return _PointwiseConv.apply(x, weight)


class SearchPointwiseConv2d(nn.Conv2d):
    """nn.Conv2d for 1×1 stride-1 convolutions, on the Triton kernels where enabled (module docstring)."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup(backend)

    def _setup(self, backend):
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.weight.dtype == x.dtype and graph_kernels_enabled(self.backend, x)):
            return super().forward(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected {self.in_channels} channels, got input of shape "
                             f"{tuple(x.shape)}")
        return pointwise_conv(x, self.weight)


def covers_pointwise(m: nn.Conv2d) -> bool:
    """A 1×1 conv the kernels cover (an nn.Conv2d or a subclass): stride 1, no padding, no bias
    (any groups). The FactorizedReduce's stride-2 convs are not."""
    return m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), 0) and m.bias is None


def is_plain_pointwise(m: nn.Module) -> bool:
    """A plain nn.Conv2d (not yet converted) that the kernels cover (covers_pointwise)."""
    return type(m) is nn.Conv2d and covers_pointwise(m)


def use_search_pointwise_conv(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Turns every 1×1 nn.Conv2d of `model` that the kernels cover into a SearchPointwiseConv2d
    (in place, same parameters; returns the model)."""
    return convert_modules(model, is_plain_pointwise, SearchPointwiseConv2d, backend)

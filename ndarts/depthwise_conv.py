"""Depthwise convolutions of the search ops on the Triton kernels: ``SearchDepthwiseConv2d``.

A subclass of ``nn.Conv2d`` (same parameters and state_dict keys) for the depthwise convolutions
of sep/dil convs (groups = in channels, M outputs per channel, square kernel, no bias, zero
padding). Where
``ndarts.backend.graph_kernels_enabled`` says so (while a CUDA graph is captured on 'auto',
always on 'triton') it runs ``ndarts_kernels.depthwise_conv_*``; elsewhere it is nn.Conv2d.
``use_search_depthwise_conv(model)`` swaps it in. Off by default in the search network
(``SearchNetwork(fused_depthwise_conv=True)`` turns it on): not yet timed on a GPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .backend import convert_modules, graph_kernels_enabled


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        import ndarts_kernels

        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return ndarts_kernels.depthwise_conv_forward(x, weight, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        import ndarts_kernels

        x, weight = ctx.saved_tensors
        dx, dw = ndarts_kernels.depthwise_conv_backward(grad, x, weight, *ctx.conf,
                                                        need_input=ctx.needs_input_grad[0],
                                                        need_weight=ctx.needs_input_grad[1])
        return dx, dw, None, None, None


def depthwise_conv(x, weight, stride: int = 1, padding: int = 0, dilation: int = 1):
    """Depthwise 2-D convolution (groups = in channels; weight [C·M, 1, K, K]: M outputs per
    channel; no bias) on the Triton kernels."""
    return _DepthwiseConv.apply(x, weight, int(stride), int(padding), int(dilation))


def _square(v) -> int | None:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return v[0] if len(v) == 2 and v[0] == v[1] and isinstance(v[0], int) else None


class SearchDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d for depthwise convolutions, on the Triton kernels where enabled (module docstring)."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup(backend)

    def _setup(self, backend):
        self.backend = backend
        self._conf = (_square(self.stride), _square(self.padding), _square(self.dilation))

    def _use_kernels(self, x: torch.Tensor) -> bool:
        return self.weight.dtype == x.dtype and graph_kernels_enabled(self.backend, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_kernels(x):
            return super().forward(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected {self.in_channels} channels, got input of shape "
                             f"{tuple(x.shape)}")
        return depthwise_conv(x, self.weight, *self._conf)


def is_plain_depthwise(m: nn.Module) -> bool:
    """A depthwise nn.Conv2d the kernels cover: groups = in channels, out channels a multiple of
    them (M per channel: the batched edge convs' first one), square kernel, square
    stride/padding/dilation, no bias, zero padding."""
    return (type(m) is nn.Conv2d and m.groups == m.in_channels and m.out_channels % m.in_channels == 0
            and m.bias is None
            and m.padding_mode == "zeros" and m.kernel_size[0] == m.kernel_size[1]
            and None not in (_square(m.stride), _square(m.padding), _square(m.dilation)))


def use_search_depthwise_conv(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Turns every depthwise nn.Conv2d of `model` that the kernels cover into a
    SearchDepthwiseConv2d (in place, same parameters; returns the model)."""
    return convert_modules(model, is_plain_depthwise, SearchDepthwiseConv2d, backend)

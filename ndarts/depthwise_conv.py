"""Depthwise convolutions of the search ops on the Triton kernels: ``SearchDepthwiseConv2d``.

A subclass of ``nn.Conv2d`` (same parameters and state_dict keys) for the depthwise convolutions
of sep/dil convs (groups = in channels, M outputs per channel, square kernel, no bias, zero
padding). Where
``ndarts.backend.graph_kernels_enabled`` says so (while a CUDA graph is captured on 'auto',
always on 'triton') it runs ``ndarts_kernels.depthwise_conv_*``; elsewhere it is nn.Conv2d.
``use_search_depthwise_conv(model)`` swaps it in. Off by default in the search network
(``SearchNetwork(fused_depthwise_conv=True)`` turns it on): not yet timed on a GPU.

``kernels="weight_grad"`` (``SearchNetwork(fused_depthwise_conv="weight_grad")``) puts only the
weight gradient on Triton: the forward and the input gradient stay PyTorch's. On the H200 PyTorch's
NCHW weight-gradient kernel was the slowest of them (16.9 ms of a 106 ms graph step, 25 µs per
call for 16 channels; RESULTS.md, 2026-11-27): one block per weight element, each reading its
channel's whole input and output-gradient planes, so every plane is read K·K times (9 or 25) from
L2 or memory, and batching the edges' convs adds channels without removing any of those reads.
The Triton kernel reads each tile once and takes all K·K taps from it (kernels/depthwise_conv.py).

Either way a weight gradient is computed only when the backward pass uses it: an α step's
``autograd.grad(loss, alphas)`` skips it, as PyTorch's own convolution backward does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backend import convert_modules, graph_kernels_enabled
from .conv_taps import live_kernel
from .depthwise_cpu_grads import depthwise_input_grad, depthwise_weight_grad
from .grad_use import grads_used


KERNEL_PARTS = ("all", "weight_grad")


def check_kernel_parts(kernels: str, who: str) -> str:
    """kernels, if it is one of KERNEL_PARTS; else a ValueError naming `who`."""
    if kernels not in KERNEL_PARTS:
        raise ValueError(f"{who}: kernels must be one of {KERNEL_PARTS}, got {kernels!r}")
    return kernels


def depthwise_grads(kernels: str, grad, x, weight, conf, need_input: bool, need_weight: bool,
                    relu_input: bool = False):
    """(dL/dx or None, dL/dweight or None) of a depthwise conv, on kernels "all" (Triton), "weight_grad"
    (PyTorch's input gradient, the Triton weight gradient) or "torch" (PyTorch's gradients, each
    computed as a forward conv where that is the faster on a CPU: ndarts.depthwise_cpu_grads).
    conf: (stride, padding, dilation). relu_input: the conv's input was relu(x) (the input gradient
    reads no input values; the Triton weight gradient applies the ReLU as it reads x, PyTorch's gets
    relu(x) made)."""
    import ndarts_kernels

    if kernels == "all" or (kernels == "weight_grad" and need_weight):
        # one Triton call: the weight gradient where asked, and on "all" the input gradient too
        on_triton = need_input and kernels == "all"
        dx, dw = ndarts_kernels.depthwise_conv_backward(grad, x, weight, *conf, need_input=on_triton,
                                                        need_weight=need_weight, relu_input=relu_input)
        if need_input and not on_triton:
            dx = depthwise_input_grad(grad, x, weight, *conf)
        return dx, dw
    dx = depthwise_input_grad(grad, x, weight, *conf) if need_input else None
    dw = depthwise_weight_grad(grad, F.relu(x) if relu_input else x, weight, *conf) if need_weight else None
    return dx, dw


class _DepthwiseConv(torch.autograd.Function):
    """The depthwise conv on kernels "all" (Triton) or "weight_grad" (PyTorch's forward and input
    gradient, the Triton weight gradient)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, kernels):
        import ndarts_kernels

        ctx.save_for_backward(x, weight)
        ctx.conf, ctx.kernels = (stride, padding, dilation), kernels
        if kernels == "all":
            return ndarts_kernels.depthwise_conv_forward(x, weight, stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (*depthwise_grads(ctx.kernels, grad, x, weight, ctx.conf, *grads_used(ctx, 2)), None, None, None, None)


def depthwise_conv(x, weight, stride: int = 1, padding: int = 0, dilation: int = 1, kernels: str = "all"):
    """Depthwise 2-D convolution (groups = in channels; weight [C·M, 1, K, K]: M outputs per
    channel; no bias) on the Triton kernels; kernels="weight_grad": only its weight gradient there
    (the forward and the input gradient PyTorch's)."""
    return _DepthwiseConv.apply(x, weight, int(stride), int(padding), int(dilation),
                                check_kernel_parts(kernels, "depthwise_conv"))


class _DepthwiseConvOfRelu(torch.autograd.Function):
    """conv(r) for r = relu(y), keeping y (which the BatchNorm before it keeps for its own backward)
    instead of r: r is made again from y in the backward, and only for the weight gradient (a w
    step; an α step needs none): by a ReLU for PyTorch's kernel, as it reads y in the Triton one.
    relu(y) is bitwise the r the fused BatchNorm + ReLU wrote (rounding to the dtype and the ReLU
    commute)."""

    @staticmethod
    def forward(ctx, r, y, weight, conf, kernels):
        import ndarts_kernels

        ctx.save_for_backward(y, weight)
        ctx.conf, ctx.kernels = conf, kernels
        if kernels == "all":
            return ndarts_kernels.depthwise_conv_forward(r, weight, *conf)
        return F.conv2d(r, weight, None, conf[0], conf[1], conf[2], groups=r.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, weight = ctx.saved_tensors
        need_r, _, need_w = grads_used(ctx, 3)
        dr, dw = depthwise_grads(ctx.kernels, grad, y, weight, ctx.conf, need_r, need_w, relu_input=True)
        return dr, None, dw, None, None


def depthwise_conv_of_relu(r: torch.Tensor, y: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(r) for r = relu(y) (y: a tensor the caller keeps alive anyway, not differentiated
    through here), without keeping r for the backward (``_DepthwiseConvOfRelu``). conv: a
    depthwise nn.Conv2d (is_plain_depthwise) or SearchDepthwiseConv2d, whose kernels it runs on."""
    if not (isinstance(conv, SearchDepthwiseConv2d) or is_plain_depthwise(conv)):
        raise ValueError(f"depthwise_conv_of_relu: {conv} is not a depthwise conv the kernels cover")
    if r.shape != y.shape or r.shape[1] != conv.in_channels:
        raise ValueError(f"depthwise_conv_of_relu: r {tuple(r.shape)} and y {tuple(y.shape)} must be alike, with "
                         f"{conv.in_channels} channels")
    kernels = conv.kernels if isinstance(conv, SearchDepthwiseConv2d) and conv._use_kernels(r) else "torch"
    conf = (_square(conv.stride), _square(conv.padding), _square(conv.dilation))
    weight = conv.weight
    if weight.dtype != r.dtype:  # under autocast: the weight cast where autograd sees it, as autocast's own
        weight = weight.to(r.dtype)
    if kernels == "torch":  # PyTorch's kernels compute every tap: cut those that meet only padding (conv_taps)
        weight, (padding, _) = live_kernel(weight, r.shape[-2:], conf[0], conf[1], conf[2])
        conf = (conf[0], padding, conf[2])  # one cut on both axes: the padding stays square
    return _DepthwiseConvOfRelu.apply(r, y.detach(), weight, conf, kernels)


def _square(v) -> int | None:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return v[0] if len(v) == 2 and v[0] == v[1] and isinstance(v[0], int) else None


class SearchDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d for depthwise convolutions, on the Triton kernels where enabled (module docstring)."""

    def __init__(self, *args, backend: str | None = None, kernels: str = "all", **kwargs):
        super().__init__(*args, **kwargs)
        self._setup(backend, kernels)

    def _setup(self, backend, kernels: str = "all"):
        self.backend, self.kernels = backend, check_kernel_parts(kernels, type(self).__name__)
        self._conf = (_square(self.stride), _square(self.padding), _square(self.dilation))

    def _use_kernels(self, x: torch.Tensor) -> bool:
        return self.weight.dtype == x.dtype and graph_kernels_enabled(self.backend, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_kernels(x):
            return super().forward(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected {self.in_channels} channels, got input of shape "
                             f"{tuple(x.shape)}")
        return depthwise_conv(x, self.weight, *self._conf, kernels=self.kernels)


def covers_depthwise(m: nn.Conv2d) -> bool:
    """A depthwise conv the kernels cover (an nn.Conv2d or a subclass): groups = in channels, out
    channels a multiple of them (M per channel: the batched edge convs' first one), square kernel,
    square stride/padding/dilation, no bias, zero padding."""
    return (m.groups == m.in_channels and m.out_channels % m.in_channels == 0
            and m.bias is None
            and m.padding_mode == "zeros" and m.kernel_size[0] == m.kernel_size[1]
            and None not in (_square(m.stride), _square(m.padding), _square(m.dilation)))


def is_plain_depthwise(m: nn.Module) -> bool:
    """A plain nn.Conv2d (not yet converted) that the kernels cover (covers_depthwise)."""
    return type(m) is nn.Conv2d and covers_depthwise(m)


def use_search_depthwise_conv(model: nn.Module, backend: str | None = None, kernels: str = "all") -> nn.Module:
    """Turns every depthwise nn.Conv2d of `model` that the kernels cover into a
    SearchDepthwiseConv2d (in place, same parameters; returns the model); kernels: "all" or
    "weight_grad" (module docstring)."""
    check_kernel_parts(kernels, "use_search_depthwise_conv")  # before any module is converted
    return convert_modules(model, is_plain_depthwise, SearchDepthwiseConv2d, backend, kernels=kernels)

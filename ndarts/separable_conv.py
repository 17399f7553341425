"""A depthwise conv followed by a grouped 1×1 conv, on one fused Triton kernel each way:
``separable_conv``, for the batched sep/dil conv stacks (ndarts.edge_groups).

Every conv stage of a batched stack is dw → pw: dw1 → pw1 for the sep and dil convs, dw2 → pw2 for
the sep convs' second half. Unfused, the depthwise conv's output d is written, read back by the 1×1
conv and kept until the backward for the 1×1 conv's weight gradient. The fused kernels
(``kernels/separable_conv.py``) never write d: the forward makes it in registers, the backward
makes it again from the input, so a stage moves about 5 activation passes per forward+backward
instead of 12, runs 1 kernel forward instead of 2, and keeps one activation less for the
backward. ``SearchNetwork(fused_separable_conv=True)`` turns it on (opt-in: not yet timed on a GPU);
it runs where the other search kernels do (``ndarts.backend.graph_kernels_enabled``). Where the
BatchNorm kernels run too, EdgeGroup runs each stage with its BatchNorms as one Function
(ndarts.separable_stage); ``separable_conv`` is the pair alone, for the other cases.

Weight gradients are computed only when the backward pass uses them (ndarts.grad_use): the α
step's backward runs the 1×1 conv's input gradient and the depthwise one, nothing else.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .backend import graph_kernels_enabled
from .depthwise_conv import _square, covers_depthwise
from .grad_use import grads_used
from .pointwise_conv import covers_pointwise


class _SeparableConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w_dw, w_pw, relu_of, conf):
        import ndarts_kernels

        # relu_of: y with r = relu(y), kept for the backward instead of r (the BatchNorm before
        # keeps y anyway); the backward kernel applies the ReLU as it reads y
        ctx.save_for_backward(r if relu_of is None else relu_of, w_dw, w_pw)
        ctx.conf, ctx.relu = conf, relu_of is not None
        return ndarts_kernels.separable_conv_forward(r, w_dw, w_pw, *conf)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        import ndarts_kernels

        x, w_dw, w_pw = ctx.saved_tensors
        need_r, need_dw, need_pw = grads_used(ctx, 3)
        dr, d_dw, d_pw = ndarts_kernels.separable_conv_backward(
            grad, x, w_dw, w_pw, *ctx.conf, need_input=need_r, need_weight=need_dw or need_pw, relu_input=ctx.relu)
        return dr, d_dw if need_dw else None, d_pw if need_pw else None, None, None


def separable_fits(r: torch.Tensor, dw: nn.Conv2d, pw: nn.Conv2d) -> bool:
    """Whether the fused kernels compute pw(dw(r)): dw depthwise with one output per channel,
    square kernel and geometry, zero padding, no bias; pw 1×1, stride 1, no padding, no bias, at
    most MAX_CHANNELS channels per group; r with dw's channels."""
    from ndarts_kernels.separable_conv import MAX_CHANNELS

    return (r.dim() == 4 and r.shape[1] == dw.in_channels == dw.out_channels == pw.in_channels
            and covers_depthwise(dw) and covers_pointwise(pw) and _square(pw.dilation) == 1
            and pw.in_channels % pw.groups == 0 and pw.out_channels % pw.groups == 0
            and max(pw.in_channels, pw.out_channels) // pw.groups <= MAX_CHANNELS)


def separable_conv(r: torch.Tensor, dw: nn.Conv2d, pw: nn.Conv2d, relu_of: torch.Tensor | None = None) -> torch.Tensor:
    """pw(dw(r)) on the fused kernels (separable_fits must hold). relu_of: y with r = relu(y), a
    tensor the caller keeps alive anyway (not differentiated through here): kept for the backward
    instead of r. Under autocast the weights are cast to r's dtype where autograd sees it."""
    if not separable_fits(r, dw, pw):
        raise ValueError(f"separable_conv: {dw} then {pw} on an input of shape {tuple(r.shape)} is not a "
                         "depthwise + grouped 1×1 pair the fused kernels cover")
    if relu_of is not None and relu_of.shape != r.shape:
        raise ValueError(f"separable_conv: relu_of {tuple(relu_of.shape)} must be shaped like r {tuple(r.shape)}")
    w_dw, w_pw = dw.weight, pw.weight
    if w_dw.dtype != r.dtype:
        w_dw, w_pw = w_dw.to(r.dtype), w_pw.to(r.dtype)
    conf = (_square(dw.stride), _square(dw.padding), _square(dw.dilation))
    return _SeparableConv.apply(r, w_dw, w_pw, None if relu_of is None else relu_of.detach(), conf)


def use_separable(r: torch.Tensor, dw: nn.Conv2d, pw: nn.Conv2d, backend: str | None,
                  like: torch.Tensor | None = None) -> bool:
    """Whether a stack asked to fuse its dw → pw pairs (SearchNetwork(fused_separable_conv=True))
    runs them on the kernels now: where the search kernels run (graph_kernels_enabled), the pair
    fits, and the weights have r's dtype or autocast casts them (as it would for nn.Conv2d).
    like: a tensor shaped like the pair's input, where r is not (a source node the kernels read
    repeated: ndarts.separable_stage)."""
    same = dw.weight.dtype == r.dtype or torch.is_autocast_enabled(r.device.type)
    return same and graph_kernels_enabled(backend, r) and separable_fits(r if like is None else like, dw, pw)

"""A depthwise convolution's gradients on a CPU, computed as depthwise *forward* convolutions.

For a depthwise conv y = conv(x, w) (groups = C, weight [C·M, 1, K_h, K_w]: M outputs per input
channel; stride s, padding p, dilation d) and g = dL/dy:

- the input gradient, at stride 1 and M = 1, is the forward conv of g with the kernel flipped in
  both axes, padded by d·(K − 1) − p (the transposed conv, written as a correlation);
- the weight gradient is

      dw[c·M + m, 0, i, j] = Σ_n Σ_{o_h, o_w} g[n, c·M + m, o_h, o_w] · x_p[n, c, s·o_h + d·i, s·o_w + d·j]

  (x_p: x zero-padded by p): for one sample n and output channel c·M + m, the correlation of
  x_p[n, c] with the plane g[n, c·M + m] as its kernel, dilated by s and read at stride d. That is
  one depthwise forward conv of the N·C·M planes (x repeated M times) as the channels of one
  image, whose first K_h×K_w outputs, summed over n, are dw.

Why: oneDNN (PyTorch's CPU convolutions) runs a depthwise conv's backward on its fast depthwise
kernels only for some geometries. Its input gradient of a dilated kernel, and its weight gradient
of a 5×5 or dilated kernel or of a 3×3 one on a 2×2 map, fall back to its general grouped
convolution (ONEDNN_VERBOSE: ``jit:avx512_core`` instead of ``jit_dw``), 2–40× slower, while its
depthwise forward convolution is fast at every kernel size and dilation. Measured with 1 thread at
batch 64 (benchmarks/RESULTS.md, 2026-12-05, fourth entry), channels_last:
- input gradient, stride 1: faster in 101 of 104 geometries (2×2 to 32×32 maps, 16–256 channels,
  3×3/5×5, dilation 1/2, NCHW and NHWC), e.g. a dilated 3×3 on 4×4×128 1.10 → 0.07 ms and an
  undilated 3×3 on 16×16×64 0.39 → 0.29 ms. The three slower ones are a dilated 5×5 on a 2×2 map,
  all of whose taps but the centre meet only padding, which ndarts.conv_taps cuts to 1×1 first;
- weight gradient: a 5×5 kernel on 8×8×64 maps 1.58 → 0.78 ms and a dilated 3×3 on 4×4×64
  2.43 → 0.18 ms, but an undilated 3×3 on 4×4×64 0.06 → 0.19 ms and anything on 16×16 and larger
  maps slower; ``uses_forward_weight_grad`` takes the forward form only where it was faster.

Both are the same sums of the same products as PyTorch's backward, in another order: fp32 agrees
to a few ulps of the sums' magnitude, float64 to 1e-12 (tests/test_depthwise_cpu_grads.py). The
backward is differentiable (double backward: the exact Hessian-vector products of ndarts.hessian).
The rules were measured on this x86 CPU's oneDNN build; elsewhere they still pick a correct
formulation, just not one timed there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import cpu_conv_forms
from .conv_geometry import output_positions, stored_channels_last
from .conv_geometry import pair as _pair
from .grad_use import grads_used

FORWARD_FORM_DTYPES = (torch.float32, torch.float64)
MAX_OUTPUT_POSITIONS = 64  # Ho·Wo; above it the forward-form weight gradient was the slower (16×16 and up)


def _fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A 4-d fp32/fp64 x on a CPU (ndarts.backend.cpu_conv_forms) and a depthwise weight of its dtype,
    [C·M, 1, K_h, K_w] for its C channels."""
    return (cpu_conv_forms(x) and x.dtype in FORWARD_FORM_DTYPES and weight.dtype == x.dtype and x.dim() == 4
            and weight.dim() == 4 and weight.shape[1] == 1 and weight.shape[0] % x.shape[1] == 0)


def uses_forward_input_grad(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> bool:
    """Whether the input gradient of the depthwise conv of x with `weight` is computed as a forward
    conv (module docstring): on a CPU, fp32/fp64, stride 1, one output per channel (M = 1), and a
    padding of at most d·(K − 1) on each axis (the transposed conv's padding d·(K − 1) − p ≥ 0)."""
    if not _fits(x, weight) or weight.shape[0] != x.shape[1] or _pair(stride) != (1, 1):
        return False
    (k_h, k_w), (p_h, p_w), (d_h, d_w) = weight.shape[-2:], _pair(padding), _pair(dilation)
    return d_h * (k_h - 1) >= p_h and d_w * (k_w - 1) >= p_w


def uses_forward_weight_grad(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> bool:
    """Whether the weight gradient of the depthwise conv of x with `weight` ([C·M, 1, K_h, K_w]) is
    computed as a forward conv (module docstring): on a CPU, fp32/fp64, 2…MAX_OUTPUT_POSITIONS
    output positions, and a kernel oneDNN's depthwise path does not take: for M = 1 one that is
    dilated, larger than 3×3 or larger than the map; for M > 1 (the forward form then reads x M
    times) a dilated one on an NHWC x, larger than 3×3 or with at most 16 output positions (the
    cases measured faster)."""
    if not _fits(x, weight):
        return False
    (k_h, k_w), (d_h, d_w), c, (h, w) = weight.shape[-2:], _pair(dilation), x.shape[1], x.shape[-2:]
    positions = output_positions((h, w), (k_h, k_w), stride, padding, dilation)
    if not 1 < positions <= MAX_OUTPUT_POSITIONS:
        return False
    dilated, large = max(d_h, d_w) > 1, max(k_h, k_w) > 3
    if weight.shape[0] == c:
        return dilated or large or h < k_h or w < k_w
    return stored_channels_last(x) and dilated and (large or positions <= 16)


def input_grad_by_forward_conv(grad: torch.Tensor, weight: torch.Tensor, padding, dilation) -> torch.Tensor:
    """dL/dx of the stride-1 depthwise conv y = conv(x, weight) (weight [C, 1, K_h, K_w]; grad =
    dL/dy) as the forward conv of grad with the flipped kernel (module docstring)."""
    (k_h, k_w), (p_h, p_w), (d_h, d_w) = weight.shape[-2:], _pair(padding), _pair(dilation)
    return F.conv2d(grad, weight.flip(-2, -1), None, 1, (d_h * (k_h - 1) - p_h, d_w * (k_w - 1) - p_w),
                    (d_h, d_w), weight.shape[0])


def weight_grad_by_forward_conv(grad: torch.Tensor, x: torch.Tensor, kernel_hw, stride, padding,
                                dilation) -> torch.Tensor:
    """dL/dw [C·M, 1, K_h, K_w] of the depthwise conv y = conv(x, w) (groups = C; grad = dL/dy,
    [N, C·M, Ho, Wo]) as one depthwise forward conv (module docstring)."""
    n, c, h, w = x.shape
    cm, (ho, wo) = grad.shape[1], grad.shape[-2:]
    m = cm // c
    (k_h, k_w), stride, padding, dilation = _pair(kernel_hw), _pair(stride), _pair(padding), _pair(dilation)
    if grad.shape[0] != n or cm != c * m:
        raise ValueError(f"weight_grad_by_forward_conv: grad {tuple(grad.shape)} does not fit x {tuple(x.shape)}")
    if stored_channels_last(x):
        # [N, H, W, C] in memory → one image of N·C·M channels in NHWC ([H, W, N, C, M] in memory)
        planes = x.permute(2, 3, 0, 1).unsqueeze(-1).expand(h, w, n, c, m).reshape(1, h, w, n * cm)
        planes = planes.permute(0, 3, 1, 2)
    else:
        planes = x.unsqueeze(2).expand(n, c, m, h, w).reshape(1, n * cm, h, w)
    kernels = grad.reshape(n * cm, 1, ho, wo)
    out = F.conv2d(planes, kernels, None, dilation, padding, stride, n * cm)  # ≥ K_h × K_w outputs
    return out[0, :, :k_h, :k_w].reshape(n, cm, k_h, k_w).sum(0).unsqueeze(1)


def depthwise_input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride, padding,
                         dilation) -> torch.Tensor:
    """dL/dx of the depthwise conv of x (groups = x's channels; x's values are not read): by a
    forward conv where uses_forward_input_grad says so (and grad has x's dtype), else by PyTorch's
    convolution backward."""
    if grad.dtype == x.dtype and uses_forward_input_grad(x, weight, stride, padding, dilation):
        return input_grad_by_forward_conv(grad, weight, padding, dilation)
    return torch.ops.aten.convolution_backward(grad, x, weight, None, _pair(stride), _pair(padding), _pair(dilation),
                                               False, [0, 0], x.shape[1], [True, False, False])[0]


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride, padding,
                          dilation) -> torch.Tensor:
    """dL/dweight of the depthwise conv of x (groups = x's channels): by a forward conv where
    uses_forward_weight_grad says so (and grad has x's dtype), else by PyTorch's convolution backward."""
    if grad.dtype == x.dtype and uses_forward_weight_grad(x, weight, stride, padding, dilation):
        return weight_grad_by_forward_conv(grad, x, weight.shape[-2:], stride, padding, dilation).to(weight.dtype)
    return torch.ops.aten.convolution_backward(grad, x, weight, None, _pair(stride), _pair(padding), _pair(dilation),
                                               False, [0, 0], x.shape[1], [False, True, False])[1]


class _DepthwiseConv(torch.autograd.Function):
    """F.conv2d of a depthwise conv; backward: depthwise_input_grad and depthwise_weight_grad, each
    only where the pass uses it. Not once_differentiable: under create_graph the backward's ops are
    recorded (all of them are differentiable)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w = grads_used(ctx, 2)
        dx = depthwise_input_grad(grad, x, weight, *ctx.conf) if need_x else None
        dw = depthwise_weight_grad(grad, x, weight, *ctx.conf) if need_w else None
        return dx, dw, None, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """F.conv2d(x, weight, None, stride, padding, dilation, groups=x.shape[1]) (weight
    [C·M, 1, K_h, K_w], zero padding given as ints), whose gradients are computed as forward convs
    where uses_forward_input_grad / uses_forward_weight_grad say so; elsewhere (or while
    torch.compile traces, or under autocast, which casts F.conv2d's operands) simply F.conv2d."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if (torch.compiler.is_compiling() or not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type)
            or not (x.requires_grad or weight.requires_grad)
            or not (uses_forward_input_grad(x, weight, stride, padding, dilation)
                    or uses_forward_weight_grad(x, weight, stride, padding, dilation))):
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])
    return _DepthwiseConv.apply(x, weight, stride, padding, dilation)

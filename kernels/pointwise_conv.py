"""Triton kernels for the 1×1 (pointwise) convolutions of the DARTS search ops: stride 1, no bias,
G groups (G = E edges in a batched conv stack, ndarts.edge_groups; 1 in a preprocessing conv).

    y[n, g·CO + o, p] = Σ_i w[g·CO + o, i] · x[n, g·CI + i, p]        (p: a pixel of the NCHW plane)

Why: in the graphed search step on the H200 (2026-11-27) the convolutions took ~75 of 106 ms while
moving bytes that take ~17 ms at the memory bandwidth (benchmarks/step_traffic.py); the pointwise
ones are cuDNN grouped convolutions with 16 channels per group, a case cuDNN is not tuned for.
Each of these kernels reads its inputs once and writes its output once.

- forward and input gradient: one kernel. A program computes a [BLOCK_O, BLOCK_P] block of one
  image·group's output as Σ over input-channel blocks of w[BLOCK_O, BLOCK_I] @ in[BLOCK_I, BLOCK_P]
  (tl.dot, fp32 accumulation; TF32 products where PyTorch's convolutions use TF32, its default on
  a GPU: kernels/dot_precision.py). The input gradient is the same product with the
  weight transposed: the launcher passes the weight's strides swapped.
- weight gradient: grid (G · weight tiles, S). Program s sums dy[BLOCK_O, P] @ x[BLOCK_I, P]ᵀ over
  its share of the (image, pixel block) units into fp32 partials [tiles, S, BLOCK_O·BLOCK_I]; a
  fixed-order reduce kernel sums the S partials: bitwise reproducible, no atomics.
Layout: contiguous NCHW. Operands are read in their dtype and accumulated in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dot_precision import conv_dot_precision
from .grid import cdiv, interpreted, next_power_of_2, plane_pointer, split_units

INT32_LIMIT = 2**31 - 1
MAX_BLOCK_C = 64  # channels per block of the weight (the search network's have 16-64)


@triton.jit
def _pw_conv_kernel(
    X, Wt, Y,  # input [N, G·CI, P], weight, output [N, G·CO, P]
    CI, CO, P,
    W_GROUP, W_OUT, W_IN,  # weight element (g, out o, in i) at g·W_GROUP + o·W_OUT + i·W_IN
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr, G: tl.constexpr,
    INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr,  # "tf32" / "ieee" (kernels/dot_precision.py)
):
    ng = tl.program_id(0)  # image · G + group
    g = ng % G
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    p_ok = p < P
    x_base = plane_pointer(X, ng, CI * P, INDEX_64)
    acc = tl.zeros([BLOCK_O, BLOCK_P], dtype=tl.float32)
    for i0 in range(0, CI, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        x = tl.load(x_base + i[:, None] * P + p[None, :], mask=(i < CI)[:, None] & p_ok[None, :], other=0.0)
        w = tl.load(Wt + g * W_GROUP + o[:, None] * W_OUT + i[None, :] * W_IN,
                    mask=(o < CO)[:, None] & (i < CI)[None, :], other=0.0)
        acc += tl.dot(w.to(tl.float32), x.to(tl.float32), input_precision=DOT_PRECISION)
    y_base = plane_pointer(Y, ng, CO * P, INDEX_64)
    tl.store(y_base + o[:, None] * P + p[None, :], acc.to(Y.dtype.element_ty), mask=(o < CO)[:, None] & p_ok[None, :])


@triton.jit
def _pw_conv_wgrad_kernel(
    X, DY, PART,  # input [N, G·CI, P], output gradient [N, G·CO, P], fp32 partials [G·TO·TI, S, BLOCK_O·BLOCK_I]
    CI, CO, P,
    UNITS, PER_PROGRAM, S,  # (image, pixel block) units in all, per program, programs per tile
    G: tl.constexpr, TILES_O: tl.constexpr, TILES_I: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr, INDEX_64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    t = tl.program_id(0)  # g · TILES_O · TILES_I + tile
    s = tl.program_id(1)
    g = t // (TILES_O * TILES_I)
    o = ((t // TILES_I) % TILES_O) * BLOCK_O + tl.arange(0, BLOCK_O)
    i = (t % TILES_I) * BLOCK_I + tl.arange(0, BLOCK_I)
    o_ok = o < CO
    i_ok = i < CI
    blocks = tl.cdiv(P, BLOCK_P)
    acc = tl.zeros([BLOCK_O, BLOCK_I], dtype=tl.float32)  # Σ dy · xᵀ
    u_end = tl.minimum((s + 1) * PER_PROGRAM, UNITS)
    for u in range(s * PER_PROGRAM, u_end):
        ng = (u // blocks) * G + g
        p = (u % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < P
        dy = tl.load(plane_pointer(DY, ng, CO * P, INDEX_64) + o[:, None] * P + p[None, :],
                     mask=o_ok[:, None] & p_ok[None, :], other=0.0)
        x = tl.load(plane_pointer(X, ng, CI * P, INDEX_64) + i[:, None] * P + p[None, :],
                    mask=i_ok[:, None] & p_ok[None, :], other=0.0)
        acc += tl.dot(dy.to(tl.float32), tl.trans(x.to(tl.float32)), input_precision=DOT_PRECISION)
    r = tl.arange(0, BLOCK_O)[:, None] * BLOCK_I + tl.arange(0, BLOCK_I)[None, :]
    tl.store(PART + (t * S + s) * (BLOCK_O * BLOCK_I) + r, acc)


@triton.jit
def _pw_conv_wgrad_reduce_kernel(
    PART, DW,  # fp32 partials [G·TO·TI, S, BLOCK_O·BLOCK_I]; weight gradient [G·CO, CI], the weight's dtype
    CI, CO, S,
    TILES_O: tl.constexpr, TILES_I: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    R_BLOCK: tl.constexpr,  # elements of the tile's row per program (program_id(1): which chunk)
    S_BLOCK: tl.constexpr,
):
    t = tl.program_id(0)
    g = t // (TILES_O * TILES_I)
    r = tl.program_id(1) * R_BLOCK + tl.arange(0, R_BLOCK)  # a chunk of the [BLOCK_O·BLOCK_I] row
    acc = tl.zeros([R_BLOCK], dtype=tl.float32)
    for s0 in range(0, S, S_BLOCK):  # a fixed order: deterministic
        sidx = s0 + tl.arange(0, S_BLOCK)[:, None]
        part = tl.load(PART + (t * S + sidx) * (BLOCK_O * BLOCK_I) + r[None, :], mask=sidx < S, other=0.0)
        acc += tl.sum(part, axis=0)
    o = ((t // TILES_I) % TILES_O) * BLOCK_O + r // BLOCK_I
    i = (t % TILES_I) * BLOCK_I + r % BLOCK_I
    tl.store(DW + (g * CO + o) * CI + i, acc.to(DW.dtype.element_ty), mask=(o < CO) & (i < CI))


# ----------------------------------------------------------------------------- launchers
def _channel_block(c: int) -> int:
    """A block of channels: a power of two, at least 16 (tl.dot's least), at most MAX_BLOCK_C."""
    return min(max(16, next_power_of_2(c)), MAX_BLOCK_C)


def _pixel_block(p: int, *channel_blocks: int) -> int:
    """Pixels per block: the [channels, pixels] tiles of a program hold at most 4 096 elements each
    on a GPU (registers), more in the interpreter (fewer programs, which it runs one by one)."""
    cap = (2**15 if interpreted() else 4096) // max(channel_blocks)
    return max(16, min(next_power_of_2(p), cap))


# Warps per program: 8, so that a thread holds at most 16 elements of each 4 096-element tile. At 4
# the 64-channel tiles of both kernels used all 255 registers of sm_90 (the weight gradient's spilled),
# at 8 they need 64-152 and spill nothing (benchmarks/kernel_resources.py).
WARPS = 8


def check_pointwise_args(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int]:
    """(groups, input channels per group, output channels per group) of a 1×1 convolution."""
    if x.dim() != 4:
        raise ValueError(f"pointwise_conv: expected a 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[2:] != (1, 1) or weight.shape[1] < 1 or x.shape[1] % weight.shape[1]:
        raise ValueError(f"pointwise_conv: expected a weight of shape (G·CO, CI, 1, 1) with CI dividing the "
                         f"input's {x.shape[1]} channels, got {tuple(weight.shape)}")
    groups = x.shape[1] // weight.shape[1]
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"pointwise_conv: {weight.shape[0]} output channels do not split into the "
                         f"{groups} groups of the input's {x.shape[1]} channels")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or weight.dtype != x.dtype:
        raise TypeError(f"pointwise_conv: input and weight must share a float32/float16/bfloat16 dtype, "
                        f"got {x.dtype} and {weight.dtype}")
    return groups, weight.shape[1], weight.shape[0] // groups


def _product(inp, weight, out, groups: int, c_in: int, c_out: int, transposed: bool) -> None:
    """out[n, g·c_out + o] = Σ_i W(g, o, i) · inp[n, g·c_in + i]: W the weight, or (transposed) its
    transpose per group (the input gradient)."""
    n, _, h, w = inp.shape
    p = h * w
    ci, co = weight.shape[1], weight.shape[0] // groups  # the weight's own (in, out) per group
    strides = (1, ci) if transposed else (ci, 1)  # (out, in) strides of W(g, ·, ·)
    bo, bi = _channel_block(c_out), _channel_block(c_in)
    bp = _pixel_block(p, bo, bi)
    index_64 = max(inp.numel(), out.numel()) > INT32_LIMIT
    _pw_conv_kernel[(n * groups, cdiv(p, bp), cdiv(c_out, bo))](
        inp, weight, out, c_in, c_out, p, co * ci, *strides,
        BLOCK_O=bo, BLOCK_I=bi, BLOCK_P=bp, G=groups, INDEX_64=index_64, DOT_PRECISION=conv_dot_precision(),
        num_warps=WARPS)


def pointwise_conv_forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """y = conv2d(x, weight, groups=G): weight [G·CO, CI, 1, 1], G = channels of x // CI."""
    groups, ci, co = check_pointwise_args(x, weight)
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty((x.shape[0], groups * co, *x.shape[2:]), device=x.device, dtype=x.dtype)
    if y.numel():
        _product(x, weight, y, groups, ci, co, transposed=False)
    return y


def pointwise_conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            need_input: bool = True, need_weight: bool = True):
    """(dL/dx or None, dL/dweight or None) of pointwise_conv_forward; dL/dweight in the weight's
    dtype and (contiguous) layout."""
    groups, ci, co = check_pointwise_args(x, weight)
    expected = (x.shape[0], groups * co, *x.shape[2:])
    if tuple(grad.shape) != expected or grad.dtype != x.dtype:
        raise ValueError(f"pointwise_conv: the output gradient must be {expected} {x.dtype}, "
                         f"got {tuple(grad.shape)} {grad.dtype}")
    grad, x, weight = grad.contiguous(), x.contiguous(), weight.contiguous()
    dx = dw = None
    if need_input:
        dx = torch.empty_like(x)
        if dx.numel():
            _product(grad, weight, dx, groups, co, ci, transposed=True)
    if need_weight:
        dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
        n, _, h, w = x.shape
        if not (n and h * w):
            return dx, dw.zero_()
        dw = _weight_grad(grad, x, dw, groups, ci, co)
    return dx, dw


def _weight_grad(grad, x, dw, groups: int, ci: int, co: int) -> torch.Tensor:
    n, _, h, w = x.shape
    p = h * w
    bo, bi = _channel_block(co), _channel_block(ci)
    bp = _pixel_block(p, bo, bi)
    tiles_o, tiles_i = cdiv(co, bo), cdiv(ci, bi)
    tiles = groups * tiles_o * tiles_i
    units = n * cdiv(p, bp)
    per_program, splits = split_units(x, units, tiles)
    index_64 = max(x.numel(), grad.numel()) > INT32_LIMIT
    part = torch.empty((tiles, splits, bo * bi), device=x.device, dtype=torch.float32)
    _pw_conv_wgrad_kernel[(tiles, splits)](
        x, grad, part, ci, co, p, units, per_program, splits, G=groups, TILES_O=tiles_o, TILES_I=tiles_i,
        BLOCK_O=bo, BLOCK_I=bi, BLOCK_P=bp, INDEX_64=index_64, DOT_PRECISION=conv_dot_precision(), num_warps=WARPS)
    # [S_BLOCK, R_BLOCK] partials per step: 32 a thread at most (the whole [32, 64·64] tile at
    # once needed 23 KB of spills a thread on sm_90: benchmarks/kernel_resources.py)
    r_block = min(256, bo * bi)
    _pw_conv_wgrad_reduce_kernel[(tiles, bo * bi // r_block)](
        part, dw, ci, co, splits, TILES_O=tiles_o, TILES_I=tiles_i, BLOCK_O=bo, BLOCK_I=bi, R_BLOCK=r_block,
        S_BLOCK=min(16, max(2, next_power_of_2(splits))), num_warps=4)
    return dw

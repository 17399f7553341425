"""Triton kernels for the depthwise convolutions of the DARTS search ops (groups = channels, no bias).

    y[n, o, oh, ow] = Σ_{i,j} w[o, i, j] · x[n, o // M, oh·s − p + i·d, ow·s − p + j·d]     (zero padding)

with M output channels per input channel (M = 1: the sep/dil convs; M = E: the first depthwise conv
of E batched edges, ndarts.edge_groups).

Why: in the CUDA-graph search step on an H200 the depthwise convolutions took at least 40 % of
the GPU time, and PyTorch's NCHW grad-weight kernel 25 µs per call on 4 MiB tensors
(benchmarks/RESULTS.md, profile of 2026-11-27): it gives few blocks to 16 channels.

- forward: one program per (image·channel plane, output tile); the K×K taps are shifted loads of
  the same input tile (cache hits), accumulated in fp32.
- input gradient: one program per (input plane, input tile), summing its M output planes; for
  stride 2 only the taps that land on an output pixel (t = h + p − i·d divisible by 2) contribute.
- weight gradient: grid (C·M, S): each program sums g·x over its images for all K·K taps into
  fp32 partials [C·M, S, K·K]. It keeps one running product sum per (tap, pixel of its tile) in
  registers, [K·K, TILE]: each tile is one gather of the K·K shifted windows and one multiply-add,
  and the only reductions (over the tile's pixels) come once per program, not K·K per tile. A
  fixed-order reduce kernel over S finishes it, so the result is bitwise reproducible.
Layout: contiguous NCHW; K, stride, dilation are compile-time constants (DARTS: K 3/5, stride
1/2, dilation 1/2).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grid import plane_pointer, split_images

INT32_LIMIT = 2**31 - 1


@triton.jit
def _tile_coords(tile, TILES_W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Row indices [BLOCK_H, 1] and column indices [1, BLOCK_W] of a tile of a plane."""
    rows = (tile // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cols = (tile % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    return rows, cols


@triton.jit
def _load_tap(x_base, oh, ow, out_mask, i: tl.constexpr, j: tl.constexpr, H, W,
              STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr):
    """The input pixels that tap (i, j) meets for the output tile (oh, ow), in fp32 (0 in the padding)."""
    ih = oh * STRIDE - PAD + i * DIL
    iw = ow * STRIDE - PAD + j * DIL
    mask = out_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return tl.load(x_base + ih * W + iw, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dw_conv_fwd_kernel(
    X, Wt, Y,  # input [N, C, H, W], weight [C·M, 1, K, K], output [N, C·M, OH, OW]
    C, H, W, OH, OW,
    TILES_W,  # output tiles per row of tiles
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, M: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INDEX_64: tl.constexpr,
):
    plane = tl.program_id(0)  # output plane n·C·M + c
    c = plane % (C * M)
    oh, ow = _tile_coords(tl.program_id(1), TILES_W, BLOCK_H, BLOCK_W)
    out_mask = (oh < OH) & (ow < OW)
    x_base = plane_pointer(X, (plane // (C * M)) * C + c // M, H * W, INDEX_64)
    y_base = plane_pointer(Y, plane, OH * OW, INDEX_64)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            x = _load_tap(x_base, oh, ow, out_mask, i, j, H, W, STRIDE, PAD, DIL)
            acc += x * tl.load(Wt + c * K * K + i * K + j).to(tl.float32)
    tl.store(y_base + oh * OW + ow, acc.to(Y.dtype.element_ty), mask=out_mask)


@triton.jit
def _dw_conv_bwd_input_kernel(
    G, Wt, DX,  # output gradient [N, C·M, OH, OW], weight, input gradient [N, C, H, W]
    C, H, W, OH, OW,
    TILES_W,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, M: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INDEX_64: tl.constexpr,
):
    plane = tl.program_id(0)  # input plane n·C + c
    c = plane % C
    h, w = _tile_coords(tl.program_id(1), TILES_W, BLOCK_H, BLOCK_W)
    in_mask = (h < H) & (w < W)
    dx_base = plane_pointer(DX, plane, H * W, INDEX_64)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for m in tl.static_range(M):  # the M output channels of input channel c
        g_base = plane_pointer(G, plane * M + m, OH * OW, INDEX_64)
        w_base = Wt + (c * M + m) * K * K
        for i in tl.static_range(K):
            th = h + PAD - i * DIL  # = oh·STRIDE for the output row this tap came from
            th_ok = th >= 0
            th = tl.where(th_ok, th, 0)
            oh = th // STRIDE
            row_ok = th_ok & (oh * STRIDE == th) & (oh < OH)
            for j in tl.static_range(K):
                tw = w + PAD - j * DIL
                tw_ok = tw >= 0
                tw = tl.where(tw_ok, tw, 0)
                ow = tw // STRIDE
                mask = in_mask & row_ok & tw_ok & (ow * STRIDE == tw) & (ow < OW)
                g = tl.load(g_base + oh * OW + ow, mask=mask, other=0.0).to(tl.float32)
                acc += g * tl.load(w_base + i * K + j).to(tl.float32)
    tl.store(dx_base + h * W + w, acc.to(DX.dtype.element_ty), mask=in_mask)


@triton.jit
def _dw_conv_bwd_weight_kernel(
    X, G, PART,  # input, output gradient, fp32 partials [C·M, S, KK_BLOCK]
    N, C, H, W, OH, OW,
    ROWS, S,  # images per program, programs per output channel
    TILES_H, TILES_W,
    K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, M: tl.constexpr,
    KK_BLOCK: tl.constexpr,  # power of two ≥ K·K
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INDEX_64: tl.constexpr,
    RELU_INPUT: tl.constexpr,  # the conv's input is relu(X): applied as X is loaded
):
    c = tl.program_id(0)  # output channel
    s = tl.program_id(1)
    taps = tl.arange(0, KK_BLOCK)[:, None]  # [KK, 1]: tap i·K + j
    tap_ok = taps < K * K
    di = (taps // K) * DIL
    dj = (taps % K) * DIL
    pix = tl.arange(0, BLOCK_H * BLOCK_W)[None, :]  # [1, P]: the tile's pixels, row-major
    acc = tl.zeros([KK_BLOCK, BLOCK_H * BLOCK_W], dtype=tl.float32)  # Σ g·x per (tap, pixel)
    n_end = tl.minimum((s + 1) * ROWS, N)
    for n in range(s * ROWS, n_end):
        x_base = plane_pointer(X, n * C + c // M, H * W, INDEX_64)
        g_base = plane_pointer(G, n * C * M + c, OH * OW, INDEX_64)
        for t in range(TILES_H * TILES_W):
            oh = (t // TILES_W) * BLOCK_H + pix // BLOCK_W
            ow = (t % TILES_W) * BLOCK_W + pix % BLOCK_W
            out_mask = (oh < OH) & (ow < OW)
            g = tl.load(g_base + oh * OW + ow, mask=out_mask, other=0.0).to(tl.float32)  # [1, P]
            ih = oh * STRIDE - PAD + di  # [KK, P]: the input pixel each tap meets
            iw = ow * STRIDE - PAD + dj
            mask = out_mask & tap_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = tl.load(x_base + ih * W + iw, mask=mask, other=0.0).to(tl.float32)  # K·K shifted windows
            if RELU_INPUT:
                x = tl.maximum(x, 0.0)
            acc += x * g
    tl.store(PART + (c * S + s) * KK_BLOCK + tl.arange(0, KK_BLOCK), tl.sum(acc, axis=1))


@triton.jit
def _dw_conv_weight_reduce_kernel(
    PART,  # fp32 [C·M, S, KK_BLOCK] from _dw_conv_bwd_weight_kernel
    DW,  # weight gradient [C·M, 1, K, K], contiguous, in the weight's dtype
    S,
    KK: tl.constexpr,  # K·K
    KK_BLOCK: tl.constexpr,
    S_BLOCK: tl.constexpr,  # power of two ≥ S
):
    c = tl.program_id(0)
    sidx = tl.arange(0, S_BLOCK)[:, None]
    taps = tl.arange(0, KK_BLOCK)[None, :]
    part = tl.load(PART + (c * S + sidx) * KK_BLOCK + taps, mask=sidx < S, other=0.0)
    # a fixed-order reduction over the S partials: deterministic
    dw = tl.sum(part, axis=0)
    taps = tl.arange(0, KK_BLOCK)
    tl.store(DW + c * KK + taps, dw.to(DW.dtype.element_ty), mask=taps < KK)


# ----------------------------------------------------------------------------- launchers
def _blocks(rows: int, cols: int) -> tuple[int, int]:
    from . import INTERPRETED

    cap = 64 if INTERPRETED else 32  # 32×32 = 1024 elements per program on a GPU
    return min(triton.next_power_of_2(rows), cap), min(triton.next_power_of_2(cols), cap)


def _weight_tile(rows: int, cols: int, kk_block: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W) of the weight-gradient kernel's tile: its [K·K, tile] accumulators live in
    registers, so at most 8 192 of them per program on a GPU (K = 5: a 16×16 tile)."""
    from . import INTERPRETED

    cap = 2**16 if INTERPRETED else 8192
    bw = min(triton.next_power_of_2(cols), 32)
    bh = min(triton.next_power_of_2(rows), max(1, cap // (kk_block * bw)))
    return bh, bw


def conv_output_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    """A convolution's output size along one axis (PyTorch's rule)."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def check_depthwise_args(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int):
    if x.dim() != 4:
        raise ValueError(f"depthwise_conv: expected a 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if (weight.dim() != 4 or weight.shape[0] < c or weight.shape[0] % max(c, 1) or weight.shape[1] != 1
            or weight.shape[2] != weight.shape[3]):
        raise ValueError(f"depthwise_conv: expected a weight of shape ({c}·M, 1, K, K) for {c} channels "
                         f"(M outputs per channel), got {tuple(weight.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or weight.dtype != x.dtype:
        raise TypeError(f"depthwise_conv: input and weight must share a float32/float16/bfloat16 dtype, "
                        f"got {x.dtype} and {weight.dtype}")
    k = weight.shape[2]
    oh, ow = (conv_output_size(s, k, stride, padding, dilation) for s in x.shape[2:])
    if oh < 1 or ow < 1:
        raise ValueError(f"depthwise_conv: input {tuple(x.shape)} is too small for a {k}x{k} kernel with "
                         f"dilation {dilation} and padding {padding}")
    return k, oh, ow


def depthwise_conv_forward(x, weight, stride: int, padding: int, dilation: int) -> torch.Tensor:
    k, oh, ow = check_depthwise_args(x, weight, stride, padding, dilation)
    x, weight = x.contiguous(), weight.contiguous()
    n, c, h, w = x.shape
    co = weight.shape[0]
    y = torch.empty((n, co, oh, ow), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    bh, bw = _blocks(oh, ow)
    tiles_w = triton.cdiv(ow, bw)
    index_64 = max(x.numel(), y.numel()) > INT32_LIMIT
    _dw_conv_fwd_kernel[(n * co, triton.cdiv(oh, bh) * tiles_w)](
        x, weight, y, c, h, w, oh, ow, tiles_w, K=k, STRIDE=stride, PAD=padding, DIL=dilation, M=co // c,
        BLOCK_H=bh, BLOCK_W=bw, INDEX_64=index_64, num_warps=4)
    return y


def depthwise_conv_backward(grad, x, weight, stride: int, padding: int, dilation: int,
                            need_input: bool = True, need_weight: bool = True, relu_input: bool = False):
    """(dL/dx or None, dL/dweight or None), dL/dweight in the weight's dtype. relu_input: the conv's
    input was relu(x); the weight gradient applies the ReLU as it reads x (the input gradient reads
    no input values)."""
    k, oh, ow = check_depthwise_args(x, weight, stride, padding, dilation)
    grad, weight = grad.contiguous(), weight.contiguous()
    n, c, h, w = x.shape
    co = weight.shape[0]
    index_64 = max(x.numel(), grad.numel()) > INT32_LIMIT
    dx = dw = None
    if need_input:  # reads no x: x may be any tensor of its shape (a meta tensor)
        dx = torch.empty(x.shape, device=grad.device, dtype=x.dtype)
        bh, bw = _blocks(h, w)
        tiles_w = triton.cdiv(w, bw)
        if dx.numel():
            _dw_conv_bwd_input_kernel[(n * c, triton.cdiv(h, bh) * tiles_w)](
                grad, weight, dx, c, h, w, oh, ow, tiles_w, K=k, STRIDE=stride, PAD=padding, DIL=dilation,
                M=co // c, BLOCK_H=bh, BLOCK_W=bw, INDEX_64=index_64, num_warps=4)
    if need_weight:
        x = x.contiguous()
        rows, splits = split_images(x, n, co)
        kk_block = triton.next_power_of_2(k * k)
        bh, bw = _weight_tile(oh, ow, kk_block)
        if not (n and c):
            return dx, torch.zeros_like(weight)
        # every program writes its whole row of partials (taps ≥ K·K as 0): no zero fill needed
        part = torch.empty((co, splits, kk_block), device=x.device, dtype=torch.float32)
        _dw_conv_bwd_weight_kernel[(co, splits)](
            x, grad, part, n, c, h, w, oh, ow, rows, splits, triton.cdiv(oh, bh), triton.cdiv(ow, bw),
            K=k, STRIDE=stride, PAD=padding, DIL=dilation, M=co // c, KK_BLOCK=kk_block, BLOCK_H=bh,
            BLOCK_W=bw, INDEX_64=index_64, RELU_INPUT=bool(relu_input), num_warps=8)  # 8 warps: ≤ 32 accumulators a thread
        # the S partials summed into the weight's dtype and (contiguous) layout in one kernel: a
        # gradient with the parameter's strides, which autograd accumulates without another copy
        dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
        _dw_conv_weight_reduce_kernel[(co,)](part, dw, splits, KK=k * k, KK_BLOCK=kk_block,
                                             S_BLOCK=max(2, triton.next_power_of_2(splits)), num_warps=1)
    return dx, dw

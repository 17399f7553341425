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
  ``depthwise_pairs_input_grad``: the input gradients of up to four convs of one shape and stride
  (a conv stage's pairs, kernels/separable_conv.py) in one launch, each conv's geometry a constant;
  where they all read relu(h_s) repeated per edge, one program per plane of h_s sums the convs and
  the source's edges and applies the ReLU's mask (dL/dh_s written, nothing per conv); where each
  conv's input is relu(y) of a deferred BatchNorm (y = (z − mean)·rstd), each program also writes
  that BatchNorm's backward partial sums over its tile (Σg, Σg·y, g masked by y > 0): the
  BatchNorm's backward then reads neither the gradient nor z to make them.
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

from .grid import cdiv, interpreted, next_power_of_2, pad_pointers, pick_pointer, plane_pointer, split_images

INT32_LIMIT = 2**31 - 1
MAX_CONVS = 4  # convs of one depthwise_pairs_input_grad launch (its W0 … W3 and K0 … K3)


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
def _input_grad_taps(acc, g_base, w_base, h, w, in_mask, OH, OW,
                     K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr):
    """acc + the input gradient of one output plane (g_base) through its K×K taps (w_base) at the
    input pixels (h, w): for stride 2 only the taps that land on an output pixel contribute."""
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
    return acc


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
        acc = _input_grad_taps(acc, plane_pointer(G, plane * M + m, OH * OW, INDEX_64), Wt + (c * M + m) * K * K,
                               h, w, in_mask, OH, OW, K, STRIDE, PAD, DIL)
    tl.store(dx_base + h * W + w, acc.to(DX.dtype.element_ty), mask=in_mask)


@triton.jit
def _pair_input_grad(acc, pair, p: tl.constexpr, ALL: tl.constexpr, G, plane, PLANES, Wt, ch, h, w, in_mask, OH, OW,
                     K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
                     INDEX_64: tl.constexpr):
    """acc + conv p's input gradient of its output plane `plane` (channel ch): always with ALL, else
    only in the programs of that conv (pair == p)."""
    if ALL:
        acc = _input_grad_taps(acc, plane_pointer(G, p * PLANES + plane, OH * OW, INDEX_64), Wt + ch * K * K,
                               h, w, in_mask, OH, OW, K, STRIDE, PAD, DIL)
    else:
        if pair == p:
            acc = _input_grad_taps(acc, plane_pointer(G, p * PLANES + plane, OH * OW, INDEX_64), Wt + ch * K * K,
                                   h, w, in_mask, OH, OW, K, STRIDE, PAD, DIL)
    return acc


@triton.jit
def _pairs_input_grad(acc, pair, ALL: tl.constexpr, G, plane, PLANES, W0, W1, W2, W3, ch, h, w, in_mask, OH, OW,
                      K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
                      PAD0: tl.constexpr, PAD1: tl.constexpr, PAD2: tl.constexpr, PAD3: tl.constexpr,
                      DIL0: tl.constexpr, DIL1: tl.constexpr, DIL2: tl.constexpr, DIL3: tl.constexpr,
                      STRIDE: tl.constexpr, PAIRS: tl.constexpr, INDEX_64: tl.constexpr):
    acc = _pair_input_grad(acc, pair, 0, ALL, G, plane, PLANES, W0, ch, h, w, in_mask, OH, OW, K0, STRIDE, PAD0, DIL0,
                           INDEX_64)
    if PAIRS > 1:
        acc = _pair_input_grad(acc, pair, 1, ALL, G, plane, PLANES, W1, ch, h, w, in_mask, OH, OW, K1, STRIDE, PAD1,
                               DIL1, INDEX_64)
    if PAIRS > 2:
        acc = _pair_input_grad(acc, pair, 2, ALL, G, plane, PLANES, W2, ch, h, w, in_mask, OH, OW, K2, STRIDE, PAD2,
                               DIL2, INDEX_64)
    if PAIRS > 3:
        acc = _pair_input_grad(acc, pair, 3, ALL, G, plane, PLANES, W3, ch, h, w, in_mask, OH, OW, K3, STRIDE, PAD3,
                               DIL3, INDEX_64)
    return acc


@triton.jit
def _relu_norm_sums(acc, X0, X1, X2, X3, M0, M1, M2, M3, R0, R1, R2, R3, SUMS, pair, plane, N, GC, H, W, h, w,
                    in_mask, DTYPE: tl.constexpr, PAIRS: tl.constexpr, INDEX_64: tl.constexpr):
    """Σg and Σg·y over this program's tile, written to its slot of SUMS [PAIRS, GC, N·tiles, 2]: the
    backward sums of the BatchNorm whose output y = (z − mean)·rstd, through a ReLU, is conv `pair`'s
    input (z = X_pair), with g = acc (dL/d relu(y), rounded as it is written) where y > 0: what
    kernels/batch_norm.py's statistics kernel would sum from the written gradient."""
    ch = plane % GC
    z = tl.load(plane_pointer(pick_pointer(pair, X0, X1, X2, X3, X3, X3, X3, X3, PAIRS), plane, H * W, INDEX_64)
                + h * W + w, mask=in_mask, other=0.0).to(tl.float32)
    mean = tl.load(pick_pointer(pair, M0, M1, M2, M3, M3, M3, M3, M3, PAIRS) + ch)
    rstd = tl.load(pick_pointer(pair, R0, R1, R2, R3, R3, R3, R3, R3, PAIRS) + ch)
    y = (z - mean) * rstd
    g = tl.where(in_mask & (y > 0.0), acc.to(DTYPE).to(tl.float32), 0.0)
    tiles = tl.num_programs(1)
    slot = ((pair * GC + ch) * N + plane // GC) * tiles + tl.program_id(1)
    tl.store(SUMS + slot * 2, tl.sum(tl.sum(g, axis=1), axis=0))
    tl.store(SUMS + slot * 2 + 1, tl.sum(tl.sum(g * y, axis=1), axis=0))


@triton.jit(do_not_specialize=("N", "C", "G", "G0"))
def _dw_pairs_bwd_input_kernel(
    GD,  # the convs' output gradients [PAIRS, N, G·C, OH, OW]
    W0, W1, W2, W3,  # conv p's weight [G·C, 1, K_p, K_p]
    X0, X1,  # with SOURCES: the two source nodes [N, C, H, W] (groups < G0 read X0), for the ReLU's mask
    Z0, Z1, Z2, Z3,  # with BN_SUMS: conv p's input is relu((Z_p − MEAN_p)·RSTD_p), Z_p [N, G·C, H, W]
    MEAN0, MEAN1, MEAN2, MEAN3, RSTD0, RSTD1, RSTD2, RSTD3,  # with BN_SUMS: fp32 [G·C]
    DX,  # out: SOURCES [sources, N, C, H, W] (Σ over each source's groups and the convs); else [PAIRS, N, G·C, H, W]
    SUMS,  # out, with BN_SUMS: fp32 [PAIRS, G·C, N·tiles, 2], that BatchNorm's backward sums (_relu_norm_sums)
    N, C, G, G0, H, W, OH, OW, TILES_W,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
    PAD0: tl.constexpr, PAD1: tl.constexpr, PAD2: tl.constexpr, PAD3: tl.constexpr,
    DIL0: tl.constexpr, DIL1: tl.constexpr, DIL2: tl.constexpr, DIL3: tl.constexpr,
    STRIDE: tl.constexpr, PAIRS: tl.constexpr, SOURCES: tl.constexpr, RELU: tl.constexpr, BN_SUMS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INDEX_64: tl.constexpr,
):
    plane = tl.program_id(0)  # SOURCES: (source·N + n)·C + c; else n·G·C + group·C + c
    h, w = _tile_coords(tl.program_id(1), TILES_W, BLOCK_H, BLOCK_W)
    in_mask = (h < H) & (w < W)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    planes = N * G * C  # of one conv's output gradient
    if SOURCES:  # every conv of every group (edge) that reads this source's plane
        src = plane // (N * C)
        n = (plane // C) % N
        c = plane % C
        first = tl.where(src == 0, 0, G0)
        last = tl.where(src == 0, G0, G)
        for e in range(first, last):
            acc = _pairs_input_grad(acc, 0, True, GD, (n * G + e) * C + c, planes, W0, W1, W2, W3, e * C + c,
                                    h, w, in_mask, OH, OW, K0, K1, K2, K3, PAD0, PAD1, PAD2, PAD3,
                                    DIL0, DIL1, DIL2, DIL3, STRIDE, PAIRS, INDEX_64)
        if RELU:  # torch's relu backward: 0 where x <= 0, the gradient elsewhere (NaN included)
            X = X0
            if src != 0:
                X = X1
            x = tl.load(plane_pointer(X, n * C + c, H * W, INDEX_64) + h * W + w, mask=in_mask, other=0.0)
            acc = tl.where(x <= 0, 0.0, acc)
        out = plane
    else:
        pair = tl.program_id(2)
        acc = _pairs_input_grad(acc, pair, False, GD, plane, planes, W0, W1, W2, W3, plane % (G * C),
                                h, w, in_mask, OH, OW, K0, K1, K2, K3, PAD0, PAD1, PAD2, PAD3,
                                DIL0, DIL1, DIL2, DIL3, STRIDE, PAIRS, INDEX_64)
        out = pair * planes + plane
        if BN_SUMS:
            _relu_norm_sums(acc, Z0, Z1, Z2, Z3, MEAN0, MEAN1, MEAN2, MEAN3, RSTD0, RSTD1, RSTD2, RSTD3, SUMS, pair,
                            plane, N, G * C, H, W, h, w, in_mask, DX.dtype.element_ty, PAIRS, INDEX_64)
    tl.store(plane_pointer(DX, out, H * W, INDEX_64) + h * W + w, acc.to(DX.dtype.element_ty), mask=in_mask)


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
    cap = 64 if interpreted() else 32  # 32×32 = 1024 elements per program on a GPU
    return min(next_power_of_2(rows), cap), min(next_power_of_2(cols), cap)


def _block_warps(bh: int, bw: int) -> int:
    """Warps of a program over a [BLOCK_H, BLOCK_W] block of pixels (the forward's, the input
    gradient's): four pixels a thread at most. At eight (a 32×32 block, 4 warps) a 5×5 conv needs
    250 registers a thread and the four-conv input gradient spills; at four, 76-196 and no spill
    (benchmarks/kernel_resources.py, sm_90)."""
    return max(4, min(8, bh * bw // 128))


def _weight_tile(rows: int, cols: int, kk_block: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W) of the weight-gradient kernel's tile: its [K·K, tile] accumulators live in
    registers, so at most 8 192 of them per program on a GPU (K = 5: a 16×16 tile)."""
    cap = 2**16 if interpreted() else 8192
    bw = min(next_power_of_2(cols), 32)
    bh = min(next_power_of_2(rows), max(1, cap // (kk_block * bw)))
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
    tiles_w = cdiv(ow, bw)
    index_64 = max(x.numel(), y.numel()) > INT32_LIMIT
    _dw_conv_fwd_kernel[(n * co, cdiv(oh, bh) * tiles_w)](
        x, weight, y, c, h, w, oh, ow, tiles_w, K=k, STRIDE=stride, PAD=padding, DIL=dilation, M=co // c,
        BLOCK_H=bh, BLOCK_W=bw, INDEX_64=index_64, num_warps=_block_warps(bh, bw))
    return y


def depthwise_pairs_input_grad(grad: torch.Tensor, like: torch.Tensor, weights, geometry, sources=None,
                               relu: bool = False, relu_norm=None, sums_out: list | None = None) -> list:
    """The input gradients of P ≤ MAX_CONVS depthwise convs (one output per channel) of one shape and stride,
    in one launch. grad: their output gradients, one [P, N, G·C, OH, OW] tensor; like: a tensor
    shaped like their inputs [N, G·C, H, W] (any device: its shape is all that is read); weights:
    conv p's [G·C, 1, K_p, K_p]; geometry: (stride, padding, dilation) per conv.
    Returns the P input gradients, or with sources = ([h_0, h_1], counts) the input they all read
    being relu(h_s) repeated (groups 0 … counts[0] - 1 read h_0, the rest h_1; relu: apply the
    ReLU's mask), the gradient of each source h_s: Σ over its groups and the P convs, in fp32 before
    one rounding (kernels/relu_repeat.py's backward, without the P gradients of the repeated input).
    relu_norm (not with sources; needs sums_out): per conv (z, mean, rstd), its input being
    relu((z − mean)·rstd) of a deferred BatchNorm (z [N, G·C, H, W], mean and rstd fp32 [G·C]); the
    returned gradients are of that ReLU (unmasked), and sums_out gets per conv that BatchNorm's
    backward sums, fp32 [G·C, P, 2] (P partials of Σg and Σg·y per channel, g the written gradient
    masked by y > 0: batch_norms_backward(sums=…) of the BatchNorm with its ReLU)."""
    pairs = len(weights)
    if not 1 <= pairs <= MAX_CONVS or len(geometry) != pairs or grad.dim() != 5 or grad.shape[0] != pairs:
        raise ValueError(f"depthwise_pairs_input_grad: 1..{MAX_CONVS} convs with a weight and a geometry each and "
                         f"their gradients stacked [P, N, C, OH, OW]; got {pairs} weights, {len(geometry)} "
                         f"geometries, gradient {tuple(grad.shape)}")
    n, gc, h, w = like.shape
    oh, ow = grad.shape[3:]
    shape_only = torch.empty(like.shape, device="meta", dtype=grad.dtype)  # what check_depthwise_args reads
    for wt, (stride, padding, dilation) in zip(weights, geometry):
        _, *out = check_depthwise_args(shape_only, wt, stride, padding, dilation)
        if wt.shape[0] != gc or tuple(out) != (oh, ow) or stride != geometry[0][0] or grad.shape[1:3] != (n, gc):
            raise ValueError(f"depthwise_pairs_input_grad: conv {tuple(wt.shape)} with stride {stride} does not "
                             f"map {tuple(like.shape)} to the gradients' {tuple(grad.shape[1:])}")
    grad = grad.contiguous()
    weights = [wt.contiguous() for wt in weights]
    ks = [wt.shape[2] for wt in weights] + [1] * (MAX_CONVS - pairs)
    pads = [g[1] for g in geometry] + [0] * (MAX_CONVS - pairs)
    dils = [g[2] for g in geometry] + [1] * (MAX_CONVS - pairs)
    if sources is not None:
        xs, counts = sources
        c = xs[0].shape[1]
        if sum(counts) * c != gc or len(xs) != len(counts) or any(x.shape != (n, c, h, w) for x in xs):
            raise ValueError(f"depthwise_pairs_input_grad: sources {[tuple(x.shape) for x in xs]} read "
                             f"{list(counts)} times do not make {tuple(like.shape)}")
        dx = torch.empty((len(xs), n, c, h, w), device=grad.device, dtype=grad.dtype)
        grid_planes, group0, groups, channels, x0, x1 = len(xs) * n * c, counts[0], gc // c, c, xs[0], xs[-1]
    else:
        dx = torch.empty((pairs, n, gc, h, w), device=grad.device, dtype=grad.dtype)
        grid_planes, group0, groups, channels, x0, x1 = n * gc, 0, 1, gc, grad, grad
    bh, bw = _blocks(h, w)
    tiles = cdiv(h, bh) * cdiv(w, bw)
    norm_args, sums = _relu_norm_args(relu_norm, sums_out, sources, pairs, like, grad, tiles)
    if dx.numel():
        _dw_pairs_bwd_input_kernel[(grid_planes, tiles, 1 if sources is not None else pairs)](
            grad, *weights, *[weights[-1]] * (MAX_CONVS - pairs), x0, x1, *norm_args, dx,
            sums if sums is not None else dx, n, channels, groups, group0, h, w, oh, ow,
            cdiv(w, bw), *ks, *pads, *dils, STRIDE=geometry[0][0], PAIRS=pairs, SOURCES=sources is not None,
            RELU=bool(relu), BN_SUMS=sums is not None, BLOCK_H=bh, BLOCK_W=bw,
            INDEX_64=max(grad.numel(), dx.numel()) > INT32_LIMIT, num_warps=_block_warps(bh, bw))
    elif sums is not None:  # no pixel: nothing to sum
        sums.zero_()
    if sums is not None:
        sums_out.extend(sums.unbind(0))
    return list(dx.unbind(0))


def _relu_norm_args(relu_norm, sums_out, sources, pairs: int, like, grad, tiles: int):
    """(the kernel's Z, MEAN, RSTD pointers, the sums buffer [P, G·C, N·tiles, 2] or None) of
    depthwise_pairs_input_grad's relu_norm, checked."""
    if relu_norm is None:
        return (grad,) * (3 * MAX_CONVS), None
    n, gc = like.shape[:2]
    if sums_out is None or sources is not None or len(relu_norm) != pairs or any(
            z.shape != like.shape or z.dtype != grad.dtype or not z.is_contiguous() or z.device != grad.device
            or any(v.shape != (gc,) or v.dtype != torch.float32 or not v.is_contiguous() for v in (mean, rstd))
            for z, mean, rstd in relu_norm):
        raise ValueError(f"depthwise_pairs_input_grad: relu_norm takes per conv a contiguous z "
                         f"{tuple(like.shape)} {grad.dtype} and its BatchNorm's fp32 mean and rstd [{gc}], with a "
                         f"sums_out list and no sources")
    zs, means, rstds = zip(*relu_norm)
    sums = torch.empty((pairs, gc, n * tiles, 2), device=grad.device, dtype=torch.float32)
    return (*pad_pointers(list(zs), MAX_CONVS), *pad_pointers(list(means), MAX_CONVS),
            *pad_pointers(list(rstds), MAX_CONVS)), sums


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
        tiles_w = cdiv(w, bw)
        if dx.numel():
            _dw_conv_bwd_input_kernel[(n * c, cdiv(h, bh) * tiles_w)](
                grad, weight, dx, c, h, w, oh, ow, tiles_w, K=k, STRIDE=stride, PAD=padding, DIL=dilation,
                M=co // c, BLOCK_H=bh, BLOCK_W=bw, INDEX_64=index_64, num_warps=_block_warps(bh, bw))
    if need_weight:
        x = x.contiguous()
        rows, splits = split_images(x, n, co)
        kk_block = next_power_of_2(k * k)
        bh, bw = _weight_tile(oh, ow, kk_block)
        if not (n and c):
            return dx, torch.zeros_like(weight)
        # every program writes its whole row of partials (taps ≥ K·K as 0): no zero fill needed
        part = torch.empty((co, splits, kk_block), device=x.device, dtype=torch.float32)
        _dw_conv_bwd_weight_kernel[(co, splits)](
            x, grad, part, n, c, h, w, oh, ow, rows, splits, cdiv(oh, bh), cdiv(ow, bw),
            K=k, STRIDE=stride, PAD=padding, DIL=dilation, M=co // c, KK_BLOCK=kk_block, BLOCK_H=bh,
            BLOCK_W=bw, INDEX_64=index_64, RELU_INPUT=bool(relu_input), num_warps=8)  # 8 warps: ≤ 32 accumulators a thread
        # the S partials summed into the weight's dtype and (contiguous) layout in one kernel: a
        # gradient with the parameter's strides, which autograd accumulates without another copy
        dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
        _dw_conv_weight_reduce_kernel[(co,)](part, dw, splits, KK=k * k, KK_BLOCK=kk_block,
                                             S_BLOCK=max(2, next_power_of_2(splits)), num_warps=1)
    return dx, dw

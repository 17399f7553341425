"""Triton kernels for a depthwise convolution followed by a grouped 1×1 convolution, fused: one
half of a DARTS sep conv (or a dil conv's convolutions) for the E edges of a batched conv stack.

    d[n, g·C + c, q]  = Σ_{i,j} wd[g·C + c, i, j] · x[n, g·C + c, q·s − p + (i, j)·dil]   (zero padding)
    z[n, g·CO + o, q] = Σ_c wp[g·CO + o, c] · d[n, g·C + c, q]                           (q: an output pixel)

(G groups = E edges, ndarts.edge_groups; C channels per group in, CO out). Unfused, PyTorch writes d
to memory, reads it back for the 1×1 conv and keeps it alive until the backward for the 1×1 conv's
weight gradient: per layer pair 4 passes over an activation forward (read x, write d, read d,
write z) and 8 backward (the 1×1 conv's input and weight gradients read its output gradient and d;
the depthwise conv's read d's gradient and x). Here d never reaches memory:

- forward: a program computes a [CO, pixels] block of one image·group: d for its C channels from
  the K·K shifted windows of x (cache hits), then z = wp_g @ d (tl.dot, fp32 accumulation; TF32
  products where PyTorch's convolutions use TF32, its default on a GPU: kernels/dot_precision.py).
  Passes: read x, write z.
- backward, weight and 1×1-input gradient in one kernel: grid (G, S); program s loops over its
  share of (image, pixel block) units: gd = wp_gᵀ @ gz (d's gradient, written for the depthwise
  input gradient), d made again from x's windows, and in fp32 partials Σ gz·dᵀ (the 1×1 weight
  gradient) and, per tap, Σ gd·window (the depthwise weight gradient), reduced over S by a
  fixed-order kernel (one launch for both weights): bitwise reproducible, no atomics. Passes: read
  gz and x, write gd.
- the depthwise input gradient from gd: ``kernels/depthwise_conv.py``'s kernel (read gd, write dx).
A pass that uses no weight gradient (the α step) reads no x: gd only.
A BatchNorm after the pair (every stage of the stacks has one) can be folded into the backward
(``bn``: kernels/batch_norm.py's BatchNormGrad): the kernel then reads the gradient of the
BatchNorm's output and its output y, and makes z's gradient on the fly (one pass less than writing
z's gradient and reading it back, and one launch less).
relu_input: the conv's input is relu(x): the kernels apply it as they read x, so a caller can keep
x (a BatchNorm's output, which its backward keeps anyway) instead of relu(x).
Source inputs (``counts``): a batched stack's first stage reads relu(h_s) of its group's source
nodes repeated once per edge (ndarts.edge_groups.repeat_sources); the kernels read each group's
plane from its source h_s itself (the ReLU on load), so the repeated tensor is never made nor kept.
The forward can also write the per-channel moments of z for the BatchNorm that follows (``moments``).
Layout: contiguous NCHW. The kernel size, stride, padding, dilation, the ReLU and the group count are
runtime arguments, not constants: a search step runs ~26 geometries of these pairs (sep/dil 3×3/5×5,
stride 1/2, with and without the ReLU, at three widths), and compiled as constants they were ~80
specialisations of kernels that take seconds each to compile (a bare GPU machine compiles them on
first use); this way one per channel/pixel block size, dtype and pass.
Several pairs in one launch (``separable_pairs_*``, up to MAX_PAIRS): the pairs of one stage of an
EdgeGroup's stacks (sep 3×3/5×5, dil 3×3/5×5: one input shape, one stride, one output size) differ
only in their weights and geometry, so the grid's third axis picks the pair, each program its
pair's pointers and (K, padding, dilation) (pack_geometry): one launch of each kernel per stage
instead of one per pair. Their depthwise input gradients are one more launch
(depthwise_conv.depthwise_pairs_input_grad), which with source inputs sums each source's edges and
the pairs and applies the ReLU's mask: dL/dh_s written, no per-pair gradient of the repeated input.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .batch_norm import BatchNormGrad
from .depthwise_conv import (
    INT32_LIMIT,
    MAX_CONVS,
    check_depthwise_args,
    depthwise_conv_backward,
    depthwise_pairs_input_grad,
)
from .dot_precision import conv_dot_precision
from .grid import cdiv, interpreted, next_power_of_2, pad_pointers, pick_pointer, plane_pointer, split_units
from .moments import row_moments, store_moments

MAX_CHANNELS = 64  # channels per group (the search network's are 8-64)
MAX_PAIRS = MAX_CONVS  # pairs of one launch (a stage of the search's stacks: sep 3×3/5×5, dil 3×3/5×5)


def pack_geometry(k: int, padding: int, dilation: int, bn_relu: bool = False, bn_lazy: bool = False) -> int:
    """One runtime int per pair of a launch: its kernel size, padding, dilation, its folded
    BatchNorm's ReLU and whether that BatchNorm's y is made from z on load (_pair_geometry unpacks it)."""
    if not (0 < k < 256 and 0 <= padding < 256 and 0 < dilation < 256):
        raise ValueError(f"separable_conv: kernel size {k}, padding {padding}, dilation {dilation} out of range")
    return k | padding << 8 | dilation << 16 | int(bn_relu) << 24 | int(bn_lazy) << 25


@triton.jit
def _of_pair(pair, P0, P1, P2, P3, PAIRS: tl.constexpr):
    """P_pair of a launch's PAIRS pointers (or scalars)."""
    return pick_pointer(pair, P0, P1, P2, P3, P3, P3, P3, P3, PAIRS)


@triton.jit
def _pair_geometry(pair, GEO0, GEO1, GEO2, GEO3, PAIRS: tl.constexpr):
    """(K, PAD, DIL, BN_RELU, BN_LAZY) of pair `pair` (pack_geometry)."""
    geo = _of_pair(pair, GEO0, GEO1, GEO2, GEO3, PAIRS)
    return geo & 255, (geo >> 8) & 255, (geo >> 16) & 255, (geo >> 24) & 1, (geo >> 25) & 1


@triton.jit
def _input_statistics(pair, M0, M1, M2, M3, R0, R1, R2, R3, g, C, cin, c_ok, NORM_INPUT: tl.constexpr,
                      PAIRS: tl.constexpr):
    """([BLOCK_C, 1] mean, rstd) of the BatchNorm whose input the pair reads with NORM_INPUT (its
    producer wrote z, not y: y = (z − mean)·rstd on load); zeros, nothing read, without."""
    mean = tl.zeros(cin.shape, dtype=tl.float32)[:, None]
    rstd = tl.zeros(cin.shape, dtype=tl.float32)[:, None]
    if NORM_INPUT:
        mean = tl.load(_of_pair(pair, M0, M1, M2, M3, PAIRS) + g * C + cin, mask=c_ok, other=0.0)[:, None]
        rstd = tl.load(_of_pair(pair, R0, R1, R2, R3, PAIRS) + g * C + cin, mask=c_ok, other=0.0)[:, None]
    return mean, rstd


@triton.jit
def _window(x_rows, c_ok, oh, ow, p_ok, i, j, H, W, STRIDE, PAD, DIL, RELU_INPUT, in_mean, in_rstd,
            NORM_INPUT: tl.constexpr):
    """[channels, pixels]: the input each output pixel's tap (i, j) meets, fp32, 0 in the padding
    (with NORM_INPUT normalised first: (x − mean)·rstd inside the image)."""
    ih = oh * STRIDE - PAD + i * DIL
    iw = ow * STRIDE - PAD + j * DIL
    ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    inside = c_ok[:, None] & ok[None, :]
    x = tl.load(x_rows + (ih * W + iw)[None, :], mask=inside, other=0.0).to(tl.float32)
    if NORM_INPUT:
        x = tl.where(inside, (x - in_mean) * in_rstd, 0.0)
    if RELU_INPUT != 0:
        x = tl.maximum(x, 0.0)
    return x


@triton.jit
def _input_rows(X0, X1, X2, X3, pair, G0, n, g, G, C, cin, HW, PAIRS: tl.constexpr, SOURCES: tl.constexpr,
                INDEX_64: tl.constexpr):
    """[BLOCK_C, 1] pointers to the planes of the input that group g of image n reads: pair `pair`'s
    x [N, G·C, H, W] (X_pair), or with SOURCES the group's source node, [N, C, H, W] (X0 for the
    groups below G0, X1 for the rest, whatever the pair): the repeated input of
    ndarts.edge_groups.repeat_sources, read without being made."""
    if SOURCES:
        base = X0
        plane = n * C + cin
        if g >= G0:
            base = X1
    else:
        base = _of_pair(pair, X0, X1, X2, X3, PAIRS)
        plane = (n * G + g) * C + cin
    return plane_pointer(base, plane, HW, INDEX_64)[:, None]


@triton.jit
def _group_weights(WDW, WPW, g, C, CO, K, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr):
    """Group g's channel indices/masks, its depthwise taps' base pointer [C] and its 1×1 weight
    [BLOCK_O, BLOCK_C] in fp32."""
    cin = tl.arange(0, BLOCK_C)
    c_ok = cin < C
    o = tl.arange(0, BLOCK_O)
    o_ok = o < CO
    taps = WDW + (g * C + cin) * (K * K)
    wp = tl.load(WPW + (g * CO + o[:, None]) * C + cin[None, :], mask=o_ok[:, None] & c_ok[None, :], other=0.0)
    return cin, c_ok, o, o_ok, taps, wp.to(tl.float32)


@triton.jit
def _depthwise_block(x_rows, taps, c_ok, oh, ow, p_ok, H, W, K, STRIDE, PAD, DIL, RELU_INPUT, in_mean, in_rstd,
                     NORM_INPUT: tl.constexpr, gd, acc_d, tap_col,
                     BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, TAP_SUMS: tl.constexpr):
    """(d, acc_d): the depthwise conv's [channels, pixels] block from the K·K windows of x, and with
    TAP_SUMS acc_d plus, per tap, Σ over the pixels of gd·window (the depthwise weight gradient)."""
    d = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for i in range(K):
        for j in range(K):
            x = _window(x_rows, c_ok, oh, ow, p_ok, i, j, H, W, STRIDE, PAD, DIL, RELU_INPUT, in_mean, in_rstd,
                        NORM_INPUT)
            d += tl.load(taps + i * K + j, mask=c_ok, other=0.0).to(tl.float32)[:, None] * x
            if TAP_SUMS:
                acc_d += tl.where(tap_col == i * K + j, tl.sum(gd * x, axis=1)[:, None], 0.0)
    return d, acc_d


# the geometry and the counts are not specialised on (Triton would compile a variant for each value 1
# and each multiple of 16 among them); the image sizes are, for aligned loads and stores
_GENERIC = ("G", "C", "CO", "STRIDE", "RELU_INPUT", "GEO0", "GEO1", "GEO2", "GEO3")


@triton.jit(do_not_specialize=_GENERIC + ("G0",))
def _sep_conv_fwd_kernel(
    X0, X1, X2, X3,  # pair p's input X_p [N, G·C, H, W]; with SOURCES X0, X1: the groups' two source nodes
    WDW0, WDW1, WDW2, WDW3, WPW0, WPW1, WPW2, WPW3,  # pair p's weights [G·C, 1, K, K], [G·CO, C, 1, 1]
    Z0, Z1, Z2, Z3,  # pair p's output [N, G·CO, OH, OW] (one tensor each: each may outlive the others)
    G0,  # with SOURCES: groups 0 … G0 - 1 read X0, the others X1 [N, C, H, W]
    MOM,  # with MOMENTS: fp32 [PAIRS, G·CO, N·blocks, 3], each program's (count, mean, M2) of z per channel
    IN_MEAN0, IN_MEAN1, IN_MEAN2, IN_MEAN3, IN_RSTD0, IN_RSTD1, IN_RSTD2, IN_RSTD3,  # with NORM_INPUT: [G·C] each
    G, C, CO, H, W, OH, OW,
    GEO0, GEO1, GEO2, GEO3, STRIDE, RELU_INPUT,  # runtime values: one compiled kernel for every geometry (module docstring)
    PAIRS: tl.constexpr, MOMENTS: tl.constexpr, SOURCES: tl.constexpr,
    NORM_INPUT: tl.constexpr,  # X_p is a BatchNorm's input z: its y = (z − mean)·rstd made on load
    BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, INDEX_64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # the 1×1 products' ("tf32" / "ieee": kernels/dot_precision.py)
):
    ng = tl.program_id(0)  # image · G + group
    g = ng % G
    pair = tl.program_id(2)
    K, PAD, DIL, _, _ = _pair_geometry(pair, GEO0, GEO1, GEO2, GEO3, PAIRS)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < OH * OW
    oh = p // OW
    ow = p % OW
    cin, c_ok, o, o_ok, taps, wp = _group_weights(_of_pair(pair, WDW0, WDW1, WDW2, WDW3, PAIRS),
                                                  _of_pair(pair, WPW0, WPW1, WPW2, WPW3, PAIRS),
                                                  g, C, CO, K, BLOCK_C, BLOCK_O)
    x_rows = _input_rows(X0, X1, X2, X3, pair, G0, ng // G, g, G, C, cin, H * W, PAIRS, SOURCES, INDEX_64)
    in_mean, in_rstd = _input_statistics(pair, IN_MEAN0, IN_MEAN1, IN_MEAN2, IN_MEAN3, IN_RSTD0, IN_RSTD1, IN_RSTD2,
                                         IN_RSTD3, g, C, cin, c_ok, NORM_INPUT, PAIRS)
    d, _ = _depthwise_block(x_rows, taps, c_ok, oh, ow, p_ok, H, W, K, STRIDE, PAD, DIL, RELU_INPUT, in_mean, in_rstd,
                            NORM_INPUT, 0.0, 0.0, 0, BLOCK_C, BLOCK_P, TAP_SUMS=False)
    Z = _of_pair(pair, Z0, Z1, Z2, Z3, PAIRS)
    z = tl.dot(wp, d, input_precision=DOT_PRECISION).to(Z.dtype.element_ty)
    z_rows = plane_pointer(Z, ng * CO + o, OH * OW, INDEX_64)[:, None]
    tl.store(z_rows + p[None, :], z, mask=o_ok[:, None] & p_ok[None, :])
    if MOMENTS:  # the BatchNorm's statistics of z as stored (kernels/batch_norm.py merges them)
        count, mean, m2 = row_moments(z.to(tl.float32), tl.broadcast_to(p_ok[None, :], (BLOCK_O, BLOCK_P)))
        index = (((pair * G + g) * CO + o) * (tl.num_programs(0) // G * tl.num_programs(1))
                 + (ng // G) * tl.num_programs(1) + tl.program_id(1))
        store_moments(MOM, index, count, mean, m2, mask=o_ok)


@triton.jit
def _bn_coefficients(BN_SUMS, BN_RSTD, BN_S, bn_inv_count, ch, o_ok, S_CHUNK: tl.constexpr):
    """(rstd, mean g, mean g·y) [BLOCK_O] of the folded BatchNorm's channels ch: its S partial sums
    added in a fixed order (the same in every program)."""
    sum_g = tl.zeros(ch.shape, dtype=tl.float32)
    sum_gy = tl.zeros(ch.shape, dtype=tl.float32)
    for s0 in range(0, BN_S, S_CHUNK):
        sidx = s0 + tl.arange(0, S_CHUNK)
        where = (ch[:, None] * BN_S + sidx[None, :]) * 2
        ok = o_ok[:, None] & (sidx < BN_S)[None, :]
        sum_g += tl.sum(tl.load(BN_SUMS + where, mask=ok, other=0.0), axis=1)
        sum_gy += tl.sum(tl.load(BN_SUMS + where + 1, mask=ok, other=0.0), axis=1)
    rstd = tl.load(BN_RSTD + ch, mask=o_ok, other=0.0)
    return rstd, sum_g * bn_inv_count, sum_gy * bn_inv_count


@triton.jit(do_not_specialize=_GENERIC + ("G0", "UNITS", "PER_PROGRAM", "S", "BN_S0", "BN_S1", "BN_S2", "BN_S3"))
def _sep_conv_bwd_kernel(
    X0, X1, X2, X3,  # inputs, as the forward's
    WDW0, WDW1, WDW2, WDW3, WPW0, WPW1, WPW2, WPW3,  # weights, as the forward's
    GZ0, GZ1, GZ2, GZ3,  # pair p's z gradient [N, G·CO, OH, OW]
    GD,  # d's gradient [PAIRS, N, G·C, OH, OW] (out)
    PART,  # fp32 partials [PAIRS, G, S, BLOCK_O·BLOCK_C + BLOCK_C·KK_BLOCK]: the 1×1 weight's, then the depthwise one's
    Y0, Y1, Y2, Y3,  # with FOLD_BN: pair p's BatchNorm output [N, G·CO, OH, OW]
    SUMS0, SUMS1, SUMS2, SUMS3, RSTD0, RSTD1, RSTD2, RSTD3,  # its Σg/Σg·y [G·CO, BN_S_p, 2] and rstd [G·CO]
    MEAN0, MEAN1, MEAN2, MEAN3,  # its mean [G·CO], where the pair's BN_LAZY bit says Y_p holds z (y made on load)
    IN_MEAN0, IN_MEAN1, IN_MEAN2, IN_MEAN3, IN_RSTD0, IN_RSTD1, IN_RSTD2, IN_RSTD3,  # as the forward's
    G0,  # with SOURCES: as the forward's
    G, C, CO, H, W, OH, OW,
    UNITS, PER_PROGRAM, S,  # (image, pixel block) units per group, per program, programs per group
    GEO0, GEO1, GEO2, GEO3, STRIDE, RELU_INPUT,  # the geometry (and the folded BatchNorm's ReLU) per pair
    BN_S0, BN_S1, BN_S2, BN_S3,  # pair p's BatchNorm: its partial sums per channel (their makers differ)
    bn_inv_count,  # 1 / (N·OH·OW)
    NEED_INPUT: tl.constexpr, NEED_WEIGHT: tl.constexpr,
    FOLD_BN: tl.constexpr,  # GZ is the gradient of a BatchNorm of z (of its ReLU): applied on load
    PAIRS: tl.constexpr, SOURCES: tl.constexpr, NORM_INPUT: tl.constexpr,
    KK_BLOCK: tl.constexpr,  # power of two ≥ every pair's K·K
    BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, INDEX_64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # as the forward's
):
    g = tl.program_id(0)
    s = tl.program_id(1)
    pair = tl.program_id(2)
    K, PAD, DIL, BN_RELU, BN_LAZY = _pair_geometry(pair, GEO0, GEO1, GEO2, GEO3, PAIRS)
    GZ = _of_pair(pair, GZ0, GZ1, GZ2, GZ3, PAIRS)
    cin, c_ok, o, o_ok, taps, wp = _group_weights(_of_pair(pair, WDW0, WDW1, WDW2, WDW3, PAIRS),
                                                  _of_pair(pair, WPW0, WPW1, WPW2, WPW3, PAIRS),
                                                  g, C, CO, K, BLOCK_C, BLOCK_O)
    if FOLD_BN:
        Y = _of_pair(pair, Y0, Y1, Y2, Y3, PAIRS)
        bn_rstd, mean_g, mean_gy = _bn_coefficients(_of_pair(pair, SUMS0, SUMS1, SUMS2, SUMS3, PAIRS),
                                                    _of_pair(pair, RSTD0, RSTD1, RSTD2, RSTD3, PAIRS),
                                                    _of_pair(pair, BN_S0, BN_S1, BN_S2, BN_S3, PAIRS),
                                                    bn_inv_count, g * CO + o, o_ok, 16)
        bn_mean = tl.load(_of_pair(pair, MEAN0, MEAN1, MEAN2, MEAN3, PAIRS) + g * CO + o, mask=o_ok & (BN_LAZY != 0),
                          other=0.0)
    in_mean, in_rstd = _input_statistics(pair, IN_MEAN0, IN_MEAN1, IN_MEAN2, IN_MEAN3, IN_RSTD0, IN_RSTD1, IN_RSTD2,
                                         IN_RSTD3, g, C, cin, c_ok, NORM_INPUT, PAIRS)
    wp_t = tl.trans(wp)  # [BLOCK_C, BLOCK_O]
    tap_col = tl.arange(0, KK_BLOCK)[None, :]
    acc_p = tl.zeros([BLOCK_O, BLOCK_C], dtype=tl.float32)  # Σ gz · dᵀ
    acc_d = tl.zeros([BLOCK_C, KK_BLOCK], dtype=tl.float32)  # Σ gd · window, per tap
    blocks = tl.cdiv(OH * OW, BLOCK_P)
    images = UNITS // blocks
    u_end = tl.minimum((s + 1) * PER_PROGRAM, UNITS)
    for u in range(s * PER_PROGRAM, u_end):
        ng = (u // blocks) * G + g
        p = (u % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < OH * OW
        z_ok = o_ok[:, None] & p_ok[None, :]
        gz = tl.load(plane_pointer(GZ, ng * CO + o, OH * OW, INDEX_64)[:, None] + p[None, :],
                     mask=z_ok, other=0.0).to(tl.float32)
        if FOLD_BN:  # the BatchNorm's backward (kernels/batch_norm.py), z's gradient made here
            y = tl.load(plane_pointer(Y, ng * CO + o, OH * OW, INDEX_64)[:, None] + p[None, :],
                        mask=z_ok, other=0.0).to(tl.float32)
            if BN_LAZY != 0:  # Y holds z: y = (z − mean)·rstd
                y = (y - bn_mean[:, None]) * bn_rstd[:, None]
            if BN_RELU != 0:
                gz = tl.where(y > 0.0, gz, 0.0)
            gz = tl.where(z_ok, bn_rstd[:, None] * (gz - mean_g[:, None] - y * mean_gy[:, None]), 0.0)
        gd = tl.dot(wp_t, gz, input_precision=DOT_PRECISION)  # [BLOCK_C, BLOCK_P]
        if NEED_INPUT:
            tl.store(plane_pointer(GD, (pair * images * G + ng) * C + cin, OH * OW, INDEX_64)[:, None] + p[None, :],
                     gd.to(GD.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])
        if NEED_WEIGHT:
            oh = p // OW
            ow = p % OW
            x_rows = _input_rows(X0, X1, X2, X3, pair, G0, ng // G, g, G, C, cin, H * W, PAIRS, SOURCES, INDEX_64)
            d, acc_d = _depthwise_block(x_rows, taps, c_ok, oh, ow, p_ok, H, W, K, STRIDE, PAD, DIL, RELU_INPUT,
                                        in_mean, in_rstd, NORM_INPUT, gd, acc_d, tap_col, BLOCK_C, BLOCK_P,
                                        TAP_SUMS=True)
            acc_p += tl.dot(gz, tl.trans(d), input_precision=DOT_PRECISION)
    if NEED_WEIGHT:
        row = PART + ((pair * G + g) * S + s) * (BLOCK_O * BLOCK_C + BLOCK_C * KK_BLOCK)
        tl.store(row + tl.arange(0, BLOCK_O)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :], acc_p)
        tl.store(row + BLOCK_O * BLOCK_C + tl.arange(0, BLOCK_C)[:, None] * KK_BLOCK + tap_col, acc_d)


@triton.jit(do_not_specialize=("S", "G", "C", "CO", "GEO0", "GEO1", "GEO2", "GEO3"))
def _sep_conv_reduce_kernel(
    PART,  # fp32 [PAIRS, G, S, R] from _sep_conv_bwd_kernel, R = BLOCK_O·BLOCK_C + BLOCK_C·KK_BLOCK
    DPW0, DPW1, DPW2, DPW3,  # pair p's weight gradients [G·CO, C] and [G·C, K·K], contiguous, in the weights' dtype
    DDW0, DDW1, DDW2, DDW3,
    S, G, C, CO, GEO0, GEO1, GEO2, GEO3,
    PAIRS: tl.constexpr, KK_BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
    R_BLOCK: tl.constexpr, S_BLOCK: tl.constexpr,
):
    pg = tl.program_id(0)  # pair · G + group
    pair = pg // G
    g = pg % G
    K, _, _, _, _ = _pair_geometry(pair, GEO0, GEO1, GEO2, GEO3, PAIRS)
    KK = K * K
    DPW = _of_pair(pair, DPW0, DPW1, DPW2, DPW3, PAIRS)
    DDW = _of_pair(pair, DDW0, DDW1, DDW2, DDW3, PAIRS)
    r = tl.program_id(1) * R_BLOCK + tl.arange(0, R_BLOCK)  # a chunk of the row
    R = BLOCK_O * BLOCK_C + BLOCK_C * KK_BLOCK  # constexpr
    acc = tl.zeros([R_BLOCK], dtype=tl.float32)
    for s0 in range(0, S, S_BLOCK):  # a fixed order: deterministic
        sidx = s0 + tl.arange(0, S_BLOCK)[:, None]
        part = tl.load(PART + (pg * S + sidx) * R + r[None, :], mask=(sidx < S) & (r[None, :] < R), other=0.0)
        acc += tl.sum(part, axis=0)
    # the 1×1 weight's [BLOCK_O, BLOCK_C] block, then the depthwise one's [BLOCK_C, KK_BLOCK]
    is_pw = r < BLOCK_O * BLOCK_C
    o = r // BLOCK_C
    ci = r % BLOCK_C
    tl.store(DPW + (g * CO + o) * C + ci, acc.to(DPW.dtype.element_ty), mask=is_pw & (o < CO) & (ci < C))
    rd = tl.where(is_pw, 0, r - BLOCK_O * BLOCK_C)
    cd = rd // KK_BLOCK
    tap = rd % KK_BLOCK
    tl.store(DDW + (g * C + cd) * KK + tap, acc.to(DDW.dtype.element_ty),
             mask=(~is_pw) & (r < R) & (cd < C) & (tap < KK))


# ----------------------------------------------------------------------------- launchers
def _block(c: int) -> int:
    """Channels of a block: a power of two, at least 16 (tl.dot's least)."""
    return max(16, next_power_of_2(c))


def _pixel_block(p: int, channels: int, cap: int) -> int:
    """Pixels per block: [channels, pixels] tiles of at most `cap` elements on a GPU (registers);
    larger in the interpreter (fewer programs, which it runs one by one)."""
    if interpreted():
        cap = 2**15
    return max(16, min(next_power_of_2(p), cap // channels))


def check_separable_args(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
                         dilation: int) -> tuple[int, int, int, int, int]:
    """(groups, channels per group in, out, OH, OW) of a depthwise conv (one output per channel)
    followed by a grouped 1×1 conv; a ValueError/TypeError naming what does not fit."""
    k, oh, ow = check_depthwise_args(x, w_dw, stride, padding, dilation)
    if w_dw.shape[0] != x.shape[1]:
        raise ValueError(f"separable_conv: the depthwise weight must have one output per input channel "
                         f"({x.shape[1]}), got shape {tuple(w_dw.shape)}")
    if w_pw.dim() != 4 or w_pw.shape[2:] != (1, 1) or w_pw.shape[1] < 1 or x.shape[1] % w_pw.shape[1]:
        raise ValueError(f"separable_conv: expected a 1×1 weight (G·CO, C, 1, 1) with C dividing the input's "
                         f"{x.shape[1]} channels, got {tuple(w_pw.shape)}")
    c = w_pw.shape[1]
    groups = x.shape[1] // c
    if w_pw.shape[0] % groups:
        raise ValueError(f"separable_conv: {w_pw.shape[0]} output channels do not split into {groups} groups")
    co = w_pw.shape[0] // groups
    if max(c, co) > MAX_CHANNELS:
        raise ValueError(f"separable_conv: at most {MAX_CHANNELS} channels per group, got {c} in, {co} out")
    if w_pw.dtype != x.dtype:
        raise TypeError(f"separable_conv: the 1×1 weight must be {x.dtype} like the input, got {w_pw.dtype}")
    return groups, c, co, oh, ow


def _input(x, counts):
    """(X0, X1, G0, like): the input pointers a pair's kernels read and a tensor shaped like the
    input they read, [N, G·C, H, W] (a meta tensor for sources). x: that input; or, with counts, the
    list of (one or two) source nodes [N, C, H, W], source s read by counts[s] consecutive groups, as
    if repeated (ndarts.edge_groups.repeat_sources) but never made."""
    if counts is None:
        x = x.contiguous()
        return x, x, 0, x
    xs, counts = list(x), list(counts)
    if not 1 <= len(xs) <= 2 or len(counts) != len(xs) or min(counts) < 1:
        raise ValueError(f"separable_conv: one or two source inputs with an edge count each, got {len(xs)} "
                         f"inputs and counts {counts}")
    first = xs[0]
    if any(t.dim() != 4 or t.shape != first.shape or t.dtype != first.dtype or t.device != first.device for t in xs):
        raise ValueError(f"separable_conv: the source inputs must be alike 4-D tensors, got "
                         f"{[(tuple(t.shape), t.dtype, str(t.device)) for t in xs]}")
    n, c, h, w = first.shape
    like = torch.empty((n, sum(counts) * c, h, w), device="meta", dtype=first.dtype)
    return first.contiguous(), xs[-1].contiguous(), counts[0], like


class _Launch(NamedTuple):
    """What the kernels of one launch of P pairs take besides the gradients."""

    xs: list  # X0 … X3: the pairs' inputs, or (with counts) the one or two source nodes, padded
    g0: int  # groups read from X0 with sources
    like: torch.Tensor  # shaped like the input every pair reads, [N, G·C, H, W]
    w_dws: list  # padded to MAX_PAIRS
    w_pws: list
    geos: list  # pack_geometry per pair, padded
    norms: list  # IN_MEAN0 … IN_RSTD3: the pairs' input statistics (stand-ins without input_norm)
    sizes: tuple  # (groups, c, co, oh, ow)
    stride: int
    pairs: int
    kk_block: int  # power of two ≥ every pair's K·K


def _launch(xs, w_dws, w_pws, geometry, counts, bns=None, input_norm=None) -> _Launch:
    """Checks P pairs of one launch: alike inputs (or one list of sources), outputs of one size, one
    stride; geometry: (stride, padding, dilation) per pair; bns: their folds (BatchNormGrad) or
    None; input_norm: per pair the (mean, rstd) [G·C] of the BatchNorm whose input it reads, or None."""
    pairs = len(w_dws)
    if not 1 <= pairs <= MAX_PAIRS or len(w_pws) != pairs or len(geometry) != pairs \
            or (counts is None and len(xs) != pairs):
        raise ValueError(f"separable_conv: 1..{MAX_PAIRS} pairs, each with an input (or shared sources), two "
                         f"weights and a geometry; got {len(xs)} inputs, {len(w_dws)} + {len(w_pws)} weights, "
                         f"{len(geometry)} geometries")
    if counts is None:
        inputs = [_input(x, None)[0] for x in xs]
        like, g0 = inputs[0], 0
    else:
        x0, x1, g0, like = _input(xs, counts)
        inputs = [x0, x1]
    sizes = None
    for i, (w_dw, w_pw, (stride, padding, dilation)) in enumerate(zip(w_dws, w_pws, geometry)):
        x = inputs[i] if counts is None else like
        if counts is None and (x.shape != like.shape or x.dtype != like.dtype or x.device != like.device):
            raise ValueError(f"separable_conv: the pairs of one launch need alike inputs, got {tuple(x.shape)} "
                             f"{x.dtype} beside {tuple(like.shape)} {like.dtype}")
        got = check_separable_args(x, w_dw, w_pw, stride, padding, dilation)
        if sizes is not None and (got != sizes or stride != geometry[0][0]):
            raise ValueError(f"separable_conv: the pairs of one launch need one stride and outputs of one size, "
                             f"got (groups, C, CO, OH, OW) {got} stride {stride} beside {sizes} stride {geometry[0][0]}")
        sizes = got
    ks = [w.shape[2] for w in w_dws]
    folds = bns or [None] * pairs
    geos = [pack_geometry(k, p, d, bn is not None and bn.relu, bn is not None and bn.mean is not None)
            for k, (_, p, d), bn in zip(ks, geometry, folds)]
    if input_norm is not None:
        if counts is not None or len(input_norm) != pairs or any(
                t.shape != (sizes[0] * sizes[1],) or t.dtype != torch.float32 or not t.is_contiguous()
                or t.device != like.device for stats in input_norm for t in stats):
            raise ValueError(f"separable_conv: input_norm takes per pair (mean, rstd), contiguous fp32 "
                             f"[{sizes[0] * sizes[1]}] on {like.device}, and no source inputs")
        norms = [*pad_pointers([m for m, _ in input_norm], MAX_PAIRS), *pad_pointers([r for _, r in input_norm],
                                                                                     MAX_PAIRS)]
    else:
        norms = [w_pws[0]] * (2 * MAX_PAIRS)  # stand-ins, never read
    return _Launch(pad_pointers(inputs, MAX_PAIRS), g0, like, pad_pointers([w.contiguous() for w in w_dws], MAX_PAIRS),
                   pad_pointers([w.contiguous() for w in w_pws], MAX_PAIRS), pad_pointers(geos, MAX_PAIRS), norms,
                   sizes, geometry[0][0], pairs, next_power_of_2(max(k * k for k in ks)))


# (elements of a [channels, pixels] tile, warps per program) on a GPU: the forward's, the backward's
# (its five live tiles: smaller ones). Chosen so that no compiled variant of the search step spills
# registers on sm_90 (benchmarks/kernel_resources.py; at (4096, 4) and (2048, 4) the 64-channel tiles
# used all 255 registers and spilled up to 1.3 and 2.5 KB a thread), not yet timed:
# test_bench_separable_conv.py times other pairs beside them (its tile sweep) in the same GPU run.
FORWARD_TILE, BACKWARD_TILE = (4096, 8), (1024, 8)


def separable_pairs_forward(xs, w_dws, w_pws, geometry, relu_input: bool = False, moments: bool = False, counts=None,
                            tile: tuple[int, int] | None = None, input_norm=None):
    """Up to MAX_PAIRS depthwise → 1×1 pairs of one stage in one launch: (the pairs' z, a list of
    [N, G·CO, OH, OW] tensors; with moments, their partial moments as
    separable_conv_forward's, else None). xs: one input per pair (alike), or with counts the
    source nodes every pair reads; geometry: (stride, padding, dilation) per pair (one stride);
    relu_input: every pair reads relu(x). input_norm: per pair (mean, rstd) fp32 [G·C]: x is a
    BatchNorm's input z whose y was never written; the pairs read y = (z − mean)·rstd (then its ReLU)."""
    launch = _launch(xs, w_dws, w_pws, geometry, counts, input_norm=input_norm)
    groups, c, co, oh, ow = launch.sizes
    n, _, h, w = launch.like.shape
    x0 = launch.xs[0]
    zs = [torch.empty((n, groups * co, oh, ow), device=x0.device, dtype=x0.dtype) for _ in range(launch.pairs)]
    bc, bo = _block(c), _block(co)
    elems, warps = tile or FORWARD_TILE
    bp = _pixel_block(oh * ow, max(bc, bo), elems)
    blocks = cdiv(oh * ow, bp)
    mom = torch.empty((launch.pairs, groups * co, n * blocks, 3) if moments else (1,), device=x0.device,
                      dtype=torch.float32)
    if zs[0].numel():
        _sep_conv_fwd_kernel[(n * groups, blocks, launch.pairs)](
            *launch.xs, *launch.w_dws, *launch.w_pws, *pad_pointers(zs, MAX_PAIRS), launch.g0, mom, *launch.norms, groups, c, co, h, w, oh, ow,
            *launch.geos, launch.stride, int(relu_input), PAIRS=launch.pairs, MOMENTS=moments,
            SOURCES=counts is not None, NORM_INPUT=input_norm is not None,
            BLOCK_C=bc, BLOCK_O=bo, BLOCK_P=bp, INDEX_64=max(launch.like.numel(), zs[0].numel()) > INT32_LIMIT,
            DOT_PRECISION=conv_dot_precision(), num_warps=warps)
    return zs, list(mom.unbind(0)) if moments else None


def separable_conv_forward(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
                           dilation: int, relu_input: bool = False, tile: tuple[int, int] | None = None,
                           moments: bool = False, counts=None):
    """z = conv2d(conv2d(r, w_dw, groups=G·C), w_pw, groups=G), r = relu(x) if relu_input else x.
    tile: (tile elements, warps) instead of FORWARD_TILE (the benchmark's sweep).
    moments: returns (z, partial moments): z's per-channel statistics as the kernel made them, fp32
    [G·CO, M, 3] (count, mean, M2 of each program's pixels), for batch_norms_forward(moments=…).
    counts: x is a list of source nodes, source s the input of counts[s] groups (``_input``)."""
    zs, moms = separable_pairs_forward(x if counts is not None else [x], [w_dw], [w_pw], [(stride, padding, dilation)],
                                       relu_input, moments, counts, tile)
    return (zs[0], moms[0]) if moments else zs[0]


def _check_grads(grads, bns, launch):
    groups, c, co, oh, ow = launch.sizes
    n = launch.like.shape[0]
    dtype = launch.xs[0].dtype
    if len(grads) != launch.pairs or (bns is not None and len(bns) != launch.pairs):
        raise ValueError(f"separable_conv: one output gradient (and fold) per pair, got {len(grads)} for "
                         f"{launch.pairs} pairs")
    for grad in grads:
        if tuple(grad.shape) != (n, groups * co, oh, ow) or grad.dtype != dtype:
            raise ValueError(f"separable_conv: the output gradient must be {(n, groups * co, oh, ow)} {dtype}, "
                             f"got {tuple(grad.shape)} {grad.dtype}")
    for bn, grad in zip(bns or (), grads):
        if (bn.y.shape != grad.shape or bn.y.dtype != grad.dtype or not bn.y.is_contiguous()
                or tuple(bn.sums.shape[::2]) != (groups * co, 2) or not bn.sums.is_contiguous()
                or bn.rstd.shape != (groups * co,)
                or bn.inv_count != bns[0].inv_count
                or (bn.mean is not None and (bn.mean.shape != bn.rstd.shape or bn.mean.dtype != torch.float32
                                             or not bn.mean.is_contiguous()))):
            raise ValueError(f"separable_conv: the folded BatchNorm's output must be a contiguous "
                             f"{tuple(grad.shape)} {grad.dtype} with statistics for {groups * co} channels, got "
                             f"{tuple(bn.y.shape)} {bn.y.dtype}, sums {tuple(bn.sums.shape)}, "
                             f"rstd {tuple(bn.rstd.shape)}")


def _backward_kernels(grads, xs, w_dws, w_pws, geometry, need_input, need_weight, relu_input, bns, counts, tile,
                      input_norm=None):
    """(launch, d's gradient [P, N, G·C, OH, OW] or None, the pairs' d_dw, the pairs' d_pw (None
    without need_weight)): the pairs' backward kernel and the weight gradients' reduce."""
    launch = _launch(xs, w_dws, w_pws, geometry, counts, bns, input_norm)
    _check_grads(grads, bns, launch)
    groups, c, co, oh, ow = launch.sizes
    n, _, h, w = launch.like.shape
    pairs, x0 = launch.pairs, launch.xs[0]
    grads = [g.contiguous() for g in grads]
    bc, bo = _block(c), _block(co)
    # five [channels, pixels] tiles live at once (gz, gd, d, a window, a product): fewer pixels than the forward's
    elems, warps = tile or BACKWARD_TILE
    bp = _pixel_block(oh * ow, max(bc, bo), elems)
    units = n * cdiv(oh * ow, bp)
    per_program, splits = split_units(x0, units, groups * pairs)
    gd = torch.empty((pairs, n, groups * c, oh, ow), device=x0.device, dtype=x0.dtype) if need_input else None
    kk_block = launch.kk_block
    row = bo * bc + bc * kk_block
    part = torch.empty((pairs, groups, splits, row) if need_weight else (1,), device=x0.device, dtype=torch.float32)
    if bns:
        fold = (*pad_pointers([bn.y for bn in bns], MAX_PAIRS), *pad_pointers([bn.sums for bn in bns], MAX_PAIRS),
                *pad_pointers([bn.rstd for bn in bns], MAX_PAIRS),
                *pad_pointers([bn.mean if bn.mean is not None else bn.rstd for bn in bns], MAX_PAIRS))
        bn_args = (*[bn.sums.shape[1] for bn in bns], *[0] * (MAX_PAIRS - len(bns)), bns[0].inv_count)
    else:
        # stand-ins, never read
        fold, bn_args = (grads[0],) * MAX_PAIRS + (part,) * (3 * MAX_PAIRS), (0,) * MAX_PAIRS + (0.0,)
    if units and (need_input or need_weight):
        _sep_conv_bwd_kernel[(groups, splits, pairs)](
            *launch.xs, *launch.w_dws, *launch.w_pws, *pad_pointers(grads, MAX_PAIRS),
            gd if gd is not None else grads[0], part, *fold, *launch.norms, launch.g0, groups, c, co, h, w, oh, ow,
            units, per_program, splits, *launch.geos, launch.stride, int(relu_input), *bn_args, NEED_INPUT=need_input,
            NEED_WEIGHT=need_weight, FOLD_BN=bool(bns), PAIRS=pairs, SOURCES=counts is not None,
            NORM_INPUT=input_norm is not None, KK_BLOCK=kk_block,
            BLOCK_C=bc, BLOCK_O=bo, BLOCK_P=bp,
            INDEX_64=max(launch.like.numel(), grads[0].numel(), gd.numel() if gd is not None else 0) > INT32_LIMIT,
            DOT_PRECISION=conv_dot_precision(), num_warps=warps)
    elif gd is not None:  # no image: nothing flows back
        gd.zero_()
    if not need_weight:
        return launch, gd, None, None
    d_pws = [torch.empty_like(w_pw, memory_format=torch.contiguous_format) for w_pw in w_pws]
    d_dws = [torch.empty_like(w_dw, memory_format=torch.contiguous_format) for w_dw in w_dws]
    if not units:
        return launch, gd, [d.zero_() for d in d_dws], [d.zero_() for d in d_pws]
    # 256 of a row per program: pairs · groups · row / 256 programs (at 1024, as few as 2 at C 16)
    r_block = min(256, next_power_of_2(row))
    _sep_conv_reduce_kernel[(pairs * groups, cdiv(row, r_block))](
        part, *pad_pointers(d_pws, MAX_PAIRS), *pad_pointers(d_dws, MAX_PAIRS), splits, groups, c, co, *launch.geos,
        PAIRS=pairs, KK_BLOCK=kk_block, BLOCK_C=bc, BLOCK_O=bo, R_BLOCK=r_block,
        S_BLOCK=min(16, max(2, next_power_of_2(splits))), num_warps=4)
    return launch, gd, d_dws, d_pws


def separable_pairs_backward(grads, xs, w_dws, w_pws, geometry, need_input: bool = True, need_weight: bool = True,
                             relu_input: bool = False, bns=None, counts=None, tile: tuple[int, int] | None = None,
                             input_norm=None, input_sums: list | None = None):
    """(dxs or None, the pairs' dL/dw_dw or None, the pairs' dL/dw_pw or None) of
    separable_pairs_forward, in three launches (the pairs' kernel, the weight gradients' reduce, the
    depthwise input gradients). bns: a BatchNormGrad per pair (every pair folded) or None.
    dxs: per pair dL/dr (r its input, relu(x) with relu_input: the caller masks); with counts, per
    source node h_s the gradient Σ over its edges and the pairs, the ReLU's mask applied with
    relu_input: dL/dh_s of the repeated relu(h_s) the pairs read, in one kernel with the pairs'
    depthwise input gradients (no per-pair gradient of the repeated input is written).
    input_norm: as the forward's (dxs are then the gradients of the normalised input's ReLU, or of
    the normalised input: the BatchNorm's backward is its producer's). input_sums (with input_norm,
    relu_input and need_input, no counts): a list that gets per pair that BatchNorm's backward sums, fp32
    [G·C, P, 2], made as the input gradients are written (batch_norms_backward(sums=…) with its ReLU)."""
    if input_sums is not None and (input_norm is None or not relu_input or not need_input or counts is not None):
        raise ValueError("separable_conv: input_sums are the sums of a normalised input's BatchNorm with its ReLU: "
                         "they need input_norm, relu_input and need_input, and no source inputs")
    launch, gd, d_dws, d_pws = _backward_kernels(grads, xs, w_dws, w_pws, geometry, need_input, need_weight,
                                                 relu_input, bns, counts, tile, input_norm)
    dxs = None
    if need_input:
        sources = ([x.contiguous() for x in xs], list(counts)) if counts is not None else None
        relu_norm = ([(x.contiguous(), *stats) for x, stats in zip(xs, input_norm)]
                     if input_sums is not None else None)
        dxs = depthwise_pairs_input_grad(gd, launch.like, w_dws, geometry, sources=sources,
                                         relu=relu_input and counts is not None, relu_norm=relu_norm,
                                         sums_out=input_sums)
    return dxs, d_dws, d_pws


def separable_conv_backward(grad: torch.Tensor, x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int,
                            padding: int, dilation: int, need_input: bool = True, need_weight: bool = True,
                            relu_input: bool = False, tile: tuple[int, int] | None = None,
                            bn: BatchNormGrad | None = None, counts=None):
    """(dL/dr or None, dL/dw_dw or None, dL/dw_pw or None) of separable_conv_forward (r: the conv's
    input, relu(x) with relu_input; the caller masks dL/dr for the ReLU); the weight gradients in
    the weights' dtype and (contiguous) layout. tile: as separable_conv_forward's (BACKWARD_TILE).
    bn: the output z was normalised by a BatchNorm (batch_norms_backward's fold): grad is the
    gradient of that BatchNorm's output (of its ReLU's, bn.relu), whose backward the kernel applies
    as it reads grad (z's gradient never written). counts: x is a list of source nodes, as the
    forward's; dL/dr is then the gradient of the repeated input the groups read, [N, G·C, H, W]
    (kernels/relu_repeat.py's backward sums it per source)."""
    if not (need_input or need_weight):
        _launch(x if counts is not None else [x], [w_dw], [w_pw], [(stride, padding, dilation)], counts)  # checks
        return None, None, None
    launch, gd, d_dws, d_pws = _backward_kernels([grad], x if counts is not None else [x], [w_dw], [w_pw],
                                                 [(stride, padding, dilation)], need_input, need_weight, relu_input,
                                                 [bn] if bn is not None else None, counts, tile)
    dx = None
    if need_input:  # the depthwise input gradient reads gd and the weights only (like: the input's shape)
        dx = depthwise_conv_backward(gd[0], launch.like, w_dw, stride, padding, dilation, need_weight=False)[0]
    return (dx, d_dws[0], d_pws[0]) if need_weight else (dx, None, None)

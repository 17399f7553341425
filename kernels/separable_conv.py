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
  the K·K shifted windows of x (cache hits), then z = wp_g @ d (tl.dot in fp32 "ieee", no TF32).
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
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .batch_norm import BatchNormGrad
from .depthwise_conv import INT32_LIMIT, check_depthwise_args, depthwise_conv_backward
from .grid import plane_pointer

MAX_CHANNELS = 64  # channels per group (the search network's are 8-64)


@triton.jit
def _window(x_rows, c_ok, oh, ow, p_ok, i, j, H, W, STRIDE, PAD, DIL, RELU_INPUT):
    """[channels, pixels]: the input each output pixel's tap (i, j) meets, fp32, 0 in the padding."""
    ih = oh * STRIDE - PAD + i * DIL
    iw = ow * STRIDE - PAD + j * DIL
    ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    x = tl.load(x_rows + (ih * W + iw)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0).to(tl.float32)
    if RELU_INPUT != 0:
        x = tl.maximum(x, 0.0)
    return x


@triton.jit
def _input_rows(X, X2, G0, n, g, G, C, cin, HW, SOURCES: tl.constexpr, INDEX_64: tl.constexpr):
    """[BLOCK_C, 1] pointers to the planes of the input that group g of image n reads: x [N, G·C, H, W],
    or with SOURCES the group's source node, [N, C, H, W] (X for the groups below G0, X2 for the
    rest): the repeated input of ndarts.edge_groups.repeat_sources, read without being made."""
    base = X
    plane = (n * G + g) * C + cin
    if SOURCES:
        plane = n * C + cin
        if g >= G0:
            base = X2
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
def _depthwise_block(x_rows, taps, c_ok, oh, ow, p_ok, H, W, K, STRIDE, PAD, DIL, RELU_INPUT, gd, acc_d, tap_col,
                     BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, TAP_SUMS: tl.constexpr):
    """(d, acc_d): the depthwise conv's [channels, pixels] block from the K·K windows of x, and with
    TAP_SUMS acc_d plus, per tap, Σ over the pixels of gd·window (the depthwise weight gradient)."""
    d = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for i in range(K):
        for j in range(K):
            x = _window(x_rows, c_ok, oh, ow, p_ok, i, j, H, W, STRIDE, PAD, DIL, RELU_INPUT)
            d += tl.load(taps + i * K + j, mask=c_ok, other=0.0).to(tl.float32)[:, None] * x
            if TAP_SUMS:
                acc_d += tl.where(tap_col == i * K + j, tl.sum(gd * x, axis=1)[:, None], 0.0)
    return d, acc_d


# the geometry and the counts are not specialised on (Triton would compile a variant for each value 1
# and each multiple of 16 among them); the image sizes are, for aligned loads and stores
_GENERIC = ("G", "C", "CO", "K", "STRIDE", "PAD", "DIL", "RELU_INPUT")


@triton.jit(do_not_specialize=_GENERIC + ("G0",))
def _sep_conv_fwd_kernel(
    X, WDW, WPW, Z,  # input [N, G·C, H, W]; weights [G·C, 1, K, K], [G·CO, C, 1, 1]; output [N, G·CO, OH, OW]
    X2, G0,  # with SOURCES: X, X2 the groups' two source nodes [N, C, H, W], X read by groups 0 … G0 - 1
    MOM,  # with MOMENTS: fp32 [G·CO, N·blocks, 3], each program's (count, mean, M2) of z per channel
    G, C, CO, H, W, OH, OW,
    K, STRIDE, PAD, DIL, RELU_INPUT,  # runtime values: one compiled kernel for every geometry (module docstring)
    MOMENTS: tl.constexpr, SOURCES: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, INDEX_64: tl.constexpr,
):
    ng = tl.program_id(0)  # image · G + group
    g = ng % G
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < OH * OW
    oh = p // OW
    ow = p % OW
    cin, c_ok, o, o_ok, taps, wp = _group_weights(WDW, WPW, g, C, CO, K, BLOCK_C, BLOCK_O)
    x_rows = _input_rows(X, X2, G0, ng // G, g, G, C, cin, H * W, SOURCES, INDEX_64)
    d, _ = _depthwise_block(x_rows, taps, c_ok, oh, ow, p_ok, H, W, K, STRIDE, PAD, DIL, RELU_INPUT, 0.0, 0.0, 0,
                            BLOCK_C, BLOCK_P, TAP_SUMS=False)
    z = tl.dot(wp, d, input_precision="ieee").to(Z.dtype.element_ty)
    z_rows = plane_pointer(Z, ng * CO + o, OH * OW, INDEX_64)[:, None]
    tl.store(z_rows + p[None, :], z, mask=o_ok[:, None] & p_ok[None, :])
    if MOMENTS:  # the BatchNorm's statistics of z as stored (kernels/batch_norm.py merges them)
        zf = tl.where(p_ok[None, :], z.to(tl.float32), 0.0)
        count = tl.sum(p_ok.to(tl.float32), axis=0)
        mean = tl.sum(zf, axis=1) / count
        dev = tl.where(p_ok[None, :], zf - mean[:, None], 0.0)
        at = MOM + ((g * CO + o) * (tl.num_programs(0) // G * tl.num_programs(1))
                    + (ng // G) * tl.num_programs(1) + tl.program_id(1)) * 3
        tl.store(at, tl.zeros_like(mean) + count, mask=o_ok)
        tl.store(at + 1, mean, mask=o_ok)
        tl.store(at + 2, tl.sum(dev * dev, axis=1), mask=o_ok)


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


@triton.jit(do_not_specialize=_GENERIC + ("G0", "UNITS", "PER_PROGRAM", "S", "BN_S", "BN_RELU"))
def _sep_conv_bwd_kernel(
    X, WDW, WPW, GZ, GD,  # input, weights, z's gradient [N, G·CO, OH, OW], d's gradient [N, G·C, OH, OW] (out)
    PART,  # fp32 partials [G, S, BLOCK_O·BLOCK_C + BLOCK_C·KK_BLOCK]: the 1×1 weight's, then the depthwise one's
    Y, BN_SUMS, BN_RSTD,  # with FOLD_BN: the BatchNorm's output [N, G·CO, OH, OW], Σg/Σg·y [G·CO, BN_S, 2], rstd
    X2, G0,  # with SOURCES: as the forward's
    G, C, CO, H, W, OH, OW,
    UNITS, PER_PROGRAM, S,  # (image, pixel block) units per group, per program, programs per group
    K, STRIDE, PAD, DIL, RELU_INPUT,
    BN_S, bn_inv_count, BN_RELU,  # the BatchNorm's partial sums per channel, 1 / (N·OH·OW), its ReLU
    NEED_INPUT: tl.constexpr, NEED_WEIGHT: tl.constexpr,
    FOLD_BN: tl.constexpr,  # GZ is the gradient of a BatchNorm of z (of its ReLU): applied on load
    SOURCES: tl.constexpr,
    KK_BLOCK: tl.constexpr,  # power of two ≥ K·K
    BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, INDEX_64: tl.constexpr,
):
    g = tl.program_id(0)
    s = tl.program_id(1)
    cin, c_ok, o, o_ok, taps, wp = _group_weights(WDW, WPW, g, C, CO, K, BLOCK_C, BLOCK_O)
    if FOLD_BN:
        bn_rstd, mean_g, mean_gy = _bn_coefficients(BN_SUMS, BN_RSTD, BN_S, bn_inv_count, g * CO + o, o_ok, 16)
    wp_t = tl.trans(wp)  # [BLOCK_C, BLOCK_O]
    tap_col = tl.arange(0, KK_BLOCK)[None, :]
    acc_p = tl.zeros([BLOCK_O, BLOCK_C], dtype=tl.float32)  # Σ gz · dᵀ
    acc_d = tl.zeros([BLOCK_C, KK_BLOCK], dtype=tl.float32)  # Σ gd · window, per tap
    blocks = tl.cdiv(OH * OW, BLOCK_P)
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
            if BN_RELU != 0:
                gz = tl.where(y > 0.0, gz, 0.0)
            gz = tl.where(z_ok, bn_rstd[:, None] * (gz - mean_g[:, None] - y * mean_gy[:, None]), 0.0)
        gd = tl.dot(wp_t, gz, input_precision="ieee")  # [BLOCK_C, BLOCK_P]
        if NEED_INPUT:
            tl.store(plane_pointer(GD, ng * C + cin, OH * OW, INDEX_64)[:, None] + p[None, :],
                     gd.to(GD.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])
        if NEED_WEIGHT:
            oh = p // OW
            ow = p % OW
            x_rows = _input_rows(X, X2, G0, ng // G, g, G, C, cin, H * W, SOURCES, INDEX_64)
            d, acc_d = _depthwise_block(x_rows, taps, c_ok, oh, ow, p_ok, H, W, K, STRIDE, PAD, DIL, RELU_INPUT,
                                        gd, acc_d, tap_col, BLOCK_C, BLOCK_P, TAP_SUMS=True)
            acc_p += tl.dot(gz, tl.trans(d), input_precision="ieee")
    if NEED_WEIGHT:
        row = PART + (g * S + s) * (BLOCK_O * BLOCK_C + BLOCK_C * KK_BLOCK)
        tl.store(row + tl.arange(0, BLOCK_O)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :], acc_p)
        tl.store(row + BLOCK_O * BLOCK_C + tl.arange(0, BLOCK_C)[:, None] * KK_BLOCK + tap_col, acc_d)


@triton.jit
def _sep_conv_reduce_kernel(
    PART,  # fp32 [G, S, R] from _sep_conv_bwd_kernel, R = BLOCK_O·BLOCK_C + BLOCK_C·KK_BLOCK
    DPW, DDW,  # weight gradients [G·CO, C], [G·C, K·K], contiguous, in the weights' dtype
    S, C, CO,
    KK: tl.constexpr, KK_BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
    R_BLOCK: tl.constexpr, S_BLOCK: tl.constexpr,
):
    g = tl.program_id(0)
    r = tl.program_id(1) * R_BLOCK + tl.arange(0, R_BLOCK)  # a chunk of the row
    R = BLOCK_O * BLOCK_C + BLOCK_C * KK_BLOCK  # constexpr
    acc = tl.zeros([R_BLOCK], dtype=tl.float32)
    for s0 in range(0, S, S_BLOCK):  # a fixed order: deterministic
        sidx = s0 + tl.arange(0, S_BLOCK)[:, None]
        part = tl.load(PART + (g * S + sidx) * R + r[None, :], mask=(sidx < S) & (r[None, :] < R), other=0.0)
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
    return max(16, triton.next_power_of_2(c))


def _pixel_block(p: int, channels: int, cap: int) -> int:
    """Pixels per block: [channels, pixels] tiles of at most `cap` elements on a GPU (registers);
    larger in the interpreter (fewer programs, which it runs one by one)."""
    from . import INTERPRETED

    if INTERPRETED:
        cap = 2**15
    return max(16, min(triton.next_power_of_2(p), cap // channels))


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
    """(X, X2, G0, like): the kernels' input pointers and a tensor shaped like the input they read,
    [N, G·C, H, W] (a meta tensor for sources). x: that input; or, with counts, the list of (one or
    two) source nodes [N, C, H, W], source s read by counts[s] consecutive groups, as if repeated
    (ndarts.edge_groups.repeat_sources) but never made."""
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


# (elements of a [channels, pixels] tile, warps per program) on a GPU: the forward's, the backward's
# (its five live tiles: smaller ones). Guesses until measured: test_bench_separable_conv.py times
# other pairs beside them (its tile sweep) in the same GPU run.
FORWARD_TILE, BACKWARD_TILE = (4096, 4), (2048, 4)


def separable_conv_forward(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
                           dilation: int, relu_input: bool = False, tile: tuple[int, int] | None = None,
                           moments: bool = False, counts=None):
    """z = conv2d(conv2d(r, w_dw, groups=G·C), w_pw, groups=G), r = relu(x) if relu_input else x.
    tile: (tile elements, warps) instead of FORWARD_TILE (the benchmark's sweep).
    moments: returns (z, partial moments): z's per-channel statistics as the kernel made them, fp32
    [G·CO, M, 3] (count, mean, M2 of each program's pixels), for batch_norms_forward(moments=…).
    counts: x is a list of source nodes, source s the input of counts[s] groups (``_input``)."""
    x, x2, g0, like = _input(x, counts)
    groups, c, co, oh, ow = check_separable_args(like, w_dw, w_pw, stride, padding, dilation)
    w_dw, w_pw = w_dw.contiguous(), w_pw.contiguous()
    n, _, h, w = like.shape
    z = torch.empty((n, groups * co, oh, ow), device=x.device, dtype=x.dtype)
    bc, bo = _block(c), _block(co)
    elems, warps = tile or FORWARD_TILE
    bp = _pixel_block(oh * ow, max(bc, bo), elems)
    blocks = triton.cdiv(oh * ow, bp)
    mom = torch.empty((groups * co, n * blocks, 3) if moments else (1,), device=x.device, dtype=torch.float32)
    if z.numel():
        _sep_conv_fwd_kernel[(n * groups, blocks)](
            x, w_dw, w_pw, z, x2, g0, mom, groups, c, co, h, w, oh, ow, w_dw.shape[2], stride, padding, dilation,
            int(relu_input), MOMENTS=moments, SOURCES=counts is not None, BLOCK_C=bc, BLOCK_O=bo, BLOCK_P=bp,
            INDEX_64=max(like.numel(), z.numel()) > INT32_LIMIT, num_warps=warps)
    return (z, mom) if moments else z


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
    from . import INTERPRETED

    x, x2, g0, like = _input(x, counts)
    groups, c, co, oh, ow = check_separable_args(like, w_dw, w_pw, stride, padding, dilation)
    n, _, h, w = like.shape
    if tuple(grad.shape) != (n, groups * co, oh, ow) or grad.dtype != x.dtype:
        raise ValueError(f"separable_conv: the output gradient must be {(n, groups * co, oh, ow)} {x.dtype}, "
                         f"got {tuple(grad.shape)} {grad.dtype}")
    if bn is not None and (bn.y.shape != grad.shape or bn.y.dtype != grad.dtype or not bn.y.is_contiguous()
                           or tuple(bn.sums.shape[::2]) != (groups * co, 2) or not bn.sums.is_contiguous()
                           or bn.rstd.shape != (groups * co,)):
        raise ValueError(f"separable_conv: the folded BatchNorm's output must be a contiguous "
                         f"{tuple(grad.shape)} {grad.dtype} with statistics for {groups * co} channels, got "
                         f"{tuple(bn.y.shape)} {bn.y.dtype}, sums {tuple(bn.sums.shape)}, rstd {tuple(bn.rstd.shape)}")
    if not (need_input or need_weight):
        return None, None, None
    grad, w_dw, w_pw = grad.contiguous(), w_dw.contiguous(), w_pw.contiguous()
    k = w_dw.shape[2]
    kk_block = triton.next_power_of_2(k * k)
    bc, bo = _block(c), _block(co)
    # five [channels, pixels] tiles live at once (gz, gd, d, a window, a product): fewer pixels than the forward's
    elems, warps = tile or BACKWARD_TILE
    bp = _pixel_block(oh * ow, max(bc, bo), elems)
    units = n * triton.cdiv(oh * ow, bp)
    if not units:  # no image: nothing flows back
        zeros = [torch.zeros(t.shape, device=grad.device, dtype=t.dtype) for t in (like, w_dw, w_pw)]
        return zeros[0] if need_input else None, *(zeros[1:] if need_weight else (None, None))
    if INTERPRETED or not x.is_cuda:
        splits = min(units, 2)  # the reduce of several partials runs in the tests too
    else:
        splits = min(units, triton.cdiv(4 * torch.cuda.get_device_properties(x.device).multi_processor_count, groups))
    per_program = triton.cdiv(units, splits)
    splits = triton.cdiv(units, per_program)
    gd = torch.empty((n, groups * c, oh, ow), device=x.device, dtype=x.dtype) if need_input else grad
    row = bo * bc + bc * kk_block
    part = torch.empty((groups, splits, row) if need_weight else (1,), device=x.device, dtype=torch.float32)
    fold = (bn.y, bn.sums, bn.rstd) if bn is not None else (grad, part, part)  # else stand-ins, never read
    bn_args = (bn.sums.shape[1], bn.inv_count, int(bn.relu)) if bn is not None else (0, 0.0, 0)
    _sep_conv_bwd_kernel[(groups, splits)](
        x, w_dw, w_pw, grad, gd, part, *fold, x2, g0, groups, c, co, h, w, oh, ow, units, per_program, splits,
        k, stride, padding, dilation, int(relu_input), *bn_args, NEED_INPUT=need_input, NEED_WEIGHT=need_weight,
        FOLD_BN=bn is not None, SOURCES=counts is not None, KK_BLOCK=kk_block, BLOCK_C=bc, BLOCK_O=bo, BLOCK_P=bp,
        INDEX_64=max(like.numel(), grad.numel(), gd.numel()) > INT32_LIMIT, num_warps=warps)
    dx = d_dw = d_pw = None
    if need_input:  # the depthwise input gradient reads gd and the weights only (like: the input's shape)
        dx = depthwise_conv_backward(gd, like, w_dw, stride, padding, dilation, need_weight=False)[0]
    if need_weight:
        d_pw = torch.empty_like(w_pw, memory_format=torch.contiguous_format)
        d_dw = torch.empty_like(w_dw, memory_format=torch.contiguous_format)
        r_block = min(1024, triton.next_power_of_2(row))
        _sep_conv_reduce_kernel[(groups, triton.cdiv(row, r_block))](
            part, d_pw, d_dw, splits, c, co, KK=k * k, KK_BLOCK=kk_block, BLOCK_C=bc, BLOCK_O=bo, R_BLOCK=r_block,
            S_BLOCK=min(16, max(2, triton.next_power_of_2(splits))), num_warps=4)
    return dx, d_dw, d_pw

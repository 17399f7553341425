"""Triton kernels for training-mode BatchNorm2d without affine parameters (DARTS's search ops).

    y = (x − mean_c) · rstd_c,   rstd_c = 1 / sqrt(var_c + eps)   (biased var over N, H, W)
    dx = rstd_c · (g − mean(g)_c − y · mean(g·y)_c)

Why: PyTorch's NCHW BatchNorm kernels give one thread block to each channel. A DARTS search cell
at C = 16 then runs 16 blocks on a 132-multiprocessor GPU: on an H200 its statistics kernel took
14 µs and its backward 29 µs for a 4 MiB tensor whose bytes take 1 µs to read (benchmarks/
profile_step.py, 2026-11-27), and BatchNorm was 83 of the step's 203 ms of GPU time.
Here each channel is split over S programs (grid C × S, about four programs per multiprocessor):

- forward: ``_bn_stats_kernel`` writes per-program (count, mean, M2); ``_bn_apply_kernel`` merges
  its channel's S partials with Chan's formula (never Σx and Σx², which cancel in fp32 when
  |mean| ≫ std), normalises its rows, and its first program per channel writes mean/rstd and the
  running statistics (unbiased variance, PyTorch's momentum rule) and bumps num_batches_tracked.
- backward: ``_bn_grad_stats_kernel`` writes per-program Σg and Σg·y; ``_bn_grad_apply_kernel``
  merges them and writes dx. The backward reads y (= x̂, there being no affine) instead of x, so
  the op keeps only its output for backward: the input can be freed after the forward.
- several BatchNorms per launch (``batch_norms_forward``/``_backward``): up to eight tensors of
  one batch and image size (their channel counts may differ), each with its own statistics, as
  one grid of ΣC_t channels (tensor t's channels follow tensor t-1's; the tensor, its channel and
  its pointer found per program). A batched conv stage of a search cell (the four sep/dil conv
  primitives of a node's edges, with the node's two pools) then costs 4 BatchNorm kernels
  instead of 24.
- a ReLU after the BatchNorm, fused (per tensor): the forward writes y (kept for the backward)
  and relu(y); the backward takes dL/d relu(y) and masks it with y > 0 on the fly. One kernel
  less each way than BatchNorm + ReLU.
- the backward folded into the producer's (per tensor, ``batch_norms_backward(fold=…)``): the
  statistics kernel runs as usual, the apply kernel skips the tensor, and its producer's backward
  kernel (kernels/separable_conv.py) applies dx = rstd·(g − mean g − y·mean g·y) as it reads g,
  from the ``BatchNormGrad`` it is handed: dL/dx is never written nor read back.
- the normalisation deferred to the consumers (per tensor, ``batch_norms_forward(apply=…)``): the
  apply kernel makes that tensor's statistics (mean via ``mean_out``, rstd, the running ones) but
  writes no y; its consumers read (x − mean)·rstd on load (kernels/separable_conv.py's
  ``input_norm``), and its backward takes x where y would be (``lazy``): y is made on load.

Every reduction runs in a fixed order: results are bitwise reproducible run to run.
Layout: contiguous NCHW (the launcher makes other layouts contiguous).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .grid import cdiv, chunk_ranges, interpreted, next_power_of_2, pad_pointers, pick_pointer, split_images
from .moments import merge_tile, store_moments

INT32_LIMIT = 2**31 - 1
TILE = 4096  # elements a program loads per step (rows × columns of one channel)


@triton.jit
def _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW: tl.constexpr, INDEX_64: tl.constexpr):
    """Offsets and mask of a tile of one channel: rows r0.., columns h0.. (BLOCK_HW per row)."""
    rows = r0 + idx // BLOCK_HW
    cols = h0 + idx % BLOCK_HW
    mask = (rows < row_end) & (cols < HW)
    if INDEX_64:
        offs = rows.to(tl.int64) * CHW + c.to(tl.int64) * HW + cols
    else:
        offs = rows * CHW + c * HW + cols
    return offs, mask


@triton.jit
def _later(t, c, C, q, k: tl.constexpr, O, Ck):
    """(t, c, C) moved to tensor k where the launch's channel q is at or past its first channel O
    (tl.where on scalars: no branch, whichever of O, Ck Triton specialised as a constant)."""
    after = q >= O
    return tl.where(after, k, t), tl.where(after, q - O, c), tl.where(after, Ck, C)


@triton.jit
def _channel_of(q, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, T: tl.constexpr):
    """(tensor t, its channel c, its C·H·W) of the launch's channel q: tensor t holds channels
    O_t … O_t + C_t - 1 of the launch (O_0 = 0; the tensors may differ in their channel count)."""
    t = q * 0
    c = q
    C = q * 0 + C0
    if T > 1:
        t, c, C = _later(t, c, C, q, 1, O1, C1)
    if T > 2:
        t, c, C = _later(t, c, C, q, 2, O2, C2)
    if T > 3:
        t, c, C = _later(t, c, C, q, 3, O3, C3)
    if T > 4:
        t, c, C = _later(t, c, C, q, 4, O4, C4)
    if T > 5:
        t, c, C = _later(t, c, C, q, 5, O5, C5)
    if T > 6:
        t, c, C = _later(t, c, C, q, 6, O6, C6)
    if T > 7:
        t, c, C = _later(t, c, C, q, 7, O7, C7)
    return t, c, C * HW


@triton.jit
def _bn_stats_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7,  # inputs [N, C_t, H, W], contiguous, the first T of them used
    PART,  # fp32 [ΣC_t, S, 3]: (count, mean, M2) of each program's rows
    N, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7,  # see _channel_of
    ROWS,  # rows (images) per program
    S,  # programs per channel
    T: tl.constexpr,  # tensors in this launch, 1..8: channel q of tensor t is q - O_t
    BLOCK_HW: tl.constexpr,  # columns per tile (power of two ≥ min(HW, TILE))
    BLOCK: tl.constexpr,  # elements per tile
    INDEX_64: tl.constexpr,
):
    q = tl.program_id(0)
    s = tl.program_id(1)
    t, c, CHW = _channel_of(q, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, T)
    X = pick_pointer(t, X0, X1, X2, X3, X4, X5, X6, X7, T)
    row_start = s * ROWS
    row_end = tl.minimum(row_start + ROWS, N)
    idx = tl.arange(0, BLOCK)
    count = tl.zeros([], dtype=tl.float32)
    mean = tl.zeros([], dtype=tl.float32)
    m2 = tl.zeros([], dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK // BLOCK_HW):
        for h0 in range(0, HW, BLOCK_HW):
            offs, mask = _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW, INDEX_64)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            count, mean, m2 = merge_tile(count, mean, m2, x, mask)
    store_moments(PART, q * S + s, count, mean, m2)


@triton.jit(do_not_specialize=("M0", "M1", "M2", "M3", "M4", "M5", "M6", "M7"))
def _bn_apply_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7,  # inputs [N, C_t, H, W]
    Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7,  # outputs y = x̂ (kept for the backward)
    R0, R1, R2, R3, R4, R5, R6, R7,  # relu(y), written for the tensors whose RELU bit is set
    PART0, PART1, PART2, PART3, PART4, PART5, PART6, PART7,  # fp32 [C_t, M_t, 3]: tensor t's partial moments
    SAVE_RSTD,  # fp32 [ΣC_t]: rstd, for the backward
    SAVE_MEAN,  # fp32 [ΣC_t]: the mean, where SAVE_MEAN_ON (for consumers that normalise on load)
    RM0, RM1, RM2, RM3, RM4, RM5, RM6, RM7,  # running mean [C_t] of each tensor, updated in place
    RV0, RV1, RV2, RV3, RV4, RV5, RV6, RV7,  # running var [C_t]
    NB0, NB1, NB2, NB3, NB4, NB5, NB6, NB7,  # int64 [1] num_batches_tracked of each tensor, incremented once
    N, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, ROWS, S,
    M0, M1, M2, M3, M4, M5, M6, M7,  # partials per channel of each tensor (_bn_stats_kernel's S, or its producer's)
    eps, momentum,
    T: tl.constexpr,
    RELU: tl.constexpr,  # bit t set: tensor t's BatchNorm is followed by a ReLU, fused here
    APPLY: tl.constexpr,  # bit t set: tensor t's y is written here (else only its statistics: its consumers normalise)
    SAVE_MEAN_ON: tl.constexpr,
    UPDATE_RUNNING: tl.constexpr,
    USE_RUNNING: tl.constexpr,  # eval mode: normalise with the running statistics (no partials read)
    S_BLOCK: tl.constexpr,  # partials merged per step (a power of two)
    BLOCK_HW: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    q = tl.program_id(0)
    s = tl.program_id(1)
    t, c, CHW = _channel_of(q, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, T)
    X = pick_pointer(t, X0, X1, X2, X3, X4, X5, X6, X7, T)
    Y = pick_pointer(t, Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, T)
    RM = pick_pointer(t, RM0, RM1, RM2, RM3, RM4, RM5, RM6, RM7, T)
    RV = pick_pointer(t, RV0, RV1, RV2, RV3, RV4, RV5, RV6, RV7, T)
    count = tl.zeros([], dtype=tl.float32)
    m2 = tl.zeros([], dtype=tl.float32)
    if USE_RUNNING:
        mean = tl.load(RM + c).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.load(RV + c).to(tl.float32) + eps)
    else:
        # Chan's merge of this channel's M_t partials, the same in every program of the channel
        PART = pick_pointer(t, PART0, PART1, PART2, PART3, PART4, PART5, PART6, PART7, T)
        M = pick_pointer(t, M0, M1, M2, M3, M4, M5, M6, M7, T)
        # (two passes over chunks of S_BLOCK: the mean first, then M2 about it; any M_t, a fixed order)
        sidx = tl.arange(0, S_BLOCK)
        total = tl.zeros([], dtype=tl.float32)
        for s0 in range(0, M, S_BLOCK):
            smask = s0 + sidx < M
            n_i = tl.load(PART + (c * M + s0 + sidx) * 3 + 0, mask=smask, other=0.0)
            count += tl.sum(n_i, axis=0)
            total += tl.sum(n_i * tl.load(PART + (c * M + s0 + sidx) * 3 + 1, mask=smask, other=0.0), axis=0)
        mean = total / count
        for s0 in range(0, M, S_BLOCK):
            smask = s0 + sidx < M
            pbase = (c * M + s0 + sidx) * 3
            n_i = tl.load(PART + pbase + 0, mask=smask, other=0.0)
            dev = tl.where(smask, tl.load(PART + pbase + 1, mask=smask, other=0.0) - mean, 0.0)
            m2 += tl.sum(tl.load(PART + pbase + 2, mask=smask, other=0.0), axis=0) + tl.sum(n_i * dev * dev, axis=0)
        rstd = 1.0 / tl.sqrt(m2 / count + eps)
    if s == 0:
        tl.store(SAVE_RSTD + q, rstd)
        if SAVE_MEAN_ON:
            tl.store(SAVE_MEAN + q, mean)
        if UPDATE_RUNNING:
            rm = tl.load(RM + c).to(tl.float32)
            rv = tl.load(RV + c).to(tl.float32)
            # PyTorch's rule: the running variance takes the unbiased batch variance
            tl.store(RM + c, ((1.0 - momentum) * rm + momentum * mean).to(RM.dtype.element_ty))
            tl.store(RV + c, ((1.0 - momentum) * rv + momentum * (m2 / (count - 1.0))).to(RV.dtype.element_ty))
            if c == 0:
                NB = pick_pointer(t, NB0, NB1, NB2, NB3, NB4, NB5, NB6, NB7, T)
                tl.store(NB, tl.load(NB) + 1)
    relu = ((RELU >> t) & 1) != 0
    R = pick_pointer(t, R0, R1, R2, R3, R4, R5, R6, R7, T)
    row_start = s * ROWS
    # a tensor not applied here has no rows (its Y slot is another tensor's: never written)
    row_end = tl.where(((APPLY >> t) & 1) != 0, tl.minimum(row_start + ROWS, N), row_start)
    idx = tl.arange(0, BLOCK)
    for r0 in range(row_start, row_end, BLOCK // BLOCK_HW):
        for h0 in range(0, HW, BLOCK_HW):
            offs, mask = _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW, INDEX_64)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            y = ((x - mean) * rstd).to(Y.dtype.element_ty)
            tl.store(Y + offs, y, mask=mask)
            if RELU != 0:
                tl.store(R + offs, tl.maximum(y, 0.0).to(R.dtype.element_ty), mask=mask & relu)


@triton.jit
def _upstream_grad(G, Y, offs, mask, relu, lazy, mean, rstd):
    """(dL/dy, y) in fp32: with a fused ReLU, G is dL/d relu(y), so dL/dy = G where y > 0. lazy:
    Y holds the BatchNorm's input x (its y never written): y = (x − mean)·rstd made here."""
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.where(lazy, (y - mean) * rstd, y)
    g = tl.where(relu & (y <= 0.0), 0.0, g)
    return g, y


@triton.jit
def _lazy_statistics(t, q, MEAN, RSTD, LAZY: tl.constexpr):
    """(tensor t is lazy, the mean and rstd of the launch's channel q: read only where LAZY has bits)."""
    lazy = ((LAZY >> t) & 1) != 0
    mean = tl.zeros([], dtype=tl.float32)
    rstd = tl.zeros([], dtype=tl.float32)
    if LAZY != 0:
        mean = tl.load(MEAN + q)
        rstd = tl.load(RSTD + q)
    return lazy, mean, rstd


@triton.jit
def _bn_grad_stats_kernel(
    G0, G1, G2, G3, G4, G5, G6, G7,  # upstream gradients (of relu(y) for the tensors whose RELU bit is set)
    Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7,  # the forward's outputs (= x̂)
    PART,  # fp32 [ΣC_t, S, 2]: Σg and Σg·y over each program's rows
    MEAN, RSTD,  # fp32 [ΣC_t]: the forward's statistics (read for the LAZY tensors)
    N, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, ROWS, S,
    T: tl.constexpr,
    RELU: tl.constexpr,
    LAZY: tl.constexpr,  # bit t set: Y_t is the BatchNorm's input, normalised on load (its y never written)
    SKIP: tl.constexpr,  # bit t set: tensor t's sums were made by its gradient's producer: its programs do nothing
    BLOCK_HW: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    q = tl.program_id(0)
    s = tl.program_id(1)
    t, c, CHW = _channel_of(q, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, T)
    if ((SKIP >> t) & 1) == 0:
        G = pick_pointer(t, G0, G1, G2, G3, G4, G5, G6, G7, T)
        Y = pick_pointer(t, Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, T)
        relu = ((RELU >> t) & 1) != 0
        lazy, mean, rstd = _lazy_statistics(t, q, MEAN, RSTD, LAZY)
        row_start = s * ROWS
        row_end = tl.minimum(row_start + ROWS, N)
        idx = tl.arange(0, BLOCK)
        acc_g = tl.zeros([BLOCK], dtype=tl.float32)
        acc_gy = tl.zeros([BLOCK], dtype=tl.float32)
        for r0 in range(row_start, row_end, BLOCK // BLOCK_HW):
            for h0 in range(0, HW, BLOCK_HW):
                offs, mask = _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW, INDEX_64)
                g, y = _upstream_grad(G, Y, offs, mask, relu, lazy, mean, rstd)
                acc_g += g
                acc_gy += g * y
        base = (q * S + s) * 2
        tl.store(PART + base + 0, tl.sum(acc_g, axis=0))
        tl.store(PART + base + 1, tl.sum(acc_gy, axis=0))


@triton.jit
def _bn_grad_apply_kernel(
    G0, G1, G2, G3, G4, G5, G6, G7,
    Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7,
    DX0, DX1, DX2, DX3, DX4, DX5, DX6, DX7,
    PART0, PART1, PART2, PART3, PART4, PART5, PART6, PART7,  # fp32 [C_t, P_t, 2]: tensor t's Σg, Σg·y partials
    P0, P1, P2, P3, P4, P5, P6, P7,  # P_t (_bn_grad_stats_kernel's S, or what the gradient's producer made)
    RSTD,  # fp32 [ΣC_t]
    MEAN,  # fp32 [ΣC_t]: the forward's mean (read for the LAZY tensors)
    N, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, ROWS, S,
    inv_count,  # 1 / (N·H·W)
    T: tl.constexpr,
    RELU: tl.constexpr,
    LAZY: tl.constexpr,  # as _bn_grad_stats_kernel's
    APPLY: tl.constexpr,  # bit t set: tensor t's dx is written here (else its consumer folds the backward in)
    S_BLOCK: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    q = tl.program_id(0)
    s = tl.program_id(1)
    t, c, CHW = _channel_of(q, HW, O1, O2, O3, O4, O5, O6, O7, C0, C1, C2, C3, C4, C5, C6, C7, T)
    G = pick_pointer(t, G0, G1, G2, G3, G4, G5, G6, G7, T)
    Y = pick_pointer(t, Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, T)
    DX = pick_pointer(t, DX0, DX1, DX2, DX3, DX4, DX5, DX6, DX7, T)
    relu = ((RELU >> t) & 1) != 0
    PART = pick_pointer(t, PART0, PART1, PART2, PART3, PART4, PART5, PART6, PART7, T)
    P = pick_pointer(t, P0, P1, P2, P3, P4, P5, P6, P7, T)
    sum_g = tl.zeros([], dtype=tl.float32)
    sum_gy = tl.zeros([], dtype=tl.float32)
    for s0 in range(0, P, S_BLOCK):  # chunks of S_BLOCK partials, in a fixed order
        sidx = s0 + tl.arange(0, S_BLOCK)
        smask = sidx < P
        sum_g += tl.sum(tl.load(PART + (c * P + sidx) * 2 + 0, mask=smask, other=0.0), axis=0)
        sum_gy += tl.sum(tl.load(PART + (c * P + sidx) * 2 + 1, mask=smask, other=0.0), axis=0)
    mean_g = sum_g * inv_count
    mean_gy = sum_gy * inv_count
    rstd = tl.load(RSTD + q)
    lazy, mean, _ = _lazy_statistics(t, q, MEAN, RSTD, LAZY)
    row_start = s * ROWS
    # a folded tensor's programs have no rows (its G, Y, DX slots are another tensor's: never read)
    row_end = tl.where(((APPLY >> t) & 1) != 0, tl.minimum(row_start + ROWS, N), row_start)
    idx = tl.arange(0, BLOCK)
    for r0 in range(row_start, row_end, BLOCK // BLOCK_HW):
        for h0 in range(0, HW, BLOCK_HW):
            offs, mask = _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW, INDEX_64)
            g, y = _upstream_grad(G, Y, offs, mask, relu, lazy, mean, rstd)
            tl.store(DX + offs, (rstd * (g - mean_g - y * mean_gy)).to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
def _geometry(x: torch.Tensor, channels: int):
    """(N, HW, ROWS, S, BLOCK_HW, BLOCK, num_warps) for a launch of `channels` channels (all its
    tensors') of images like x's, [N, ·, H, W]."""
    n = x.shape[0]
    hw = x.shape[2] * x.shape[3]
    tile = 1 << 15 if interpreted() else TILE  # the interpreter runs programs one by one: few, large ones
    block_hw = min(next_power_of_2(hw), tile)
    block = max(block_hw, min(tile, block_hw * next_power_of_2(n)))
    # none with less than one tile of work
    rows, splits = split_images(x, n, channels, most=cdiv(n * hw, block))
    return n, hw, rows, splits, block_hw, block, 8 if block >= 4096 else 4


def check_batch_norm_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"batch_norm: expected a 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"batch_norm: the Triton kernels take float32, float16 or bfloat16, got {x.dtype}")
    if x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input of "
                         f"shape {tuple(x.shape)}")


MAX_TENSORS = 8  # tensors per launch of the multi-tensor kernels
MERGE_CHUNK = 256  # partial moments the apply kernel merges per step (a producer's can be N × pixel blocks)


def _bits(flags) -> int:
    """A constexpr bit mask: bit t set where flags[t] (a launch's per-tensor switches)."""
    return sum(1 << t for t, f in enumerate(flags) if f)


def _stand_ins(kept, start, stop) -> list:
    """Per tensor, whose tensors fill its pointer slots in the launch over start … stop: its own
    where kept[t]; else the launch's first kept tensor's (its programs have no rows: those slots are
    never read nor written), or its own where the launch keeps none."""
    first = next((t for t in range(start, stop) if kept[t]), None)
    return [t if kept[t] or first is None else first for t in range(len(kept))]


def _share_rows(parts, which, tensors, part, keep=None) -> None:
    """parts[t] = tensor t's channels' rows of `part` (a statistics launch's partials over the
    tensors `which`, their channels one after another), for each t in which (in keep, if given)."""
    offset = 0
    for t in which:
        if keep is None or t in keep:
            parts[t] = part[offset:offset + tensors[t].shape[1]]
        offset += tensors[t].shape[1]


def _check_same_geometry(tensors, what: str) -> None:
    """One launch takes tensors of one batch size, image size, dtype and device; their channel
    counts may differ."""
    first = tensors[0]
    for i, x in enumerate(tensors):
        if (x.dim() != 4 or x.shape[0] != first.shape[0] or x.shape[2:] != first.shape[2:] or x.dtype != first.dtype
                or x.device != first.device):
            raise ValueError(f"batch_norm: {what} {i} is {tuple(x.shape)} {x.dtype} on {x.device}, {what} 0 is "
                             f"{tuple(first.shape)} {first.dtype} on {first.device}; one launch takes alike tensors "
                             f"(channel counts may differ)")


def _channel_args(tensors) -> list:
    """O1 … O7 (each tensor's first channel in the launch) and C0 … C7 (channel counts), padded."""
    counts = [t.shape[1] for t in tensors]
    offsets = [sum(counts[:k]) for k in range(1, len(counts))]
    return offsets + [0] * (MAX_TENSORS - 1 - len(offsets)) + counts + [0] * (MAX_TENSORS - len(counts))


def _launches(tensors):
    """(start, stop, first channel, channels) of each launch: up to MAX_TENSORS tensors each."""
    first = 0
    for start, stop in chunk_ranges(len(tensors), MAX_TENSORS):
        channels = sum(t.shape[1] for t in tensors[start:stop])
        yield start, stop, first, channels
        first += channels


def batch_norms_forward(xs, running_means, running_vars, nums_batches, momentum: float, eps: float, relu=None,
                        moments=None, apply=None, mean_out: torch.Tensor | None = None, relu_in_place: bool = False,
                        use_running: bool = False):
    """Training-mode BatchNorm2d (no affine) of several tensors of one batch size, image size and
    dtype (channel counts may differ), eight per launch (each its own statistics). relu[t]: tensor
    t's BatchNorm is followed by a ReLU, fused. moments[t]: tensor t's statistics as partial
    (count, mean, M2) per channel, fp32 [C_t, M, 3], made by the kernel that wrote it
    (kernels/separable_conv.py): the statistics kernel does not read that tensor.
    apply[t] False: tensor t's statistics (and running statistics) only, its y not written (ys[t]
    None): its consumers normalise xs[t] as they read it (the mean from mean_out, the rstd from rstd).
    mean_out: fp32 [ΣC_t] to write the batch means into (launch layout, as rstd), or None.
    relu_in_place: where relu[t], relu(y) is written over y (rs[t] is ys[t]): for a forward that keeps
    nothing for a backward (an evaluation: ndarts.batch_norm's eval-mode launches).
    use_running: eval mode: each tensor normalised with its running statistics (running_means and
    running_vars, read, not updated; nums_batches and moments unused): no statistics read or made.

    Returns (ys, rs, rstd): ys[t] = x̂ of xs[t] (what the backward needs), rs[t] = relu(ys[t]) where
    relu[t] (else None), rstd fp32 [ΣC_t] (the tensors' channels one after another).
    running_means/vars and nums_batches: lists of the tensors' buffers, updated in place, or None
    (no running statistics)."""
    if not xs:
        raise ValueError("batch_norm: no input")
    for x in xs:
        check_batch_norm_input(x)
    _check_same_geometry(xs, "input")
    relu = [False] * len(xs) if relu is None else list(relu)
    moments = [None] * len(xs) if moments is None else list(moments)
    apply = [True] * len(xs) if apply is None else list(apply)
    channels_all = sum(x.shape[1] for x in xs)
    if len(apply) != len(xs) or any(r and not a for r, a in zip(relu, apply)):
        raise ValueError("batch_norm: one apply flag per tensor, and a fused ReLU only where y is written")
    if mean_out is not None and (mean_out.shape != (channels_all,) or mean_out.dtype != torch.float32
                                 or not mean_out.is_contiguous() or mean_out.device != xs[0].device):
        raise ValueError(f"batch_norm: mean_out must be a contiguous fp32 [{channels_all}] on {xs[0].device}")
    for x, m in zip(xs, moments):
        if m is not None and (m.dim() != 3 or m.shape[0] != x.shape[1] or m.shape[2] != 3
                              or m.dtype != torch.float32 or not m.is_contiguous()):
            raise ValueError(f"batch_norm: partial moments for {x.shape[1]} channels must be a contiguous "
                             f"fp32 [{x.shape[1]}, M, 3], got {tuple(m.shape)} {m.dtype}")
    xs = [x.contiguous() for x in xs]
    ys = [torch.empty_like(x) if a else None for x, a in zip(xs, apply)]
    # in place: the kernel stores y, then relu(y) at the same addresses, in the same thread
    rs = [(y if relu_in_place else torch.empty_like(x)) if r else None for x, y, r in zip(xs, ys, relu)]
    rstd = torch.empty((channels_all,), device=xs[0].device, dtype=torch.float32)
    if xs[0].numel() == 0:
        return ys, rs, rstd
    if use_running and (running_means is None or running_vars is None):
        raise ValueError("batch_norm: use_running normalises with the running statistics; got none")
    update = running_means is not None and not use_running
    for start, stop, first, channels in _launches(xs):
        num = stop - start
        x0 = xs[start]
        n, hw, rows, splits, block_hw, block, num_warps = _geometry(x0, channels)
        index_64 = max(x.numel() for x in xs[start:stop]) > INT32_LIMIT - block

        def slots(tensors, like=x0):  # this launch's tensors, padded to the kernels' pointer slots
            return pad_pointers(tensors[start:stop], MAX_TENSORS, like)

        geometry = _channel_args(xs[start:stop])
        # eval mode (use_running): no partial moments; rstd stands in for their pointers (never read)
        parts = [rstd[:1].view(1, 1, 1)] * len(xs) if use_running else moments[:]
        missing = [t for t in range(start, stop) if parts[t] is None]
        if missing:  # the statistics kernel over the tensors without moments, a launch of their own
            held = [xs[t] for t in missing]
            s_n, s_hw, s_rows, s_splits, s_bhw, s_block, s_warps = _geometry(x0, sum(x.shape[1] for x in held))
            part = torch.empty((sum(x.shape[1] for x in held), s_splits, 3), device=x0.device, dtype=torch.float32)
            _bn_stats_kernel[(part.shape[0], s_splits)](
                *pad_pointers(held, MAX_TENSORS), part, s_n, s_hw, *_channel_args(held), s_rows, s_splits,
                T=len(held), BLOCK_HW=s_bhw, BLOCK=s_block, INDEX_64=index_64, num_warps=s_warps)
            _share_rows(parts, missing, xs, part)
        counts_m = [parts[t].shape[1] for t in range(start, stop)]
        stats = [slots(lst, rstd) if update or use_running else [rstd] * MAX_TENSORS
                 for lst in (running_means, running_vars)]
        counts = slots(nums_batches, rstd) if update else [rstd] * MAX_TENSORS
        # a tensor not applied here: an applied tensor's x and y as stand-ins (never read nor written)
        stand_in = _stand_ins(apply, start, stop)
        ins = [xs[i] for i in stand_in]
        outs = [ys[i] if ys[i] is not None else xs[i] for i in stand_in]
        _bn_apply_kernel[(channels, splits)](
            *slots(ins), *slots(outs), *slots([r if r is not None else y for r, y in zip(rs, outs)]),
            *slots(parts, parts[start]), rstd[first:first + channels],
            mean_out[first:first + channels] if mean_out is not None else rstd, *stats[0], *stats[1], *counts,
            n, hw, *geometry, rows, splits, *(counts_m + [0] * (MAX_TENSORS - num)), float(eps), float(momentum),
            T=num, RELU=_bits(relu[start:stop]), APPLY=_bits(apply[start:stop]), SAVE_MEAN_ON=mean_out is not None,
            UPDATE_RUNNING=update, USE_RUNNING=use_running,
            S_BLOCK=max(2, min(MERGE_CHUNK, next_power_of_2(max(counts_m)))), BLOCK_HW=block_hw, BLOCK=block,
            INDEX_64=index_64, num_warps=num_warps,
        )
    return ys, rs, rstd


class BatchNormGrad(NamedTuple):
    """A BatchNorm's backward for its input's producer to apply as it reads the gradient (folded:
    no dL/dx written): per channel c, with g the upstream gradient (masked by y > 0 where a ReLU
    followed the BatchNorm),

        dL/dx = rstd_c · (g − Σg_c / count − y · Σ(g·y)_c / count)
    """

    y: torch.Tensor  # the BatchNorm's output x̂ [N, C, H, W], contiguous
    sums: torch.Tensor  # fp32 [C, S, 2], contiguous: per-program partial Σg and Σg·y, summed in a fixed order
    rstd: torch.Tensor  # fp32 [C]
    inv_count: float  # 1 / (N·H·W)
    relu: bool  # a ReLU followed the BatchNorm: g is dL/d relu(y)
    mean: torch.Tensor | None = None  # fp32 [C]: y holds the BatchNorm's input x, y = (x − mean)·rstd (lazy)


def batch_norms_backward(grads, ys, rstd: torch.Tensor, relu=None, fold=None, lazy=None,
                         mean: torch.Tensor | None = None, sums=None) -> list:
    """dL/dx of batch_norms_forward's tensors, from the upstream gradients (of relu(y) where
    relu[t]), the outputs ys and rstd [ΣC_t]. fold[t]: tensor t's producer applies the backward
    itself (kernels/separable_conv.py): its entry is a BatchNormGrad instead, and no dL/dx is
    written for it (the gradient statistics are still made here, in the same launch as the others').
    lazy[t]: ys[t] is the BatchNorm's input x (batch_norms_forward(apply=…) wrote no y), normalised
    here on load with mean [ΣC_t] (batch_norms_forward's mean_out) and rstd.
    sums[t]: tensor t's Σg and Σg·y per channel as partial sums, fp32 [C_t, P, 2] (any P ≥ 1), made
    by the kernel that wrote its gradient (kernels/noisy_group_sum.py's bn_sums): the statistics
    kernel does not read that tensor (a launch whose tensors all have them runs none)."""
    _check_same_geometry(ys, "output")
    relu = [False] * len(ys) if relu is None else list(relu)
    fold = [False] * len(ys) if fold is None else list(fold)
    lazy = [False] * len(ys) if lazy is None else list(lazy)
    if len(lazy) != len(ys) or (any(lazy) and (mean is None or mean.shape != rstd.shape
                                               or mean.dtype != torch.float32 or not mean.is_contiguous())):
        raise ValueError(f"batch_norm: one lazy flag per output, and lazy outputs need the forward's mean, an "
                         f"fp32 {tuple(rstd.shape)} like rstd")
    mean = mean if any(lazy) else rstd
    sums = [None] * len(ys) if sums is None else list(sums)
    if len(sums) != len(ys):
        raise ValueError(f"batch_norm: one entry of sums (or None) per output, got {len(sums)} for {len(ys)}")
    for y, part in zip(ys, sums):
        if part is not None and (part.dtype != torch.float32 or part.dim() != 3 or part.shape[0] != y.shape[1]
                                 or part.shape[1] < 1 or part.shape[2] != 2 or not part.is_contiguous()
                                 or part.device != y.device):
            raise ValueError(f"batch_norm: gradient sums for {y.shape[1]} channels must be a contiguous fp32 "
                             f"[{y.shape[1]}, P, 2] on {y.device}, got {part.dtype} {tuple(part.shape)}")
    grads = [g.contiguous() for g in grads]
    ys = [y.contiguous() for y in ys]
    for g, y in zip(grads, ys):
        if g.shape != y.shape:
            raise ValueError(f"batch_norm: a gradient is {tuple(g.shape)}, its output {tuple(y.shape)}")
    dxs = [None if f else torch.empty_like(y) for y, f in zip(ys, fold)]
    if ys[0].numel() == 0:  # nothing flows back; a folded entry with no partial sums
        firsts = [sum(y.shape[1] for y in ys[:t]) for t in range(len(ys))]
        return [BatchNormGrad(y, y.new_zeros((y.shape[1], 0, 2), dtype=torch.float32),
                              rstd[o:o + y.shape[1]], 0.0, r, mean[o:o + y.shape[1]] if z else None) if f else dx
                for y, dx, f, r, z, o in zip(ys, dxs, fold, relu, lazy, firsts)]
    for start, stop, first, channels in _launches(ys):
        num = stop - start
        y0 = ys[start]
        n, hw, rows, splits, block_hw, block, num_warps = _geometry(y0, channels)
        index_64 = max(y.numel() for y in ys[start:stop]) > INT32_LIMIT - block

        def slots(tensors):  # this launch's tensors, padded to the kernels' pointer slots
            return pad_pointers(tensors[start:stop], MAX_TENSORS, y0)

        geometry = _channel_args(ys[start:stop])
        grid = (channels, splits)
        bits, lazy_bits = _bits(relu[start:stop]), _bits(lazy[start:stop])
        stats = (mean[first:first + channels], rstd[first:first + channels])
        offsets = [first + sum(y.shape[1] for y in ys[start:t]) for t in range(start, stop + 1)]
        parts = sums[:]
        missing = [t for t in range(start, stop) if parts[t] is None]
        if missing:  # the statistics kernel; the programs of the tensors with sums do nothing
            part = torch.empty((channels, splits, 2), device=y0.device, dtype=torch.float32)
            _bn_grad_stats_kernel[grid](*slots(grads), *slots(ys), part, *stats, n, hw, *geometry, rows, splits,
                                        T=num, RELU=bits, LAZY=lazy_bits,
                                        SKIP=_bits([parts[t] is not None for t in range(start, stop)]),
                                        BLOCK_HW=block_hw, BLOCK=block, INDEX_64=index_64, num_warps=num_warps)
            _share_rows(parts, range(start, stop), ys, part, keep=missing)
        counts_p = [parts[t].shape[1] for t in range(start, stop)]
        if not all(fold[start:stop]):
            # a folded tensor's slots take an applied one's tensors: the kernel reads no row of them
            stand_in = _stand_ins([not f for f in fold], start, stop)
            grads_in, ys_in, dxs_in = ([lst[t] for t in stand_in] for lst in (grads, ys, dxs))
            _bn_grad_apply_kernel[grid](*slots(grads_in), *slots(ys_in), *slots(dxs_in),
                                        *pad_pointers(parts[start:stop], MAX_TENSORS, parts[start]),
                                        *(counts_p + [0] * (MAX_TENSORS - num)), *stats[::-1],
                                        n, hw, *geometry, rows, splits, 1.0 / (n * hw), T=num, RELU=bits,
                                        LAZY=lazy_bits,
                                        APPLY=_bits([not fold[t] for t in range(start, stop)]),
                                        S_BLOCK=max(2, min(MERGE_CHUNK, next_power_of_2(max(counts_p)))),
                                        BLOCK_HW=block_hw,
                                        BLOCK=block, INDEX_64=index_64, num_warps=num_warps)
        for t in range(start, stop):
            lo, hi = offsets[t - start], offsets[t - start + 1]
            if fold[t]:
                dxs[t] = BatchNormGrad(ys[t], parts[t], rstd[lo:hi], 1.0 / (n * hw), relu[t],
                                       mean[lo:hi] if lazy[t] else None)
    return dxs


def batch_norm_forward(x, running_mean, running_var, num_batches_tracked, momentum: float, eps: float):
    """Training-mode BatchNorm2d (no affine) of one tensor. Returns (y, rstd [C] fp32). running_mean/var
    and num_batches_tracked are updated in place when given (all three or none)."""
    update = running_mean is not None
    ys, _, rstd = batch_norms_forward([x], [running_mean] if update else None, [running_var] if update else None,
                                      [num_batches_tracked] if update else None, momentum, eps)
    return ys[0], rstd


def batch_norm_backward(grad: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """dL/dx of training-mode BatchNorm2d (no affine) from the upstream gradient, the output y and rstd."""
    return batch_norms_backward([grad], [y], rstd.reshape(-1))[0]

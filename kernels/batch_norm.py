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

Every reduction runs in a fixed order: results are bitwise reproducible run to run.
Layout: contiguous NCHW (the launcher makes other layouts contiguous).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grid import split_images
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
def _bn_stats_kernel(
    X,  # input [N, C, H, W], contiguous
    PART,  # fp32 [C, S, 3]: (count, mean, M2) of each program's rows
    N, HW, CHW,
    ROWS,  # rows (images) per program
    S,  # programs per channel
    BLOCK_HW: tl.constexpr,  # columns per tile (power of two ≥ min(HW, TILE))
    BLOCK: tl.constexpr,  # elements per tile
    INDEX_64: tl.constexpr,
):
    c = tl.program_id(0)
    s = tl.program_id(1)
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
    store_moments(PART, c * S + s, count, mean, m2)


@triton.jit
def _bn_apply_kernel(
    X, Y,  # input and output [N, C, H, W]
    PART,  # fp32 [C, S, 3] from _bn_stats_kernel
    SAVE_RSTD,  # fp32 [C]: rstd, for the backward
    RUNNING_MEAN, RUNNING_VAR,  # [C] buffers, updated in place (any float dtype)
    NUM_BATCHES,  # int64 [1] num_batches_tracked, incremented once
    N, HW, CHW, ROWS, S,
    eps, momentum,
    UPDATE_RUNNING: tl.constexpr,
    S_BLOCK: tl.constexpr,  # power of two ≥ S
    BLOCK_HW: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    c = tl.program_id(0)
    s = tl.program_id(1)
    # Chan's merge of this channel's S partials, the same in every program of the channel
    sidx = tl.arange(0, S_BLOCK)
    smask = sidx < S
    pbase = (c * S + sidx) * 3
    n_i = tl.load(PART + pbase + 0, mask=smask, other=0.0)
    mean_i = tl.load(PART + pbase + 1, mask=smask, other=0.0)
    m2_i = tl.load(PART + pbase + 2, mask=smask, other=0.0)
    count = tl.sum(n_i, axis=0)
    mean = tl.sum(n_i * mean_i, axis=0) / count
    dev = tl.where(smask, mean_i - mean, 0.0)
    m2 = tl.sum(m2_i, axis=0) + tl.sum(n_i * dev * dev, axis=0)
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    if s == 0:
        tl.store(SAVE_RSTD + c, rstd)
        if UPDATE_RUNNING:
            rm = tl.load(RUNNING_MEAN + c).to(tl.float32)
            rv = tl.load(RUNNING_VAR + c).to(tl.float32)
            # PyTorch's rule: the running variance takes the unbiased batch variance
            tl.store(RUNNING_MEAN + c, ((1.0 - momentum) * rm + momentum * mean).to(RUNNING_MEAN.dtype.element_ty))
            tl.store(RUNNING_VAR + c,
                     ((1.0 - momentum) * rv + momentum * (m2 / (count - 1.0))).to(RUNNING_VAR.dtype.element_ty))
            if c == 0:
                tl.store(NUM_BATCHES, tl.load(NUM_BATCHES) + 1)
    row_start = s * ROWS
    row_end = tl.minimum(row_start + ROWS, N)
    idx = tl.arange(0, BLOCK)
    for r0 in range(row_start, row_end, BLOCK // BLOCK_HW):
        for h0 in range(0, HW, BLOCK_HW):
            offs, mask = _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW, INDEX_64)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + offs, ((x - mean) * rstd).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bn_grad_stats_kernel(
    G, Y,  # upstream gradient and the forward's output (= x̂)
    PART,  # fp32 [C, S, 2]: Σg and Σg·y over each program's rows
    N, HW, CHW, ROWS, S,
    BLOCK_HW: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    c = tl.program_id(0)
    s = tl.program_id(1)
    row_start = s * ROWS
    row_end = tl.minimum(row_start + ROWS, N)
    idx = tl.arange(0, BLOCK)
    acc_g = tl.zeros([BLOCK], dtype=tl.float32)
    acc_gy = tl.zeros([BLOCK], dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK // BLOCK_HW):
        for h0 in range(0, HW, BLOCK_HW):
            offs, mask = _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW, INDEX_64)
            g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
            acc_g += g
            acc_gy += g * y
    base = (c * S + s) * 2
    tl.store(PART + base + 0, tl.sum(acc_g, axis=0))
    tl.store(PART + base + 1, tl.sum(acc_gy, axis=0))


@triton.jit
def _bn_grad_apply_kernel(
    G, Y, DX,
    PART,  # fp32 [C, S, 2] from _bn_grad_stats_kernel
    RSTD,  # fp32 [C]
    N, HW, CHW, ROWS, S,
    inv_count,  # 1 / (N·H·W)
    S_BLOCK: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    c = tl.program_id(0)
    s = tl.program_id(1)
    sidx = tl.arange(0, S_BLOCK)
    smask = sidx < S
    mean_g = tl.sum(tl.load(PART + (c * S + sidx) * 2 + 0, mask=smask, other=0.0), axis=0) * inv_count
    mean_gy = tl.sum(tl.load(PART + (c * S + sidx) * 2 + 1, mask=smask, other=0.0), axis=0) * inv_count
    rstd = tl.load(RSTD + c)
    row_start = s * ROWS
    row_end = tl.minimum(row_start + ROWS, N)
    idx = tl.arange(0, BLOCK)
    for r0 in range(row_start, row_end, BLOCK // BLOCK_HW):
        for h0 in range(0, HW, BLOCK_HW):
            offs, mask = _tile_offsets(c, r0, h0, row_end, HW, CHW, idx, BLOCK_HW, INDEX_64)
            g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + offs, (rstd * (g - mean_g - y * mean_gy)).to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
def _geometry(x: torch.Tensor):
    """(N, C, HW, ROWS, S, BLOCK_HW, BLOCK, INDEX_64, num_warps) for a [N, C, H, W] tensor."""
    from . import INTERPRETED

    n, c = x.shape[0], x.shape[1]
    hw = x.shape[2] * x.shape[3]
    tile = 1 << 15 if INTERPRETED else TILE  # the interpreter runs programs one by one: few, large ones
    block_hw = min(triton.next_power_of_2(hw), tile)
    block = max(block_hw, min(tile, block_hw * triton.next_power_of_2(n)))
    # none with less than one tile of work
    rows, splits = split_images(x, n, c, most=triton.cdiv(n * hw, block))
    index_64 = x.numel() > INT32_LIMIT - block
    return n, c, hw, rows, splits, block_hw, block, index_64, 8 if block >= 4096 else 4


def check_batch_norm_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"batch_norm: expected a 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"batch_norm: the Triton kernels take float32, float16 or bfloat16, got {x.dtype}")
    if x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input of "
                         f"shape {tuple(x.shape)}")


def batch_norm_forward(x, running_mean, running_var, num_batches_tracked, momentum: float, eps: float):
    """Training-mode BatchNorm2d (no affine). Returns (y, rstd [C] fp32). running_mean/var and
    num_batches_tracked are updated in place when given (all three or none)."""
    check_batch_norm_input(x)
    x = x.contiguous()
    n, c, hw, rows, splits, block_hw, block, index_64, num_warps = _geometry(x)
    y = torch.empty_like(x)
    rstd = torch.empty((c,), device=x.device, dtype=torch.float32)
    if x.numel() == 0:
        return y, rstd
    part = torch.empty((c, splits, 3), device=x.device, dtype=torch.float32)
    update = running_mean is not None
    grid = (c, splits)
    _bn_stats_kernel[grid](x, part, n, hw, c * hw, rows, splits, BLOCK_HW=block_hw, BLOCK=block,
                           INDEX_64=index_64, num_warps=num_warps)
    _bn_apply_kernel[grid](
        x, y, part, rstd,
        running_mean if update else rstd, running_var if update else rstd,
        num_batches_tracked if update else part,
        n, hw, c * hw, rows, splits, float(eps), float(momentum),
        UPDATE_RUNNING=update, S_BLOCK=max(2, triton.next_power_of_2(splits)), BLOCK_HW=block_hw, BLOCK=block,
        INDEX_64=index_64, num_warps=num_warps,
    )
    return y, rstd


def batch_norm_backward(grad: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """dL/dx of training-mode BatchNorm2d (no affine) from the upstream gradient, the output y and rstd."""
    grad = grad.contiguous()
    n, c, hw, rows, splits, block_hw, block, index_64, num_warps = _geometry(y)
    dx = torch.empty_like(y)
    if y.numel() == 0:
        return dx
    part = torch.empty((c, splits, 2), device=y.device, dtype=torch.float32)
    grid = (c, splits)
    _bn_grad_stats_kernel[grid](grad, y, part, n, hw, c * hw, rows, splits, BLOCK_HW=block_hw, BLOCK=block,
                                INDEX_64=index_64, num_warps=num_warps)
    _bn_grad_apply_kernel[grid](grad, y, dx, part, rstd, n, hw, c * hw, rows, splits, 1.0 / (n * hw),
                                S_BLOCK=max(2, triton.next_power_of_2(splits)), BLOCK_HW=block_hw, BLOCK=block,
                                INDEX_64=index_64, num_warps=num_warps)
    return dx

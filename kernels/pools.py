"""Triton kernels: a node's two DARTS pools, max and average 3×3, in one pass each way.

DARTS's ``max_pool_3x3`` is ``MaxPool2d(3, stride, padding=1)`` and its ``avg_pool_3x3`` is
``AvgPool2d(3, stride, padding=1, count_include_pad=False)``; every edge leaving a node pools the
same input, so a search cell runs both pools once per node. In torch that is two kernels forward
(the max pool also writing int64 indices) and two backward, whose two gradients of x then meet in
the node's gradient sum. Here:

- forward: one launch reads each 3×3 window once and writes both outputs and the max's window
  position (int8: 0…8, row-major) and, if asked, both outputs' per-channel partial moments for the
  BatchNorms that follow (their statistics kernel then does not read the pools), with torch's rules: a NaN wins (the last one in the window,
  as in torch's ``val > max || isnan(val)``), ties go to the first maximum, the divisor is the
  number of window positions inside the image;
- backward: one launch gathers, for each input element, over the (at most 9) windows that
  contain it: avg gradient / divisor, plus the max gradient where the window's maximum is this
  element. No atomics, one write of dx (the sum of both pools' gradients of x).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grid import cdiv, next_power_of_2, plane_pointer
from .moments import row_moments, store_moments
from .noisy_mixed_sum import INT32_LIMIT, _block_offsets, _elementwise_block


@triton.jit
def _span(o, STRIDE: tl.constexpr, size):
    """(first valid tap, valid taps) of the 3-tap window at output index o along one axis
    (window start o·STRIDE - 1, padding 1)."""
    start = o * STRIDE - 1
    first = tl.where(start < 0, -start, 0)
    last = tl.minimum(start + 3, size) - start  # one past the last valid tap
    return first, last - first


@triton.jit
def _pixels(pid, numel, H, W, OTHER_PLANE, BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """This program's elements of a contiguous [N·C, H, W] tensor: (flat index, mask, row, column,
    where the same image's plane starts in the other tensor, OTHER_PLANE elements per plane)."""
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    return offs, offs < numel, (offs // W) % H, offs % W, (offs // (W * H)) * OTHER_PLANE


@triton.jit
def _plane_moments(y, ok, MOM, plane, C, PLANES):
    """Each row's (count, mean, M2) of y [ROWS, PIXELS] over ok: a plane's chunk (plane = n·C + c,
    chunk = program_id(1)), stored at MOM[c, n·chunks + chunk] (fp32 [C, N·chunks, 3], the partial
    moments kernels/batch_norm.py merges for the BatchNorm of the stored tensor)."""
    count, mean, m2 = row_moments(y, ok)
    index = ((plane % C) * (PLANES // C) + plane // C) * tl.num_programs(1) + tl.program_id(1)
    store_moments(MOM, index, count, mean, m2, mask=plane < PLANES)


@triton.jit
def _pools_forward_kernel(X, YMAX, YAVG, ARG, MOM_MAX, MOM_AVG, PLANES, C, H, W, HO, WO, STRIDE: tl.constexpr,
                          MOMENTS: tl.constexpr, ROWS: tl.constexpr, PIXELS: tl.constexpr, INDEX_64: tl.constexpr):
    # a [ROWS planes (n·C + c), PIXELS output pixels of each] tile
    plane = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    q = tl.program_id(1) * PIXELS + tl.arange(0, PIXELS)
    mask = (plane < PLANES)[:, None] & (q < HO * WO)[None, :]
    oh = (q // WO)[None, :]
    ow = (q % WO)[None, :]
    x_rows = plane_pointer(X, plane, H * W, INDEX_64)[:, None]
    first_h, rows = _span(oh, STRIDE, H)
    first_w, cols = _span(ow, STRIDE, W)
    best = tl.full([ROWS, PIXELS], float("-inf"), tl.float32)
    arg = tl.zeros([ROWS, PIXELS], dtype=tl.int32) + first_h * 3 + first_w  # torch starts at the first valid position
    total = tl.zeros([ROWS, PIXELS], dtype=tl.float32)
    for kh in tl.static_range(3):
        ih = oh * STRIDE - 1 + kh
        row_ok = (ih >= 0) & (ih < H)
        for kw in tl.static_range(3):
            iw = ow * STRIDE - 1 + kw
            ok = mask & row_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_rows + ih * W + iw, mask=ok, other=float("-inf")).to(tl.float32)
            better = ok & ((v > best) | (v != v))
            best = tl.where(better, v, best)
            arg = tl.where(better, kh * 3 + kw, arg)
            total += tl.where(ok, v, 0.0)
    ymax = best.to(YMAX.dtype.element_ty)
    # at least 1 inside the image; the max only for the tile's lanes past a plane's end (never stored)
    yavg = (total / tl.maximum(rows * cols, 1).to(tl.float32)).to(YAVG.dtype.element_ty)
    tl.store(plane_pointer(YMAX, plane, HO * WO, INDEX_64)[:, None] + q[None, :], ymax, mask=mask)
    tl.store(plane_pointer(YAVG, plane, HO * WO, INDEX_64)[:, None] + q[None, :], yavg, mask=mask)
    tl.store(plane_pointer(ARG, plane, HO * WO, INDEX_64)[:, None] + q[None, :], arg.to(tl.int8), mask=mask)
    if MOMENTS:  # the BatchNorms' statistics of both outputs as stored
        _plane_moments(ymax.to(tl.float32), mask, MOM_MAX, plane, C, PLANES)
        _plane_moments(yavg.to(tl.float32), mask, MOM_AVG, plane, C, PLANES)


@triton.jit
def _pools_backward_kernel(DX, GMAX, GAVG, ARG, H, W, HO, WO, numel, STRIDE: tl.constexpr,
                           HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr, BLOCK: tl.constexpr,
                           INDEX_64: tl.constexpr):
    # input elements; base: their image's plane in the pools' outputs
    offs, mask, ih, iw, base = _pixels(tl.program_id(0), numel, H, W, HO * WO, BLOCK, INDEX_64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(3):
        # the window row oh whose tap kh is ih: oh·STRIDE - 1 + kh = ih
        num_h = ih + 1 - kh
        oh = num_h // STRIDE
        row_ok = (num_h >= 0) & (num_h % STRIDE == 0) & (oh < HO)
        oh = tl.where(row_ok, oh, 0)
        _, rows = _span(oh, STRIDE, H)
        for kw in tl.static_range(3):
            num_w = iw + 1 - kw
            ow = num_w // STRIDE
            ok = mask & row_ok & (num_w >= 0) & (num_w % STRIDE == 0) & (ow < WO)
            ow = tl.where(ok, ow, 0)
            o = base + oh * WO + ow
            if HAS_AVG:
                _, cols = _span(ow, STRIDE, W)
                g = tl.load(GAVG + o, mask=ok, other=0.0).to(tl.float32)
                acc += g / (rows * cols).to(tl.float32)
            if HAS_MAX:
                a = tl.load(ARG + o, mask=ok, other=-1).to(tl.int32)
                g = tl.load(GMAX + o, mask=ok, other=0.0).to(tl.float32)
                acc += tl.where(a == kh * 3 + kw, g, 0.0)
    tl.store(DX + offs, acc.to(DX.dtype.element_ty), mask=mask)


def _geometry(x: torch.Tensor, stride: int) -> tuple[int, int]:
    if x.dim() != 4:
        raise ValueError(f"pools_3x3: x must be [N, C, H, W], got {tuple(x.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"pools_3x3: stride must be 1 or 2, got {stride}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"pools_3x3 supports float32, float16 and bfloat16, got {x.dtype}")
    h, w = x.shape[2:]
    if h < 1 or w < 1:
        raise ValueError(f"pools_3x3: empty image {h}×{w}")
    return (h - 1) // stride + 1, (w - 1) // stride + 1  # (H + 2·1 - 3) // stride + 1


def pools_3x3_forward(x: torch.Tensor, stride: int, moments: bool = False):
    """(max_pool, avg_pool, argmax) of x [N, C, H, W]: the DARTS pools (padding 1, the average
    over the positions inside the image) and the max's window position, int8 0…8, for the
    backward. moments: also each output's per-channel statistics as the kernel stored it, fp32
    [C, M, 3] (count, mean, M2 of each program's pixels of a plane), for
    batch_norms_forward(moments=…): (max_pool, avg_pool, argmax, moments of max_pool, of avg_pool)."""
    ho, wo = _geometry(x, stride)
    x = x.contiguous()
    n, c, h, w = x.shape
    ymax = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype)
    yavg = torch.empty_like(ymax)
    arg = torch.empty((n, c, ho, wo), device=x.device, dtype=torch.int8)
    numel = ymax.numel()
    # a program: ROWS planes × PIXELS output pixels (a chunk of each plane), as many elements as an
    # element-wise block of the pools (two a thread on a GPU: their nine taps)
    block, num_warps = _elementwise_block(numel, many_operands=True)
    pixels = min(next_power_of_2(max(ho * wo, 1)), block)
    chunks = cdiv(ho * wo, pixels)
    mom = torch.empty((2, c, n * chunks, 3) if moments else (2, 1), device=x.device, dtype=torch.float32)
    if numel:
        _pools_forward_kernel[(cdiv(n * c, block // pixels), chunks)](
            x, ymax, yavg, arg, mom[0], mom[1], n * c, c, h, w, ho, wo, STRIDE=stride, MOMENTS=moments,
            ROWS=block // pixels, PIXELS=pixels, INDEX_64=max(x.numel(), numel) > INT32_LIMIT - block,
            num_warps=num_warps)
    elif moments:  # no pixel: empty statistics (count 0)
        mom.zero_()
    return (ymax, yavg, arg, mom[0], mom[1]) if moments else (ymax, yavg, arg)


def pools_3x3_backward(grad_max, grad_avg, arg: torch.Tensor, x_shape, stride: int) -> torch.Tensor:
    """dx [x_shape] of both pools: grad_max routed to each window's maximum (arg), grad_avg spread
    over each window's positions inside the image; either gradient may be None (not used)."""
    if grad_max is None and grad_avg is None:
        raise ValueError("pools_3x3_backward needs at least one gradient")
    n, c, h, w = x_shape
    some = grad_max if grad_max is not None else grad_avg
    ho, wo = _geometry(torch.empty((0, 0, h, w), dtype=some.dtype), stride)
    for name, g in (("grad_max", grad_max), ("grad_avg", grad_avg)):
        if g is not None and tuple(g.shape) != (n, c, ho, wo):
            raise ValueError(f"pools_3x3_backward: {name} must be {(n, c, ho, wo)}, got {tuple(g.shape)}")
    if tuple(arg.shape) != (n, c, ho, wo) or arg.dtype != torch.int8:
        raise ValueError(f"pools_3x3_backward: arg must be int8 {(n, c, ho, wo)}, got {arg.dtype} {tuple(arg.shape)}")
    grad_max = grad_max.contiguous() if grad_max is not None else None
    grad_avg = grad_avg.contiguous() if grad_avg is not None else None
    dx = torch.empty((n, c, h, w), device=some.device, dtype=some.dtype)
    numel = dx.numel()
    if numel:
        block, num_warps = _elementwise_block(numel, many_operands=True)
        _pools_backward_kernel[(cdiv(numel, block),)](
            dx, grad_max if grad_max is not None else some, grad_avg if grad_avg is not None else some, arg,
            h, w, ho, wo, numel, STRIDE=stride, HAS_MAX=grad_max is not None, HAS_AVG=grad_avg is not None,
            BLOCK=block, INDEX_64=numel > INT32_LIMIT - block, num_warps=num_warps)
    return dx

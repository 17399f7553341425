"""Triton kernels: the first-stage input of a batched conv group, relu(x) of each source node
repeated once per edge, in one pass each way.

An EdgeGroup's sep/dil convs read, edge-major, relu(h_s) repeated counts[s] times along the
channels ([N, E·C, H, W], ndarts.edge_groups.repeat_sources). In torch that is a relu and a
repeat (a cat for two sources) forward, and a sum over the repeats and the relu's backward
backward; and since every primitive's first conv reads the repeated tensor, autograd first sums
their gradients of it (an in-place add per primitive after the first). Here one launch per source
writes its relu into its counts[s] edge slots, and one launch per source reads those slots'
gradients from each primitive's gradient tensor, sums them and applies the relu's mask; sources
with as many edges each (a cell's two inputs) share one launch each way (program_id(1) picks the
source). Reads N, writes count·N forward; reads k·count·N + N (k gradient tensors), writes N
backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grid import cdiv, pad_pointers, pick_pointer
from .noisy_group_sum import _grouped_offsets
from .noisy_mixed_sum import INT32_LIMIT, _block_offsets, _elementwise_block

MAX_REPEATS = 8
MAX_GRADS = 6  # gradient tensors of the repeated input read by one backward launch (a group's primitives)


@triton.jit
def _relu_repeat_forward_kernel(Y, X0, X1, numel, INNER, Y_STRIDE, FIRST, COUNT: tl.constexpr,
                                SOURCES: tl.constexpr, BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    pid = tl.program_id(0)
    src = tl.program_id(1)  # source src of this launch: X_src, its edge slots FIRST + src·COUNT …
    X = pick_pointer(src, X0, X1, X1, X1, X1, X1, X1, X1, SOURCES)
    FIRST = FIRST + src * COUNT
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < numel
    x = tl.load(X + offs, mask=mask, other=0.0)
    y = tl.where(x < 0, tl.zeros_like(x), x)  # torch.relu: NaN stays NaN
    base = _grouped_offsets(offs, FIRST, INNER, Y_STRIDE)  # the source's first edge slot
    for r in tl.static_range(COUNT):
        tl.store(Y + base + r * INNER, y, mask=mask)


@triton.jit
def _slots_sum(acc, DY, base, INNER, mask, COUNT: tl.constexpr):
    """acc + Σ over the source's COUNT edge slots of DY (fp32)."""
    for r in tl.static_range(COUNT):
        acc += tl.load(DY + base + r * INNER, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _relu_repeat_backward_kernel(DX0, DX1, DY0, DY1, DY2, DY3, DY4, DY5, X0, X1, numel, INNER, Y_STRIDE, FIRST,
                                 COUNT: tl.constexpr, NUM_GRADS: tl.constexpr, SOURCES: tl.constexpr,
                                 BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    pid = tl.program_id(0)
    src = tl.program_id(1)  # as in the forward
    X = pick_pointer(src, X0, X1, X1, X1, X1, X1, X1, X1, SOURCES)
    DX = pick_pointer(src, DX0, DX1, DX1, DX1, DX1, DX1, DX1, DX1, SOURCES)
    FIRST = FIRST + src * COUNT
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < numel
    base = _grouped_offsets(offs, FIRST, INNER, Y_STRIDE)  # the source's first edge slot
    acc = _slots_sum(tl.zeros([BLOCK], dtype=tl.float32), DY0, base, INNER, mask, COUNT)
    if NUM_GRADS > 1:
        acc = _slots_sum(acc, DY1, base, INNER, mask, COUNT)
    if NUM_GRADS > 2:
        acc = _slots_sum(acc, DY2, base, INNER, mask, COUNT)
    if NUM_GRADS > 3:
        acc = _slots_sum(acc, DY3, base, INNER, mask, COUNT)
    if NUM_GRADS > 4:
        acc = _slots_sum(acc, DY4, base, INNER, mask, COUNT)
    if NUM_GRADS > 5:
        acc = _slots_sum(acc, DY5, base, INNER, mask, COUNT)
    x = tl.load(X + offs, mask=mask, other=0.0)
    # torch's relu backward: zero where x <= 0, the gradient elsewhere (NaN included)
    tl.store(DX + offs, tl.where(x <= 0, 0.0, acc).to(DX.dtype.element_ty), mask=mask)


def _check(xs, counts):
    if not xs or len(xs) != len(counts) or any(not 1 <= c <= MAX_REPEATS for c in counts):
        raise ValueError(f"relu_repeat: one count in 1..{MAX_REPEATS} per source, got {list(counts)} for {len(xs)} sources")
    first = xs[0]
    if first.dim() != 4:
        raise ValueError(f"relu_repeat: sources must be [N, C, H, W], got {tuple(first.shape)}")
    for x in xs:
        if x.shape != first.shape or x.dtype != first.dtype or x.device != first.device:
            raise ValueError("relu_repeat: sources must share shape, dtype and device")
    if first.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"relu_repeat supports float32, float16 and bfloat16, got {first.dtype}")
    return [x.contiguous() for x in xs]


def _launches(xs, counts, grads: int = 0):
    """(source indices, first slot, count) of each launch (two sources with as many edges share
    one), and the launch geometry. grads: the backward's gradient tensors (count · grads loads
    an element: past eight, the smaller blocks of _elementwise_block's many_operands)."""
    first = xs[0]
    numel = first.numel()
    block, num_warps = _elementwise_block(numel, many_operands=max(counts) * grads > 8)
    total = sum(counts) * numel
    if len(xs) == 2 and counts[0] == counts[1]:
        return [((0, 1), 0, counts[0])], numel, block, num_warps, total > INT32_LIMIT - block
    slots, start = [], 0
    for s, count in enumerate(counts):
        slots.append(((s,), start, count))
        start += count
    return slots, numel, block, num_warps, total > INT32_LIMIT - block


def relu_repeat_forward(xs, counts) -> torch.Tensor:
    """[N, E·C, H, W] (E = Σ counts): channel (e·C + c) = relu(xs[s])[:, c] for edge e of source s."""
    xs = _check(xs, counts)
    n, c, h, w = xs[0].shape
    y = torch.empty((n, sum(counts) * c, h, w), device=xs[0].device, dtype=xs[0].dtype)
    slots, numel, block, num_warps, index_64 = _launches(xs, counts)
    if numel:
        for sources, start, count in slots:
            x = [xs[s] for s in sources]
            _relu_repeat_forward_kernel[(cdiv(numel, block), len(x))](
                y, *pad_pointers(x, 2), numel, c * h * w, y.stride(0), start, COUNT=count, SOURCES=len(x),
                BLOCK=block, INDEX_64=index_64, num_warps=num_warps)
    return y


def relu_repeat_backward(grad, xs, counts) -> list:
    """The sources' gradients: Σ over each source's edge slots of grad, zero where x <= 0. grad:
    the repeated tensor's gradient, or a list of up to MAX_GRADS of them (one per consumer of the
    repeated tensor: summed here, in the same pass)."""
    xs = _check(xs, counts)
    n, c, h, w = xs[0].shape
    grads = [grad] if isinstance(grad, torch.Tensor) else list(grad)
    if not 1 <= len(grads) <= MAX_GRADS:
        raise ValueError(f"relu_repeat: 1..{MAX_GRADS} gradient tensors, got {len(grads)}")
    for g in grads:
        if tuple(g.shape) != (n, sum(counts) * c, h, w) or g.dtype != xs[0].dtype or g.device != xs[0].device:
            raise ValueError(f"relu_repeat: grad must be [{n}, {sum(counts) * c}, {h}, {w}] {xs[0].dtype} on "
                             f"{xs[0].device}, got {tuple(g.shape)} {g.dtype} on {g.device}")
    grads = [g.contiguous() for g in grads]
    slots, numel, block, num_warps, index_64 = _launches(xs, counts, len(grads))
    dxs = [torch.empty_like(x) for x in xs]
    if numel:
        for sources, start, count in slots:
            x, dx = [xs[s] for s in sources], [dxs[s] for s in sources]
            _relu_repeat_backward_kernel[(cdiv(numel, block), len(x))](
                *pad_pointers(dx, 2), *pad_pointers(grads, MAX_GRADS), *pad_pointers(x, 2), numel, c * h * w,
                grads[0].stride(0), start, COUNT=count, NUM_GRADS=len(grads), SOURCES=len(x), BLOCK=block,
                INDEX_64=index_64, num_warps=num_warps)
    return dxs

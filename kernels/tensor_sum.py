"""Triton kernel: the sum of several tensors alike, in one pass (fp32 accumulation).

What autograd does with k gradients of one tensor is k - 1 in-place adds, a kernel each; the
search cell's node fan-out (ndarts.fan_out) sums the gradients from a node's relu, pools, skip
and its slice of the cell's output with one launch instead. Reads k·N, writes N. A term may be a
channel slice of a wider tensor ([N, C, H, W] with dense images any distance apart: the cell
output's gradient, sliced by torch.cat's backward), read in place.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grid import cdiv, pad_pointers, summing_launches
from .noisy_mixed_sum import INT32_LIMIT, _block_offsets, _elementwise_block

MAX_TERMS = 6


@triton.jit
def _term(X, S, offs, mask, INNER, STRIDED: tl.constexpr):
    """A term at flat index offs (over [N, INNER]), fp32; STRIDED: its images S elements apart."""
    if STRIDED:
        offs = offs + (offs // INNER) * (S - INNER)
    return tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _tensor_sum_kernel(Y, RUN, X0, X1, X2, X3, X4, X5, S0, S1, S2, S3, S4, S5, n, INNER, NUM: tl.constexpr,
                       ACCUMULATE: tl.constexpr, STRIDED: tl.constexpr, BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """Y = RUN (ACCUMULATE: the earlier launches' running sum, fp32 unless Y is) + Σ X_i."""
    pid = tl.program_id(0)
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < n
    acc = _term(X0, S0, offs, mask, INNER, STRIDED)
    if NUM > 1:
        acc += _term(X1, S1, offs, mask, INNER, STRIDED)
    if NUM > 2:
        acc += _term(X2, S2, offs, mask, INNER, STRIDED)
    if NUM > 3:
        acc += _term(X3, S3, offs, mask, INNER, STRIDED)
    if NUM > 4:
        acc += _term(X4, S4, offs, mask, INNER, STRIDED)
    if NUM > 5:
        acc += _term(X5, S5, offs, mask, INNER, STRIDED)
    if ACCUMULATE:  # a later chunk of a longer list: add to what the earlier chunks wrote
        acc += tl.load(RUN + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, acc.to(Y.dtype.element_ty), mask=mask)


def _image_dense(t: torch.Tensor) -> bool:
    """[N, C, H, W] whose images are dense NCHW blocks, any distance ≥ C·H·W apart (a channel slice)."""
    n, c, h, w = t.shape
    return t.stride()[1:] == (h * w, w, 1) and (n == 1 or t.stride(0) >= c * h * w)


def tensor_sum(tensors) -> torch.Tensor:
    """Σ tensors (same shape, dtype and device; float32/16/bf16), in the first one's memory layout
    when all share it (contiguous or channels_last), else contiguous. 4-D terms whose images are
    dense NCHW (a channel slice of a wider tensor) are read in place. One launch per MAX_TERMS
    tensors, the running sum kept in fp32 between them."""
    if not tensors:
        raise ValueError("tensor_sum needs at least one tensor")
    first = tensors[0]
    for t in tensors[1:]:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"tensor_sum: tensors must share shape, dtype and device, got {tuple(first.shape)} "
                             f"{first.dtype} {first.device} and {tuple(t.shape)} {t.dtype} {t.device}")
    if first.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"tensor_sum supports float32, float16 and bfloat16, got {first.dtype}")
    dense = first.is_contiguous() or (first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last))
    strided = False
    if not (dense and all(t.stride() == first.stride() for t in tensors)):
        strided = first.dim() == 4 and all(_image_dense(t) for t in tensors)
        if not strided:
            tensors = [t.contiguous() for t in tensors]
            first = tensors[0]
    # dense strides kept (flat memory order the same for all), or contiguous for strided terms
    y = torch.empty(first.shape, device=first.device, dtype=first.dtype) if strided else torch.empty_like(first)
    n = first.numel()
    if n == 0:
        return y
    inner = n // first.shape[0] if strided else n
    strides = [t.stride(0) if strided else inner for t in tensors]
    block, num_warps = _elementwise_block(n)
    index_64 = n > INT32_LIMIT - block or (strided and first.shape[0] * max(strides) > INT32_LIMIT - block)
    for start, stop, out, run in summing_launches(y, len(tensors), MAX_TERMS):  # fp32 between launches
        chunk = tensors[start:stop]
        _tensor_sum_kernel[(cdiv(n, block),)](
            out, run, *pad_pointers(chunk, MAX_TERMS),
            *pad_pointers(strides[start:stop], MAX_TERMS), n, inner,
            NUM=len(chunk), ACCUMULATE=start > 0, STRIDED=strided, BLOCK=block, INDEX_64=index_64,
            num_warps=num_warps)
    return y

"""Triton kernel: the sum of several tensors alike, in one pass (fp32 accumulation).

What autograd does with k gradients of one tensor is k - 1 in-place adds, a kernel each; the
search cell's node fan-out (ndarts.fan_out) sums the gradients from a node's relu, pools and
skip with one launch instead. Reads k·N, writes N.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grid import chunk_ranges, pad_pointers
from .noisy_mixed_sum import INT32_LIMIT, _block_offsets, _elementwise_block

MAX_TERMS = 6


@triton.jit
def _tensor_sum_kernel(Y, X0, X1, X2, X3, X4, X5, n, NUM: tl.constexpr, ACCUMULATE: tl.constexpr,
                       BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    pid = tl.program_id(0)
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < n
    acc = tl.load(X0 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM > 1:
        acc += tl.load(X1 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM > 2:
        acc += tl.load(X2 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM > 3:
        acc += tl.load(X3 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM > 4:
        acc += tl.load(X4 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM > 5:
        acc += tl.load(X5 + offs, mask=mask, other=0.0).to(tl.float32)
    if ACCUMULATE:  # a later chunk of a longer list: add to what the earlier chunks wrote
        acc += tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, acc.to(Y.dtype.element_ty), mask=mask)


def tensor_sum(tensors) -> torch.Tensor:
    """Σ tensors (same shape, dtype and device; float32/16/bf16), in the first one's memory layout
    when all share it (contiguous or channels_last), else contiguous. One launch per MAX_TERMS tensors."""
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
    if not (dense and all(t.stride() == first.stride() for t in tensors)):
        tensors = [t.contiguous() for t in tensors]
        first = tensors[0]
    y = torch.empty_like(first)  # keeps the (dense) strides: flat memory order is the same for all
    n = first.numel()
    if n == 0:
        return y
    block, num_warps = _elementwise_block(n)
    for start, stop in chunk_ranges(len(tensors), MAX_TERMS):
        chunk = tensors[start:stop]
        _tensor_sum_kernel[(triton.cdiv(n, block),)](
            y, *pad_pointers(chunk, MAX_TERMS), n, NUM=len(chunk), ACCUMULATE=start > 0, BLOCK=block,
            INDEX_64=n > INT32_LIMIT - block, num_warps=num_warps)
    return y

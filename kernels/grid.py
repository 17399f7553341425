"""How the kernels' launches are shaped: how the per-channel kernels (BatchNorm, depthwise-conv
weight gradient) split their work, and how the kernels that take a fixed number of tensor
pointers (mixed sums, group sums, BatchNorms, stds) get longer and shorter lists, how a
program picks its tensor out of such a list, and where a plane of an NCHW tensor starts."""
import sys

import torch
import triton
import triton.language as tl

# This package's module object, whatever name it was imported under (ndarts_kernels installed,
# kernels in a checkout): its INTERPRETED is read at each call, because tests/gpu_compile.py and
# benchmarks/kernel_resources.py switch it to size launches as for a GPU.
_PACKAGE = sys.modules[__package__]


def interpreted() -> bool:
    """Whether the launchers size their grids for Triton's interpreter (the package's INTERPRETED).
    An attribute read: a `from . import INTERPRETED` in a launcher went through the import system
    at each call (~1.5 µs of host time)."""
    return _PACKAGE.INTERPRETED


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for the host's integers. triton.cdiv is a constexpr function whose every call
    unwraps its arguments and reads Triton's knobs: 2.9 µs against 0.07 µs on this 2-core machine,
    and a launcher computes several."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The least power of 2 ≥ n (0 for n ≤ 0), triton.next_power_of_2's values (5.1 µs a call
    there, 0.1 µs here)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


# Where no GPU is at hand, the multiprocessor count the launchers size their grids for (None: they
# size them for Triton's interpreter). benchmarks/kernel_resources.py sets it to an H100/H200's to
# record, on a CPU, the launches a search step makes on that card.
ASSUMED_MULTIPROCESSORS: int | None = None


def multiprocessors(x: torch.Tensor) -> int | None:
    """The multiprocessors of x's GPU, for sizing a grid; None in Triton's interpreter or for a CPU
    tensor (unless ASSUMED_MULTIPROCESSORS is set): the launcher then makes few programs."""
    if ASSUMED_MULTIPROCESSORS is not None:
        return ASSUMED_MULTIPROCESSORS
    if interpreted() or not x.is_cuda:
        return None
    return torch.cuda.get_device_properties(x.device).multi_processor_count


def split_units(x: torch.Tensor, units: int, tiles: int) -> tuple[int, int]:
    """(units per program, programs per tile) for a grid of tiles × programs in which each program
    loops over its share of `units` work units and writes one row of partial sums (a reduce adds
    them: the weight-gradient kernels of the fused dw + 1×1 pairs and of the 1×1 convs).

    On a GPU at most four programs per multiprocessor in all: those kernels hold one or two resident
    programs per multiprocessor (8 warps of ≤ 166 registers, benchmarks/kernel_resources.py), so
    rounding up past a multiple of the multiprocessors (544 programs of 528) adds a wave of
    stragglers. In Triton's interpreter two per tile (the reduce of several partials runs in the
    tests too)."""
    sm = multiprocessors(x)
    splits = max(min(units, 2) if sm is None else min(units, 4 * sm // tiles), 1)
    per_program = cdiv(max(units, 1), splits)
    return per_program, cdiv(max(units, 1), per_program)


def split_images(x: torch.Tensor, n: int, channels: int, most: int | None = None) -> tuple[int, int]:
    """(images per program, programs per channel) for a grid of channels × programs over n images.

    On a GPU about four programs per multiprocessor in all, at most `most` per channel and never
    more than n. In Triton's interpreter, which runs programs one by one, two (when n allows):
    the merge of the partial results runs in the tests too.
    """
    if n < 1:
        return 1, 1
    if interpreted():
        splits = min(n, 2)
    else:
        sm = multiprocessors(x) or 8
        splits = max(1, min(n, most or n, cdiv(4 * sm, channels)))
    rows = cdiv(n, splits)
    return rows, cdiv(n, rows)


def pad_pointers(tensors, count: int, like=None) -> list:
    """`tensors` padded to `count` pointer arguments with `like` (default: the first tensor); a
    kernel told how many are live (a constexpr) never reads the padding."""
    like = tensors[0] if like is None else like
    return list(tensors) + [like] * (count - len(tensors))


def chunk_ranges(num: int, size: int):
    """(start, stop) of consecutive chunks of at most `size` out of `num`: the launches of a list
    longer than a kernel's pointer arguments."""
    for start in range(0, num, size):
        yield start, min(num, start + size)


def summing_launches(y: torch.Tensor, num: int, size: int):
    """(start, stop, out, run) for each launch of a sum of `num` terms, `size` at a time: the launch
    adds its terms to `run` (the earlier launches' running total; read from the second launch on) and
    writes `out`. The running total is y itself when y is fp32 or one launch does it all, else an
    fp32 twin of y (same strides), so that a bf16/fp16 result is rounded once, by the last launch
    (the only one whose `out` is y), not once per launch."""
    chunks = list(chunk_ranges(num, size))
    run = y if len(chunks) == 1 or y.dtype == torch.float32 else torch.empty_like(y, dtype=torch.float32)
    for start, stop in chunks:
        yield start, stop, y if stop == num else run, run


@triton.jit
def pick_pointer(t, P0, P1, P2, P3, P4, P5, P6, P7, T: tl.constexpr):
    """P_t of a launch's T values (t a runtime index < T; pointers, the counterpart of
    pad_pointers, or scalars)."""
    p = P0
    if T > 1:
        if t == 1:
            p = P1
    if T > 2:
        if t == 2:
            p = P2
    if T > 3:
        if t == 3:
            p = P3
    if T > 4:
        if t == 4:
            p = P4
    if T > 5:
        if t == 5:
            p = P5
    if T > 6:
        if t == 6:
            p = P6
    if T > 7:
        if t == 7:
            p = P7
    return p


@triton.jit
def plane_pointer(ptr, plane, size, INDEX_64: tl.constexpr):
    """Pointer to the first element of plane `plane` (a scalar, or a vector of planes: a vector of
    pointers) of a tensor of planes `size` elements each, in int64 arithmetic where the tensor
    needs it (INDEX_64)."""
    if INDEX_64:
        return ptr + plane.to(tl.int64) * size
    return ptr + plane * size

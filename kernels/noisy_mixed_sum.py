"""Triton kernels for the noisy mixed-op sum of NoisyDARTS, forward and backward.

    y = Σ_k w_k·o_k,   with o_skip replaced by   o_skip + (μ + λ·std(o_skip)·ε)   (additive)
                                           or   o_skip·(μ + λ·ε)                 (multiplicative)

Three layers, one name (Liger style): private ``@triton.jit`` kernels, then launchers that
check the layout, pick the block size and allocate on the operands' device. The autograd and
the torch custom op live in ``ndarts.fused_sum``.

Design, in numbers (floor = bytes the op must move, N elements, K operands):
- std: per-program (count, mean, M2) over BLOCK·ITERS elements, then one program merges the
  partials with Chan's formula. Never Σx and Σx²: in fp32 those cancel catastrophically once
  |mean| ≫ std (at mean 1e4, std 1 they return garbage). Reads N.
- forward: one pass, reads K·N, writes N; ε = tl.randn(seed, flat index) made in registers.
- backward: one pass, reads g and the K operands, writes the K operand gradients, regenerates
  ε from the same (seed, index), and writes per-program partial sums Σ g·o_k; those partials
  are summed by a deterministic torch reduction (no float atomics), so dW is bitwise
  reproducible run to run.
Operands are passed as up to MAX_OPERANDS pointer arguments (constexpr NUM_OPS says how many
are live); more operands are processed in chunks that accumulate into y.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .grid import cdiv, chunk_ranges, interpreted, next_power_of_2, pad_pointers, pick_pointer, summing_launches
from .moments import merge_tile, store_moments

MAX_OPERANDS = 8
INT32_LIMIT = 2**31 - 1
MERGE_BLOCK = 1024  # partials merged per step by the one-program merge kernel
SQRT3 = math.sqrt(3.0)

# Codes for the noise kind, shared with ndarts.noise.KIND_CODE.
NOISE_NONE, NOISE_GAUSSIAN, NOISE_UNIFORM = 0, 1, 2


# ----------------------------------------------------------------------------- device helpers
@triton.jit
def _block_offsets(pid, BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """Flat element indices of one block; int64 only when the tensor has ≥ 2^31 elements (one
    return: the compiler types both returns of an if/return pair, and int64 ≠ int32)."""
    if INDEX_64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    return offs


@triton.jit
def _unit_noise(seed, offs, KIND: tl.constexpr):
    """ε of unit variance for each flat index: N(0, 1) or U(−√3, √3), Philox keyed on (seed, index)."""
    if KIND == 2:
        return (tl.rand(seed, offs) * 2.0 - 1.0) * 1.7320508075688772
    return tl.randn(seed, offs)


@triton.jit
def _noisy_operand(o, seed, offs, std, lam, mean, KIND: tl.constexpr, MULT: tl.constexpr):
    """The skip operand with its noise, in fp32. Returns (noisy operand, d noisy / d o).

    One return statement: Triton's compiler types every return of a function, also one behind a
    constexpr branch that is not taken, and (tensor, tensor) vs (tensor, float) do not unify
    (the interpreter accepted the two returns; sm_90 compilation did not, tests/gpu_compile.py)."""
    eps = _unit_noise(seed, offs, KIND)
    if MULT:
        factor = mean + lam * eps
        noisy = o * factor
    else:
        factor = 1.0
        noisy = o + (mean + lam * std * eps)
    return noisy, factor


@triton.jit
def _decayed(lam, mean, SCALE, SCALED: tl.constexpr, MULT: tl.constexpr):
    """(λ_eff, μ_eff) of a launch: lam and mean as passed, or with SCALED, the noise's decay scale s
    read from the device (SCALE, fp32 [1]) and applied as NoiseConfig.kernel_params does it: λ·s,
    and μ·s for additive noise (a multiplicative one keeps μ). The scale read at run time is what
    lets a CUDA graph captured once follow --noise-decay's new scale each epoch."""
    if SCALED:
        s = tl.load(SCALE).to(tl.float32)
        lam = lam * s
        if not MULT:
            mean = mean * s
    return lam, mean


@triton.jit
def _forward_term(acc, O, W, k: tl.constexpr, offs, mask, seed, std, lam, mean,
                  SKIP: tl.constexpr, KIND: tl.constexpr, MULT: tl.constexpr):
    o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
    if k == SKIP:
        o, _ = _noisy_operand(o, seed, offs, std, lam, mean, KIND, MULT)
    return acc + tl.load(W + k).to(tl.float32) * o


@triton.jit
def _backward_term(g, O, DO, W, PART, k: tl.constexpr, pid, offs, mask, seed, std, lam, mean,
                   NUM_OPS: tl.constexpr, SKIP: tl.constexpr, KIND: tl.constexpr, MULT: tl.constexpr,
                   WGRAD: tl.constexpr):
    w = tl.load(W + k).to(tl.float32)
    d = w * g
    if WGRAD:  # only W's gradient reads the operand
        o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        o = g  # a stand-in: without WGRAD only a multiplicative noise's factor is used, which is o's own
    if k == SKIP:
        o, factor = _noisy_operand(o, seed, offs, std, lam, mean, KIND, MULT)
        if MULT:  # additive noise: factor 1 (and without WGRAD nothing reads the noisy o: no draw)
            d = d * factor
    tl.store(DO + offs, d.to(DO.dtype.element_ty), mask=mask)
    if WGRAD:
        # masked lanes hold g = 0, so they add nothing to the partial sum
        tl.store(PART + pid * NUM_OPS + k, tl.sum(g * o, axis=0))


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _skip_stats_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7,  # the tensors (the first T used), N elements each in memory order
    PART,  # fp32 [T, num_programs, 3]: (count, mean, M2) of each program's elements
    N,  # number of elements
    T: tl.constexpr,  # tensors in this launch (program_id(1) picks one)
    BLOCK: tl.constexpr,  # elements per tile
    ITERS: tl.constexpr,  # tiles per program, merged with Chan's formula in registers
    INDEX_64: tl.constexpr,  # int64 indexing for N ≥ 2^31
):
    pid = tl.program_id(0)
    t = tl.program_id(1)
    X = pick_pointer(t, X0, X1, X2, X3, X4, X5, X6, X7, T)
    count = tl.zeros([], dtype=tl.float32)
    mean = tl.zeros([], dtype=tl.float32)
    m2 = tl.zeros([], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        offs = _block_offsets(pid * ITERS + it, BLOCK, INDEX_64)
        mask = offs < N
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        count, mean, m2 = merge_tile(count, mean, m2, x, mask)
    store_moments(PART, t * tl.num_programs(0) + pid, count, mean, m2)


@triton.jit
def _stats_merge_kernel(
    PART,  # fp32 [T, P, 3] partial (count, mean, M2) of each tensor
    STD,  # fp32 [T] output: unbiased std over all elements of each tensor (program t: tensor t)
    P,  # number of partials per tensor
    BLOCK: tl.constexpr,  # partials merged per step
):
    t = tl.program_id(0)
    PART += t * P * 3
    count = tl.zeros([], dtype=tl.float32)
    mean = tl.zeros([], dtype=tl.float32)
    m2 = tl.zeros([], dtype=tl.float32)
    for start in range(0, P, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < P
        n_i = tl.load(PART + idx * 3 + 0, mask=mask, other=0.0)
        mean_i = tl.load(PART + idx * 3 + 1, mask=mask, other=0.0)
        m2_i = tl.load(PART + idx * 3 + 2, mask=mask, other=0.0)
        n_b = tl.sum(n_i, axis=0)
        mean_b = tl.sum(n_i * mean_i, axis=0) / tl.maximum(n_b, 1.0)
        dev = tl.where(mask, mean_i - mean_b, 0.0)
        m2_b = tl.sum(m2_i, axis=0) + tl.sum(n_i * dev * dev, axis=0)
        total = count + n_b
        delta = mean_b - mean
        frac = n_b / tl.maximum(total, 1.0)
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta * delta * count * frac
        count = total
    # NaN for one element or none, as torch.std gives (0/0 is NaN, but 0/-1 is -0)
    tl.store(STD + t, tl.where(count > 1.0, tl.sqrt(m2 / tl.maximum(count - 1.0, 1.0)), float("nan")))


@triton.jit
def _noisy_mixed_sum_forward_kernel(
    Y,  # output, N elements, same memory layout as the operands
    RUN,  # the earlier chunks' running sum (read with ACCUMULATE; fp32 unless Y is, else Y itself)
    O0, O1, O2, O3, O4, O5, O6, O7,  # operand pointers; only the first NUM_OPS are read
    W,  # weights [NUM_OPS] of this chunk (any float dtype, read as fp32)
    SEED,  # int64 [1] Philox seed on the device
    STD,  # fp32 [1] std of the skip operand (read only for additive noise)
    N,  # elements per operand
    lam,  # λ_eff (decay applied), or λ with SCALED
    mean,  # μ_eff, or μ with SCALED
    SCALE,  # fp32 [1]: the decay scale applied in the kernel (SCALED only)
    NUM_OPS: tl.constexpr,  # live operands in this chunk, 1..8
    SKIP: tl.constexpr,  # index of the noisy operand in this chunk, -1 for none
    KIND: tl.constexpr,  # 0 none, 1 gaussian, 2 uniform
    MULT: tl.constexpr,  # multiplicative instead of additive noise
    ACCUMULATE: tl.constexpr,  # add to RUN (chunks after the first)
    SCALED: tl.constexpr,  # lam and mean are scaled by SCALE's value (_decayed)
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < N
    seed = tl.load(SEED)
    lam, mean = _decayed(lam, mean, SCALE, SCALED, MULT)
    std = 0.0
    if SKIP >= 0:  # the launcher passes SKIP = -1 when no noise is drawn
        if not MULT:
            std = tl.load(STD)
    if ACCUMULATE:
        acc = tl.load(RUN + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    acc = _forward_term(acc, O0, W, 0, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    if NUM_OPS > 1:
        acc = _forward_term(acc, O1, W, 1, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    if NUM_OPS > 2:
        acc = _forward_term(acc, O2, W, 2, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    if NUM_OPS > 3:
        acc = _forward_term(acc, O3, W, 3, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    if NUM_OPS > 4:
        acc = _forward_term(acc, O4, W, 4, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    if NUM_OPS > 5:
        acc = _forward_term(acc, O5, W, 5, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    if NUM_OPS > 6:
        acc = _forward_term(acc, O6, W, 6, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    if NUM_OPS > 7:
        acc = _forward_term(acc, O7, W, 7, offs, mask, seed, std, lam, mean, SKIP, KIND, MULT)
    tl.store(Y + offs, acc.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _noisy_mixed_sum_backward_kernel(
    G,  # upstream gradient dL/dy, N elements
    O0, O1, O2, O3, O4, O5, O6, O7,  # operands (forward inputs)
    D0, D1, D2, D3, D4, D5, D6, D7,  # operand gradients (outputs)
    W,  # weights [NUM_OPS] of this chunk
    PART,  # fp32 [num_programs, NUM_OPS]: Σ g·o_k over this program's block (noisy o for skip); WGRAD only
    SEED,  # int64 [1], the forward's seed: ε is regenerated, never stored
    STD,  # fp32 [1], the forward's std
    N,
    lam,
    mean,
    SCALE,  # fp32 [1]: the decay scale (SCALED only)
    NUM_OPS: tl.constexpr,
    SKIP: tl.constexpr,
    KIND: tl.constexpr,
    MULT: tl.constexpr,
    WGRAD: tl.constexpr,  # write W's partial sums; without, no operand is read (a w step's backward)
    SCALED: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < N
    seed = tl.load(SEED)
    lam, mean = _decayed(lam, mean, SCALE, SCALED, MULT)
    std = 0.0
    if SKIP >= 0:  # the launcher passes SKIP = -1 when no noise is drawn
        if not MULT:
            std = tl.load(STD)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    _backward_term(g, O0, D0, W, PART, 0, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)
    if NUM_OPS > 1:
        _backward_term(g, O1, D1, W, PART, 1, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)
    if NUM_OPS > 2:
        _backward_term(g, O2, D2, W, PART, 2, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)
    if NUM_OPS > 3:
        _backward_term(g, O3, D3, W, PART, 3, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)
    if NUM_OPS > 4:
        _backward_term(g, O4, D4, W, PART, 4, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)
    if NUM_OPS > 5:
        _backward_term(g, O5, D5, W, PART, 5, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)
    if NUM_OPS > 6:
        _backward_term(g, O6, D6, W, PART, 6, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)
    if NUM_OPS > 7:
        _backward_term(g, O7, D7, W, PART, 7, pid, offs, mask, seed, std, lam, mean, NUM_OPS, SKIP, KIND, MULT, WGRAD)


@triton.jit
def _unit_noise_kernel(
    OUT,  # fp32 [N]: ε for flat indices 0..N-1
    SEED,  # int64 [1]
    N,
    KIND: tl.constexpr,
    BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    offs = _block_offsets(tl.program_id(0), BLOCK, INDEX_64)
    mask = offs < N
    tl.store(OUT + offs, _unit_noise(tl.load(SEED), offs, KIND), mask=mask)


# ----------------------------------------------------------------------------- launchers
def _elementwise_block(n: int, many_operands: bool = False) -> tuple[int, int]:
    """(BLOCK, num_warps). The interpreter runs programs one by one: large blocks keep it fast.

    On a GPU eight elements per thread, or two for a kernel that holds many operands per element
    (a group sum's edges, each with up to three shared and six grouped operands and a base; the
    pools' nine taps): at eight those need all 255 registers of a thread and spill 0.2-2 KB more
    to local memory, at two 48-128 registers and nothing (benchmarks/kernel_resources.py, sm_90)."""
    if interpreted():
        return max(16, min(next_power_of_2(n), 8192)), 4
    return (512, 8) if many_operands else (1024, 4)


def _check_operands(operands) -> torch.Tensor:
    """All operands share shape, dtype, device and memory layout; returns the first."""
    if not operands:
        raise ValueError("noisy_mixed_sum needs at least one operand")
    first = operands[0]
    for i, o in enumerate(operands[1:], start=1):
        if o.shape != first.shape:
            raise ValueError(f"operand {i} has shape {tuple(o.shape)}, operand 0 has {tuple(first.shape)}")
        if o.dtype != first.dtype:
            raise ValueError(f"operand {i} has dtype {o.dtype}, operand 0 has {first.dtype}")
        if o.device != first.device:
            raise ValueError(f"operand {i} is on {o.device}, operand 0 on {first.device}")
    if first.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"noisy_mixed_sum supports float32, float16 and bfloat16, got {first.dtype}")
    return first


def _dense(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t in the same dense memory layout as `like` (copied only when it differs)."""
    if t.stride() == like.stride() and _is_dense(t):
        return t
    return t.contiguous(memory_format=_memory_format(like))


def _is_dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _memory_format(t: torch.Tensor):
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _layout(operands) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The operands in one dense layout (copies only of those in another) and that layout's
    reference tensor. An operand with the dense reference's shape and strides is dense itself: one
    stride comparison each, not _dense's checks (host time of every eager launch)."""
    first = _check_operands(operands)
    ref = first if _is_dense(first) else first.contiguous()
    stride = ref.stride()
    return [o if o.stride() == stride else _dense(o, ref) for o in operands], ref


def _stats_tiles_per_program(tiles: int) -> int:
    """Tiles each stats program merges in registers: keeps the partials ≤ ~2048 on a GPU."""
    if interpreted():
        return 1
    return max(1, min(16, cdiv(tiles, 2048)))


MAX_STDS = 8  # tensors per stats launch


def skip_std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std over all elements of x as an fp32 [1] tensor on x's device (no host sync)."""
    return skip_stds([x])


def skip_stds(xs) -> torch.Tensor:
    """skip_std of each tensor of xs (any number, same numel, dtype and device) as one fp32 [len(xs)]
    tensor: two launches per MAX_STDS (8) tensors (one for the partial moments, one for the merges)
    instead of two per tensor."""
    if not xs:
        raise ValueError("skip_stds needs at least one tensor")
    first = xs[0]
    for x in xs[1:]:
        if x.numel() != first.numel() or x.device != first.device or x.dtype != first.dtype:
            raise ValueError(f"skip_stds: tensors must have as many elements, one dtype and one device, got "
                             f"{tuple(first.shape)} {first.dtype} on {first.device} and {tuple(x.shape)} {x.dtype} "
                             f"on {x.device}")
    xs = [x if _is_dense(x) else x.contiguous() for x in xs]
    n = first.numel()
    block, num_warps = _elementwise_block(n)
    iters = _stats_tiles_per_program(cdiv(n, block))
    programs = cdiv(cdiv(n, block), iters)
    index_64 = n > INT32_LIMIT - block * iters
    std = torch.empty((len(xs),), device=first.device, dtype=torch.float32)
    for start, stop in chunk_ranges(len(xs), MAX_STDS):
        chunk = xs[start:stop]
        part = torch.empty((len(chunk), programs, 3), device=first.device, dtype=torch.float32)
        _skip_stats_kernel[(programs, len(chunk))](*pad_pointers(chunk, MAX_STDS), part, n, T=len(chunk),
                                                   BLOCK=block, ITERS=iters, INDEX_64=index_64, num_warps=num_warps)
        merge_moments(part, std[start:stop], programs)
    return std


def merge_moments(part: torch.Tensor, std: torch.Tensor, programs: int) -> None:
    """std[t] = the unbiased std from tensor t's `programs` partial (count, mean, M2) in part
    [T, programs, 3] (Chan merges in a fixed order): one launch for the T tensors."""
    _stats_merge_kernel[(std.numel(),)](part, std, programs, BLOCK=MERGE_BLOCK, num_warps=4)


def device_scale(scale: torch.Tensor, device) -> torch.Tensor:
    """The decay scale a launch reads (SCALED): a one-element fp32 tensor on the operands' device."""
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1 or scale.dtype != torch.float32:
        got = f"{scale.dtype} {tuple(scale.shape)}" if isinstance(scale, torch.Tensor) else type(scale).__name__
        raise ValueError(f"noise scale: a device scale must be a one-element float32 tensor, got {got}")
    if scale.device != device:
        raise ValueError(f"noise scale: the scale is on {scale.device}, the operands on {device}")
    return scale


def noisy_mixed_sum_forward(operands, weights, seed, skip_index, kind, multiplicative, lam, mean, std=None,
                            scale=None):
    """y = Σ w_k·o_k with the noisy skip operand. Returns (y, std) where std is the fp32 [1]
    std of the skip operand used for the noise (zeros when no std was needed). std: that std when
    the caller has it already (skip_std of the same operand), else computed here. scale: None
    (lam, mean are the effective λ, μ), or a one-element fp32 tensor on the operands' device holding
    the decay scale, which the kernel reads and applies to lam and mean (device_scale)."""
    operands, ref = _layout(operands)
    num = len(operands)
    if weights.shape != (num,):
        raise ValueError(f"weights must have shape ({num},) for {num} operands, got {tuple(weights.shape)}")
    n = ref.numel()
    noisy = kind != NOISE_NONE and 0 <= skip_index < num
    if noisy and not multiplicative:
        std = skip_std(operands[skip_index]) if std is None else std
    else:
        std = torch.zeros((1,), device=ref.device, dtype=torch.float32)
    y = torch.empty_like(ref)
    if n == 0:
        return y, std
    block, num_warps = _elementwise_block(n)
    grid = (cdiv(n, block),)
    index_64 = n > INT32_LIMIT - block
    weights = weights.contiguous()
    scaled = noisy and scale is not None
    scale = device_scale(scale, ref.device) if scaled else std
    for start, stop, out, run in summing_launches(y, num, MAX_OPERANDS):  # fp32 between launches
        chunk = operands[start:stop]
        local_skip = skip_index - start if noisy and start <= skip_index < stop else -1
        _noisy_mixed_sum_forward_kernel[grid](
            out, run, *pad_pointers(chunk, MAX_OPERANDS, ref), weights[start:stop], seed, std, n, float(lam),
            float(mean), scale, NUM_OPS=len(chunk), SKIP=local_skip, KIND=kind if noisy else NOISE_NONE,
            MULT=bool(multiplicative), ACCUMULATE=start > 0, SCALED=scaled, BLOCK=block, INDEX_64=index_64,
            num_warps=num_warps,
        )
    return y, std


def noisy_mixed_sum_backward(grad, operands, weights, seed, std, skip_index, kind, multiplicative, lam, mean,
                             weight_grad=True, scale=None):
    """Returns (operand gradients in the operands' dtype, dW in fp32). scale: the forward's.

    weight_grad False: dW is None, and the kernel reads only the upstream gradient, no operand (for
    multiplicative noise it regenerates ε): the backward of a pass that uses no α gradient."""
    operands, ref = _layout(operands)
    grad = _dense(grad, ref)
    num = len(operands)
    n = ref.numel()
    noisy = kind != NOISE_NONE and 0 <= skip_index < num
    grads = [torch.empty_like(ref) for _ in operands]
    if n == 0:
        return grads, torch.zeros((num,), device=ref.device, dtype=torch.float32) if weight_grad else None
    block, num_warps = _elementwise_block(n)
    programs = cdiv(n, block)
    index_64 = n > INT32_LIMIT - block
    weights = weights.contiguous()
    scaled = noisy and scale is not None
    scale = device_scale(scale, ref.device) if scaled else weights  # unused without noise: a stand-in pointer
    dw = []
    for start, stop in chunk_ranges(num, MAX_OPERANDS):
        chunk = operands[start:stop]
        local_skip = skip_index - start if noisy and start <= skip_index < stop else -1
        # unused without weight_grad: the weights stand in as its pointer
        part = torch.empty((programs, len(chunk)), device=ref.device, dtype=torch.float32) if weight_grad else weights
        _noisy_mixed_sum_backward_kernel[(programs,)](
            grad, *pad_pointers(chunk, MAX_OPERANDS, ref), *pad_pointers(grads[start:stop], MAX_OPERANDS, ref),
            weights[start:stop], part, seed, std, n, float(lam), float(mean), scale,
            NUM_OPS=len(chunk), SKIP=local_skip, KIND=kind if noisy else NOISE_NONE, MULT=bool(multiplicative),
            WGRAD=bool(weight_grad), SCALED=scaled, BLOCK=block, INDEX_64=index_64, num_warps=num_warps,
        )
        if weight_grad:
            # fixed-order tree reduction of the partials: deterministic, no float atomics
            dw.append(part.sum(dim=0))
    if not weight_grad:
        return grads, None
    return grads, dw[0] if len(dw) == 1 else torch.cat(dw)


def unit_noise(seed: torch.Tensor, n: int, kind: int, device=None) -> torch.Tensor:
    """Writes out the ε the kernels use for flat indices 0..n-1 (for tests and checks)."""
    device = seed.device if device is None else device
    out = torch.empty((n,), device=device, dtype=torch.float32)
    if n == 0:
        return out
    block, num_warps = _elementwise_block(n)
    _unit_noise_kernel[(cdiv(n, block),)](
        out, seed, n, KIND=kind, BLOCK=block, INDEX_64=n > INT32_LIMIT - block, num_warps=num_warps
    )
    return out

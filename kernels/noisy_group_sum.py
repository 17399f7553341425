"""Triton kernels for the noisy mixed sums of all E edges leaving one node, in one pass each way.

For edge e of the group (one source node h, stride 1):

    y_e = Σ_p W[e, p]·s_p  +  Σ_q W[e, P + q]·g_q[:, e]     (s_skip replaced by s_skip + noise_e)

- shared operands s_p [N, C, H, W]: what every edge leaving h has alike (the pools with their
  BatchNorm, the identity skip h itself), read once per element for all E edges;
- grouped operands g_q [N, E·C, H, W]: the batched sep/dil convs (ndarts.edge_groups), edge e's
  channels e·C … e·C + C - 1, read in place (no per-edge copies);
- noise_e: edge e's own ε (Philox keyed on (seed, e·numel + index)), with the one std of the
  shared skip operand (the same tensor on every edge, so the same std).
- an own operand r_e [N, C, H, W] (optional): a tensor of each edge's own, read through one
  pointer per edge (the FactorizedReduce skip of a reduction cell's stride-2 edges: each edge has
  its own weights, computed together and BatchNorm'd per edge, NodeShare.reduced); when it is the
  noisy operand, each edge's noise takes that edge's std (STD[e]).
- a grouped operand may be a deferred BatchNorm's input z (its y never written: ``grouped_norm``):
  the kernels read it as y = (z − mean[c])·rstd[c], c its channel in the group's edge-major order,
  in the forward and where the backward reads it (W's gradient). The gradient written for it is
  dL/dy, which the BatchNorm's backward takes (batch_norms_backward(lazy=…) makes y from z too);
  the backward can also write that BatchNorm's backward sums (Σd and Σd·y per channel, as partials
  over runs of one image's plane: ``bn_sums``), so that the BatchNorm does not read d and z again.
The output is [E, N, C, H, W]; each edge may add a base (its target node's partial sum: a
cell's node sums run as a chain of group sums, no separate adds). The backward reads the E upstream gradients, the operands and
regenerates ε; it writes each shared operand's gradient once (Σ_e W[e, p]·g_e: no autograd
accumulation over edges), each grouped operand's gradient in its [N, E·C, H, W] layout, and per-
program partial sums Σ g_e·o_{e,k} reduced deterministically into dW [E, K].
Weight columns: shared, then grouped, then the own operand. Limits (the launcher checks): ≤ 3
shared, ≤ 6 grouped and ≤ 1 own operand, ≤ 8 edges.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grid import cdiv, pad_pointers, pick_pointer
from .moments import merge_tile, store_moments
from .noisy_mixed_sum import (
    INT32_LIMIT,
    NOISE_NONE,
    _block_offsets,
    _decayed,
    _elementwise_block,
    _noisy_operand,
    device_scale,
    merge_moments,
    skip_std,
    skip_stds,
)

MAX_SHARED, MAX_GROUPED, MAX_EDGES = 3, 6, 8


@triton.jit
def _noise_state(SEED, STD, SKIP: tl.constexpr, MULT: tl.constexpr, NUM_SHARED: tl.constexpr):
    """(seed, std of the shared skip operand): the std is read only when it is used (additive noise
    on a shared skip operand; an own skip operand reads its edge's std, _own_std)."""
    std = tl.zeros([], dtype=tl.float32)
    if SKIP >= 0:
        if SKIP < NUM_SHARED:
            if not MULT:
                std = tl.load(STD)
    return tl.load(SEED), std


@triton.jit
def _own_std(STD, e: tl.constexpr, NOISY: tl.constexpr, MULT: tl.constexpr):
    """Edge e's std of its own operand when that is the noisy one with additive noise, STD[e] (0,
    and nothing read, otherwise)."""
    std = tl.zeros([], dtype=tl.float32)
    if NOISY:
        if not MULT:
            std = tl.load(STD + e)
    return std


@triton.jit
def _shared_term(acc, s, W, row, k: tl.constexpr, noise_offs, seed, std, lam, mean,
                 SKIP: tl.constexpr, KIND: tl.constexpr, MULT: tl.constexpr):
    if k == SKIP:
        s, _ = _noisy_operand(s, seed, noise_offs, std, lam, mean, KIND, MULT)
    return acc + tl.load(W + row + k).to(tl.float32) * s


@triton.jit
def _grouped_operand(G, g_offs, mask, q: tl.constexpr, NORM: tl.constexpr, M, Q, stat):
    """Grouped operand q at g_offs, fp32; where NORM has bit q it holds a deferred BatchNorm's
    input z, read as its output (z − mean)·rstd with the statistics at index `stat` (the element's
    channel in the group's edge-major channel order)."""
    o = tl.load(G + g_offs, mask=mask, other=0.0).to(tl.float32)
    if (NORM >> q) & 1:
        o = (o - tl.load(M + stat, mask=mask, other=0.0)) * tl.load(Q + stat, mask=mask, other=0.0)
    return o


@triton.jit
def _channel_in_edge(offs, INNER, HW, NORM: tl.constexpr):
    """(channel of each element within its edge, channels per edge) where a grouped operand is a
    deferred BatchNorm's input (NORM ≠ 0); zeros, not computed, otherwise."""
    if NORM != 0:
        chan = (offs % INNER) // HW
        per_edge = INNER // HW
    else:
        chan = offs * 0
        per_edge = INNER * 0
    return chan, per_edge


@triton.jit
def _grouped_offsets(offs, e, INNER, G_STRIDE):
    """Index of edge e's element `offs` (flat over [N, C·H·W]) in a grouped operand whose images
    are G_STRIDE elements apart (E·C·H·W for a whole [N, E·C, H, W] tensor; more for this call's
    edges inside a group of several sources). e: a constexpr or a runtime edge number."""
    n = offs // INNER
    return offs + n * (G_STRIDE - INNER) + e * INNER


@triton.jit
def _group_forward_kernel(
    Y,  # output [E, numel]
    S0, S1, S2,  # shared operands [numel]; only the first NUM_SHARED are read
    G0, G1, G2, G3, G4, G5,  # grouped operands [N, E·INNER]; only the first NUM_GROUPED are read
    W,  # weights [E, NUM_SHARED + NUM_GROUPED], read as fp32
    SEED, STD,  # int64 [1] Philox seed; fp32 [1] std of the shared skip operand
    numel, INNER,  # elements per edge output; elements per image of it (C·H·W)
    G_STRIDE, E0,  # elements between two images of a grouped operand; noise index of edge 0 (its group's edge number)
    lam, mean, SCALE,  # λ_eff, μ_eff; or λ, μ and (SCALED) the decay scale's fp32 [1] (_decayed)
    B0, B1, B2, B3, B4, B5, B6, B7,  # each edge's base [N, C·H·W], added to its sum where BASES has its bit
    BS0, BS1, BS2, BS3, BS4, BS5, BS6, BS7,  # their image strides (elements)
    R0, R1, R2, R3, R4, R5, R6, R7,  # each edge's own operand [numel] (NUM_OWN = 1), contiguous
    MOMENTS,  # fp32 [programs, 3]: (count, mean, M2) of each program's elements of row 0 (STATS)
    M0, M1, M2, M3, M4, M5,  # fp32 [E·C] BatchNorm mean of each grouped operand whose NORM bit is set
    Q0, Q1, Q2, Q3, Q4, Q5,  # fp32 [E·C] its rstd
    HW,  # pixels per channel (NORM's channel of an element)
    E: tl.constexpr, NUM_SHARED: tl.constexpr, NUM_GROUPED: tl.constexpr, NUM_OWN: tl.constexpr,
    SKIP: tl.constexpr,  # weight column of the noisy operand (a shared or the own one), -1: none
    KIND: tl.constexpr, MULT: tl.constexpr,
    NORM: tl.constexpr,  # bit q set: grouped operand q is a deferred BatchNorm's input z, read as its y
    BASES: tl.constexpr,  # bit e set: edge e adds its base (a partial node sum) to its output
    STATS: tl.constexpr,  # write row 0's partial moments (its std without another pass over it)
    SCALED: tl.constexpr,
    BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < numel
    seed, std = _noise_state(SEED, STD, SKIP, MULT, NUM_SHARED)
    lam, mean = _decayed(lam, mean, SCALE, SCALED, MULT)
    s0 = tl.load(S0 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_SHARED > 1:
        s1 = tl.load(S1 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_SHARED > 2:
        s2 = tl.load(S2 + offs, mask=mask, other=0.0).to(tl.float32)
    K = NUM_SHARED + NUM_GROUPED + NUM_OWN  # constexpr: a sum of constexprs
    chan, per_edge = _channel_in_edge(offs, INNER, HW, NORM)
    for e in tl.static_range(E):
        row = e * K
        noise_offs = offs + (E0 + e) * numel
        acc = _shared_term(tl.zeros([BLOCK], dtype=tl.float32), s0, W, row, 0, noise_offs, seed, std, lam, mean,
                           SKIP, KIND, MULT)
        if NUM_SHARED > 1:
            acc = _shared_term(acc, s1, W, row, 1, noise_offs, seed, std, lam, mean, SKIP, KIND, MULT)
        if NUM_SHARED > 2:
            acc = _shared_term(acc, s2, W, row, 2, noise_offs, seed, std, lam, mean, SKIP, KIND, MULT)
        g_offs = _grouped_offsets(offs, e, INNER, G_STRIDE)
        stat = e * per_edge + chan
        acc += tl.load(W + row + NUM_SHARED).to(tl.float32) * _grouped_operand(G0, g_offs, mask, 0, NORM, M0, Q0, stat)
        if NUM_GROUPED > 1:
            acc += tl.load(W + row + NUM_SHARED + 1).to(tl.float32) * _grouped_operand(G1, g_offs, mask, 1, NORM, M1, Q1, stat)
        if NUM_GROUPED > 2:
            acc += tl.load(W + row + NUM_SHARED + 2).to(tl.float32) * _grouped_operand(G2, g_offs, mask, 2, NORM, M2, Q2, stat)
        if NUM_GROUPED > 3:
            acc += tl.load(W + row + NUM_SHARED + 3).to(tl.float32) * _grouped_operand(G3, g_offs, mask, 3, NORM, M3, Q3, stat)
        if NUM_GROUPED > 4:
            acc += tl.load(W + row + NUM_SHARED + 4).to(tl.float32) * _grouped_operand(G4, g_offs, mask, 4, NORM, M4, Q4, stat)
        if NUM_GROUPED > 5:
            acc += tl.load(W + row + NUM_SHARED + 5).to(tl.float32) * _grouped_operand(G5, g_offs, mask, 5, NORM, M5, Q5, stat)
        if NUM_OWN > 0:
            r = tl.load(pick_pointer(e, R0, R1, R2, R3, R4, R5, R6, R7, 8) + offs, mask=mask, other=0.0).to(tl.float32)
            if SKIP == NUM_SHARED + NUM_GROUPED:
                r, _ = _noisy_operand(r, seed, noise_offs, _own_std(STD, e, True, MULT), lam, mean, KIND, MULT)
            acc += tl.load(W + row + NUM_SHARED + NUM_GROUPED).to(tl.float32) * r
        if (BASES >> e) & 1:  # read before this program writes Y: a base may be the row it adds to
            acc += _edge_row(e, B0, B1, B2, B3, B4, B5, B6, B7, BS0, BS1, BS2, BS3, BS4, BS5, BS6, BS7, offs, INNER, mask)
        out = acc.to(Y.dtype.element_ty)
        tl.store(Y + e * numel + offs, out, mask=mask)
        if STATS:
            if e == 0:  # the moments of what was stored (its dtype's values), for that tensor's std
                zero = tl.zeros([], dtype=tl.float32)
                count, mu, m2 = merge_tile(zero, zero, zero, tl.where(mask, out.to(tl.float32), 0.0), mask)
                store_moments(MOMENTS, pid, count, mu, m2)


@triton.jit
def _operand_for_wgrad(S, offs, mask, WGRAD: tl.constexpr, BLOCK: tl.constexpr):
    """A shared operand in fp32 where W's gradient reads it; zeros (never read from memory) where not."""
    if WGRAD:
        s = tl.load(S + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        s = tl.zeros([BLOCK], dtype=tl.float32)
    return s


@triton.jit
def _shared_grad(s, g, W, PROW, e: tl.constexpr, k: tl.constexpr, K: tl.constexpr,
                 noise_offs, seed, std, lam, mean, SKIP: tl.constexpr, KIND: tl.constexpr, MULT: tl.constexpr,
                 WGRAD: tl.constexpr):
    """(d s from edge e, and, with WGRAD, the partial Σ g·s_noisy written for W[e, k])."""
    w = tl.load(W + e * K + k).to(tl.float32)
    d = w * g
    if k == SKIP:
        s, factor = _noisy_operand(s, seed, noise_offs, std, lam, mean, KIND, MULT)
        if MULT:  # additive noise: factor 1, and without WGRAD nothing reads the noisy s (no draw)
            d = d * factor
    if WGRAD:
        tl.store(PROW + e * K + k, tl.sum(g * s, axis=0))
    return d


@triton.jit
def _grouped_grad(G, DG, g, W, PROW, e: tl.constexpr, k: tl.constexpr, K: tl.constexpr,
                  g_offs, mask, WGRAD: tl.constexpr, q: tl.constexpr, NORM: tl.constexpr, M, Q, stat,
                  GSTATS: tl.constexpr, SUMS, row_stat, row_slot, row_ok, SLOTS,
                  BLOCK: tl.constexpr, HW_BLOCK: tl.constexpr):
    """Writes grouped operand q's gradient d = w·g (of its y, where it is a deferred BatchNorm's z)
    and, with WGRAD, the partial Σ g·o for W[e, k]; where GSTATS has bit q, that BatchNorm's
    backward statistics: per row of HW_BLOCK elements (one channel of one image, or a part of one),
    Σd and Σd·y into SUMS [channel, slot, 2] (its statistics kernel then does not run)."""
    w = tl.load(W + e * K + k).to(tl.float32)
    d = w * g
    tl.store(DG + g_offs, d.to(DG.dtype.element_ty), mask=mask)
    if WGRAD or (GSTATS >> q) & 1:  # only W's gradient and the BatchNorm statistics read the operand
        o = _grouped_operand(G, g_offs, mask, q, NORM, M, Q, stat)
        if WGRAD:
            tl.store(PROW + e * K + k, tl.sum(g * o, axis=0))
        if (GSTATS >> q) & 1:  # masked lanes hold g = 0; a row past the end is not stored
            where = SUMS + (row_stat * SLOTS + row_slot) * 2
            tl.store(where, tl.sum(tl.reshape(d, (BLOCK // HW_BLOCK, HW_BLOCK)), axis=1), mask=row_ok)
            tl.store(where + 1, tl.sum(tl.reshape(d * o, (BLOCK // HW_BLOCK, HW_BLOCK)), axis=1), mask=row_ok)


@triton.jit
def _own_grad(R, DR, g, W, PROW, e: tl.constexpr, k: tl.constexpr, K: tl.constexpr,
              offs, mask, noise_offs, seed, std, lam, mean, NOISY: tl.constexpr, KIND: tl.constexpr,
              MULT: tl.constexpr, WGRAD: tl.constexpr):
    """Edge e's own operand: writes its gradient and, with WGRAD, the partial Σ g·r_noisy for W[e, k]."""
    d = tl.load(W + e * K + k).to(tl.float32) * g
    if WGRAD:
        r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        r = g  # a stand-in: without WGRAD only a multiplicative noise's factor is used, which is r's own
    if NOISY:
        r, factor = _noisy_operand(r, seed, noise_offs, std, lam, mean, KIND, MULT)
        if MULT:
            d = d * factor
    tl.store(DR + offs, d.to(DR.dtype.element_ty), mask=mask)
    if WGRAD:
        tl.store(PROW + e * K + k, tl.sum(g * r, axis=0))


@triton.jit
def _edge_row(e: tl.constexpr, P0, P1, P2, P3, P4, P5, P6, P7, S0, S1, S2, S3, S4, S5, S6, S7, offs, INNER, mask):
    """Edge e's tensor at offs (flat over [N, C·H·W]), fp32: each edge its own tensor P_e, its
    images S_e elements apart (a channel slice of the cell's output gradient is read in place: no
    stacked copy, no contiguous copy). The backward's upstream gradients, the forward's bases."""
    P = pick_pointer(e, P0, P1, P2, P3, P4, P5, P6, P7, 8)  # e is a constexpr: resolved at compile time
    S = pick_pointer(e, S0, S1, S2, S3, S4, S5, S6, S7, 8)
    g = tl.load(P + _grouped_offsets(offs, 0, INNER, S), mask=mask, other=0.0)
    return g.to(tl.float32)


@triton.jit
def _group_backward_kernel(
    DY0, DY1, DY2, DY3, DY4, DY5, DY6, DY7,  # upstream gradient of each edge [N, C·H·W]; the first E are read
    GS0, GS1, GS2, GS3, GS4, GS5, GS6, GS7,  # their image strides (elements)
    S0, S1, S2, DS0, DS1, DS2,  # shared operands and their gradients [numel]
    G0, G1, G2, G3, G4, G5,  # grouped operands [N, E·INNER]
    DG0, DG1, DG2, DG3, DG4, DG5,  # their gradients, same layout
    R0, R1, R2, R3, R4, R5, R6, R7,  # each edge's own operand [numel] (NUM_OWN = 1)
    DR0, DR1, DR2, DR3, DR4, DR5, DR6, DR7,  # their gradients
    W, PART,  # weights [E, K]; fp32 partials [programs, ≥ E·K] (rows PART_STRIDE apart; unused without WGRAD)
    PART_STRIDE, SEED, STD, numel, INNER, G_STRIDE, E0, lam, mean, SCALE,
    M0, M1, M2, M3, M4, M5, Q0, Q1, Q2, Q3, Q4, Q5, HW,  # the forward's deferred BatchNorm statistics (NORM)
    U0, U1, U2, U3, U4, U5,  # fp32 [E·C, SLOTS, 2]: each deferred BatchNorm's backward sums (GSTATS)
    SLOTS,  # partial sums per channel: images × HW / HW_BLOCK
    E: tl.constexpr, NUM_SHARED: tl.constexpr, NUM_GROUPED: tl.constexpr, NUM_OWN: tl.constexpr,
    SKIP: tl.constexpr, KIND: tl.constexpr, MULT: tl.constexpr, NORM: tl.constexpr,
    GSTATS: tl.constexpr,  # bit q set: write grouped operand q's BatchNorm backward sums (needs its NORM bit)
    HW_BLOCK: tl.constexpr,  # elements per row of those sums: min(HW, BLOCK), dividing both
    WGRAD: tl.constexpr,  # write W's partial sums; without, no operand is read (a w step's backward)
    SCALED: tl.constexpr,
    BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = _block_offsets(pid, BLOCK, INDEX_64)
    mask = offs < numel
    seed, std = _noise_state(SEED, STD, SKIP, MULT, NUM_SHARED)
    lam, mean = _decayed(lam, mean, SCALE, SCALED, MULT)
    K = NUM_SHARED + NUM_GROUPED + NUM_OWN  # constexpr: a sum of constexprs
    PROW = PART + pid * PART_STRIDE  # this program's partial sums, W[e, k]'s at e·K + k
    s0 = _operand_for_wgrad(S0, offs, mask, WGRAD, BLOCK)
    d0 = tl.zeros([BLOCK], dtype=tl.float32)
    if NUM_SHARED > 1:
        s1 = _operand_for_wgrad(S1, offs, mask, WGRAD, BLOCK)
        d1 = tl.zeros([BLOCK], dtype=tl.float32)
    if NUM_SHARED > 2:
        s2 = _operand_for_wgrad(S2, offs, mask, WGRAD, BLOCK)
        d2 = tl.zeros([BLOCK], dtype=tl.float32)
    chan, per_edge = _channel_in_edge(offs, INNER, HW, NORM)  # used where an operand is read
    # the rows of the BatchNorm backward sums (GSTATS): this program's BLOCK // HW_BLOCK runs of
    # HW_BLOCK elements, each inside one channel of one image; its channel and slot (image, part)
    row_start = pid.to(offs.dtype) * BLOCK + tl.arange(0, BLOCK // HW_BLOCK).to(offs.dtype) * HW_BLOCK
    row_ok = row_start < numel
    row_chan = (row_start % INNER) // HW
    row_slot = (row_start // INNER) * (HW // HW_BLOCK) + (row_start % HW) // HW_BLOCK
    for e in tl.static_range(E):
        # masked lanes hold g = 0: they add nothing to the partial sums
        g = _edge_row(e, DY0, DY1, DY2, DY3, DY4, DY5, DY6, DY7, GS0, GS1, GS2, GS3, GS4, GS5, GS6, GS7,
                      offs, INNER, mask)
        noise_offs = offs + (E0 + e) * numel
        d0 += _shared_grad(s0, g, W, PROW, e, 0, K, noise_offs, seed, std, lam, mean, SKIP, KIND, MULT, WGRAD)
        if NUM_SHARED > 1:
            d1 += _shared_grad(s1, g, W, PROW, e, 1, K, noise_offs, seed, std, lam, mean, SKIP, KIND, MULT, WGRAD)
        if NUM_SHARED > 2:
            d2 += _shared_grad(s2, g, W, PROW, e, 2, K, noise_offs, seed, std, lam, mean, SKIP, KIND, MULT, WGRAD)
        g_offs = _grouped_offsets(offs, e, INNER, G_STRIDE)
        stat = e * per_edge + chan
        row_stat = e * per_edge + row_chan
        _grouped_grad(G0, DG0, g, W, PROW, e, NUM_SHARED, K, g_offs, mask, WGRAD, 0, NORM, M0, Q0, stat,
                      GSTATS, U0, row_stat, row_slot, row_ok, SLOTS, BLOCK, HW_BLOCK)
        if NUM_GROUPED > 1:
            _grouped_grad(G1, DG1, g, W, PROW, e, NUM_SHARED + 1, K, g_offs, mask, WGRAD, 1, NORM, M1, Q1, stat,
                          GSTATS, U1, row_stat, row_slot, row_ok, SLOTS, BLOCK, HW_BLOCK)
        if NUM_GROUPED > 2:
            _grouped_grad(G2, DG2, g, W, PROW, e, NUM_SHARED + 2, K, g_offs, mask, WGRAD, 2, NORM, M2, Q2, stat,
                          GSTATS, U2, row_stat, row_slot, row_ok, SLOTS, BLOCK, HW_BLOCK)
        if NUM_GROUPED > 3:
            _grouped_grad(G3, DG3, g, W, PROW, e, NUM_SHARED + 3, K, g_offs, mask, WGRAD, 3, NORM, M3, Q3, stat,
                          GSTATS, U3, row_stat, row_slot, row_ok, SLOTS, BLOCK, HW_BLOCK)
        if NUM_GROUPED > 4:
            _grouped_grad(G4, DG4, g, W, PROW, e, NUM_SHARED + 4, K, g_offs, mask, WGRAD, 4, NORM, M4, Q4, stat,
                          GSTATS, U4, row_stat, row_slot, row_ok, SLOTS, BLOCK, HW_BLOCK)
        if NUM_GROUPED > 5:
            _grouped_grad(G5, DG5, g, W, PROW, e, NUM_SHARED + 5, K, g_offs, mask, WGRAD, 5, NORM, M5, Q5, stat,
                          GSTATS, U5, row_stat, row_slot, row_ok, SLOTS, BLOCK, HW_BLOCK)
        if NUM_OWN > 0:
            _own_grad(pick_pointer(e, R0, R1, R2, R3, R4, R5, R6, R7, 8),
                      pick_pointer(e, DR0, DR1, DR2, DR3, DR4, DR5, DR6, DR7, 8), g, W, PROW, e,
                      NUM_SHARED + NUM_GROUPED, K, offs, mask, noise_offs, seed,
                      _own_std(STD, e, SKIP == NUM_SHARED + NUM_GROUPED, MULT), lam, mean,
                      SKIP == NUM_SHARED + NUM_GROUPED, KIND, MULT, WGRAD)
    tl.store(DS0 + offs, d0.to(DS0.dtype.element_ty), mask=mask)
    if NUM_SHARED > 1:
        tl.store(DS1 + offs, d1.to(DS1.dtype.element_ty), mask=mask)
    if NUM_SHARED > 2:
        tl.store(DS2 + offs, d2.to(DS2.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
def _fits_in_place(t, edges, c, h, w) -> bool:
    """Whether a grouped operand can be read where it lies: [N, E·C, H, W] with dense channels and
    pixels, its images any distance ≥ E·C·H·W apart (a whole tensor, or this call's edges of a
    group of several sources, ``narrow``ed out of the group's tensor)."""
    return t.stride()[1:] == (h * w, w, 1) and t.stride(0) >= edges * c * h * w


def _check(shared, grouped, weights, own=None):
    if not 1 <= len(shared) <= MAX_SHARED or not 1 <= len(grouped) <= MAX_GROUPED:
        raise ValueError(f"noisy_group_sum takes 1..{MAX_SHARED} shared and 1..{MAX_GROUPED} grouped operands, "
                         f"got {len(shared)} and {len(grouped)}")
    first = shared[0]
    edges = weights.shape[0]
    columns = len(shared) + len(grouped) + (own is not None)
    if weights.dim() != 2 or weights.shape[1] != columns or not 1 <= edges <= MAX_EDGES:
        raise ValueError(f"noisy_group_sum: weights must be [edges ≤ {MAX_EDGES}, {columns}], "
                         f"got {tuple(weights.shape)}")
    if first.dim() != 4:
        raise ValueError(f"noisy_group_sum: operands must be [N, C, H, W], got {tuple(first.shape)}")
    n, c, h, w = first.shape
    for t in shared:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError("noisy_group_sum: shared operands must share shape, dtype and device")
    for t in grouped:
        if tuple(t.shape) != (n, edges * c, h, w) or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"noisy_group_sum: grouped operands must be [{n}, {edges * c}, {h}, {w}] "
                             f"({edges} edges × {c} channels) in the shared operands' dtype, got {tuple(t.shape)}")
    if first.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"noisy_group_sum supports float32, float16 and bfloat16, got {first.dtype}")
    if own is not None:
        if len(own) != edges:
            raise ValueError(f"noisy_group_sum: the own operand needs one tensor per edge, got {len(own)} for {edges}")
        for t in own:
            if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
                raise ValueError(f"noisy_group_sum: each edge's own operand must be {tuple(first.shape)} {first.dtype} "
                                 f"on {first.device}, got {tuple(t.shape)} {t.dtype} on {t.device}")
        own = [t.contiguous() for t in own]
    grouped = [t if _fits_in_place(t, edges, c, h, w) else t.contiguous() for t in grouped]
    if len({t.stride(0) for t in grouped}) > 1:  # one image stride for all: the kernels take one
        grouped = [t.contiguous() for t in grouped]
    return [t.contiguous() for t in shared], grouped, weights.contiguous(), own


def _noise_target(kind, skip_index, shared, grouped, own):
    """(SKIP constexpr, the noisy operand is the own one): SKIP is the noisy operand's weight column
    (a shared operand's, or the own operand's, the last), -1 when nothing is noisy."""
    if kind == NOISE_NONE:
        return -1, False
    if 0 <= skip_index < len(shared):
        return skip_index, False
    if own is not None and skip_index == len(shared) + len(grouped):
        return skip_index, True
    return -1, False


def _norm_args(grouped_norm, grouped, edges, first):
    """(mean pointers, rstd pointers, NORM bit mask) of the grouped operands that are deferred
    BatchNorms' inputs: grouped_norm None, or per grouped operand None or (mean, rstd), each an
    fp32 [edges·C] tensor on the operands' device (this call's edges' channels, edge-major)."""
    if grouped_norm is None:
        return pad_pointers([first], MAX_GROUPED), pad_pointers([first], MAX_GROUPED), 0
    if len(grouped_norm) != len(grouped):
        raise ValueError(f"noisy_group_sum: grouped_norm needs one entry (or None) per grouped operand, "
                         f"got {len(grouped_norm)} for {len(grouped)}")
    channels = edges * first.shape[1]
    means, rstds, bits = [], [], 0
    for q, stats in enumerate(grouped_norm):
        if stats is None:
            means.append(first)
            rstds.append(first)
            continue
        for t in stats:
            if (not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.device != first.device
                    or t.dim() != 1 or t.numel() != channels):
                raise ValueError(f"noisy_group_sum: grouped operand {q}'s BatchNorm mean and rstd must be fp32 "
                                 f"[{channels}] ({edges} edges × {first.shape[1]} channels) on {first.device}, got "
                                 + (f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor)
                                    else type(t).__name__))
        means.append(stats[0].contiguous())
        rstds.append(stats[1].contiguous())
        bits |= 1 << q
    return pad_pointers(means, MAX_GROUPED), pad_pointers(rstds, MAX_GROUPED), bits


def _sum_args(bn_sums, norm_bits, num_grouped, edges, first):
    """(sum pointers, GSTATS bit mask, slots per channel) of the backward's BatchNorm sums."""
    if bn_sums is not None and len(bn_sums) != num_grouped:
        raise ValueError(f"noisy_group_sum: bn_sums needs one entry (or None) per grouped operand, "
                         f"got {len(bn_sums)} for {num_grouped}")
    if bn_sums is None or not any(t is not None for t in bn_sums):
        return pad_pointers([first], MAX_GROUPED), 0, 0
    slots = batch_norm_sum_slots(first.shape)
    shape = (edges * first.shape[1], slots, 2)
    ptrs, bits = [], 0
    for q, t in enumerate(bn_sums):
        if t is None:
            ptrs.append(first)
            continue
        if not (norm_bits >> q) & 1:
            raise ValueError(f"noisy_group_sum: grouped operand {q} has BatchNorm sums but no grouped_norm: "
                             "only a deferred BatchNorm's sums are made here")
        if slots is None:
            raise ValueError(f"noisy_group_sum: no BatchNorm sums for images of {tuple(first.shape[2:])} "
                             "(batch_norm_sum_slots is None)")
        if (t.dtype != torch.float32 or t.device != first.device or tuple(t.shape) != shape
                or not t.is_contiguous()):
            raise ValueError(f"noisy_group_sum: grouped operand {q}'s BatchNorm sums must be a contiguous fp32 "
                             f"{shape} on {first.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
        ptrs.append(t)
        bits |= 1 << q
    return pad_pointers(ptrs, MAX_GROUPED), bits, slots


def _launch_params(first, grouped, edges, first_edge):
    """(numel, image stride of the grouped operands, block, num_warps, index_64): int64 indices when
    a grouped operand's or the noise's index range reaches 2^31."""
    numel = first.numel()
    block, num_warps = _elementwise_block(numel, many_operands=True)
    g_stride = grouped[0].stride(0)
    reach = max(first.shape[0] * g_stride, (first_edge + edges) * numel)
    return numel, g_stride, block, num_warps, reach > INT32_LIMIT - block


def _output(out, shape, like):
    if out is None:
        return torch.empty(shape, device=like.device, dtype=like.dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or not out.is_contiguous():
        raise ValueError(f"noisy_group_sum: out must be a contiguous {like.dtype} tensor of shape {tuple(shape)}")
    return out


def _bases(bases, edges, first):
    """(pointer list, image strides, BASES bit mask) of the forward's per-edge bases (None: none)."""
    if bases is None:
        return pad_pointers([first], MAX_EDGES), [0] * MAX_EDGES, 0
    if len(bases) != edges:
        raise ValueError(f"noisy_group_sum: one base (or None) per edge, got {len(bases)} for {edges} edges")
    n, c, h, w = first.shape
    ptrs, strides, bits = [], [], 0
    for e, b in enumerate(bases):
        if b is None:
            ptrs.append(first)
            strides.append(0)
            continue
        if tuple(b.shape) != tuple(first.shape) or b.dtype != first.dtype or b.device != first.device:
            raise ValueError(f"noisy_group_sum: a base must be {tuple(first.shape)} {first.dtype} on {first.device}, "
                             f"got {tuple(b.shape)} {b.dtype} on {b.device}")
        if b.stride()[1:] != (h * w, w, 1):
            b = b.contiguous()
        ptrs.append(b)
        strides.append(b.stride(0))
        bits |= 1 << e
    return pad_pointers(ptrs, MAX_EDGES), strides + [0] * (MAX_EDGES - edges), bits


def noisy_group_sum_forward(shared, grouped, weights, seed, skip_index, kind, multiplicative, lam, mean, *,
                            first_edge=0, out=None, bases=None, std=None, own=None, row0_std=False,
                            grouped_norm=None, scale=None):
    """Returns (y [E, N, C, H, W], std fp32 of the skip operand: [1] for a shared one, [E] (one per
    edge) for the own one; zeros [1] when unused).

    skip_index: the noisy operand's weight column (shared, grouped, own). first_edge: the number
    of this call's first edge in its group (several sources share one group): edge e draws the
    noise of group edge first_edge + e. out: a contiguous tensor to write y into (this call's rows
    of the group's output). bases: per edge a tensor [N, C, H, W] added to its sum (a partial sum
    of its target node), or None; a base may be the very row of `out` it is added to (each element
    is read before it is written). std: the skip operand's std when the caller has it (as
    skip_std / skip_stds compute it; skip_stds of several sources, or of the own operands).
    own: one [N, C, H, W] tensor per edge, the own operand (the last weight column), or None.
    row0_std: also return, third, the fp32 [1] std of y[0] as skip_std computes it (unbiased, over
    all elements, Chan merges of per-program moments), its moments taken in this pass as y[0] is
    written: one merge launch instead of another two passes (a finished node sum's std, which the
    noise of that node's skip edges needs next).
    grouped_norm: per grouped operand None, or the (mean, rstd) (fp32 [E·C], this call's edges'
    channels) of the BatchNorm whose input it is: it is then read as (z − mean)·rstd (a
    BatchNorm whose normalisation the consumer applies, batch_norms_forward(apply=…)).
    scale: None, or the decay scale as a one-element fp32 device tensor that the kernel applies to
    lam and mean (noisy_mixed_sum_forward's)."""
    shared, grouped, weights, own = _check(shared, grouped, weights, own)
    first, edges = shared[0], weights.shape[0]
    skip, own_noisy = _noise_target(kind, skip_index, shared, grouped, own)
    if skip < 0 or multiplicative:
        std = torch.zeros((1,), device=first.device, dtype=torch.float32)
    elif std is None:
        std = skip_stds(own) if own_noisy else skip_std(shared[skip_index])
    elif std.numel() != (edges if own_noisy else 1):
        raise ValueError(f"noisy_group_sum: std must hold {edges if own_noisy else 1} value(s), got {std.numel()}")
    y = _output(out, (edges, *first.shape), first)
    base_ptrs, base_strides, base_bits = _bases(bases, edges, first)
    means, rstds, norm_bits = _norm_args(grouped_norm, grouped, edges, first)
    numel, g_stride, block, num_warps, index_64 = _launch_params(first, grouped, edges, first_edge)
    index_64 = index_64 or first.shape[0] * max(base_strides) > INT32_LIMIT - block
    programs = cdiv(numel, block)
    moments = torch.empty((programs, 3), device=first.device, dtype=torch.float32) if row0_std else first
    scaled = skip >= 0 and scale is not None
    scale = device_scale(scale, first.device) if scaled else std  # unused without SCALED: a stand-in pointer
    if numel:
        _group_forward_kernel[(programs,)](
            y, *pad_pointers(shared, MAX_SHARED), *pad_pointers(grouped, MAX_GROUPED), weights, seed, std, numel,
            numel // first.shape[0], g_stride, first_edge, float(lam), float(mean), scale, *base_ptrs, *base_strides,
            *pad_pointers(own or [first], MAX_EDGES), moments, *means, *rstds, first.shape[2] * first.shape[3],
            E=edges, NUM_SHARED=len(shared), NUM_GROUPED=len(grouped), NUM_OWN=int(own is not None), SKIP=skip,
            KIND=kind if skip >= 0 else NOISE_NONE, MULT=bool(multiplicative), NORM=norm_bits, BASES=base_bits,
            STATS=row0_std, SCALED=scaled,
            BLOCK=block, INDEX_64=index_64, num_warps=num_warps,
        )
    if not row0_std:
        return y, std
    row0 = torch.empty((1,), device=first.device, dtype=torch.float32)
    if numel:
        merge_moments(moments, row0, programs)
    else:
        row0.fill_(float("nan"))  # the std of nothing, as torch.std gives
    return y, std, row0


def _sum_rows(numel: int, hw: int) -> int | None:
    """Elements per row of the backward's BatchNorm sums (GSTATS) for operands of `numel`
    elements per edge and `hw` pixels per channel: a run inside one channel of one image that
    divides the kernel's block, min(hw, BLOCK) when that divides both; None when none does."""
    block = _elementwise_block(numel, many_operands=True)[0]
    rows = min(hw, block)
    return rows if hw and block % rows == 0 and hw % rows == 0 else None


def batch_norm_sum_slots(shape) -> int | None:
    """Partial sums per channel that noisy_group_sum_backward(bn_sums=…) writes for operands of
    [N, C, H, W] (per edge): N × (H·W / its row), each a run of one channel of one image; None
    when the image size does not split into the kernel's blocks (the BatchNorm then sums itself)."""
    n, c, h, w = shape
    rows = _sum_rows(n * c * h * w, h * w)
    return None if rows is None or n * c * h * w == 0 else n * (h * w // rows)


def partial_rows(numel: int) -> int:
    """Rows of the backward's dW partial sums (one per program) for sums of `numel` elements per edge."""
    return cdiv(numel, _elementwise_block(numel, many_operands=True)[0])


def noisy_group_sum_backward(grad, shared, grouped, weights, seed, std, skip_index, kind, multiplicative, lam, mean,
                             *, first_edge=0, d_grouped=None, own=None, part=None, weight_grad=True,
                             grouped_norm=None, bn_sums=None, scale=None):
    """Returns (shared operand gradients, grouped operand gradients, own operand gradients (one per
    edge; [] without own), dW fp32 [E, K]).

    grad: the upstream gradient, [E, N, C, H, W] or one [N, C, H, W] tensor per edge (as autograd
    hands the E outputs' gradients over: no stack). d_grouped: tensors to write the grouped
    gradients into, laid out as `grouped` (views of the group's gradients, when several sources
    share it); None allocates them. std, own: the forward's. part: an fp32 [partial_rows(numel),
    E·K] view (columns of a buffer that several sources of a group share, so that one sum gives
    the group's dW) to write the per-program partial sums into; dW is then None: the caller sums.
    weight_grad False: no dW (None; pass no part): the kernel reads no operand, only the upstream
    gradients (and, for multiplicative noise, regenerates ε), as a w step's backward needs.
    grouped_norm: the forward's; a deferred BatchNorm's operand gets the gradient of its y.
    bn_sums: per grouped operand None, or (for one with grouped_norm) an fp32 [E·C, S, 2] tensor
    (S = batch_norm_sum_slots of the operands' shape; this call's edges' channels) to write its
    BatchNorm's backward sums into: per channel and slot, Σd and Σd·y of the gradient d written
    for it (batch_norms_backward(sums=…) merges them instead of reading d and z again).
    scale: the forward's."""
    shared, grouped, weights, own = _check(shared, grouped, weights, own)
    first, edges = shared[0], weights.shape[0]
    grads = list(grad.unbind(0)) if isinstance(grad, torch.Tensor) else list(grad)
    if len(grads) != edges or any(g.shape != first.shape for g in grads):
        raise ValueError(f"noisy_group_sum: the gradient must be {edges} edges of {tuple(first.shape)}")
    n, c, h, w = first.shape
    # read in place where each image is dense (a channel slice of the cell's output gradient is)
    grads = [g if g.stride()[1:] == (h * w, w, 1) else g.contiguous() for g in grads]
    skip, own_noisy = _noise_target(kind, skip_index, shared, grouped, own)
    if skip >= 0 and not multiplicative and std.numel() != (edges if own_noisy else 1):
        raise ValueError(f"noisy_group_sum: std must hold {edges if own_noisy else 1} value(s), got {std.numel()}")
    d_shared = [torch.empty_like(t) for t in shared]
    d_own = [torch.empty_like(t) for t in own] if own is not None else []
    if d_grouped is None:
        d_grouped = [torch.empty_strided(t.shape, t.stride(), device=t.device, dtype=t.dtype) for t in grouped]
    elif any(d.shape != t.shape or d.stride() != t.stride() or d.dtype != t.dtype for d, t in zip(d_grouped, grouped)):
        raise ValueError("noisy_group_sum: d_grouped must be laid out as the grouped operands")
    means, rstds, norm_bits = _norm_args(grouped_norm, grouped, edges, first)
    sums, sum_bits, slots = _sum_args(bn_sums, norm_bits, len(grouped), edges, first)
    numel, g_stride, block, num_warps, index_64 = _launch_params(first, grouped, edges, first_edge)
    index_64 = index_64 or max(n * g.stride(0) for g in grads) > INT32_LIMIT - block
    programs = cdiv(numel, block)
    own_part = part is None
    if not weight_grad:
        if not own_part:
            raise ValueError("noisy_group_sum: part is where dW's partial sums go; pass none with weight_grad=False")
        part = weights  # never written: a pointer for the unused argument
    elif own_part:
        part = torch.empty((programs, weights.numel()), device=first.device, dtype=torch.float32)
    elif (part.dtype != torch.float32 or part.device != first.device or tuple(part.shape) != (programs, weights.numel())
          or part.stride(1) != 1):
        raise ValueError(f"noisy_group_sum: part must be an fp32 [{programs}, {weights.numel()}] view with dense rows, "
                         f"got {part.dtype} {tuple(part.shape)} strides {part.stride()}")
    if not numel:
        dw = torch.zeros(weights.shape, device=first.device, dtype=torch.float32)
        return d_shared, d_grouped, d_own, dw if own_part and weight_grad else None
    scaled = skip >= 0 and scale is not None
    scale = device_scale(scale, first.device) if scaled else weights  # unused without SCALED: a stand-in pointer
    _group_backward_kernel[(programs,)](
        *pad_pointers(grads, MAX_EDGES), *[g.stride(0) for g in pad_pointers(grads, MAX_EDGES)],
        *pad_pointers(shared, MAX_SHARED), *pad_pointers(d_shared, MAX_SHARED), *pad_pointers(grouped, MAX_GROUPED),
        *pad_pointers(d_grouped, MAX_GROUPED), *pad_pointers(own or [first], MAX_EDGES),
        *pad_pointers(d_own or [first], MAX_EDGES), weights, part, part.stride(0) if weight_grad else 0, seed, std,
        numel, numel // first.shape[0], g_stride, first_edge, float(lam), float(mean), scale, *means, *rstds, h * w,
        *sums, slots,
        E=edges, NUM_SHARED=len(shared), NUM_GROUPED=len(grouped), NUM_OWN=int(own is not None), SKIP=skip,
        KIND=kind if skip >= 0 else NOISE_NONE, MULT=bool(multiplicative),
        NORM=norm_bits if weight_grad or sum_bits else 0, GSTATS=sum_bits,
        HW_BLOCK=_sum_rows(numel, h * w) if sum_bits else 1, WGRAD=bool(weight_grad), SCALED=scaled, BLOCK=block,
        INDEX_64=index_64, num_warps=num_warps,
    )
    # fixed-order reduction of the partials: deterministic, no float atomics
    return d_shared, d_grouped, d_own, part.sum(dim=0).view(weights.shape) if own_part and weight_grad else None

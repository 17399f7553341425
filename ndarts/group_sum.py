"""The noisy mixed sums of all edges of an EdgeGroup, as one op (``SearchNetwork(group_sums=True)``).

For a node h with E outgoing edges, edge e's mixed sum is

    y_e = Σ_p W[e, p]·shared_p + Σ_q W[e, P + q]·grouped_q[:, e·C:(e+1)·C]  (+ W[e, P + Q]·own_e)

with the shared operands (the pools with their BatchNorm and, on stride-1 edges, the identity skip
h: the same tensor on every edge), the grouped ones (ndarts.edge_groups' batched convs,
[N, E·C, H, W]) and, on a reduction cell's stride-2 edges, each edge's own operand: its
FactorizedReduce skip (own weights per edge; the node's computed together, NodeShare.reduced).
The skip operand gets NoisyDARTS noise per edge: its own ε, the std of its operand (h, the same
on every edge; a FactorizedReduce output, its edge's own), SPEC §1 on every edge. A cell's
two inputs share one EdgeGroup: its edges are input 0's, then input 1's, each source with its own
shared operands (``noisy_group_sums``). On the Triton backend it is one forward and one backward
kernel per source (``ndarts_kernels.noisy_group_sum_*``) instead of one per edge, the shared
operands read once and their gradients written once, the grouped operands read and their
gradients written in place; the torch backend runs the reference below (E per-edge sums).
A grouped operand may be a deferred BatchNorm's input z (the stacks' last BatchNorms, where the
group is summed here: GroupRun.defer): the kernels read it as (z − mean)·rstd, so that BatchNorm
never writes its output (``grouped_norm``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from .backend import TRITON_DTYPES, resolve_backend
from .batch_norm import deferred_output
from .edge_groups import EdgeGroupSlot
from .fused_sum import _noisy, noise_arguments, promote_operands, reference_eps, reference_sum_with_eps
from .grad_use import grads_used
from .noise import NoiseConfig, scaled_params
from .operations import FactorizedReduce


def _edge_ranges(edges) -> list[tuple[int, int]]:
    """(first edge, edge count) of each source in a group's [E, …] edge order."""
    out, first = [], 0
    for e in edges:
        out.append((first, e))
        first += e
    return out


def _own_noisy(kind: int, skip: int, num_shared: int, num_grouped: int, has_own: bool) -> bool:
    """Whether the noisy operand is the edges' own one (the last weight column)."""
    return has_own and kind != 0 and skip == num_shared + num_grouped


def reference_group_sum(sources, grouped, weights, edges, skip_index: int, multiplicative, lam, mean, eps, own=None):
    """[E, N, C, H, W]: group edge e's sum by reference_sum_with_eps with ε = eps[e] (None: no
    noise); the edges of source s (edges[s] of them, in order) take its shared operands sources[s],
    and edge e its own operand own[e] (the last weight column; own None: none)."""
    total = weights.shape[0]
    n, c, h, w = sources[0][0].shape
    outs = []
    for shared, (first, count) in zip(sources, _edge_ranges(edges)):
        for e in range(first, first + count):
            operands = list(shared) + [g.reshape(n, total, c, h, w)[:, e] for g in grouped]
            operands += [own[e]] if own is not None else []
            outs.append(reference_sum_with_eps(operands, weights[e], skip_index, multiplicative, lam, mean,
                                               None if eps is None else eps[e]))
    return torch.stack(outs)


class _TritonGroupSum(torch.autograd.Function):
    """The Triton group sums of one EdgeGroup: one launch each way per source, every launch reading
    its edges' channels of the group's grouped operands in place and writing their gradients into
    one tensor per operand (no per-source copies, no autograd accumulation).

    by_target: the outputs are the T targets' sums (Σ over the sources of their edge into it, plus
    its base where one is given) instead of the E edges' sums; the sources' launches add up in
    the output in place, and each base's gradient is its target's (identity: no kernel).
    num_own 1: after the grouped operands come the E edges' own operands (one tensor each).
    std_args: (the sources' shared skip stds as one fp32 [S] tensor when the caller has them, or None;
    a list to append the std of target 0's sum to, or None: by_target, the last source's launch
    takes that sum's moments as it writes it). scale: None, or the noise's decay scale on the device
    (params then hold λ and μ unscaled; the kernels apply it)."""

    @staticmethod
    def forward(ctx, weights, seed, params, scale, edges, num_shared, num_own, by_target, base_slots, norm_slots,
                sinks, std_args, *operands):
        import ndarts_kernels

        k = num_shared * len(edges)
        total = sum(edges)
        num_bases, num_stats = len(base_slots), 2 * len(norm_slots)
        operands, stats = operands[:len(operands) - num_stats], operands[len(operands) - num_stats:]
        tail = len(operands) - num_bases - num_own * total  # end of the grouped operands
        grouped = [g.contiguous() for g in operands[k:tail]]
        own = list(operands[tail:tail + num_own * total]) if num_own else None
        bases = [None] * (edges[0] if by_target else 0)
        for t, b in zip(base_slots, operands[len(operands) - num_bases:]):
            bases[t] = b
        norms = _grouped_norms(norm_slots, stats, len(grouped))
        first = operands[0]
        c = first.shape[1]
        rows = edges[0] if by_target else weights.shape[0]
        y = torch.empty((rows, *first.shape), device=first.device, dtype=first.dtype)
        skip, kind, mult = params[:3]
        # the sources' skip stds (or every edge's, for a noisy own operand) in one pair of launches
        own_skip = _own_noisy(kind, skip, num_shared, len(grouped), own is not None)
        known, target_std_out = std_args
        if own_skip and not mult:
            skip_stds = ndarts_kernels.skip_stds(own)
        elif _noisy(kind, skip, num_shared) and not mult and known is not None:
            skip_stds = known
        elif len(edges) > 1 and _noisy(kind, skip, num_shared) and not mult:
            skip_stds = ndarts_kernels.skip_stds([operands[s * num_shared + skip] for s in range(len(edges))])
        else:
            skip_stds = None
        stds = []
        for s, (e0, count) in enumerate(_edge_ranges(edges)):
            shared = operands[s * num_shared:(s + 1) * num_shared]
            # by target: the first source adds the bases, each later one what the earlier wrote
            extra = dict(out=y, bases=bases if s == 0 else list(y.unbind(0))) if by_target else dict(out=y[e0:e0 + count])
            std = None if skip_stds is None else skip_stds[e0:e0 + count] if own_skip else skip_stds[s:s + 1]
            last = target_std_out is not None and by_target and s == len(edges) - 1
            std, *row0 = ndarts_kernels.noisy_group_sum_forward(
                shared, _narrow(grouped, e0, count, c, len(edges)), weights[e0:e0 + count], seed, *params,
                first_edge=e0, std=std, own=own[e0:e0 + count] if own is not None else None, row0_std=last,
                grouped_norm=_edge_channels(norms, e0, count, c), scale=scale, **extra)[1:]
            stds.append(std)
            if last:
                target_std_out.append(row0[0])
        ctx.save_for_backward(weights, seed, *stds, *operands[:k], *grouped, *(own or []), *stats)
        ctx.params, ctx.scale, ctx.edges, ctx.num_shared, ctx.num_own = params, scale, edges, num_shared, num_own
        ctx.by_target, ctx.base_slots, ctx.norm_slots, ctx.sinks = by_target, base_slots, norm_slots, sinks
        ctx.set_materialize_grads(False)
        return y.unbind(0)  # one output per edge (target): their gradients reach the kernel unstacked

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        import ndarts_kernels
        from ndarts_kernels.noisy_group_sum import partial_rows

        some = next((g for g in grads if g is not None), None)
        weights, seed, *rest = ctx.saved_tensors
        edges, num_shared = ctx.edges, ctx.num_shared
        d_bases = [grads[t] for t in ctx.base_slots]  # a base's gradient is its target's
        num_stats = 2 * len(ctx.norm_slots)
        rest, stats = rest[:len(rest) - num_stats], rest[len(rest) - num_stats:]
        d_stats = (None,) * num_stats  # the BatchNorm statistics: not differentiable
        if some is None:
            return (None,) * 12 + (None,) * (len(rest) - len(edges)) + tuple(d_bases) + d_stats
        grad = [g if g is not None else torch.zeros_like(some) for g in grads]
        stds, rest = rest[:len(edges)], rest[len(edges):]
        own = list(rest[len(rest) - sum(edges):]) if ctx.num_own else None
        rest = rest[:len(rest) - sum(edges)] if ctx.num_own else rest
        shared_all, grouped = rest[:num_shared * len(edges)], rest[num_shared * len(edges):]
        first = shared_all[0]
        c = first.shape[1]
        norms = _grouped_norms(ctx.norm_slots, stats, len(grouped))
        d_grouped = [torch.empty_like(g) for g in grouped]
        # a deferred BatchNorm's backward sums, made here as its gradient is written (GradSums)
        bn_sums = _bn_sum_buffers(ctx.norm_slots, ctx.sinks, grouped, first.shape)
        d_shared, d_own = [], []
        # the sources' partial sums side by side in one buffer: one sum gives the group's dW [E, K];
        # a pass that uses no α gradient (a w step) reads no operand: only the gradients in, theirs out
        need_w = grads_used(ctx, 1)[0]
        k = weights.shape[1]
        part = torch.empty((partial_rows(first.numel()), weights.numel()),
                           device=first.device, dtype=torch.float32) if need_w else None
        for s, (e0, count) in enumerate(_edge_ranges(edges)):
            ds, _, do, _ = ndarts_kernels.noisy_group_sum_backward(
                grad if ctx.by_target else grad[e0:e0 + count], shared_all[s * num_shared:(s + 1) * num_shared],
                _narrow(grouped, e0, count, c, len(edges)), weights[e0:e0 + count], seed, stds[s], *ctx.params,
                first_edge=e0, d_grouped=_narrow(d_grouped, e0, count, c, len(edges)),
                own=own[e0:e0 + count] if own is not None else None,
                part=part[:, e0 * k:(e0 + count) * k] if need_w else None, weight_grad=need_w,
                grouped_norm=_edge_channels(norms, e0, count, c), bn_sums=_edge_channels(bn_sums, e0, count, c),
                scale=ctx.scale)
            d_shared += ds
            d_own += do
        for q, sink in zip(ctx.norm_slots, ctx.sinks):
            if bn_sums is not None and bn_sums[q] is not None:
                sink.put(bn_sums[q])
        # fixed-order reduction of the partials: deterministic, no float atomics
        dw = part.sum(dim=0).view(weights.shape).to(weights.dtype) if need_w else None
        return (dw, None, None, None, None, None, None, None, None, None, None, None, *d_shared, *d_grouped, *d_own,
                *d_bases, *d_stats)


def _grouped_norms(norm_slots, stats, num_grouped):
    """Per grouped operand None or its deferred BatchNorm's (mean, rstd) (stats: two per slot);
    None for none."""
    if not norm_slots:
        return None
    norms = [None] * num_grouped
    for i, q in enumerate(norm_slots):
        norms[q] = (stats[2 * i], stats[2 * i + 1])
    return norms


def _edge_channels(entries, first, count, c):
    """Per grouped operand, its per-channel tensor (or tuple of them: its statistics) cut to edges
    first … first + count - 1's channels (views); None entries (and None) stay None."""
    if entries is None:
        return None
    return [None if n is None else n.narrow(0, first * c, count * c) if isinstance(n, torch.Tensor)
            else tuple(t.narrow(0, first * c, count * c) for t in n) for n in entries]


def _bn_sum_buffers(norm_slots, sinks, grouped, shape):
    """Per grouped operand None or an fp32 [E·C, S, 2] buffer for its deferred BatchNorm's backward
    sums (where its reader gets a GradSums and the image size allows them); None for none."""
    from ndarts_kernels.noisy_group_sum import batch_norm_sum_slots

    slots = batch_norm_sum_slots(shape) if any(s is not None for s in sinks) else None
    if slots is None:
        return None
    out = [None] * len(grouped)
    for q, sink in zip(norm_slots, sinks):
        if sink is not None:
            out[q] = torch.empty((grouped[q].shape[1], slots, 2), device=grouped[q].device, dtype=torch.float32)
    return out


def _narrow(grouped, first, count, c, sources):
    """The channels of edges first … first + count - 1 of each grouped operand (views; the whole
    tensors for a one-source group)."""
    return grouped if sources == 1 else [g.narrow(1, first * c, count * c) for g in grouped]


def noisy_group_sums(sources, grouped, weights: torch.Tensor, edges, skip_index: int | None, noise: NoiseConfig, *,
                     scale: float | torch.Tensor = 1.0, training: bool = True, backend: str | None = None,
                     seed: torch.Tensor | None = None, per_edge: bool = False, by_target: bool = False,
                     bases=None, own=None, skip_stds: torch.Tensor | None = None, target_std_out: list | None = None,
                     grouped_norm=None):
    """The mixed sums of all E edges of an EdgeGroup with one or more sources (a cell's two input
    nodes share one) as [E, N, C, H, W]; see the module docstring.

    sources: per source, its P shared operands [N, C, H, W]; edges: per source, how many of the
    group's edges leave it (in the group's edge order, sources one after another); grouped: Q
    tensors [N, E·C, H, W]; weights [E, P + Q] (columns: shared, then grouped); skip_index: the
    noisy shared operand (None: no noise). Edge e draws the noise of index e, whichever its source.
    per_edge: return the E sums as a tuple of [N, C, H, W] tensors (views; on Triton their
    gradients reach the backward kernel as they are, without a stack) instead of one tensor.
    by_target: every source has T edges, its k-th into target k (a cell's nodes); return the T
    target sums as a tuple, target k's = bases[k] (a partial sum of that node, or None) + Σ over
    the sources of their k-th edge's sum. On Triton the bases are added in the kernels: a cell's
    node sums are a chain of group sums, with no adds of their own.
    own: E tensors [N, C, H, W], one per edge, each its edge's own operand (the last weight
    column: weights [E, P + Q + 1]); a reduction cell's stride-2 edges have their own
    FactorizedReduce skip. skip_index may name it (P + Q): each edge's noise then takes the std of
    its own operand, as a per-edge sum would.
    skip_stds: the sources' shared skip operands' stds, fp32 [S] (as skip_operand_stds computes
    them), when the caller has them (a node's std from the kernel that wrote the node); None
    computes them. target_std_out: a list; on Triton with by_target, the std of target 0's sum (as
    skip_operand_std would compute it) is appended, its moments taken as the last source's kernel
    writes it (target 0 is then final: the chain's node whose edges run next); elsewhere nothing.
    grouped_norm: per grouped operand None, or (mean, rstd) (fp32 [E·C]) when it is a deferred
    BatchNorm's input z (search_batch_norms(defer=…)): the sums read it as that BatchNorm's output
    (z − mean)·rstd, and its gradient is that output's (what the BatchNorm's backward takes). On
    Triton the kernels normalise as they read z; elsewhere deferred_output makes y first. A
    DeferredNorm (mean, rstd, GradSums): on Triton the backward kernels also make that BatchNorm's
    backward sums as they write the gradient, and leave them in its GradSums.
    scale: the noise's decay scale, a number or a device tensor (noisy_mixed_sum's).
    """
    if not sources or not all(sources) or not grouped:
        raise ValueError("noisy_group_sums needs shared and grouped operands")
    if len(edges) != len(sources) or any(e < 1 for e in edges) or len({len(s) for s in sources}) > 1:
        raise ValueError(f"noisy_group_sums: one edge count ≥ 1 per source and as many shared operands from each, "
                         f"got edges {list(edges)} for {[len(s) for s in sources]} shared operands")
    num_shared = len(sources[0])
    num_own = int(own is not None)
    if weights.dim() != 2 or weights.shape != (sum(edges), num_shared + len(grouped) + num_own):
        raise ValueError(f"noisy_group_sums: weights must be [{sum(edges)}, {num_shared + len(grouped) + num_own}], "
                         f"got {tuple(weights.shape)}")
    if own is not None and len(own) != sum(edges):
        raise ValueError(f"noisy_group_sums: own needs one tensor per edge, got {len(own)} for {sum(edges)} edges")
    first = sources[0][0]
    for t in own or ():
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"noisy_group_sums: each edge's own operand must be {tuple(first.shape)} {first.dtype} "
                             f"on {first.device}, got {tuple(t.shape)} {t.dtype} on {t.device}")
    if by_target and len(set(edges)) > 1:
        raise ValueError(f"noisy_group_sums(by_target=True): every source needs as many edges, got {list(edges)}")
    if bases is not None and (not by_target or len(bases) != edges[0]):
        raise ValueError(f"noisy_group_sums: bases need by_target=True and one entry (or None) per target, "
                         f"got {len(bases)} for {edges[0]} targets")
    bases = list(bases) if bases is not None else [None] * (edges[0] if by_target else 0)
    device = first.device
    if skip_stds is not None and (not isinstance(skip_stds, torch.Tensor) or skip_stds.numel() != len(sources)
                                  or skip_stds.device != device):
        raise ValueError(f"noisy_group_sums: skip_stds must be one std per source ({len(sources)}) on {device}")
    if not isinstance(noise, NoiseConfig):
        raise TypeError(f"noisy_group_sums: noise must be a NoiseConfig, got {type(noise).__name__}")
    own_column = num_shared + len(grouped) if own is not None else None
    if skip_index is not None and not (skip_index in range(num_shared) or skip_index == own_column):
        raise ValueError(f"noisy_group_sums: skip_index must name a shared operand (0..{num_shared - 1})"
                         + (f" or the edges' own ({own_column})" if own is not None else "")
                         + f" or be None, got {skip_index!r}: a grouped operand takes no noise")
    noisy = training and skip_index is not None and noise.enabled
    kind, mult, lam, mean, device_scale, seed = noise_arguments(noise, noisy, scale, seed, device)
    skip = -1 if skip_index is None else int(skip_index)
    if grouped_norm is not None and len(grouped_norm) != len(grouped):
        raise ValueError(f"noisy_group_sums: grouped_norm needs one entry (or None) per grouped operand, "
                         f"got {len(grouped_norm)} for {len(grouped)}")
    norm_slots = tuple(q for q, n in enumerate(grouped_norm or ()) if n is not None)
    if resolve_backend(backend, device) == "triton" and first.dtype in TRITON_DTYPES:
        slots = tuple(t for t, b in enumerate(bases) if b is not None)
        sinks = tuple(grouped_norm[q][2] if len(grouped_norm[q]) > 2 else None for q in norm_slots)
        outs = _TritonGroupSum.apply(weights, seed, (skip, kind, mult, float(lam), float(mean)), device_scale,
                                     tuple(edges), num_shared, num_own, by_target, slots, norm_slots, sinks,
                                     (skip_stds, target_std_out), *[t for shared in sources for t in shared],
                                     *grouped, *(own or []), *[bases[t] for t in slots],
                                     *[t for q in norm_slots for t in grouped_norm[q][:2]])
        return outs if per_edge or by_target else torch.stack(outs)
    if norm_slots:
        grouped = [deferred_output(g, *grouped_norm[q]) if q in norm_slots else g for q, g in enumerate(grouped)]
    eps = None
    if _noisy(kind, skip, num_shared) or _own_noisy(kind, skip, num_shared, len(grouped), own is not None):
        eps = reference_eps(seed, (weights.shape[0], first.numel()), kind, device)
    lam, mean = scaled_params(float(lam), float(mean), mult, device_scale)
    y = reference_group_sum(sources, grouped, weights, edges, skip, mult, lam, mean, eps, own)
    if by_target:
        return tuple(sum_targets(y, len(edges), bases))
    return y.unbind(0) if per_edge else y


def sum_targets(y: torch.Tensor, sources: int, bases) -> list:
    """[S·T, …] edge sums (source by source, each source's k-th edge into target k) → the T target
    sums, bases[k] (or None) + Σ_s y[s·T + k] (the reference of noisy_group_sums(by_target=True))."""
    per_source = y.view(sources, -1, *y.shape[1:])
    out = []
    for k, base in enumerate(bases):
        total = base
        for s in range(sources):
            total = per_source[s, k] if total is None else total + per_source[s, k]
        out.append(total)
    return out


def noisy_group_sum(shared, grouped, weights: torch.Tensor, skip_index: int | None, noise: NoiseConfig, *,
                    scale: float | torch.Tensor = 1.0, training: bool = True, backend: str | None = None,
                    seed: torch.Tensor | None = None) -> torch.Tensor:
    """The E mixed sums of one node's outgoing edges as [E, N, C, H, W] (noisy_group_sums with one
    source).

    shared: P tensors [N, C, H, W]; grouped: Q tensors [N, E·C, H, W]; weights [E, P + Q] (columns:
    shared, then grouped); skip_index: the noisy shared operand (None: no noise).
    """
    if weights.dim() != 2 or weights.shape[1] != len(shared) + len(grouped):
        raise ValueError(f"noisy_group_sum: weights must be [edges, {len(shared) + len(grouped)}], "
                         f"got {tuple(weights.shape)}")
    return noisy_group_sums([list(shared)], grouped, weights, [weights.shape[0]], skip_index, noise, scale=scale,
                            training=training, backend=backend, seed=seed)


# ----------------------------------------------------------------------------- in a search cell
class NodeSumPlan(NamedTuple):
    """How a SearchCell sums the edges of one EdgeGroup in one op."""
    edges: list  # the edges' indices in the cell, by slot (the sources' edges one after another)
    counts: tuple  # edges per source node (EdgeGroup.sources)
    shared: list  # primitive indices of the operands alike on every edge of a source: pools, identity skip
    grouped: list  # primitive indices of the EdgeGroup's convs
    own: int | None  # primitive index of each edge's own operand: a stride-2 edge's FactorizedReduce skip
    skip: int | None  # weight column of the noisy skip: its position in `shared`, or that of `own` (last)
    by_target: bool  # every source has as many edges, its k-th into the same node (the cell's chain of node sums)
    start: int  # this group's weight gather indices: index[start:stop] (see plan_node_sums)
    stop: int


def plan_node_sums(mixed_ops, edge_slots, edge_groups) -> tuple[dict, list]:
    """({group: NodeSumPlan}, gather index) for the EdgeGroups of a cell whose edges can be summed
    in one op: every live op shared (the pools, alike on every edge of a source; a stride-1 edge's
    identity skip), grouped (the convs) or, on stride-2 edges, the edge's own FactorizedReduce skip
    (noise on its output, SPEC §1's default), within the kernels' limits. index[start:stop] picks
    each plan's [E, K] weights out of the cell's flattened [edges, primitives] weights."""
    from ndarts_kernels.noisy_group_sum import MAX_EDGES, MAX_GROUPED, MAX_SHARED

    plans, index = {}, []
    for g, group in enumerate(edge_groups):
        edges = [k for _, k in sorted((slot, k) for k, (grp, slot) in enumerate(edge_slots) if grp == g)]
        op = mixed_ops[edges[0]]
        reduce = group.stride != 1
        own = op._skip if reduce and op._skip in op._live and isinstance(op._ops[op._skip], FactorizedReduce) else None
        shared = [i for i in op._live if i in op._pools or (i == op._skip and not reduce)]
        grouped = [i for i in op._live if isinstance(op._ops[i], EdgeGroupSlot)]
        if (len(shared) + len(grouped) + (own is not None) != len(op._live) or not 1 <= len(shared) <= MAX_SHARED
                or not 1 <= len(grouped) <= MAX_GROUPED or max(group.sources) > MAX_EDGES
                or (reduce and op._noise_on_input())):
            continue  # these edges keep their own fused sums
        start = len(index)
        columns = shared + grouped + ([own] if own is not None else [])
        index += [k * len(op.primitives) + i for k in edges for i in columns]
        skip = columns.index(op._skip) if op._skip in columns else None
        plans[g] = NodeSumPlan(edges, group.sources, shared, grouped, own, skip, len(set(group.sources)) == 1,
                               start, len(index))
    return plans, index


def node_sums(mixed_ops, plan: NodeSumPlan, shares, weights: torch.Tensor, bases=None,
              target_std_out: list | None = None) -> tuple:
    """The mixed sums of all edges of one EdgeGroup: one tensor per slot, or, with bases (the
    plan must be by_target), one per target node: bases[k] (that node's partial sum, or None) +
    the sources' k-th edges. shares: the NodeShare of each of the group's source nodes; weights:
    the plan's α weights, flat [E·K] (the cell's [edges, primitives] weights gathered with its
    index[start:stop]: plan_node_sums). A source whose share knows its std already (NodeShare.
    known_std: its kernel's) lends it to the noise. target_std_out: see noisy_group_sums."""
    ops = [mixed_ops[k] for k in plan.edges]
    op = ops[0]
    run = shares[0].run
    if run is not None:
        # the sources' pools with the group's convs: their BatchNorms in the convs' first launch
        firsts = [sum(plan.counts[:s]) for s in range(len(shares))]
        run.compute([(ops[f], share) for f, share in zip(firsts, shares)
                     if any((ops[f].primitives[i], ops[f].stride) not in share.pooled for i in ops[f]._pools)]
                    if run._outputs is None else ())
    sources, first = [], 0
    for share, count in zip(shares, plan.counts):
        shared = []
        for i in plan.shared:
            if i == op._skip:
                shared.append(share.input(op.primitives[i]))  # the identity (x's skip alias)
                continue
            for other in ops[first:first + count]:  # the first computes the pool + BN, the others register their BN's statistics
                out = other._run(i, share.x, share)
            shared.append(out)
        sources.append(shared)
        first += count
    grouped = [shares[0].grouped_raw(i) for i in plan.grouped]
    # a stack whose last BatchNorm is deferred (GroupRun.defer): its z, read as y by the sums
    norms = [shares[0].grouped_norm(i) for i in plan.grouped]
    # each stride-2 edge's FactorizedReduce of its source (a source's computed together: NodeShare.reduced)
    own = ([share.reduced(other._ops[plan.own]) for share, (e0, count) in zip(shares, _edge_ranges(plan.counts))
            for other in ops[e0:e0 + count]] if plan.own is not None else [])
    # under autocast, as FusedMixedOp does
    operands = promote_operands([t for shared in sources for t in shared] + grouped + own)
    p = len(plan.shared)
    sources = [operands[s * p:(s + 1) * p] for s in range(len(sources))]
    grouped = operands[p * len(sources):p * len(sources) + len(grouped)]
    own = operands[p * len(sources) + len(grouped):] or None
    if bases is not None:
        bases = [b.to(grouped[0].dtype) if b is not None and b.dtype != grouped[0].dtype else b for b in bases]
    w = weights.view(len(ops), -1)
    noisy = op.noisy
    seeds = shares[0].seeds
    known = [share.known_std for share in shares]
    skip_stds = (known[0] if len(known) == 1 else torch.cat(known)) if all(k is not None for k in known) else None
    return noisy_group_sums(sources, grouped, w, plan.counts, plan.skip if noisy else None, op.noise,
                            scale=op.kernel_noise_scale, training=noisy, backend=op.backend,
                            seed=seeds.take() if seeds is not None else None, per_edge=bases is None,
                            by_target=bases is not None, bases=bases, own=own, skip_stds=skip_stds,
                            target_std_out=target_std_out, grouped_norm=norms if any(norms) else None)

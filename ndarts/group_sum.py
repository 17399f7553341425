"""The noisy mixed sums of all edges leaving one node, as one op (``SearchNetwork(group_sums=True)``).

For a node h with E outgoing stride-1 edges, edge e's mixed sum is

    y_e = Σ_p W[e, p]·shared_p + Σ_q W[e, P + q]·grouped_q[:, e·C:(e+1)·C]

with the shared operands (the pools with their BatchNorm and the identity skip h: the same tensor
on every edge) and the grouped ones (ndarts.edge_groups' batched convs, [N, E·C, H, W]). The skip
operand gets NoisyDARTS noise per edge: its own ε, the std of h (SPEC §1 on every edge). On the
Triton backend it is one forward and one backward kernel for the E edges
(``ndarts_kernels.noisy_group_sum_*``) instead of E of each, the shared operands read once and
their gradients written once; the torch backend runs the reference below (E per-edge sums).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from .backend import TRITON_DTYPES, resolve_backend
from .edge_groups import EdgeGroupSlot
from .fused_sum import _noisy, draw_seed, promote_operands, reference_eps, reference_sum_with_eps
from .noise import NoiseConfig


def reference_group_sum(shared, grouped, weights, skip_index: int, multiplicative, lam, mean, eps):
    """[E, N, C, H, W]: edge e's sum by reference_sum_with_eps with ε = eps[e] (None: no noise)."""
    edges = weights.shape[0]
    n, c, h, w = shared[0].shape
    outs = []
    for e in range(edges):
        operands = list(shared) + [g.view(n, edges, c, h, w)[:, e] for g in grouped]
        outs.append(reference_sum_with_eps(operands, weights[e], skip_index, multiplicative, lam, mean,
                                           None if eps is None else eps[e]))
    return torch.stack(outs)


class _TritonGroupSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, seed, params, num_shared, *operands):
        import ndarts_kernels

        shared, grouped = list(operands[:num_shared]), list(operands[num_shared:])
        y, std = ndarts_kernels.noisy_group_sum_forward(shared, grouped, weights, seed, *params)
        ctx.save_for_backward(weights, seed, std, *operands)
        ctx.params, ctx.num_shared = params, num_shared
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        import ndarts_kernels

        weights, seed, std, *operands = ctx.saved_tensors
        k = ctx.num_shared
        d_shared, d_grouped, dw = ndarts_kernels.noisy_group_sum_backward(
            grad, operands[:k], operands[k:], weights, seed, std, *ctx.params)
        return (dw.to(weights.dtype), None, None, None, *d_shared, *d_grouped)


def noisy_group_sum(shared, grouped, weights: torch.Tensor, skip_index: int | None, noise: NoiseConfig, *,
                    scale: float = 1.0, training: bool = True, backend: str | None = None,
                    seed: torch.Tensor | None = None) -> torch.Tensor:
    """The E mixed sums of one node's outgoing edges as [E, N, C, H, W] (see the module docstring).

    shared: P tensors [N, C, H, W]; grouped: Q tensors [N, E·C, H, W]; weights [E, P + Q] (columns:
    shared, then grouped); skip_index: the noisy shared operand (None: no noise).
    """
    if not shared or not grouped:
        raise ValueError("noisy_group_sum needs shared and grouped operands")
    if weights.dim() != 2 or weights.shape[1] != len(shared) + len(grouped):
        raise ValueError(f"noisy_group_sum: weights must be [edges, {len(shared) + len(grouped)}], "
                         f"got {tuple(weights.shape)}")
    device = shared[0].device
    noisy = training and skip_index is not None and noise.enabled
    kind, mult, lam, mean = noise.kernel_params(scale) if noisy else (0, False, 0.0, 0.0)
    if seed is None:
        seed = draw_seed(device) if noisy else torch.zeros((1,), device=device, dtype=torch.int64)
    skip = -1 if skip_index is None else int(skip_index)
    if resolve_backend(backend, device) == "triton" and shared[0].dtype in TRITON_DTYPES:
        return _TritonGroupSum.apply(weights, seed, (skip, kind, mult, float(lam), float(mean)), len(shared),
                                     *shared, *grouped)
    eps = None
    if _noisy(kind, skip, len(shared)):
        eps = reference_eps(seed, (weights.shape[0], shared[0].numel()), kind, device)
    return reference_group_sum(shared, grouped, weights, skip, mult, float(lam), float(mean), eps)


# ----------------------------------------------------------------------------- in a search cell
class NodeSumPlan(NamedTuple):
    """How a SearchCell sums the edges leaving one node in one op."""
    edges: list  # the edges' indices in the cell, by slot
    shared: list  # primitive indices of the operands alike on every edge: pools, identity skip
    grouped: list  # primitive indices of the EdgeGroup's convs
    skip: int | None  # position of the skip in `shared`
    start: int  # this node's weight gather indices: index[start:stop] (see plan_node_sums)
    stop: int


def plan_node_sums(mixed_ops, edge_slots, edge_groups) -> tuple[dict, list]:
    """({source state: NodeSumPlan}, gather index) for the nodes of a cell whose outgoing edges can
    be summed in one op: stride 1 (identity skip, pools alike on every edge), every live op shared
    or grouped, within the kernels' limits. index[start:stop] picks each plan's [E, K] weights out
    of the cell's flattened [edges, primitives] weights."""
    from ndarts_kernels.noisy_group_sum import MAX_EDGES, MAX_GROUPED, MAX_SHARED

    plans, index = {}, []
    for j, group in enumerate(edge_groups):
        edges = [k for _, k in sorted((slot, k) for k, (src, slot) in enumerate(edge_slots) if src == j)]
        op = mixed_ops[edges[0]]
        shared = [i for i in op._live if i in op._pools or i == op._skip]
        grouped = [i for i in op._live if isinstance(op._ops[i], EdgeGroupSlot)]
        if (group.stride != 1 or len(shared) + len(grouped) != len(op._live) or not 1 <= len(shared) <= MAX_SHARED
                or not 1 <= len(grouped) <= MAX_GROUPED or len(edges) > MAX_EDGES):
            continue  # these edges keep their own fused sums
        start = len(index)
        index += [k * len(op.primitives) + i for k in edges for i in shared + grouped]
        plans[j] = NodeSumPlan(edges, shared, grouped, shared.index(op._skip) if op._skip in shared else None,
                               start, len(index))
    return plans, index


def node_sums(mixed_ops, plan: NodeSumPlan, share, weights: torch.Tensor, index: torch.Tensor) -> tuple:
    """The mixed sums of all edges leaving share's node, one tensor per slot. weights: the cell's
    [edges, primitives] α weights; index: the cell's gather index (a device tensor)."""
    ops = [mixed_ops[k] for k in plan.edges]
    op = ops[0]
    shared = []
    for i in plan.shared:
        if i == op._skip:
            shared.append(share.x)  # the identity
            continue
        for other in ops:  # the first computes the pool + BN, the others register their BN's statistics
            out = other._run(i, share.x, share)
        shared.append(out)
    grouped = [share.grouped_raw(i) for i in plan.grouped]
    operands = promote_operands(shared + grouped)  # under autocast, as FusedMixedOp does
    shared, grouped = operands[:len(shared)], operands[len(shared):]
    w = weights.reshape(-1).index_select(0, index[plan.start:plan.stop]).view(len(ops), -1)
    noisy = op.noisy
    y = noisy_group_sum(shared, grouped, w, plan.skip if noisy else None, op.noise, scale=op.noise_scale,
                        training=noisy, backend=op.backend, seed=share.seeds.take() if share.seeds is not None else None)
    return y.unbind(0)

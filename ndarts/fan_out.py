"""A node's fan-out: aliases of one tensor for its consumers, whose gradients are summed at once.

A node h of a search cell feeds its relu (the sep/dil convs, FactorizedReduce), its two pools and
the identity skip. Autograd sums their four gradients of h with three in-place adds, a kernel
each. ``fan_out(h, n)`` returns n aliases of h (views, no copy) from one autograd node, whose
backward sums the gradients that arrived in one launch (``ndarts_kernels.tensor_sum``) where the
search-op kernels run (a captured CUDA graph, or backend 'triton'); elsewhere, and under double
backward, with torch's adds (what autograd does). The same values, the same gradient.
"""
from __future__ import annotations

import functools
import operator

import torch

from .backend import graph_kernels_enabled


class _FanOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n: int, backend):
        ctx.set_materialize_grads(False)  # unused aliases give None, not a zero-filled tensor
        ctx.backend = backend
        return tuple(x.view_as(x) for _ in range(n))

    @staticmethod
    def backward(ctx, *grads):
        grads = [g for g in grads if g is not None]
        if not grads:
            return None, None, None
        return sum_gradients(grads, ctx.backend), None, None


def sum_gradients(grads, backend=None) -> torch.Tensor:
    """Σ grads: one kernel where the search-op kernels run (three or more terms, first-order
    backward); torch's adds otherwise, in the same order, the third term on accumulated into the
    sum of the first two where no graph is recorded (one new tensor, not one per add: on a CPU a
    fresh tensor of a few MiB costs more in page faults than the add itself)."""
    if len(grads) > 2 and not torch.is_grad_enabled() and graph_kernels_enabled(backend, grads[0]):
        import ndarts_kernels

        return ndarts_kernels.tensor_sum(grads)
    if len(grads) < 3 or torch.is_grad_enabled():
        return functools.reduce(operator.add, grads)
    total = grads[0] + grads[1]
    for g in grads[2:]:
        total.add_(g)
    return total


def fan_out(x: torch.Tensor, n: int, backend=None) -> tuple:
    """n aliases of x whose gradients are summed at once (see the module docstring)."""
    return _FanOut.apply(x, n, backend)

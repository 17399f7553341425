"""Which gradients a custom autograd Function's backward must compute in the pass that runs it.

A search step runs two backward passes over graphs of the same ops: the α step's
``autograd.grad(loss, alphas)`` uses no weight's gradient, the w step's ``backward(loss,
inputs=weights)`` no α's. ``ctx.needs_input_grad`` only says whether an input requires grad, so a
Function that trusts it computes both in both passes; PyTorch's own backward formulas skip what
the pass does not use, and ``grads_used`` lets ours do the same.
"""
from __future__ import annotations

import torch

# private to PyTorch (torch 2.x); without it every gradient that is required counts as used
_will_execute = getattr(torch._C, "_will_engine_execute_node", None)


def grads_used(ctx, count: int) -> tuple[bool, ...]:
    """For the first `count` inputs of a custom autograd Function, in its backward: whether this
    backward pass uses their gradients. ``ctx.needs_input_grad`` only says whether they require
    grad; an ``autograd.grad(loss, alphas)`` does not use a conv weight's gradient although the
    weight requires grad. Where the engine cannot tell (a leaf that is itself an input of
    ``autograd.grad``), the gradient counts as used. The first `count` inputs must be tensors:
    ``ctx.next_functions`` has an entry per tensor input only."""
    used = []
    for needed, (node, _) in zip(ctx.needs_input_grad[:count], ctx.next_functions[:count]):
        if needed and node is not None and _will_execute is not None:
            try:
                needed = bool(_will_execute(node))
            except RuntimeError:
                pass
        used.append(bool(needed))
    return tuple(used)

"""One NoisyDARTS search step: an α step on a batch of the α half, then a w step (DARTS's order).

The one place the step is written: the search loop and the benchmarks both call it.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def search_step(architect, forward_model, criterion, w_optimizer, weights, grad_clip: float,
                x, y, x_val, y_val, lr: float | torch.Tensor, check=None):
    """Returns (loss, logits, arch_loss, grad_norm) as tensors (no host sync here).

    lr: what a second-order α step takes as its virtual step's ξ (a number, or a 0-dim device
    tensor: the graphed step's, ndarts.graph_step); the w optimizer keeps its own rate.

    check(loss, arch_loss, grad_norm), when given, runs after the gradients are clipped and before
    the weights move: it may raise to stop a diverging run with the weights of the last good step.
    """
    arch_loss = architect.step(x, y, x_val, y_val, lr)
    logits = forward_model(x)
    loss = criterion(logits, y)
    w_optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss, inputs=weights)
    grad_norm = nn.utils.clip_grad_norm_(weights, grad_clip)
    if check is not None:
        check(loss, arch_loss, grad_norm)
    w_optimizer.step()
    return loss, logits, arch_loss, grad_norm

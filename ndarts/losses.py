"""The classification loss of the search and training loops: ``CrossEntropy``.

PyTorch's cross entropy by default. In deterministic mode (ndarts.determinism) PyTorch refuses the
CUDA backward of its nll_loss (it writes with atomicAdd), so there the same loss is made from
log_softmax and a mask of each row's class: element-wise ops and row sums, whose CUDA kernels
PyTorch runs deterministically.
"""
from __future__ import annotations

import torch
import torch.nn as nn

REDUCTIONS = ("mean", "sum", "none")


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                         reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(logits, target, label_smoothing=..., reduction=...)`` for logits [N, C] and
    class indices [N], without nll_loss: −log p[target] picked by a mask, and with label smoothing ε
    the loss (1 − ε)·(−log p[target]) + ε·mean over classes of −log p, as PyTorch defines it."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"masked_cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"masked_cross_entropy: logits [N, C] and target [N], got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    log_p = torch.log_softmax(logits, dim=1)
    classes = torch.arange(logits.shape[1], device=logits.device)
    loss = -torch.where(target.unsqueeze(1) == classes, log_p, 0.0).sum(1)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * log_p.mean(1)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


class CrossEntropy(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` (label smoothing, reduction) that deterministic mode allows: there
    it computes masked_cross_entropy, elsewhere PyTorch's fused loss."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.are_deterministic_algorithms_enabled() and self.weight is None and logits.dim() == 2:
            return masked_cross_entropy(logits, target, self.label_smoothing, self.reduction)
        return super().forward(logits, target)

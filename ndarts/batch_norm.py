"""BatchNorm2d of the search ops (affine=False) on the Triton kernels: ``SearchBatchNorm2d``.

A subclass of ``nn.BatchNorm2d`` with the same buffers and state_dict keys. In training mode,
while a CUDA graph is captured (``--cuda-graph``) or when the backend 'triton' is asked for, it
runs ``ndarts_kernels.batch_norm_*``:
channels split over many programs instead of one thread block per channel, and only the output
kept for backward (y is x̂ without affine), so the BatchNorm's input is freed after the forward.
Everywhere else (eval mode, CPU, affine, momentum=None, torch.compile, other layouts) it is
``nn.BatchNorm2d`` unchanged. ``use_search_batch_norm(model)`` swaps it in for every affine-free
BatchNorm2d of a model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .backend import convert_modules, graph_kernels_enabled


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, running_mean, running_var, num_batches_tracked, momentum, eps):
        import ndarts_kernels

        y, rstd = ndarts_kernels.batch_norm_forward(x, running_mean, running_var, num_batches_tracked, momentum, eps)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        import ndarts_kernels

        y, rstd = ctx.saved_tensors
        return ndarts_kernels.batch_norm_backward(grad, y, rstd), None, None, None, None, None


def batch_norm_train(x, running_mean=None, running_var=None, num_batches_tracked=None, momentum=0.1, eps=1e-5):
    """Training-mode BatchNorm2d without affine on the Triton kernels (differentiable in x)."""
    return _BatchNormTrain.apply(x, running_mean, running_var, num_batches_tracked, momentum, eps)


class SearchBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode forward without affine runs the Triton kernels.

    backend: 'auto' (the kernels while a CUDA graph is being captured, torch's BatchNorm in eager
    mode), 'triton' (the kernels always: CUDA, or the interpreter in tests) or 'torch' (always
    nn.BatchNorm2d); None reads NDARTS_BACKEND, like the fused mixed op.
    """

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup(backend)

    def _setup(self, backend):
        self.backend = backend

    def _use_kernels(self, x: torch.Tensor) -> bool:
        return (self.training and not self.affine and self.track_running_stats and self.momentum is not None
                and graph_kernels_enabled(self.backend, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_kernels(x):
            return super().forward(x)
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels, got input of shape "
                             f"{tuple(x.shape)}")
        return batch_norm_train(x, self.running_mean, self.running_var, self.num_batches_tracked,
                                self.momentum, self.eps)


def use_search_batch_norm(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Turns every affine-free nn.BatchNorm2d of `model` into a SearchBatchNorm2d (in place, same
    state; returns the model). Affine BatchNorms (the stem's) are left as they are."""
    return convert_modules(model, lambda m: type(m) is nn.BatchNorm2d and not m.affine, SearchBatchNorm2d, backend)

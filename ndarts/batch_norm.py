"""BatchNorm2d of the search ops (affine=False) on the Triton kernels: ``SearchBatchNorm2d``.

A subclass of ``nn.BatchNorm2d`` with the same buffers and state_dict keys. In training mode,
while a CUDA graph is captured (``--cuda-graph``) or when the backend 'triton' is asked for, it
runs ``ndarts_kernels.batch_norm_*``:
channels split over many programs instead of one thread block per channel, and only the output
kept for backward (y is x̂ without affine), so the BatchNorm's input is freed after the forward.
Everywhere else (eval mode, CPU, affine, momentum=None, torch.compile, other layouts) it is
``nn.BatchNorm2d`` unchanged. ``use_search_batch_norm(model)`` swaps it in for every affine-free
BatchNorm2d of a model. ``search_batch_norms`` runs several of them (and the ReLUs after them)
in one launch each way where the kernels run (ndarts.edge_groups' conv stages); in eval mode with
nothing to differentiate (the search's evaluation) too, then normalising with the running
statistics, the ReLUs written over the output, and the deferred BatchNorms left to their readers
(`python benchmarks/step_traffic.py --eval-batch 256`: an evaluation batch 56.2 → 46.3 GB, 1 025 →
733 kernels on the default path).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
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


class _BatchNormsTrain(torch.autograd.Function):
    """Several affine-free training BatchNorms (and fused ReLUs) in one launch each way. A deferred
    BatchNorm (defer[t]) makes its statistics only: its output is its input z, whose consumer
    normalises it on load with the mean and rstd handed out last (not differentiable), and whose
    gradient is that of y = (z − mean)·rstd (the backward makes y from z as it reads it)."""

    @staticmethod
    def forward(ctx, bns, relu, pre_relu, defer, sinks, moments, *xs):
        import ndarts_kernels

        channels = sum(x.shape[1] for x in xs)
        mean = torch.empty((channels,), device=xs[0].device, dtype=torch.float32) if any(defer) else None
        ys, rs, rstd = ndarts_kernels.batch_norms_forward(
            list(xs), [bn.running_mean for bn in bns], [bn.running_var for bn in bns],
            [bn.num_batches_tracked for bn in bns], bns[0].momentum, bns[0].eps, relu,
            moments=list(moments) if any(m is not None for m in moments) else None,
            apply=[not d for d in defer], mean_out=mean)
        ys = [x if d else y for x, y, d in zip(xs, ys, defer)]
        ctx.save_for_backward(rstd, mean, *ys)
        ctx.relu, ctx.defer, ctx.sinks = relu, defer, sinks
        # where a ReLU is fused, the output is relu(y); y itself is kept for the backward only, and
        # (pre_relu) handed out too, not differentiable: a consumer may keep it instead of relu(y)
        extra = [y for y, r in zip(ys, relu) if r] if pre_relu else []
        extra += [mean, rstd] if mean is not None else []
        ctx.mark_non_differentiable(*extra)
        ctx.set_materialize_grads(False)  # no zero gradients made for the extra outputs (nor unused ones)
        return (*(r if r is not None else y for r, y in zip(rs, ys)), *extra)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        import ndarts_kernels

        rstd, mean, *ys = ctx.saved_tensors
        grads = [g if g is not None else torch.zeros_like(y) for g, y in zip(grads[:len(ys)], ys)]
        # a deferred output's reader may have made its backward sums as it wrote the gradient
        sums = [sink.take() if sink is not None else None for sink in ctx.sinks]
        return (None, None, None, None, None, None,
                *ndarts_kernels.batch_norms_backward(grads, ys, rstd, ctx.relu, lazy=list(ctx.defer), mean=mean,
                                                     sums=sums))


class GradSums:
    """Where the reader of a deferred BatchNorm's output leaves that BatchNorm's backward sums (Σg
    and Σg·y per channel, as partial sums fp32 [C, P, 2]) as it writes the output's gradient (the
    group-sum kernels: noisy_group_sums), for the BatchNorm's backward to merge instead of reading
    the gradient and z once more. Valid only when that reader is the output's one consumer: any
    other (deferred_output) marks it shared, and the BatchNorm then sums itself."""

    def __init__(self):
        self.sums = None
        self.shared = False

    def put(self, sums: torch.Tensor) -> None:
        self.sums = sums

    def take(self):
        """The sums of this backward pass (once), or None."""
        sums, self.sums = self.sums, None
        return None if self.shared else sums


class DeferredNorm(NamedTuple):
    """A deferred BatchNorm's statistics: its output is (z − mean)·rstd per channel, made by its
    reader; sums: where that reader may leave the backward's sums (GradSums), or None."""

    mean: torch.Tensor
    rstd: torch.Tensor
    sums: GradSums | None = None


class _DeferredOutput(torch.autograd.Function):
    """y = (z − mean)·rstd per channel from a deferred BatchNorm's z, for a consumer that does not
    normalise on load; the gradient is handed back as it comes: the deferred output's gradient is
    already that of y (the BatchNorm's backward takes dL/dy for it)."""

    @staticmethod
    def forward(ctx, z, mean, rstd):
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return ((z.float() - mean.view(shape)) * rstd.view(shape)).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def deferred_output(z: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, sums: GradSums | None = None
                    ) -> torch.Tensor:
    """A deferred BatchNorm's output (search_batch_norms(defer=…): z, with its per-channel fp32
    mean and rstd) made as a tensor: (z − mean)·rstd, whose gradient flows back to z unchanged.
    sums: the DeferredNorm's; marked shared (this reader leaves no backward sums)."""
    if sums is not None:
        sums.shared = True
    return _DeferredOutput.apply(z, mean, rstd)


def search_batch_norms(xs, bns, relu=None, pre_relu_out: list | None = None, defer=None,
                       norms_out: list | None = None, moments=None) -> list:
    """[relu(bn(x)) if relu[t] else bn(x) for the t-th x, bn]: with the Triton kernels (where every
    bn would run them: SearchBatchNorm2d's rule) and tensors alike (their channel counts may
    differ), all in one launch each way (eight per launch), the ReLUs fused; otherwise each BatchNorm and ReLU by itself, the same math.
    EdgeGroup uses it for each stage of its batched conv stacks.
    pre_relu_out: a list to append, per x, bn(x) before its ReLU where the kernels ran with one
    (the BatchNorm keeps it for its backward anyway; not differentiable), else None.
    defer[t] (not with relu[t]; needs norms_out): where the kernels run, bn(x) is not written: the
    t-th output is x itself, standing for bn(x) (its gradient is bn(x)'s), and norms_out gets its
    DeferredNorm (mean, rstd fp32 [C], and a GradSums its reader may fill), for a consumer that
    normalises on load (noisy_group_sums(grouped_norm=…) or deferred_output); elsewhere the output
    is bn(x) and norms_out gets None.
    moments[t]: None, or x's per-channel partial moments made by the kernel that wrote it (the
    pools kernel's), which the kernels' launch takes instead of reading x for its statistics
    (elsewhere unused: the BatchNorm computes them).
    In eval mode under no_grad, where the kernels run: the same launches on the running statistics
    (_eval_batch_norms; a deferred BatchNorm's DeferredNorm then holds the running mean and rstd)."""
    relu = [False] * len(xs) if relu is None else list(relu)
    moments = [None] * len(xs) if moments is None else list(moments)
    if len(moments) != len(xs):
        raise ValueError(f"search_batch_norms: one moments entry (or None) per input, got {len(moments)} for {len(xs)}")
    defer = [False] * len(xs) if defer is None else list(defer)
    if len(defer) != len(xs) or any(d and r for d, r in zip(defer, relu)) or (any(defer) and norms_out is None):
        raise ValueError("search_batch_norms: one defer flag per input, none with a ReLU, and a norms_out list")
    if _eval_fusable(xs, bns):
        return _eval_batch_norms(xs, bns, relu, defer, pre_relu_out, norms_out)
    if _fusable(xs, bns):
        sinks = tuple(GradSums() if d else None for d in defer)
        outs = _BatchNormsTrain.apply(tuple(bns), tuple(relu), pre_relu_out is not None, tuple(defer), sinks,
                                      tuple(moments), *xs)
        extra = iter(outs[len(xs):])
        if pre_relu_out is not None:
            pre_relu_out.extend(next(extra) if r else None for r in relu)
        if norms_out is not None:
            mean, rstd = (next(extra), next(extra)) if any(defer) else (None, None)
            first = [sum(x.shape[1] for x in xs[:t]) for t in range(len(xs))]
            norms_out.extend(DeferredNorm(mean[o:o + x.shape[1]], rstd[o:o + x.shape[1]], sink) if d else None
                             for x, d, o, sink in zip(xs, defer, first, sinks))
        return list(outs[:len(xs)])
    if pre_relu_out is not None:
        pre_relu_out.extend([None] * len(xs))
    if norms_out is not None:
        norms_out.extend([None] * len(xs))
    return [F.relu(bn(x)) if r else bn(x) for x, bn, r in zip(xs, bns, relu)]


def eval_kernel_batch_norms(bns, xs) -> bool:
    """Every bn is an eval-mode SearchBatchNorm2d (affine-free, with running statistics) whose
    kernels would run on its x (its input, or a tensor like it), with bns[0]'s eps, and nothing is
    to be differentiated (an evaluation under no_grad): they can share the eval-mode launches."""
    bn0 = bns[0]
    return (not (torch.is_grad_enabled() and any(x.requires_grad for x in xs)) and all(
        isinstance(bn, SearchBatchNorm2d) and not bn.training and not bn.affine and bn.track_running_stats
        and bn.eps == bn0.eps and bn.running_mean.dtype == torch.float32 == bn.running_var.dtype
        and graph_kernels_enabled(bn.backend, x) for x, bn in zip(xs, bns)))


def _eval_fusable(xs, bns) -> bool:
    """eval_kernel_batch_norms, on inputs alike (_alike)."""
    return eval_kernel_batch_norms(bns, xs) and _alike(xs, bns)


def running_norms(bns) -> list:
    """Per BatchNorm (mean, rstd) of its running statistics, fp32 [C] each (the mean is its buffer;
    the rstds of all in three small launches): what an eval-mode BatchNorm normalises with, for a
    consumer that normalises on load."""
    rstd = torch.cat([bn.running_var for bn in bns]).add_(bns[0].eps).rsqrt_()
    first = [sum(bn.num_features for bn in bns[:t]) for t in range(len(bns))]
    return [(bn.running_mean, rstd[o:o + bn.num_features]) for bn, o in zip(bns, first)]


def _eval_batch_norms(xs, bns, relu, defer, pre_relu_out, norms_out) -> list:
    """search_batch_norms in eval mode on the kernels: each tensor normalised with its running
    statistics (read by the apply kernel: no statistics pass), the ReLUs written over y (nothing is
    kept for a backward), the deferred BatchNorms' outputs left to their readers with the running
    mean and rstd. Eight per launch, instead of a read and a write per BatchNorm and per ReLU."""
    import ndarts_kernels

    first = [sum(x.shape[1] for x in xs[:t]) for t in range(len(xs))]
    mean = torch.empty((sum(x.shape[1] for x in xs),), device=xs[0].device, dtype=torch.float32) if any(defer) else None
    ys, rs, rstd = ndarts_kernels.batch_norms_forward(
        list(xs), [bn.running_mean for bn in bns], [bn.running_var for bn in bns], None, 0.0, bns[0].eps, relu,
        apply=[not d for d in defer], mean_out=mean, relu_in_place=True, use_running=True)
    if pre_relu_out is not None:
        pre_relu_out.extend([None] * len(xs))
    if norms_out is not None:
        norms_out.extend(DeferredNorm(mean[o:o + x.shape[1]], rstd[o:o + x.shape[1]]) if d else None
                         for x, d, o in zip(xs, defer, first))
    return [x if d else (r if r is not None else y) for x, y, r, d in zip(xs, ys, rs, defer)]


def kernel_batch_norms(bns, xs) -> bool:
    """Every bn is a SearchBatchNorm2d that would run the kernels on its x (its input, or a tensor
    like it), with bns[0]'s momentum, eps and buffer dtype: they can share the multi-tensor launches."""
    bn0 = bns[0]
    return all(isinstance(bn, SearchBatchNorm2d) and bn._use_kernels(x) and bn.momentum == bn0.momentum
               and bn.eps == bn0.eps and bn.running_mean.dtype == bn0.running_mean.dtype for x, bn in zip(xs, bns))


def _fusable(xs, bns) -> bool:
    """kernel_batch_norms, on inputs alike (_alike)."""
    return kernel_batch_norms(bns, xs) and _alike(xs, bns)


def _alike(xs, bns) -> bool:
    """Each x has its bn's channel count, and the inputs are alike: batch and image size, dtype and
    device (the channel counts may differ), as one multi-tensor launch takes them."""
    first = xs[0]
    return all(x.shape[1] == bn.num_features and x.shape[0] == first.shape[0] and x.shape[2:] == first.shape[2:]
               and x.dtype == first.dtype and x.device == first.device for x, bn in zip(xs, bns))


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

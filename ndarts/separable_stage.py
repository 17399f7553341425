"""The conv stages of a batched sep/dil conv stack with their BatchNorms, one autograd Function per
stage: ``fused_conv_stages``, for EdgeGroup (ndarts.edge_groups) where the fused separable conv
kernels and the BatchNorm kernels both run.

A stage of an EdgeGroup is, per primitive, one depthwise → 1×1 pair (ndarts.separable_conv)
followed by its BatchNorm; the BatchNorms of all primitives (and of the node's pools, which join
the first stage's launch) run as one launch each way. As separate autograd Functions, the
BatchNorm's backward writes dL/dz and the pair's backward reads it back: here the stage is one
Function, and its backward hands each pair's kernel the BatchNorm's gradient statistics instead
(``batch_norms_backward(fold=…)``), so that the kernel applies the BatchNorm's backward as it
reads the upstream gradient. Per pair and pass: no dL/dz written or read, one BatchNorm apply
kernel less (the pools' BatchNorms still get theirs). In the forward, each pair's kernel writes
its BatchNorm's statistics (partial moments) as it writes z, so the BatchNorm reads z once (to
normalise it), not twice, and a stage without pools runs no statistics kernel.

The sep convs' first BatchNorm (bn1) is followed by a ReLU, and both are deferred to the consumer:
stage 1's BatchNorm launch makes bn1's statistics (and running statistics) but writes neither y nor
relu(y) (``batch_norms_forward(apply=…)``); stage 1 hands out z with bn1's mean and rstd, and the
second stage's pair reads relu((z − mean)·rstd) on load and keeps z for its backward. Stage 1's
backward makes y from z on load too (``batch_norms_backward(lazy=…)``, the fold's
``BatchNormGrad.mean``), and takes bn1's backward sums from stage 2's depthwise input-gradient
kernel, which makes them as it writes the gradient (``separable_pairs_backward(input_sums=…)``;
handed over in a GradSums): stage 1's BatchNorm backward reads neither that gradient nor z to sum
them. That deferral is why both stages live here together: stage 1 treats the
gradient that comes back for z as the gradient of relu(y) (its backward masks it with y > 0, as
the fused BatchNorm + ReLU does), which is right only because its one consumer is stage 2's pair,
which gives back the gradient of its input relu(y).

Where the group's source nodes' ReLU is read by nothing else (GroupRun's relu_fused), the first
stage takes the sources h_s before their ReLU and its kernels read relu(h_s) repeated per edge
straight from them: the repeated input is never written, read back or kept for the backward (h_s is
kept anyway), and the backward's depthwise input-gradient kernel sums the pairs' gradients over each
source's edges with the ReLU's mask (what relu_repeat's backward does for the separate relu +
repeat Function), writing dL/dh_s only.

A stage's pairs (up to MAX_PAIRS: sep 3×3/5×5, dil 3×3/5×5 in DARTS' space) run as one launch of
each kernel (ndarts_kernels.separable_pairs_*): the forward, the backward, its weight gradients'
reduce and the depthwise input gradient, 4 launches per stage and pass instead of 4 per pair.

An evaluation (eval-mode BatchNorms, under no_grad) runs the same stages forward only
(``eval_conv_stages``, chosen by ``conv_stages``): one pair launch per stage reading the sources as
relu(h_s) repeated, the sep convs' bn1 + ReLU applied by the second pairs on load with bn1's running
statistics, the last BatchNorms deferred to the group sums with theirs.

The same math as the separate Functions (tests/test_separable_stage.py); the gradient of a folded
BatchNorm is made in fp32 from the upstream gradient instead of being rounded to the activations'
dtype first.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .batch_norm import (
    DeferredNorm,
    GradSums,
    eval_kernel_batch_norms,
    kernel_batch_norms,
    running_norms,
    search_batch_norms,
)
from .depthwise_conv import _square
from .grad_use import grads_used


class Pair(NamedTuple):
    """A depthwise → 1×1 pair of a stage: conv geometry and whether it reads relu(x) of its input."""

    stride: int
    padding: int
    dilation: int
    relu_input: bool


class Spec(NamedTuple):
    """What a stage Function computes besides its tensors."""

    pairs: tuple  # a Pair per stack
    deferred: tuple  # per pair: its BatchNorm's normalisation (and ReLU) are applied by the consumer (the output is z)
    relu_after: tuple  # per pair: a ReLU follows its BatchNorm (applied by the consumer of a deferred one)
    counts: tuple | None  # the inputs are source nodes h_s read as relu(h_s), source s by counts[s] edges
    bns: tuple  # the pairs' BatchNorms, then the extras'
    input_norm: bool = False  # each input is a deferred BatchNorm's z, read as relu((z − mean)·rstd)


class _SeparableStage(torch.autograd.Function):
    """(inputs, w_dw_0, w_pw_0, …, w_dw_P-1, w_pw_P-1, e_0, …, [mean_0, rstd_0, …], spec) → per pair
    bn(pw(dw(x))) (with its relu_input: of relu(x)), then per extra input bn(e); where a pair's
    BatchNorm is deferred its z instead, and then, last, the stage's BatchNorm mean and rstd (fp32
    [ΣC], the pairs' channels first; not differentiable). inputs: one x per pair; or, with
    spec.counts, the group's source nodes, which every pair reads as relu(h) repeated per edge. With
    spec.input_norm, per pair the (mean, rstd) of its input's deferred BatchNorm follow the extras."""

    @staticmethod
    def forward(ctx, *args):
        import ndarts_kernels

        *tensors, sinks, input_sinks, extra_moments, spec = args
        count, bns = len(spec.pairs), spec.bns
        inputs = len(spec.counts) if spec.counts is not None else count
        xs = tensors[:inputs]
        w_dws, w_pws = tensors[inputs:inputs + 2 * count:2], tensors[inputs + 1:inputs + 2 * count:2]
        extras = tensors[inputs + 2 * count:len(tensors) - (2 * count if spec.input_norm else 0)]
        input_stats = tensors[len(tensors) - 2 * count:] if spec.input_norm else ()
        norm = list(zip(input_stats[::2], input_stats[1::2])) if spec.input_norm else None
        # the pairs in one launch, each making its BatchNorm's statistics as it writes z: the BatchNorm reads z once
        zs, moments = ndarts_kernels.separable_pairs_forward(
            list(xs), w_dws, w_pws, _geometry(spec), relu_input=spec.pairs[0].relu_input, moments=True,
            counts=spec.counts, input_norm=norm)
        lazy = list(spec.deferred) + [False] * len(extras)
        mean = torch.empty((sum(z.shape[1] for z in zs) + sum(e.shape[1] for e in extras),), device=zs[0].device,
                           dtype=torch.float32) if any(lazy) else None
        # a deferred BatchNorm: statistics only, its consumer normalises z as it reads it (no y written)
        ys, _, rstd = ndarts_kernels.batch_norms_forward(
            list(zs) + list(extras), [bn.running_mean for bn in bns], [bn.running_var for bn in bns],
            [bn.num_batches_tracked for bn in bns], bns[0].momentum, bns[0].eps,
            moments=list(moments) + list(extra_moments or [None] * len(extras)), apply=[not z for z in lazy],
            mean_out=mean)
        outs = [z if d else y for z, y, d in zip(zs, ys, lazy)] + list(ys[count:])
        del zs, moments, ys
        ctx.save_for_backward(rstd, mean, *tensors[:inputs + 2 * count], *input_stats, *outs)
        ctx.spec, ctx.inputs, ctx.extras, ctx.sinks, ctx.input_sinks = spec, inputs, len(extras), sinks, input_sinks
        if mean is None:
            return tuple(outs)
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)
        return (*outs, mean, rstd)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        import ndarts_kernels

        spec, inputs, extras, count = ctx.spec, ctx.inputs, ctx.extras, len(ctx.spec.pairs)
        rstd, mean, *saved = ctx.saved_tensors
        xs = list(saved[:inputs])
        w_dws, w_pws = saved[inputs:inputs + 2 * count:2], saved[inputs + 1:inputs + 2 * count:2]
        stats = saved[inputs + 2 * count:inputs + 4 * count] if spec.input_norm else ()
        outs = saved[inputs + 2 * count + len(stats):]
        grads = [g if g is not None else torch.zeros_like(o) for g, o in zip(grads, outs)]
        used = grads_used(ctx, inputs + 2 * count + extras)
        lazy = list(spec.deferred) + [False] * extras
        # a deferred BatchNorm's consumer read relu(y) (the sep convs' bn1) or y (a stack's last BatchNorm, read
        # by the group sums): the gradient that comes back is of that
        relu = [d and r for d, r in zip(spec.deferred, spec.relu_after)] + [False] * extras
        # the backward sums the deferred outputs' consumers made as they wrote their gradients (GradSums: the
        # group sums, the next stage); the BatchNorm backward sums the others (each fold its own partial count)
        sums = [sink.take() if sink is not None else None for sink in ctx.sinks] + [None] * extras
        folds = ndarts_kernels.batch_norms_backward(grads, outs, rstd, relu=relu, fold=[True] * count + [False] * extras,
                                                    lazy=lazy, mean=mean, sums=sums)
        need_w = used[inputs:inputs + 2 * count]
        # the pairs in one launch each way; with sources, the gradient of each source h_s itself (Σ over
        # its edges and the pairs, the ReLU's mask applied) from the depthwise input-gradient kernel; with
        # input sinks, that kernel makes the input BatchNorms' backward sums too (their stage's backward reads
        # neither the gradient nor z to sum them)
        need_input = any(used[:inputs])
        input_sums = [] if ctx.input_sinks is not None and need_input else None
        dxs, d_dws, d_pws = ndarts_kernels.separable_pairs_backward(
            grads[:count], xs, list(w_dws), list(w_pws), _geometry(spec), need_input=need_input,
            need_weight=any(need_w), relu_input=spec.pairs[0].relu_input, bns=list(folds[:count]),
            counts=spec.counts, input_norm=list(zip(stats[::2], stats[1::2])) if spec.input_norm else None,
            input_sums=input_sums)
        if input_sums is not None:
            for sink, part in zip(ctx.input_sinks, input_sums):
                sink.put(part)
        dxs = [dx if use else None for dx, use in zip(dxs, used[:inputs])] if dxs is not None else [None] * inputs
        dws = [None] * (2 * count) if d_dws is None else [
            d if use else None for d, use in zip((d for pair in zip(d_dws, d_pws) for d in pair), need_w)]
        return (*dxs, *dws, *folds[count:], *[None] * len(stats), None, None, None, None)


def stage_fits(inputs, stacks, extras=(), counts=None) -> bool:
    """Whether EdgeGroup can run its stacks' stages here (fused_conv_stages): every stack asks for
    the fused pairs and each of its pairs runs them (ndarts.separable_conv.use_separable), and
    every BatchNorm of the stages (the extras' too) runs the BatchNorm kernels with one momentum,
    eps and buffer dtype (or, all in eval mode under no_grad, their eval-mode launches: conv_stages
    then runs eval_conv_stages), on inputs alike the stage's outputs; at most MAX_PAIRS stacks, of one
    stride (their pairs share a launch). inputs: the first stage's, as fused_conv_stages takes
    them; with counts, one or two alike contiguous source nodes."""
    from ndarts_kernels.separable_conv import MAX_PAIRS

    from .separable_conv import use_separable

    r = like = inputs[0]
    if not 1 <= len(stacks) <= MAX_PAIRS or len({_square(s.dw1.stride) for s in stacks}) > 1:
        return False
    if counts is not None:
        if (len(counts) != len(inputs) or not 1 <= len(counts) <= 2
                or not all(x.shape == r.shape and x.dtype == r.dtype and x.is_contiguous() for x in inputs)):
            return False
        like = torch.empty((r.shape[0], sum(counts) * r.shape[1], *r.shape[2:]), device="meta", dtype=r.dtype)
    bns = [bn for s in stacks for bn in ((s.bn1, s.bn2) if s.repeats == 2 else (s.bn1,))] + [bn for _, bn in extras]
    if not stacks or not all(s.fused_separable and use_separable(r, s.dw1, s.pw1, s.backend, like)
                             and (s.repeats == 1 or use_separable(r, s.dw2, s.pw2, s.backend, like)) for s in stacks):
        return False
    out_hw = _conv_output_size(r, stacks[0].dw1)
    outputs = [r] * len(bns)  # the stages' outputs: contiguous, r's dtype and device
    return ((kernel_batch_norms(bns, outputs) or eval_kernel_batch_norms(bns, outputs))
            and all(_conv_output_size(r, s.dw1) == out_hw for s in stacks)
            and all(x.shape[0] == r.shape[0] and tuple(x.shape[2:]) == out_hw and x.dtype == r.dtype
                    and x.device == r.device and x.shape[1] == bn.num_features for x, bn in extras))


def _geometry(spec: Spec) -> list:
    """(stride, padding, dilation) of each pair of a stage."""
    return [(p.stride, p.padding, p.dilation) for p in spec.pairs]


def _conv_output_size(r: torch.Tensor, conv: nn.Conv2d) -> tuple[int, int]:
    from ndarts_kernels.depthwise_conv import conv_output_size

    k, s, p, d = (_square(v) for v in (conv.kernel_size, conv.stride, conv.padding, conv.dilation))
    return tuple(conv_output_size(size, k, s, p, d) for size in r.shape[2:])


def _weights(conv: nn.Conv2d, dtype: torch.dtype) -> torch.Tensor:
    """The weight in the activations' dtype (autocast's cast, where autograd sees it)."""
    return conv.weight if conv.weight.dtype == dtype else conv.weight.to(dtype)


def _conv_geometry(conv: nn.Conv2d) -> tuple[int, int, int]:
    """(stride, padding, dilation) of a depthwise conv, as the pair kernels take them."""
    return _square(conv.stride), _square(conv.padding), _square(conv.dilation)


def _pair(conv: nn.Conv2d, relu_input: bool) -> Pair:
    return Pair(*_conv_geometry(conv), relu_input)


def _stage(inputs, stacks, which: int, bns, extras=(), deferred=None, counts=None, input_stats=(),
           input_sinks=None, extra_moments=None) -> tuple:
    """One stage (which: 1 = dw1 → pw1, 2 = dw2 → pw2) of the stacks with their BatchNorms bns and
    the extras' ((x, BatchNorm) pairs): inputs one per stack, or with counts the source nodes;
    input_stats: per stack the (mean, rstd) of its input's deferred BatchNorm (its z the input);
    deferred: per stack, its BatchNorm deferred to the consumer (which applies the ReLU after a sep
    conv's bn1 too); the outputs then end with the stage's BatchNorm mean and rstd. Returns (the
    outputs, per stack a GradSums where its BatchNorm is deferred (filled by the consumer: the group
    sums, or with a ReLU after, the next stage through its input_sinks), else None). input_sinks: the
    previous stage's GradSums of the inputs (with input_stats), which this stage's backward fills."""
    dw_name, pw_name = ("dw1", "pw1") if which == 1 else ("dw2", "pw2")
    dtype = inputs[0].dtype
    weights, pairs = [], []
    for s in stacks:
        dw, pw = getattr(s, dw_name), getattr(s, pw_name)
        weights += [_weights(dw, dtype), _weights(pw, dtype)]
        pairs.append(_pair(dw, relu_input=which == 2 or counts is not None))
    deferred = tuple(deferred or (False,) * len(stacks))
    relu_after = tuple(which == 1 and s.repeats == 2 for s in stacks)  # bn1 of a sep conv
    spec = Spec(tuple(pairs), deferred, relu_after, None if counts is None else tuple(counts),
                tuple(bns) + tuple(bn for _, bn in extras), bool(input_stats))
    # a deferred BatchNorm's consumer may make its backward sums (a GradSums each): the group sums, or the
    # next stage's depthwise input-gradient kernel (a ReLU after: bn1 of a sep conv)
    sinks = tuple(GradSums() if d else None for d in deferred)
    outs = list(_SeparableStage.apply(*inputs, *weights, *(x for x, _ in extras),
                                      *(t for stats in input_stats for t in stats), sinks,
                                      tuple(input_sinks) if input_sinks is not None else None,
                                      tuple(extra_moments) if extra_moments is not None else None, spec))
    return outs, sinks


def fused_conv_stages(inputs, stacks, extras=(), counts=None, defer_last: bool = False,
                      extra_moments=None) -> tuple[list, list, list]:
    """(the stacks' outputs, the extras' BatchNorms ((x, BatchNorm) pairs normalised in the first
    stage's launch), per stack None or its deferred last BatchNorm's DeferredNorm), as EdgeGroup.run
    computes them, on one Function per stage (stage_fits must hold). inputs: stack i's first-stage
    input inputs[i] (the group's repeated relu(h), [N, E·C, H, W]); or, with counts, the group's
    source nodes h_s before their ReLU, [N, C, H, W], which the first stage's kernels read as
    relu(h_s) repeated counts[s] times: the repeated input is never made, and the stage keeps h_s
    (kept anyway) for its backward. defer_last: each stack's last BatchNorm (a dil conv's bn, a sep
    conv's bn2) is deferred to the consumer (EdgeGroup.run's defer_last): its output is its z.
    extra_moments: per extra None or its partial moments (the pools kernel's): its BatchNorm's
    statistics without reading it."""
    seps = [i for i, s in enumerate(stacks) if s.repeats == 2]
    deferred = tuple(s.repeats == 2 or defer_last for s in stacks)
    first, sinks = _stage(inputs, stacks, 1, [s.bn1 for s in stacks], extras, deferred=deferred, counts=counts,
                          extra_moments=extra_moments)
    if any(deferred):
        first, (mean, rstd) = first[:-2], first[-2:]
    outs, pooled = first[:len(stacks)], first[len(stacks):]
    c = outs[0].shape[1]
    norms = [DeferredNorm(mean[i * c:(i + 1) * c], rstd[i * c:(i + 1) * c], sinks[i])
             if d else None for i, d in enumerate(deferred)]  # the seps': read by stage 2 only
    if seps:
        # the sep convs' bn1 deferred: stage 1 hands out z and the statistics, the second pair reads
        # relu((z − mean)·rstd) (bn1's y and its ReLU never written)
        second, sinks = _stage([outs[i] for i in seps], [stacks[i] for i in seps], 2, [stacks[i].bn2 for i in seps],
                               deferred=(defer_last,) * len(seps), input_stats=[norms[i][:2] for i in seps],
                               input_sinks=[norms[i].sums for i in seps])
        if defer_last:
            second, (mean2, rstd2) = second[:-2], second[-2:]
        for k, (i, y) in enumerate(zip(seps, second)):
            outs[i] = y
            norms[i] = (DeferredNorm(mean2[k * c:(k + 1) * c], rstd2[k * c:(k + 1) * c], sinks[k])
                        if defer_last else None)
    return outs, pooled, norms


def conv_stages(inputs, stacks, extras=(), counts=None, defer_last: bool = False, extra_moments=None):
    """fused_conv_stages in training; eval_conv_stages where the stacks' BatchNorms are in eval mode
    (stage_fits holds for either)."""
    if stacks[0].bn1.training:
        return fused_conv_stages(inputs, stacks, extras, counts, defer_last, extra_moments)
    return eval_conv_stages(inputs, stacks, extras, counts, defer_last)


@torch.no_grad()
def eval_conv_stages(inputs, stacks, extras=(), counts=None, defer_last: bool = False) -> tuple[list, list, list]:
    """fused_conv_stages' outputs for an evaluation (eval-mode BatchNorms, nothing to differentiate):
    each stage's pairs in one forward launch, reading the source nodes h_s as relu(h_s) repeated (with
    counts; no repeated input made); the sep convs' bn1 and its ReLU applied by the second pairs as
    they read z (its running mean and rstd: bn1's y never written); each stack's last BatchNorm
    deferred to the consumer with its running statistics (defer_last), else applied; the extras'
    (the node's pools') BatchNorms in one eval-mode launch."""
    import ndarts_kernels

    dtype = inputs[0].dtype
    seps = [i for i, s in enumerate(stacks) if s.repeats == 2]
    zs, _ = ndarts_kernels.separable_pairs_forward(
        list(inputs), [_weights(s.dw1, dtype) for s in stacks], [_weights(s.pw1, dtype) for s in stacks],
        [_conv_geometry(s.dw1) for s in stacks], relu_input=counts is not None, counts=counts)
    # the running (mean, rstd) of the BatchNorms applied by a consumer: the seps' bn1, the last ones if deferred
    last = [s.bn2 if s.repeats == 2 else s.bn1 for s in stacks]
    read_on_load = [stacks[i].bn1 for i in seps] + (last if defer_last else [])
    norms_of = dict(zip(map(id, read_on_load), running_norms(read_on_load))) if read_on_load else {}
    outs = list(zs)
    if seps:
        second, _ = ndarts_kernels.separable_pairs_forward(
            [zs[i] for i in seps], [_weights(stacks[i].dw2, dtype) for i in seps],
            [_weights(stacks[i].pw2, dtype) for i in seps],
            [_conv_geometry(stacks[i].dw2) for i in seps], relu_input=True, input_norm=[norms_of[id(stacks[i].bn1)] for i in seps])
        for i, z in zip(seps, second):
            outs[i] = z
    # the BatchNorms still to apply (the last ones, unless deferred; the extras'), in one launch
    applied = [] if defer_last else list(range(len(stacks)))
    ys = search_batch_norms([outs[i] for i in applied] + [x for x, _ in extras],
                            [last[i] for i in applied] + [bn for _, bn in extras]) if applied or extras else []
    for i, y in zip(applied, ys):
        outs[i] = y
    norms = [DeferredNorm(*norms_of[id(bn)]) if defer_last else None for bn in last]
    return outs, ys[len(applied):], norms

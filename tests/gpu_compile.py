"""Compiles every Triton kernel of ndarts for an H100/H200 (sm_90) on a machine without a GPU.

The CPU tests run the kernels in Triton's interpreter, which accepts code that Triton's compiler
may reject (types, layouts, control flow); a GPU session is short. This script closes that gap:

    python tests/gpu_compile.py capture SPECS.json   # TRITON_INTERPRET=1: records every launch
    python tests/gpu_compile.py compile SPECS.json   # TRITON_INTERPRET unset: compiles each to cubin

`capture` runs the kernels' launchers on small inputs under the interpreter without executing
the kernels (what is recorded is each launch's argument types, constexpr values and num_warps;
the launchers choose block sizes as for a GPU),
over a workload that reaches every launch site: the noisy mixed sum (fp32/bf16/fp16, every noise
kind, contiguous and channels_last, more operands than one launch takes, the decay scale read on
the device), the ε writer, one to
four BatchNorms per launch with and without fused ReLUs, grouped and dense 1×1 convolutions, and a
training forward+backward of search networks with every Triton-backed lever (BatchNorm, depthwise
conv, pointwise conv, group sums, bf16 autocast; the fused dw + 1×1 pair on direct cases), their backward as an α step and as a w step runs it. `compile` compiles each distinct launch with Triton's own
compiler and ptxas (shipped with Triton) for ``GPUTarget("cuda", 90, 32)``, down to a cubin, and
exits non-zero naming the kernels that fail. tests/test_gpu_compile.py runs both in CI, with
`compile --cover values SPECS.json`: a subset of the launches in which every compile-time feature
of a kernel (a constexpr value, an argument type, num_warps) that any launch has is still compiled
by one (1042 → 176 launches on 2026-12-07; the errors the interpreter let through so far each hung
on one feature value). `--cover pairwise` keeps every pair of features that a launch combines
(446 launches, 2.5× the compile time), `--cover all` every launch; the test runs the pairwise cover
with NDARTS_COMPILE_COVER=pairwise.
"""
from __future__ import annotations

import inspect
import itertools
import json
import os
import sys
import time

ARCH = 90  # H100 / H200


def _spec(fn, args, kwargs) -> dict:
    """The compile-relevant part of one launch: argument types, constexpr values, num_warps."""
    from triton.runtime.jit import mangle_type

    params = inspect.signature(fn).parameters
    bound = inspect.signature(fn).bind_partial(*args, **{k: v for k, v in kwargs.items() if k in params})
    bound.apply_defaults()
    annotations = {name: str(p.annotation) for name, p in params.items()}
    signature, constexprs = {}, {}
    for name, value in bound.arguments.items():
        if "constexpr" in annotations[name]:
            signature[name] = "constexpr"
            constexprs[name] = value
        else:
            signature[name] = mangle_type(value)
    return {"module": fn.__module__, "kernel": fn.__name__, "signature": signature, "constexprs": constexprs,
            "num_warps": kwargs.get("num_warps", 4)}


def _workload() -> None:
    import torch

    import ndarts_kernels as K
    from ndarts_kernels.relu_repeat import MAX_GRADS as RELU_REPEAT_GRADS
    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.search_model import SearchNetwork

    seed = torch.zeros((1,), dtype=torch.int64)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape, channels_last in (((2, 3, 5, 7), False), ((2, 3, 5, 7), True), ((3, 123), False)):
            ops = [torch.randn(shape).to(dtype) for _ in range(K.MAX_OPERANDS + 2)]  # two launches
            if channels_last:
                ops = [o.contiguous(memory_format=torch.channels_last) for o in ops]
            w = torch.rand(len(ops))
            for kind, mult in ((1, False), (2, False), (1, True), (0, False)):
                y, std = K.noisy_mixed_sum_forward(ops, w, seed, 3, kind, mult, 0.2, 0.0)
                for weight_grad in (True, False):  # False: a w step's backward (no dW, no operand read)
                    K.noisy_mixed_sum_backward(torch.ones_like(y), ops, w, seed, std, 3, kind, mult, 0.2, 0.0,
                                               weight_grad=weight_grad)
            for mult in (False, True):  # the decay scale read on the device (SCALED)
                scale = torch.ones(())
                y, std = K.noisy_mixed_sum_forward(ops, w, seed, 3, 1, mult, 0.2, 0.0, scale=scale)
                K.noisy_mixed_sum_backward(torch.ones_like(y), ops, w, seed, std, 3, 1, mult, 0.2, 0.0, scale=scale)
    for kind in (1, 2):
        K.unit_noise(seed, 100, kind)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # BatchNorms, 1-8 per launch (and 9: two), fused ReLUs
        for relu in ((False,), (True,), (True, True), (True, False, True), (True, True, False, False, True),
                     (True,) * 4 + (False,) * 4, (False, True) * 4 + (True,)):
            channels = [6 + (t % 3) for t in range(len(relu))]  # the channel counts of a launch may differ
            xs = [torch.randn(4, c, 8, 8).to(dtype) for c in channels]
            stats = [[torch.zeros(c) for c in channels] for _ in range(2)]
            ys, rs, rstd = K.batch_norms_forward(xs, *stats, [torch.zeros((), dtype=torch.long) for _ in relu],
                                                 0.1, 1e-5, relu)
            K.batch_norms_backward(ys, ys, rstd, relu)
            # eval mode: the running statistics, the ReLUs over y, the last tensor deferred (its mean written)
            K.batch_norms_forward(xs, *stats, None, 0.0, 1e-5, relu[:-1] + (False,), relu_in_place=True,
                                  use_running=True, apply=[True] * (len(relu) - 1) + [False],
                                  mean_out=torch.empty(sum(channels)))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # a group's relu'd input, 1-8 edges per source
        xs = [torch.randn(2, 3, 4, 4).to(dtype) for _ in range(2)]
        for counts in ((4, 4), (1, 8)):
            y = K.relu_repeat_forward(xs, counts)
            for grads in range(1, RELU_REPEAT_GRADS + 1):  # the primitives' gradients summed in the kernel
                K.relu_repeat_backward([y] * grads, xs, counts)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # a node's two pools, both strides
        x = torch.randn(2, 3, 5, 4).to(dtype)
        for stride in (1, 2):
            ymax, yavg, arg = K.pools_3x3_forward(x, stride)
            K.pools_3x3_forward(x, stride, moments=True)  # with their BatchNorms' statistics
            for grads in ((ymax, yavg), (ymax, None), (None, yavg)):
                K.pools_3x3_backward(*grads, arg, x.shape, stride)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # gradient sums, one and two launches
        for count in (3, 8):
            K.tensor_sum([torch.randn(2, 3, 4, 4).to(dtype) for _ in range(count)])
            K.tensor_sum([torch.randn(2, 6, 4, 4).to(dtype)[:, 3:] for _ in range(count)])  # channel slices
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # 1×1 convs: grouped, dense, channels over a block
        for n, g, ci, co in ((2, 4, 16, 16), (2, 1, 48, 16), (1, 1, 70, 80)):
            x = torch.randn(n, g * ci, 4, 5).to(dtype)
            weight = torch.randn(g * co, ci, 1, 1).to(dtype)
            y = K.pointwise_conv_forward(x, weight)
            K.pointwise_conv_backward(y, x, weight)
    # fused dw + 1×1 pairs (heavy to compile: the direct cases only, not a network): sep 3×3 in every
    # dtype, dil 5×5 with the ReLU read in at 32×32 (the step's pixel blocks), stride 2, 64 channels.
    # Both passes of a search step need the input gradient (with weight gradients: the w step's; without:
    # the α step's); weight gradients alone, once
    for n, g, c, h, k, stride, pad, dil, relu, dtypes in (
            (2, 4, 16, 6, 3, 1, 1, 1, False, (torch.float32, torch.bfloat16, torch.float16)),
            (1, 2, 16, 32, 5, 1, 4, 2, True, (torch.float32,)), (2, 2, 32, 6, 3, 2, 1, 1, False, (torch.float32,)),
            (1, 1, 64, 6, 5, 1, 2, 1, True, (torch.float32,))):
        for dtype in dtypes:
            x = torch.randn(n, g * c, h, h - 1).to(dtype)
            w_dw, w_pw = torch.randn(g * c, 1, k, k).to(dtype), torch.randn(g * c, c, 1, 1).to(dtype)
            z = K.separable_conv_forward(x, w_dw, w_pw, stride, pad, dil, relu_input=relu)
            # with its BatchNorm's statistics, and the backward with its BatchNorm folded in
            # (ndarts.separable_stage: the search step's), besides the pair alone
            z, moments = K.separable_conv_forward(x, w_dw, w_pw, stride, pad, dil, relu_input=relu, moments=True)
            ys, _, rstd = K.batch_norms_forward([z, z], None, None, None, 0.1, 1e-5, moments=[moments, None])
            fold = K.batch_norms_backward([z, z], ys, rstd, relu=[relu, False], fold=[True, False])[0]
            for need_weight in (True, False):
                for bn in (None, fold):
                    K.separable_conv_backward(z, x, w_dw, w_pw, stride, pad, dil, need_weight=need_weight,
                                              relu_input=relu, bn=bn)
    K.separable_conv_backward(z, x, w_dw, w_pw, stride, pad, dil, need_input=False, relu_input=relu)
    # the fp32 products without TF32 (kernels/dot_precision.py: the variants above follow PyTorch's
    # default, TF32): each conv kernel with a tl.dot once more
    saved = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        x, weight = torch.randn(2, 64, 4, 5), torch.randn(64, 16, 1, 1)
        K.pointwise_conv_backward(K.pointwise_conv_forward(x, weight), x, weight)
        w_dw, w_pw = torch.randn(64, 1, 3, 3), torch.randn(64, 16, 1, 1)
        K.separable_conv_backward(K.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1), x, w_dw, w_pw, 1, 1, 1)
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved
    # a first stage reading its two source nodes (ndarts.separable_stage): moments forward, BatchNorm folded
    hs, w_dw, w_pw = [torch.randn(2, 16, 6, 5) for _ in range(2)], torch.randn(64, 1, 3, 3), torch.randn(64, 16, 1, 1)
    z, moments = K.separable_conv_forward(hs, w_dw, w_pw, 1, 1, 1, relu_input=True, moments=True, counts=(2, 2))
    ys, _, rstd = K.batch_norms_forward([z], None, None, None, 0.1, 1e-5, moments=[moments])
    fold = K.batch_norms_backward([z], ys, rstd, fold=[True])[0]
    for need_weight in (True, False):
        K.separable_conv_backward(z, hs, w_dw, w_pw, 1, 1, 1, need_weight=need_weight, relu_input=True, bn=fold,
                                  counts=(2, 2))
    # a stage's pairs in one launch (ndarts.separable_stage: the search step's): the first stage of four
    # pairs reading two source nodes, the second of two pairs reading relu(y); moments forward, BatchNorms
    # folded (each with its own ReLU) and the input gradients summed per source, or per pair
    for dtype in (torch.float32, torch.bfloat16):
        for pairs, counts, stride in ((4, (2, 2), 1), (4, (1,), 2), (2, None, 1)):
            geometry = [(stride, p, d) for p, d in ((1, 1), (2, 1), (2, 2), (4, 2))[:pairs]]
            g, c = sum(counts or (2,)), 16
            xs = [torch.randn(2, c, 8, 8).to(dtype) for _ in counts] if counts else \
                [torch.randn(2, g * c, 8, 8).to(dtype) for _ in range(pairs)]
            w_dws = [torch.randn(g * c, 1, k, k).to(dtype) for k in (3, 5, 3, 5)[:pairs]]
            w_pws = [torch.randn(g * c, c, 1, 1).to(dtype) for _ in range(pairs)]
            zs, moments = K.separable_pairs_forward(xs, w_dws, w_pws, geometry, relu_input=True, moments=True,
                                                    counts=counts)
            ys, _, rstd = K.batch_norms_forward(zs, None, None, None, 0.1, 1e-5, moments=moments)
            folds = K.batch_norms_backward(zs, ys, rstd, relu=[i % 2 == 0 for i in range(pairs)],
                                           fold=[True] * pairs)
            for need_weight in (True, False):
                K.separable_pairs_backward(zs, xs, w_dws, w_pws, geometry, need_weight=need_weight, relu_input=True,
                                           bns=folds, counts=counts)
            if counts is None:
                continue
            # the sep convs' bn1 deferred (the first stage of ndarts.separable_stage): statistics and mean only,
            # the backward normalising z on load, the second stage's pairs reading relu((z − mean)·rstd)
            mean = torch.empty_like(rstd)
            lazy = [i < 2 for i in range(pairs)]
            K.batch_norms_forward(zs, None, None, None, 0.1, 1e-5, moments=moments, apply=[not z for z in lazy],
                                  mean_out=mean)
            folds = K.batch_norms_backward(zs, zs, rstd, relu=lazy, fold=[True] * pairs, lazy=lazy, mean=mean)
            K.batch_norms_backward(zs, zs, rstd, relu=lazy, lazy=lazy, mean=mean)  # unfolded, lazy
            for need_weight in (True, False):
                K.separable_pairs_backward(zs, xs, w_dws, w_pws, geometry, need_weight=need_weight, relu_input=True,
                                           bns=folds, counts=counts)
            c2 = zs[0].shape[1]
            stats = [(mean[i * c2:(i + 1) * c2], rstd[i * c2:(i + 1) * c2]) for i in range(2)]
            w_pws2 = [torch.randn(c2, c, 1, 1).to(dtype) for _ in range(2)]
            second = [(1, p, d) for _, p, d in geometry[:2]]  # the second stage: stride 1
            ys2, _ = K.separable_pairs_forward(zs[:2], w_dws[:2], w_pws2, second, relu_input=True, moments=True,
                                               input_norm=stats)
            for need_weight in (True, False):
                K.separable_pairs_backward(ys2, zs[:2], w_dws[:2], w_pws2, second, need_weight=need_weight,
                                           relu_input=True, input_norm=stats)
            # its input-gradient kernel making bn1's backward sums (ndarts.separable_stage's input_sinks)
            K.separable_pairs_backward(ys2, zs[:2], w_dws[:2], w_pws2, second, relu_input=True, input_norm=stats,
                                       input_sums=[])
    _huge_workload()
    # the default sums each conv group's edges in one op (group_sums auto); False: a fused sum per edge
    levers = [dict(), dict(group_sums=False), dict(fused_depthwise_conv=True), dict(autocast=torch.bfloat16),
              dict(fused_pointwise_conv=True)]
    for noise in (NoiseConfig(), NoiseConfig(kind="uniform"), NoiseConfig(mixture="multiplicative", mean=1.0),
                  NoiseConfig(decay=True)):  # decay: the group sums' and per-edge sums' SCALED launches
        for lever in levers if not noise.decay else levers[:2]:
            torch.manual_seed(0)
            net = SearchNetwork(C=4, num_classes=5, layers=3, primitives=DARTS_PRIMITIVES, noise=noise, fused=True,
                                backend="triton", **lever)
            net(torch.randn(2, 3, 32, 32)).sum().backward()
            # a w step's backward: the sums' kernels without dW
            torch.autograd.backward(net(torch.randn(2, 3, 32, 32)).sum(), inputs=list(net.weight_parameters()))
    from ndarts.nasbench201 import Nb201SearchNetwork

    for autocast in (None, torch.bfloat16):  # NAS-Bench-201's network: 4 live operands per sum
        torch.manual_seed(0)
        net = Nb201SearchNetwork(4, 5, 1, NoiseConfig(), fused=True, backend="triton", autocast=autocast)
        net(torch.randn(2, 3, 8, 8)).sum().backward()
    for lever in (dict(), dict(autocast=torch.bfloat16), dict(fused_separable_conv=True)):  # the evaluation's forward
        torch.manual_seed(0)
        net = SearchNetwork(C=4, num_classes=5, layers=3, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(),
                            fused=True, backend="triton", **lever).eval()
        with torch.no_grad():
            net(torch.randn(2, 3, 32, 32))


def _huge_workload() -> None:
    """The int64-index variants (tensors of ≥ 2^31 elements), on the meta device: nothing is
    allocated, the launchers only choose INDEX_64."""
    import torch

    import ndarts_kernels as K

    meta = torch.device("meta")
    seed = torch.zeros((1,), dtype=torch.int64, device=meta)
    big = (2**31 // (64 * 32 * 32) + 1, 64, 32, 32)
    ops = [torch.empty(big, device=meta) for _ in range(3)]
    w = torch.empty(3, device=meta)
    for mult in (False, True):
        y, std = K.noisy_mixed_sum_forward(ops, w, seed, 1, 1, mult, 0.2, 0.0)
        K.noisy_mixed_sum_backward(y, ops, w, seed, std, 1, 1, mult, 0.2, 0.0)
    stats = [torch.empty(64, device=meta) for _ in range(2)]
    y, rstd = K.batch_norm_forward(ops[0], *stats, torch.zeros((), dtype=torch.long, device=meta), 0.1, 1e-5)
    K.batch_norm_backward(y, y, rstd)
    ys, _, rstd = K.batch_norms_forward(ops[:2], None, None, None, 0.1, 1e-5, (True, False))
    K.batch_norms_backward(ys, ys, rstd, (True, False))
    dw = torch.empty(64, 1, 3, 3, device=meta)
    out = K.depthwise_conv_forward(ops[0], dw, 1, 1, 1)
    K.depthwise_conv_backward(out, ops[0], dw, 1, 1, 1)
    pw = torch.empty(64, 16, 1, 1, device=meta)  # 4 groups of 16 channels
    out = K.pointwise_conv_forward(ops[0], pw)
    K.pointwise_conv_backward(out, ops[0], pw)
    out = K.separable_conv_forward(ops[0], dw, pw, 1, 1, 1)
    K.separable_conv_backward(out, ops[0], dw, pw, 1, 1, 1)
    out, moments = K.separable_conv_forward(ops[0], dw, pw, 1, 1, 1, moments=True)
    ys, _, rstd = K.batch_norms_forward([out], None, None, None, 0.1, 1e-5, moments=[moments])
    fold = K.batch_norms_backward([out], ys, rstd, fold=[True])[0]
    K.separable_conv_backward(out, ops[0], dw, pw, 1, 1, 1, bn=fold)
    # a stage's two pairs in one launch reading a source node (4 groups of it): the per-source input gradient
    dws, pws = [torch.empty(4 * 64, 1, k, k, device=meta) for k in (3, 5)], [torch.empty(4 * 64, 64, 1, 1, device=meta)] * 2
    outs, _ = K.separable_pairs_forward(ops[:1], dws, pws, [(1, 1, 1), (1, 2, 1)], relu_input=True, counts=(4,))
    K.separable_pairs_backward(outs, ops[:1], dws, pws, [(1, 1, 1), (1, 2, 1)], relu_input=True, counts=(4,))
    K.separable_pairs_backward([out, out], [ops[0]] * 2, [dw, dw], [pw, pw], [(1, 1, 1), (1, 2, 2)])
    grouped = [torch.empty(big[0], 2 * 64, 32, 32, device=meta)]
    gw = torch.empty(2, 2, device=meta)
    K.tensor_sum(ops)
    K.tensor_sum([grouped[0][:, :64], ops[0], ops[1]])  # a channel slice read in place
    y = K.relu_repeat_forward(ops[:1], [2])
    K.relu_repeat_backward([y] * 4, ops[:1], [2])
    y = K.relu_repeat_forward(ops[:2], [1, 1])  # two sources in one launch
    K.relu_repeat_backward([y] * 2, ops[:2], [1, 1])
    ymax, yavg, arg, *_ = K.pools_3x3_forward(ops[0], 1, moments=True)
    K.pools_3x3_backward(ymax, yavg, arg, ops[0].shape, 1)
    y, std = K.noisy_group_sum_forward(ops[:1], grouped, gw, seed, 0, 1, False, 0.2, 0.0)
    K.noisy_group_sum_backward(y, ops[:1], grouped, gw, seed, std, 0, 1, False, 0.2, 0.0)
    K.noisy_group_sum_forward(ops[:1], grouped, gw, seed, 0, 1, False, 0.2, 0.0, out=y, bases=[ops[1], None],
                              row0_std=True)
    norm = [tuple(torch.empty(2 * 64, device=meta) for _ in range(2))]  # a deferred BatchNorm's z, read as its y
    y, std = K.noisy_group_sum_forward(ops[:1], grouped, gw, seed, 0, 1, False, 0.2, 0.0, grouped_norm=norm)
    K.noisy_group_sum_backward(y, ops[:1], grouped, gw, seed, std, 0, 1, False, 0.2, 0.0, grouped_norm=norm)
    from ndarts_kernels.noisy_group_sum import batch_norm_sum_slots

    sums = torch.empty(2 * 64, batch_norm_sum_slots(big), 2, device=meta)  # the deferred BatchNorm's backward sums
    for weight_grad in (True, False):
        K.noisy_group_sum_backward(y, ops[:1], grouped, gw, seed, std, 0, 1, False, 0.2, 0.0, grouped_norm=norm,
                                   bn_sums=[sums], weight_grad=weight_grad)
    K.batch_norms_backward([grouped[0]], [grouped[0]], norm[0][1], lazy=[True], mean=norm[0][0], sums=[sums])
    own, ow = [ops[1], ops[2]], torch.empty(2, 3, device=meta)  # each edge's own operand, the noisy one
    y, std = K.noisy_group_sum_forward(ops[:1], grouped, ow, seed, 2, 1, False, 0.2, 0.0, own=own)
    for weight_grad in (True, False):
        K.noisy_group_sum_backward(y, ops[:1], grouped, ow, seed, std, 2, 1, False, 0.2, 0.0, own=own,
                                   weight_grad=weight_grad)
    K.noisy_mixed_sum_backward(ops[0], ops, w, seed, std[:1], 1, 1, True, 0.2, 0.0, weight_grad=False)


def capture(path: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime import interpreter

    specs = {}

    def record(executor, *args, **kwargs):  # records the launch instead of interpreting it
        spec = _spec(executor.fn, args, kwargs)
        specs[json.dumps(spec, sort_keys=True, default=str)] = spec

    interpreter.GridExecutor.__call__ = record
    # the launchers choose block sizes and grids for a GPU when the kernels are not interpreted
    # (the interpreter gets few, large programs): make them choose as on a GPU, and let the Triton
    # backend be picked for CPU tensors all the same (nothing is executed)
    import ndarts_kernels

    from ndarts import backend

    ndarts_kernels.INTERPRETED = False
    backend.triton_unavailable_reason = lambda device: None
    _workload()
    with open(path, "w") as f:
        json.dump(sorted(specs.values(), key=lambda s: (s["module"], s["kernel"])), f, indent=1, default=str)
    print(f"captured {len(specs)} distinct launches of "
          f"{len({(s['module'], s['kernel']) for s in specs.values()})} kernels into {path}")


def compile_spec(spec: dict):
    """One captured launch compiled for sm_90 down to a cubin (Triton's CompiledKernel); raises what
    Triton's compiler or ptxas raises."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    src = ASTSource(fn, signature=spec["signature"], constexprs=spec["constexprs"])
    return triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options={"num_warps": spec["num_warps"]})


def _compile_one(spec: dict) -> str | None:
    """Compiles one launch to a cubin; None, or what failed."""
    try:
        if not compile_spec(spec).asm.get("cubin"):
            raise RuntimeError("no cubin was produced")
    except Exception as e:  # report every failing kernel, not just the first
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        return f"{spec['module']}.{spec['kernel']} {spec['constexprs']}: {type(e).__name__}: {last}"
    return None


def _features(spec: dict) -> set:
    """What one launch fixes at compile time: each constexpr's value, each argument's type, num_warps."""
    return {*(("constexpr", name, json.dumps(value, sort_keys=True)) for name, value in spec["constexprs"].items()),
            *(("type", name, t) for name, t in spec["signature"].items() if t != "constexpr"),
            ("num_warps", spec["num_warps"])}


def _greedy_cover(specs: list[dict], units) -> list[dict]:
    """A subset of the launches that holds, for each kernel, every unit (units(spec): a set) that
    some captured launch of it holds. Greedy (the launch holding most uncovered units first), in
    the captured order, so the same specs give the same subset."""
    by_kernel: dict = {}
    for spec in specs:
        by_kernel.setdefault((spec["module"], spec["kernel"]), []).append(spec)
    chosen = []
    for launches in by_kernel.values():
        held = [units(s) or {()} for s in launches]  # a launch holding no unit still keeps its kernel
        uncovered = set().union(*held)
        while uncovered:
            best = max(range(len(launches)), key=lambda i: len(held[i] & uncovered))
            uncovered -= held[best]
            chosen.append(launches[best])
    return chosen


def pairwise_cover(specs: list[dict]) -> list[dict]:
    """Every pair of compile-time features that some captured launch of a kernel combines (two
    constexpr values, a constexpr value and an argument type, ...) is combined by one chosen
    launch: each feature is compiled in every context it was seen in with any other one."""
    return _greedy_cover(specs, lambda s: set(itertools.combinations(sorted(_features(s)), 2)))


def value_cover(specs: list[dict]) -> list[dict]:
    """Every compile-time feature that some captured launch of a kernel has (a constexpr value, an
    argument type, num_warps) is had by one chosen launch; a kernel keeps at least one launch."""
    return _greedy_cover(specs, _features)


COVERS = {"all": lambda specs: specs, "pairwise": pairwise_cover, "values": value_cover}


def compile_all(path: str, cover: str = "all") -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    from concurrent.futures import ProcessPoolExecutor

    with open(path) as f:
        specs = json.load(f)
    captured = len(specs)
    specs = COVERS[cover](specs)
    print(f"{cover} cover: {len(specs)} of {captured} launches")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        failures = [r for r in pool.map(_compile_one, specs, chunksize=8) if r is not None]
    print(f"compiled {len(specs) - len(failures)} of {len(specs)} launches for sm_{ARCH} "
          f"in {time.perf_counter() - t0:.1f} s")
    for line in failures:
        print("FAILED", line)
    return 1 if failures else 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["capture", "compile"])
    parser.add_argument("specs", help="the JSON of captured launches (written by capture, read by compile)")
    parser.add_argument("--cover", choices=sorted(COVERS), default="all",
                        help="compile: which launches (default all; values, pairwise: subsets, see above)")
    args = parser.parse_args()
    if args.action == "capture":
        if args.cover != "all":
            parser.error("--cover is an option of compile")
        capture(args.specs)
    else:
        sys.exit(compile_all(args.specs, args.cover))

"""Kernel census of one search step, on a CPU: what a captured CUDA-graph step would launch.

    python benchmarks/count_kernels.py                      # the graph-step variants of the benchmark
    python benchmarks/count_kernels.py --impl fused_graph fused_graph_no_groupsum --json census.json

Why: as one CUDA graph the search step has no host overhead left; on the H200 its replay time
equalled the GPU's busy time, 20 469 kernels at 5.2 µs on average (benchmarks/RESULTS.md,
2026-11-27). Most of them are tiny, latency-bound kernels, so their number is the first-order
cost of the step, and it can be counted without a GPU: this script runs one first-order search
step (α step + w step, no host checks: the step the graph captures) of SPEC §6's supernet (C 16,
8 cells, DARTS space, Gaussian noise; batch 2 and 16×16 images: the count depends on neither) with the
Triton kernels in Triton's interpreter (every Triton-backed op the graph runs: mixed sums,
BatchNorm, depthwise conv where enabled) and counts
- Triton launches (each one kernel on a GPU), by kernel name;
- aten ops that launch a kernel on a GPU: the outermost aten op of each call (what it calls
  inside is the CPU's implementation), less the ops that only make views or allocate
  (``NO_KERNEL``), a convolution backward as one kernel per gradient it computes, by op name.
A count is not a time: cuDNN may run 1-3 kernels per convolution call, a kernel's duration
depends on its work (the depthwise-conv weight gradient took 25 µs on the H200, a BatchNorm
kernel 2-3 µs). Use it to see what a lever removes; time it on a GPU (gpu_check.sh).
Calibration: at the H200 run of 2026-11-27 (commit dce82f4, profile_step.py) torch.profiler
counted 33 572 kernels per step for `plain` (code unchanged since) and 20 469 for the per-edge
graph step; this census counts 30 622 (−9 %) and, at commit 354ba66, 17 977 (−12 %, the code of
that variant changed a little in between): cuDNN runs more than one kernel for some convolutions.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import sys
from unittest import mock

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

# aten ops that only make views, allocate, or read metadata: no kernel on a GPU
NO_KERNEL = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
    "aten::narrow", "aten::transpose", "aten::t", "aten::permute", "aten::expand", "aten::detach", "aten::alias",
    "aten::as_strided", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::empty",
    "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::promote_types", "aten::result_type",
    "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::view_as", "aten::expand_as",
    "aten::is_nonzero", "aten::set_", "aten::_reshape_alias", "aten::movedim", "aten::unfold", "aten::diagonal",
    "aten::_has_compatible_shallow_copy_type", "aten::is_same_size", "aten::_nnpack_available",
})
# composite ops that launch a kernel only when they copy: counted as what they call
PASS_THROUGH = frozenset({"aten::to", "aten::contiguous", "aten::reshape", "aten::flatten", "aten::type_as",
                          "aten::_to_copy_if_needed"})
# ops that launch more than one kernel on a GPU: CUDA's NCHW BatchNorm: statistics + transform
# forward, reduce + element-wise backward (a convolution's backward: see _kernels)
KERNELS_PER_CALL = {"aten::batch_norm": 2, "aten::native_batch_norm_backward": 2}


def _kernels(event) -> tuple[int, str]:
    """(GPU kernels, the op name they are counted under) of one aten call and what it calls."""
    if event.name in NO_KERNEL:
        return 0, event.name
    if event.name in PASS_THROUGH:
        inner = [_kernels(c) for c in event.cpu_children if c.name.startswith("aten::")]
        return sum(n for n, _ in inner), event.name
    if event.name == "aten::convolution_backward":
        # one kernel per gradient it computes: output_mask (input, weight, bias), its last argument
        # (the α step asks for no weight gradients)
        mask = (getattr(event, "concrete_inputs", None) or [None])[-1]
        return (sum(bool(m) for m in mask) if isinstance(mask, (list, tuple)) else 2), event.name
    return KERNELS_PER_CALL.get(event.name, 1), event.name

IMPLS = ["plain", "fused_graph_per_edge", "fused_graph_no_groupsum", "fused_graph", "fused_graph_dwwgrad",
         "fused_graph_dwconv", "fused_graph_pwconv", "fused_graph_sepconv"]


class TritonLaunches:
    """Counts launches of interpreted Triton kernels by name while active, without running them
    (the interpreter would take minutes per step; a launch's count does not depend on the values
    its kernel writes, and nothing in the captured step branches on values)."""

    def __init__(self):
        self.counts = collections.Counter()
        self.on_launch = None  # called as on_launch(executor, args, kwargs) for each launch, if set

    def __enter__(self):
        from triton.runtime import interpreter

        self._cls = interpreter.GridExecutor
        self._orig = self._cls.__call__
        counts = self.counts

        def counted(executor, *args, **kwargs):
            counts[getattr(executor.fn, "__name__", "triton")] += 1
            if self.on_launch is not None:
                self.on_launch(executor, args, kwargs)

        self._cls.__call__ = counted
        return self

    def __exit__(self, *exc):
        self._cls.__call__ = self._orig


def kernel_ops(prof) -> collections.Counter:
    """GPU kernels of the profile's outermost aten calls (what they call inside is the CPU's
    implementation, not the GPU's), by op name."""
    out = collections.Counter()
    for e in prof.events():
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            n, name = _kernels(e)
            if n:
                out[name] += n
    return out


CATEGORIES = (  # first match wins
    ("convolution", ("convolution", "conv")),
    ("BatchNorm (torch)", ("batch_norm",)),
    ("pools", ("pool",)),
    ("ReLU", ("relu", "threshold")),
    ("seed / noise draws", ("randint", "random_", "normal", "randn", "uniform")),
    ("copies, stacks, cats", ("copy", "stack", "cat", "clone", "index", "zero", "fill", "slice_backward")),
    ("element-wise, reductions", ("add", "mul", "sub", "div", "sum", "std", "sqrt", "mean", "neg", "where",
                                  "softmax", "log", "exp", "mm", "linalg", "norm", "clamp", "max", "min")),
)


def category(kind: str, name: str) -> str:
    """The category of one kernel: kind "triton" (a Triton kernel's name) or "aten" (an op name)."""
    if kind == "triton":
        return ("BatchNorm (Triton)" if "_bn_" in name else "depthwise conv (Triton)" if "_dw_" in name
                else "pointwise conv (Triton)" if "_pw_conv" in name
                else "separable conv: depthwise + 1×1 (Triton)" if "_sep_conv" in name
                else "gradient sums (Triton)" if "_tensor_sum" in name
                else "group inputs: relu + repeat (Triton)" if "_relu_repeat" in name
                else "pools (Triton)" if "_pools_" in name else "mixed sums (Triton)")
    short = name.split("::", 1)[1]
    return next((c for c, keys in CATEGORIES if any(k in short for k in keys)), "other aten")


def categorise(triton: collections.Counter, aten: collections.Counter) -> dict:
    out = collections.Counter()
    for kind, counts in (("triton", triton), ("aten", aten)):
        for name, n in counts.items():
            out[category(kind, name)] += n
    return dict(out)


def graph_step(impl: str, batch: int = 2, image: int = 16, with_parts: bool = False):
    """The step a CUDA graph of `impl` captures (α step + w step, no host checks), on the CPU, for
    SPEC §6's supernet at this batch and image size; run it inside ``graph_step_context()``.
    with_parts: (step, its StepParts, its batches)."""
    import dataclasses

    from test_bench_search_step import GPU_CONFIG, build_parts, make_batches

    from ndarts.search_step import search_step
    from ndarts.searcher import SearchConfig

    cfg = dataclasses.replace(GPU_CONFIG, batch=batch, image=image)
    parts = build_parts(cfg, impl, torch.device("cpu"), backend="triton")
    # as on CUDA, where torch picks them by default: multi-tensor (foreach) optimizers and clipping
    for opt in (parts.w_opt, parts.architect.arch_optimizer):
        for group in opt.param_groups:
            group["foreach"] = True
    batches = make_batches(cfg, torch.device("cpu"))
    lr = SearchConfig().learning_rate

    def step():
        search_step(parts.architect, parts.model, parts.criterion, parts.w_opt, parts.weights, parts.grad_clip,
                    *batches, lr)

    return (step, parts, batches) if with_parts else step


@contextlib.contextmanager
def graph_step_context():
    """Triton launches counted, not run (yields the TritonLaunches), clipping by foreach and the
    convolutions in their GPU formulations (ndarts.backend.standing_in_for_cuda) as on CUDA: the
    setting in which ``graph_step`` is run."""
    from ndarts.backend import standing_in_for_cuda

    clip = torch.nn.utils.clip_grad_norm_
    with TritonLaunches() as triton, mock.patch.object(torch.nn.utils, "clip_grad_norm_", functools.partial(clip, foreach=True)), \
            standing_in_for_cuda():
        yield triton


def census(impl: str, batch: int = 2, image: int = 16) -> dict:
    step = graph_step(impl, batch, image)
    with graph_step_context() as triton:
        step()  # optimizer state, lazy buffers: the graph captures a warm step
        triton.counts.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
    aten = kernel_ops(prof)
    launches = triton.counts
    return {"impl": impl, "kernels": sum(launches.values()) + sum(aten.values()), "triton": sum(launches.values()),
            "aten": sum(aten.values()), "by_category": categorise(launches, aten),
            "triton_by_kernel": dict(launches.most_common()), "aten_by_op": dict(aten.most_common())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", default=IMPLS, help="variants of benchmarks/test_bench_search_step.py")
    parser.add_argument("--top", type=int, default=12, help="aten ops listed per variant")
    parser.add_argument("--json", help="write the full census here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for impl in args.impl:
        r = census(impl)
        results.append(r)
        print(f"\n{impl}: {r['kernels']} kernels per search step ({r['triton']} Triton, {r['aten']} aten)")
        for kind, n in sorted(r["by_category"].items(), key=lambda kv: -kv[1]):
            print(f"  {n:6d}  {kind}")
        print("  top aten ops: " + ", ".join(f"{k.split('::')[1]} {v}" for k, v in
                                             list(r["aten_by_op"].items())[:args.top]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    base = results[0]["kernels"]
    print(f"\n{'variant':28} {'kernels':>8} {'vs ' + results[0]['impl']:>30}")
    for r in results:
        print(f"{r['impl']:28} {r['kernels']:8d} {r['kernels'] / base:30.3f}")


if __name__ == "__main__":
    main()

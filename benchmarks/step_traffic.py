"""Memory traffic of one search step, counted on a CPU: the bytes each kernel of a CUDA-graph step
reads and writes, and what that predicts for its time on a GPU.

    python benchmarks/step_traffic.py                             # fused_graph_per_edge, fused_graph
    python benchmarks/step_traffic.py --impl plain fused_graph --json traffic.json
    python benchmarks/step_traffic.py --impl fused_graph --eval-batch 256   # one evaluation batch instead

Why: as one CUDA graph the search step has no host time left; its time is the sum of its
kernels' times (on the H200 on 2026-11-27 the replay took 106.4 ms and the kernels 105.9 ms).
Most kernels of the step are element-wise or memory-bound convolutions on 4 MiB tensors, so a
kernel's time is roughly the larger of a fixed cost (launch latency, ramp-up) and its bytes over
the memory bandwidth. The kernel census (count_kernels.py) gives the first term; this script
gives the second: it runs count_kernels.graph_step on the CPU (the Triton launches recorded,
not run) and takes, for every kernel the step would launch,
- an aten op (below autograd, through a TorchDispatchMode): the bytes of its tensor inputs and
  outputs (a view's own elements; a convolution backward as one kernel per gradient, each with
  the tensors it reads);
- a Triton launch: the bytes of its distinct tensor arguments, less the ones the kernel does not
  read at its constexprs (UNREAD).
It does so at batch 2 and 4 (16×16) and extrapolates each kernel's bytes linearly in batch ×
pixels to SPEC §6's batch 64 at 32×32, as step_memory.py does for the peak.

The bytes are a lower bound: a kernel that reads its input more than once (PyTorch's depthwise
weight gradient reads each plane K·K times) or spills to memory moves more, and caches help a
kernel read what the one before it wrote. The predicted time, Σ max(T_MIN, bytes / BANDWIDTH), is a
model, not a measurement; RESULTS.md holds its constants' calibration against the H200's numbers.
"""
from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import count_kernels  # noqa: E402  (sets TRITON_INTERPRET before the kernels are defined)
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from ndarts.graph_step import evaluation_sums  # noqa: E402

SIZES = ((2, 16), (4, 16))  # (batch, image) of the two runs
TARGET = (64, 32)  # SPEC §6: batch 64, 32×32
BANDWIDTH = 3.4e12  # bytes/s a streaming kernel reaches on an H200 (80 % of the copy bandwidth measured there)
T_MIN = 2.5e-6  # s: the least a kernel takes in a replayed graph (the H200's BatchNorm kernels: 2-3 µs)

# Triton kernels' tensor arguments they do not read at these constexprs: (constexpr, value) (or None: at any)
# → names, or a function of the launch's arguments giving them (their PART is then a stand-in pointer, the
# weights, which they read)
UNREAD = {
    # without WGRAD the group backward reads only the grouped operands whose BatchNorm sums it makes (GSTATS)
    "_group_backward_kernel": (("WGRAD", False), lambda call: (
        "S0", "S1", "S2", "R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7",
        *(f"G{q}" for q in range(6) if not (call["GSTATS"] >> q) & 1))),
    "_noisy_mixed_sum_backward_kernel": (("WGRAD", False), ("O0", "O1", "O2", "O3", "O4", "O5", "O6", "O7")),
    "_sep_conv_bwd_kernel": (("NEED_WEIGHT", False), ("X0", "X1", "X2", "X3")),
    # the programs of a tensor whose sums its gradient's producer made (SKIP) read nothing
    "_bn_grad_stats_kernel": (None, lambda call: (
        *(f"{p}{t}" for p in "GY" for t in range(8) if (call["SKIP"] >> t) & 1),)),
}


def _view_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _view_key(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t.shape, t.stride(), t.dtype


def _distinct_bytes(tensors, unread=()) -> int:
    """Bytes of the distinct views among tensors (the same view passed twice counts once), less
    the views in unread (a launcher pads unused pointer arguments with a tensor it passes)."""
    skip = {_view_key(t) for t in unread if isinstance(t, torch.Tensor)}
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta" and _view_key(t) not in skip:
            seen[_view_key(t)] = _view_bytes(t)
    return sum(seen.values())


def _conv_kind(weight: torch.Tensor, groups: int) -> str:
    """'depthwise conv' (one group per input channel), 'pointwise conv' (1×1) or 'conv'."""
    if groups > 1 and weight.shape[1] == 1:
        return "depthwise conv"
    return "pointwise conv" if weight.shape[2:] == (1, 1) else "conv"


def _aten_kernels(func, args, kwargs, out) -> list[tuple[str, int]]:
    """(name, bytes) of each GPU kernel an aten op below autograd launches; [] for none. A
    convolution's name says its kind and part: 'depthwise conv forward', 'pointwise conv weight
    gradient', …"""
    name = func._schema.name
    if name in count_kernels.NO_KERNEL:
        return []
    leaves = torch.utils._pytree.tree_leaves
    if name == "aten::convolution":  # (input, weight, bias, stride, padding, dilation, transposed, output padding, groups)
        return [(f"{_conv_kind(args[1], args[8])} forward", _distinct_bytes(leaves(args[:3]) + [out]))]
    if name == "aten::convolution_backward":  # (grad_out, input, weight, bias sizes, …, groups, output mask)
        grad_out, inp, weight = args[:3]
        kind, mask, grads = _conv_kind(weight, args[9]), args[-1], out
        kernels = []
        if mask[0]:  # reads the output gradient and the weight, writes the input gradient
            kernels.append((f"{kind} input gradient", _distinct_bytes([grad_out, weight, grads[0]])))
        if mask[1]:  # reads the output gradient and the input, writes the weight gradient
            kernels.append((f"{kind} weight gradient", _distinct_bytes([grad_out, inp, grads[1]])))
        if mask[2]:
            kernels.append((f"{kind} bias gradient", _distinct_bytes([grad_out, grads[2]])))
        return kernels
    return [(name, _distinct_bytes(leaves((args, kwargs)) + leaves(out)))]


class KernelTraffic(TorchDispatchMode):
    """Records (kind, name, bytes) of every kernel the step launches, in order: aten ops as they
    are dispatched, Triton launches as the interpreter would run them (not run)."""

    def __init__(self):
        super().__init__()
        self.kernels: list[tuple[str, str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for name, nbytes in _aten_kernels(func, args, kwargs or {}, out):
            self.kernels.append(("aten", name, nbytes))
        return out

    def triton_launch(self, executor, args, kwargs) -> None:
        fn = executor.fn
        call = inspect.getcallargs(fn, *args, **{k: v for k, v in kwargs.items()
                                                 if k in inspect.getfullargspec(fn).args})
        skip = ()
        rule = UNREAD.get(fn.__name__)
        if rule is not None and (rule[0] is None or call.get(rule[0][0]) == rule[0][1]):
            skip = rule[1](call) if callable(rule[1]) else rule[1]
        self.kernels.append(("triton", fn.__name__, _distinct_bytes(call.values(), [call[k] for k in skip])))


def step_kernels(impl: str, batch: int, image: int, evaluation: bool = False) -> list[tuple[str, str, int]]:
    """The kernels of one warm graph step of impl at this size, with their bytes; evaluation: of one
    evaluation batch instead (the forward in eval mode, no gradient: what ndarts.graph_step's
    GraphedEvaluation captures)."""
    step, parts, batches = count_kernels.graph_step(impl, batch, image, with_parts=True)
    if evaluation:
        parts.model.eval()

        @torch.no_grad()
        def step():
            evaluation_sums(parts.model, *batches[:2])
    with count_kernels.graph_step_context() as launches:
        step()  # optimizer state, lazy buffers: the graph captures a warm step
        tracker = KernelTraffic()
        launches.on_launch = tracker.triton_launch
        with tracker:
            step()
        launches.on_launch = None
    return tracker.kernels


def _category(kind: str, name: str) -> str:
    """The census's category (count_kernels.category); convolutions by kind and part."""
    if kind == "aten" and "conv " in name:
        return f"{name} (aten)"
    if kind == "triton" and name.startswith(("_dw_conv", "_dw_pairs")):
        part = "forward" if "fwd" in name else "input gradient" if "input" in name else "weight gradient"
        return f"depthwise conv {part} (triton)"
    if kind == "triton" and name.startswith("_pw_conv"):  # one kernel for the forward and the input gradient
        return f"pointwise conv {'weight gradient' if 'wgrad' in name else 'forward, input gradient'} (triton)"
    if kind == "triton" and name.startswith("_sep_conv"):
        part = "forward" if "fwd" in name else "backward" if "bwd" in name else "weight gradient reduce"
        return f"separable conv {part} (triton)"
    return count_kernels.category(kind, name)


def traffic(impl: str, bandwidth: float = BANDWIDTH, t_min: float = T_MIN, eval_batch: int | None = None) -> dict:
    """Each kernel's bytes at SIZES, extrapolated to TARGET; totals and the modelled time by category.
    eval_batch: of one evaluation batch of that size at TARGET's image size, instead of the step."""
    runs = [step_kernels(impl, b, i, evaluation=eval_batch is not None) for b, i in SIZES]
    if len(runs[0]) != len(runs[1]) or any(a[:2] != b[:2] for a, b in zip(*runs)):
        raise RuntimeError(f"{impl}: the step launched different kernels at the two sizes; cannot extrapolate")
    work = [b * i * i for b, i in SIZES]
    target = (eval_batch or TARGET[0]) * TARGET[1] ** 2
    by_cat = collections.defaultdict(lambda: {"kernels": 0, "bytes": 0.0, "model_s": 0.0, "floor_kernels": 0})
    for (kind, name, b0), (_, _, b1) in zip(*runs):
        nbytes = max(b0 + (b1 - b0) / (work[1] - work[0]) * (target - work[0]), 0.0)
        cat = by_cat[_category(kind, name)]
        cat["kernels"] += 1
        cat["bytes"] += nbytes
        cat["model_s"] += max(t_min, nbytes / bandwidth)
        cat["floor_kernels"] += nbytes / bandwidth < t_min
    total_bytes = sum(c["bytes"] for c in by_cat.values())
    return {"impl": impl, "what": "step" if eval_batch is None else "evaluation batch",
            "sizes": [list(s) for s in SIZES], "target": [eval_batch or TARGET[0], TARGET[1]], "kernels": len(runs[0]),
            "GB": total_bytes / 1e9, "model_ms": sum(c["model_s"] for c in by_cat.values()) * 1e3,
            "bandwidth": bandwidth, "t_min": t_min,
            "by_category": {k: {**v, "GB": v["bytes"] / 1e9, "model_ms": v["model_s"] * 1e3}
                            for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1]["model_s"])}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", default=["fused_graph_per_edge", "fused_graph"],
                        help="variants of benchmarks/test_bench_search_step.py")
    parser.add_argument("--bandwidth", type=float, default=BANDWIDTH, help="bytes/s of a streaming kernel")
    parser.add_argument("--t-min", type=float, default=T_MIN, help="seconds: the least a kernel takes")
    parser.add_argument("--eval-batch", type=int, help="one evaluation batch of this size (eval-mode forward) "
                                                          "instead of the search step")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for impl in args.impl:
        r = traffic(impl, args.bandwidth, args.t_min, args.eval_batch)
        results.append(r)
        b, image = r["target"]
        print(f"\n{impl}: {r['kernels']} kernels, {r['GB']:.1f} GB per {r['what']} at b{b} {image}x{image}, "
              f"model {r['model_ms']:.1f} ms ({args.bandwidth / 1e12:.2f} TB/s, {args.t_min * 1e6:.1f} µs per kernel at least)")
        print(f"  {'category':48} {'kernels':>8} {'at floor':>9} {'GB':>7} {'model ms':>9}")
        for name, c in r["by_category"].items():
            print(f"  {name:48} {c['kernels']:8d} {c['floor_kernels']:9d} {c['GB']:7.2f} {c['model_ms']:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

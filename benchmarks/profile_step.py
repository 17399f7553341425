"""Where the time of one search step goes, on a CUDA GPU: kernels launched, GPU busy time, top kernels.

    python benchmarks/profile_step.py [--impl plain reference fused] [--top 12] [--json OUT.json]

(--json is rewritten after each variant: a run cut off keeps the variants it finished.)

For each implementation (benchmarks/test_bench_search_step.py builds them, SPEC §6's supernet:
batch 64, C 16, 8 cells, DARTS space, Gaussian noise) after warm-up steps: one step under
torch.profiler. Printed: the number of CUDA kernels the step launches, the sum of their device
times (the GPU's busy time), the step's wall time, and the kernels that take the most device time
grouped by name, and the busy time by category (kernel_category: which convolution part on
whose kernels, the Triton BatchNorm, the sums, ...), the categories of benchmarks/step_traffic.py's
bytes model, so that each can be set against the time its bytes would take. Busy time far under
the wall time means launch-bound (the host, or the gaps between tiny kernels); busy time close to
it means the kernels themselves are the cost.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_bench_search_step import GPU_CONFIG, build_parts, make_batches, search_step

from ndarts.searcher import SearchConfig


def _device_us(event) -> float:
    for name in ("device_time", "cuda_time"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


# (substring of a kernel's name, category), first match wins: PyTorch's NCHW depthwise kernels,
# ndarts' Triton kernels, cuDNN's convolutions by the pass their names carry, the rest
CATEGORIES = (
    ("conv_depthwise2d_forward", "depthwise conv forward (PyTorch)"),
    ("conv_depthwise2d_backward", "depthwise conv input gradient (PyTorch)"),
    ("conv_depthwise2d_grad_weight", "depthwise conv weight gradient (PyTorch)"),
    ("_dw_conv_fwd", "depthwise conv forward (Triton)"),
    ("_dw_conv_bwd_input", "depthwise conv input gradient (Triton)"),
    ("_dw_pairs_bwd_input", "depthwise conv input gradient (Triton)"),
    ("_dw_conv_bwd_weight", "depthwise conv weight gradient (Triton)"),
    ("_dw_conv_weight_reduce", "depthwise conv weight gradient (Triton)"),
    ("_pw_conv_wgrad", "pointwise conv weight gradient (Triton)"),
    ("_pw_conv_kernel", "pointwise conv forward, input gradient (Triton)"),
    ("_sep_conv_fwd", "separable conv forward (Triton)"),
    ("_sep_conv_bwd", "separable conv backward: 1×1 input gradient, both weight gradients (Triton)"),
    ("_sep_conv_reduce", "separable conv backward: 1×1 input gradient, both weight gradients (Triton)"),
    ("_bn_", "BatchNorm (Triton)"),
    ("_group_", "mixed sums (Triton)"),
    ("_noisy_mixed_sum", "mixed sums (Triton)"),
    ("_skip_stats", "mixed sums (Triton)"),
    ("_stats_merge", "mixed sums (Triton)"),
    ("_pools_", "pools (Triton)"),
    ("_relu_repeat", "group inputs: relu + repeat (Triton)"),
    ("_tensor_sum", "gradient sums (Triton)"),
    ("wgrad", "other convs, weight gradient (cuDNN)"),
    ("dgrad", "other convs, input gradient (cuDNN)"),
    ("conv", "other convs (cuDNN)"),
    ("gemm", "other convs, GEMM kernels (cuDNN, cuBLAS)"),
    ("xmma", "other convs, GEMM kernels (cuDNN, cuBLAS)"),
    ("batch_norm", "BatchNorm (PyTorch)"),
    ("bn_", "BatchNorm (PyTorch)"),
    ("elementwise", "element-wise (PyTorch)"),
    ("reduce", "reductions (PyTorch)"),
    ("copy", "copies (PyTorch)"),
    ("cat", "copies (PyTorch)"),
)


def kernel_category(name: str) -> str:
    """The category of a CUDA kernel of the search step, by its name (CATEGORIES)."""
    low = name.lower()
    return next((cat for key, cat in CATEGORIES if key.lower() in low), "other")


def profile_impl(impl: str, top: int, graph_kernels: bool = False) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from ndarts.batch_norm import SearchBatchNorm2d
    from ndarts.depthwise_conv import SearchDepthwiseConv2d
    from ndarts.edge_groups import GroupedConvStack
    from ndarts.pointwise_conv import SearchPointwiseConv2d

    device = torch.device("cuda")
    parts = build_parts(GPU_CONFIG, impl, device)
    if graph_kernels:  # eagerly, the kernels a captured step runs (auto uses them only under capture)
        for m in parts.model.modules():
            if isinstance(m, (SearchBatchNorm2d, SearchDepthwiseConv2d, SearchPointwiseConv2d, GroupedConvStack)):
                m.backend = "triton"
    batches = make_batches(GPU_CONFIG, device)
    lr = SearchConfig().learning_rate
    for _ in range(3):
        search_step(parts, *batches, lr)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    search_step(parts, *batches, lr)
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        search_step(parts, *batches, lr)
        torch.cuda.synchronize()
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA"):
            us = _device_us(e)
            if us <= 0:
                continue
            entry = by_name[e.name]
            entry[0] += 1
            entry[1] += us
    kernels = sum(c for c, _ in by_name.values())
    busy_ms = sum(t for _, t in by_name.values()) / 1e3
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    by_category = collections.defaultdict(lambda: [0, 0.0])
    for name, (count, us) in by_name.items():
        entry = by_category[kernel_category(name)]
        entry[0] += count
        entry[1] += us
    return {"impl": impl + ("+graph_kernels" if graph_kernels else ""), "wall_ms_unprofiled": wall_ms, "kernels": kernels, "busy_ms": busy_ms,
            "top": [{"name": n[:90], "count": c, "ms": t / 1e3} for n, (c, t) in ranked],
            "by_category": {cat: {"count": c, "ms": t / 1e3}
                            for cat, (c, t) in sorted(by_category.items(), key=lambda kv: -kv[1][1])}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", nargs="+", default=["plain", "reference", "fused"],
                    help="plain, reference, fused, fused_dwconv (+ depthwise-conv kernels), fused_dwwgrad (+ their weight "
                         "gradient only), fused_pwconv (+ pointwise-conv kernels), fused_sepconv (+ the fused dw + 1x1 pair), fused_per_edge (no batch_edge_convs)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--graph-kernels", action="store_true",
                    help="fused*: the BatchNorm (and depthwise-conv) kernels in the eager step too, as the "
                         "CUDA-graph step runs them")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_step: needs a CUDA device")
        return 2
    results = []
    for impl in args.impl:
        r = profile_impl(impl, args.top, args.graph_kernels and impl.startswith("fused"))
        results.append(r)
        if args.json:
            dump_json(results, args.json)
        print(f"\n== {r['impl']}: {r['kernels']} kernels per step, GPU busy {r['busy_ms']:.1f} ms, "
              f"wall {r['wall_ms_unprofiled']:.1f} ms (unprofiled)")
        for k in r["top"]:
            print(f"  {k['ms']:8.2f} ms {k['count']:6d}x  {k['name']}")
        print("  by category:")
        for cat, v in r["by_category"].items():
            print(f"  {v['ms']:8.2f} ms {v['count']:6d}x  {cat}")
    return 0


def dump_json(results: list, path: str) -> None:
    """Writes the variants profiled so far, after each one: a run cut off by gpu_check.sh's limit
    keeps them. Through a temporary file and a rename, so that a cut during the write leaves the
    previous list rather than half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())

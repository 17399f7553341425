"""The depthwise convolutions of the sep/dil convs, part by part: PyTorch's kernels vs ndarts' Triton ones.

Why: on the H200 (2026-11-27) the depthwise convolutions took at least 40 % of the graph step, and
PyTorch's weight-gradient kernel alone 16.9 ms of 106 ms. The step benchmark times the whole-step
variants (fused_graph, fused_graph_dwwgrad, fused_graph_dwconv); this file times each part on its
own, so that the next GPU run can say which kernel of which part wins at the shapes the step runs:

- parts: `fwd` (y = conv(x)), `dgrad` (dL/dx from dL/dy), `wgrad` (dL/dw from x and dL/dy);
- impl `torch`: F.conv2d and aten's convolution_backward with the one gradient asked for (what
  nn.Conv2d runs); impl `triton`: ndarts_kernels.depthwise_conv_forward / _backward (CUDA only);
- the four stride-1 DARTS geometries (sep 3×3 and 5×5, dil 3×3 and 5×5) at 64×128×32×32 (the
  first conv group of a normal cell: 8 edges × 16 channels, edge-major) and 64×16×32×32 (one edge),
  fp32.

Time: CUDA events over back-to-back calls and, as the step runs, a CUDA-graph replay (`graph_ms`,
device time only). GB/s from the bytes each part must move at least (read its inputs once, write
its output once), against the copy bandwidth measured in the same run: an implementation that
re-reads its inputs shows a lower figure. On a CPU: the torch parts at 2×16×16×16, wall clock.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench_common import CUDA, cuda_graph_ms, needs_cuda, run_benchmark, shape_id
from ndarts.backend import triton_unavailable_reason

# (name, K, padding, dilation), stride 1: DARTS's sep_conv / dil_conv depthwise convs
GEOMETRIES = [("sep3", 3, 1, 1), ("sep5", 5, 2, 1), ("dil3", 3, 2, 2), ("dil5", 5, 4, 2)]
SHAPES = [(64, 128, 32, 32), (64, 16, 32, 32)] if CUDA else [(2, 16, 16, 16)]
PARTS = ["fwd", "dgrad", "wgrad"]
ROUNDS, WARMUP = (10, 3) if CUDA else (5, 1)


def part_fn(impl: str, part: str, x, w, g, padding: int, dilation: int):
    """A no-argument callable that computes one part of a stride-1 depthwise conv."""
    c = x.shape[1]
    if impl == "torch":
        if part == "fwd":
            return lambda: F.conv2d(x, w, None, 1, padding, dilation, groups=c)
        mask = [part == "dgrad", part == "wgrad", False]
        return lambda: torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [padding] * 2, [dilation] * 2,
                                                           False, [0, 0], c, mask)
    import ndarts_kernels

    if part == "fwd":
        return lambda: ndarts_kernels.depthwise_conv_forward(x, w, 1, padding, dilation)
    return lambda: ndarts_kernels.depthwise_conv_backward(g, x, w, 1, padding, dilation, need_input=part == "dgrad",
                                                          need_weight=part == "wgrad")


def minimal_bytes(part: str, numel: int, elem: int) -> int:
    """Each part reads two planes-sized tensors or writes one: fwd reads x, writes y; dgrad reads
    dL/dy, writes dL/dx; wgrad reads x and dL/dy (the K·K weights are negligible)."""
    return 2 * numel * elem


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(s) for s in SHAPES])
def test_depthwise_conv(benchmark, copy_bandwidth, device, impl, part, geometry, shape):
    if impl == "triton":
        if device.type != "cuda":
            pytest.skip(needs_cuda("the Triton kernels run compiled on a CUDA device only "
                                   "(TRITON_INTERPRET=1 is for tests, not for timing)"))
        reason = triton_unavailable_reason(device)
        if reason:
            pytest.skip(f"Triton kernels unavailable: {reason}")
    name, k, padding, dilation = geometry
    benchmark.group = f"depthwise_conv {part} {name} {shape_id(shape)}"
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen)
    w = torch.randn(shape[1], 1, k, k, device=device, generator=gen)
    g = torch.randn(shape, device=device, generator=gen)  # stride 1, "same" padding: dL/dy is x's shape
    fn = part_fn(impl, part, x, w, g, padding, dilation)
    info = run_benchmark(benchmark, fn, device, rounds=ROUNDS, warmup=WARMUP)
    if info["time_ms"] is None:
        return
    numel = x.numel()
    nbytes = minimal_bytes(part, numel, x.element_size())
    info.update({"kind": "depthwise_conv", "impl": impl, "part": part, "geometry": name, "shape": list(shape),
                 "dtype": "float32", "device": str(device), "min_bytes": nbytes,
                 "GBps": nbytes / (info["time_ms"] * 1e-3) / 1e9, "copy_GBps": copy_bandwidth["copy_GBps"]})
    info["frac_copy_bw"] = info["GBps"] / info["copy_GBps"]
    if device.type == "cuda":
        info["graph_ms"], info["graph_error"] = cuda_graph_ms(fn)
    benchmark.extra_info.update(info)

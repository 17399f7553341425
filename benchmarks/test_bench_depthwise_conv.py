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

from bench_common import CONV_PARTS, CUDA, record_conv_part, shape_id, torch_conv_part, triton_skip_reason

# (name, K, padding, dilation), stride 1: DARTS's sep_conv / dil_conv depthwise convs
GEOMETRIES = [("sep3", 3, 1, 1), ("sep5", 5, 2, 1), ("dil3", 3, 2, 2), ("dil5", 5, 4, 2)]
SHAPES = [(64, 128, 32, 32), (64, 16, 32, 32)] if CUDA else [(2, 16, 16, 16)]
ROUNDS, WARMUP = (10, 3) if CUDA else (5, 1)


def part_fn(impl: str, part: str, x, w, g, padding: int, dilation: int):
    """A no-argument callable that computes one part of a stride-1 depthwise conv."""
    if impl == "torch":
        return torch_conv_part(part, x, w, g, padding=padding, dilation=dilation, groups=x.shape[1])
    import ndarts_kernels

    if part == "fwd":
        return lambda: ndarts_kernels.depthwise_conv_forward(x, w, 1, padding, dilation)
    return lambda: ndarts_kernels.depthwise_conv_backward(g, x, w, 1, padding, dilation, need_input=part == "dgrad",
                                                          need_weight=part == "wgrad")


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("part", CONV_PARTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(s) for s in SHAPES])
def test_depthwise_conv(benchmark, copy_bandwidth, device, impl, part, geometry, shape):
    reason = triton_skip_reason(device) if impl == "triton" else None
    if reason:
        pytest.skip(reason)
    name, k, padding, dilation = geometry
    benchmark.group = f"depthwise_conv {part} {name} {shape_id(shape)}"
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen)
    w = torch.randn(shape[1], 1, k, k, device=device, generator=gen)
    g = torch.randn(shape, device=device, generator=gen)  # stride 1, "same" padding: dL/dy is x's shape
    fn = part_fn(impl, part, x, w, g, padding, dilation)
    record_conv_part(benchmark, fn, device, copy_bandwidth, x=x, dy=g, rounds=ROUNDS, warmup=WARMUP,
                     kind="depthwise_conv", impl=impl, part=part, geometry=name, shape=list(shape))

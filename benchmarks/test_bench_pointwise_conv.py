"""The 1×1 (pointwise) convolutions of the search network, part by part: PyTorch's kernels vs
ndarts' Triton ones.

Why: on the H200 the convolutions of the graphed search step ran far from memory bandwidth
(~0.4 TB/s inferred). The pointwise convs of the batched edges are grouped 1×1 convs (groups = E
edges, 16 channels per group, NCHW fp32), which cuDNN runs slowly; ndarts_kernels has a Triton
kernel for them. As test_bench_depthwise_conv.py does for the depthwise convs, this file times
each part on its own, so that the next GPU run can say which kernel wins at the step's shapes:

- parts: `fwd` (y = conv(x)), `dgrad` (dL/dx from dL/dy), `wgrad` (dL/dw from x and dL/dy);
- impl `torch`: F.conv2d and aten's convolution_backward with the one gradient asked for (what
  nn.Conv2d runs); impl `triton`: ndarts_kernels.pointwise_conv_forward / _backward (CUDA only);
- cases (input N×C×H×W, groups G, output channels per group), fp32, at batch 64 and 32×32: a
  normal cell's first conv group (8 edges × 16 channels, edge-major: G = 8), 4 edges (G = 4), one
  edge (16 channels, dense), a cell's preprocessing conv (the stem's 48 channels to 16, dense), and
  the 8 groups' tensors as one dense 128 → 128 conv (is cuDNN's dense 1×1 faster than its grouped one?).

Time: CUDA events over back-to-back calls and a CUDA-graph replay (`graph_ms`); GB/s from the
bytes each part must move at least, against the copy bandwidth measured in the same run
(bench_common.record_conv_part). On a CPU: the torch parts at batch 2, 16×16, wall clock.
"""
from __future__ import annotations

import pytest
import torch

from bench_common import CONV_PARTS, CUDA, record_conv_part, shape_id, torch_conv_part, triton_skip_reason

# (input shape, groups G, output channels per group)
# (64×128 dense, 128 → 128: the same tensors as the 8 groups, for the grouped-vs-dense question of the
# channel-multiplier first stage, RESULTS.md 2026-11-30)
CASES = ([((64, 128, 32, 32), 8, 16), ((64, 64, 32, 32), 4, 16), ((64, 16, 32, 32), 1, 16), ((64, 48, 32, 32), 1, 16),
          ((64, 128, 32, 32), 1, 128)]
         if CUDA else [((2, 32, 16, 16), 2, 16), ((2, 48, 16, 16), 1, 16)])
ROUNDS, WARMUP = (10, 3) if CUDA else (5, 1)


def geometry(case) -> str:
    """'g8 16>16': G groups, input > output channels per group (the table's geometry column)."""
    shape, groups, co = case
    return f"g{groups} {shape[1] // groups}>{co}"


def case_id(case) -> str:
    shape, groups, co = case
    return f"{shape_id(shape)}_g{groups}_{shape[1] // groups}to{co}"


def part_fn(impl: str, part: str, x, w, g):
    """A no-argument callable that computes one part of a grouped 1×1 conv (stride 1, no bias)."""
    groups = x.shape[1] // w.shape[1]
    if impl == "torch":
        return torch_conv_part(part, x, w, g, groups=groups)
    import ndarts_kernels

    if part == "fwd":
        return lambda: ndarts_kernels.pointwise_conv_forward(x, w)
    return lambda: ndarts_kernels.pointwise_conv_backward(g, x, w, need_input=part == "dgrad",
                                                          need_weight=part == "wgrad")


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("part", CONV_PARTS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_pointwise_conv(benchmark, copy_bandwidth, device, impl, part, case):
    reason = triton_skip_reason(device) if impl == "triton" else None
    if reason:
        pytest.skip(reason)
    shape, groups, co = case
    n, c, h, w = shape
    benchmark.group = f"pointwise_conv {part} {geometry(case)} {shape_id(shape)}"
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen)
    weight = torch.randn(groups * co, c // groups, 1, 1, device=device, generator=gen)
    g = torch.randn(n, groups * co, h, w, device=device, generator=gen)  # dL/dy: y's shape
    fn = part_fn(impl, part, x, weight, g)
    record_conv_part(benchmark, fn, device, copy_bandwidth, x=x, dy=g, rounds=ROUNDS, warmup=WARMUP,
                     kind="pointwise_conv", impl=impl, part=part, geometry=geometry(case), shape=list(shape),
                     groups=groups)

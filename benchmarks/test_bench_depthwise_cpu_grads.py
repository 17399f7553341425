"""A depthwise conv's gradients on a CPU: PyTorch's (oneDNN's) vs as forward convolutions.

Why: ndarts.depthwise_cpu_grads computes a depthwise conv's input gradient (stride 1) and, where a
rule says so, its weight gradient as depthwise forward convolutions, because oneDNN's backward
falls off its fast depthwise kernels at dilated, 5×5 and larger-than-the-map kernels. This file
times both forms of each part at the batched stacks' edge-major shapes of the digits preset (8
edges × 8 channels at 8×8, 8 × 16 at 4×4) and at one CIFAR-like 16×16 map, NHWC, fp32, so that
the rules' numbers can be reproduced on the machine at hand:

    pytest benchmarks/test_bench_depthwise_cpu_grads.py --benchmark-only --benchmark-json=b.json
    python benchmarks/summarize.py b.json

Parts: `dgrad` (dL/dx from dL/dy), `wgrad` (dL/dw from x and dL/dy); impl `torch`: aten's
convolution_backward asked for that gradient (what nn.Conv2d runs); impl `forward`:
input_grad_by_forward_conv / weight_grad_by_forward_conv. extra_info `taken` says whether the
library takes the forward form there (uses_forward_input_grad / uses_forward_weight_grad). CPU
only: on a GPU the library does not use these forms.
"""
from __future__ import annotations

import pytest
import torch

from bench_common import record_conv_part, shape_id, torch_conv_part

# (name, K, padding, dilation), stride 1: DARTS's sep_conv / dil_conv depthwise convs
GEOMETRIES = [("sep3", 3, 1, 1), ("sep5", 5, 2, 1), ("dil3", 3, 2, 2), ("dil5", 5, 4, 2)]
SHAPES = [(64, 64, 8, 8), (64, 128, 4, 4), (64, 16, 16, 16)]


@pytest.mark.parametrize("impl", ["torch", "forward"])
@pytest.mark.parametrize("part", ["dgrad", "wgrad"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(s) for s in SHAPES])
def test_depthwise_cpu_grads(benchmark, copy_bandwidth, device, impl, part, geometry, shape):
    if device.type != "cpu":
        pytest.skip("the forward-conv gradients are CPU-only formulations (ndarts.depthwise_cpu_grads)")
    from ndarts.depthwise_cpu_grads import (input_grad_by_forward_conv, uses_forward_input_grad,
                                            uses_forward_weight_grad, weight_grad_by_forward_conv)

    name, k, padding, dilation = geometry
    benchmark.group = f"depthwise_cpu_grads {part} {name} {shape_id(shape)}"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1], 1, k, k, generator=gen)
    g = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    if impl == "torch":
        fn = torch_conv_part(part, x, w, g, padding=padding, dilation=dilation, groups=shape[1])
    elif part == "dgrad":
        fn = lambda: input_grad_by_forward_conv(g, w, padding, dilation)  # noqa: E731
    else:
        fn = lambda: weight_grad_by_forward_conv(g, x, (k, k), 1, padding, dilation)  # noqa: E731
    taken = (uses_forward_input_grad if part == "dgrad" else uses_forward_weight_grad)(x, w, 1, padding, dilation)
    record_conv_part(benchmark, fn, device, copy_bandwidth, x=x, dy=g, rounds=7, warmup=2, kind="depthwise_cpu_grads",
                     impl=impl, part=part, geometry=name, shape=list(shape), taken=taken)

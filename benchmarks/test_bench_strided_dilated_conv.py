"""A reduction cell's dilated depthwise convs (stride 2) as PyTorch runs them vs undilated on the one
phase of their input they read.

Why: a conv with stride = dilation = d and padding a multiple of d reads only every d-th row and
column of its input; `ndarts.conv_taps.conv2d_one_phase` runs it as the undilated stride-1 conv of
x[..., ::d, ::d] with padding p/d. On a CPU the batched stacks and the evaluation network do so
(oneDNN's dilated depthwise kernels are several times slower: benchmarks/RESULTS.md, 2026-12-05,
second entry); on a GPU they run cuDNN's dilated conv, because this question is untimed there. This
file times both on the device at hand, so that the next GPU run can say whether cuDNN gains too.

- impls: `dilated` (F.conv2d with stride d and dilation d), `one_phase` (conv2d_one_phase);
- parts: `fwd`, and `fwdbwd` (the forward and both gradients by autograd, as the search step asks);
- geometries: DARTS's dil_conv_3x3 and dil_conv_5x5 depthwise convs at stride 2 (dilation 2, padding
  2 and 4), each kernel first cut to its live taps (conv_taps.live_kernel) as the library does;
- shapes: a reduction cell's first conv stage, edge-major (4 stride-2 edges of an input node): on a
  GPU the CIFAR supernet's (C 16, 8 cells) 64×128×32×32 and 64×256×16×16, NCHW; on a CPU the
  digits preset's 64×64×8×8 and 64×128×4×4, channels_last (each the default layout there); fp32.

Time: CUDA events over back-to-back calls and a CUDA-graph replay (`graph_ms`, as the graphed step
runs it); on a CPU the wall-clock median.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench_common import CUDA, cuda_graph_ms, run_benchmark, shape_id
from ndarts.conv_taps import conv2d_one_phase, live_kernel

STRIDE = DILATION = 2
# (name, K, padding): DARTS's dil convs
GEOMETRIES = [("dil3", 3, 2), ("dil5", 5, 4)]
SHAPES = [(64, 128, 32, 32), (64, 256, 16, 16)] if CUDA else [(64, 64, 8, 8), (64, 128, 4, 4)]
PARTS = ["fwd", "fwdbwd"]
ROUNDS, WARMUP = (10, 3) if CUDA else (5, 1)


def conv_fn(impl: str, x, w, padding):
    if impl == "dilated":
        return lambda: F.conv2d(x, w, None, STRIDE, padding, DILATION, x.shape[1])
    return lambda: conv2d_one_phase(x, w, padding, DILATION, x.shape[1])


def part_fn(part: str, conv, inputs, grad_output):
    """A no-argument callable: the forward, or the forward and the gradients of `inputs` (by
    torch.autograd.grad: nothing accumulates between calls, and it captures in a CUDA graph)."""
    if part == "fwd":
        return conv
    return lambda: torch.autograd.grad(conv(), inputs, grad_output)


@pytest.mark.parametrize("impl", ["dilated", "one_phase"])
@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(s) for s in SHAPES])
def test_strided_dilated_conv(benchmark, device, impl, part, geometry, shape):
    name, k, padding = geometry
    benchmark.group = f"strided_dilated_conv {part} {name} {shape_id(shape)}"
    gen = torch.Generator(device=device).manual_seed(0)
    memory_format = torch.contiguous_format if device.type == "cuda" else torch.channels_last
    x = torch.randn(shape, device=device, generator=gen).contiguous(memory_format=memory_format)
    w_full = torch.randn(shape[1], 1, k, k, device=device, generator=gen)
    w, live_padding = live_kernel(w_full, shape[-2:], STRIDE, padding, DILATION)
    x.requires_grad_(part == "fwdbwd")
    w = w.contiguous().requires_grad_(part == "fwdbwd")
    conv = conv_fn(impl, x, w, live_padding)
    with torch.no_grad():
        want = F.conv2d(x, w, None, STRIDE, live_padding, DILATION, shape[1])
    # a benchmark of a wrong result is no benchmark: both impls give PyTorch's dilated conv
    torch.testing.assert_close(conv().detach(), want, atol=1e-4, rtol=1e-4)
    fn = part_fn(part, conv, (x, w), torch.randn(want.shape, device=device, generator=gen))
    info = run_benchmark(benchmark, fn, device, rounds=ROUNDS, warmup=WARMUP)
    if info["time_ms"] is None:
        return
    info.update({"kind": "strided_dilated_conv", "impl": impl, "part": part, "geometry": name,
                 "shape": list(shape), "live_kernel": list(w.shape[-2:]), "dtype": "float32",
                 "device": str(device), "memory_format": "channels_last" if device.type == "cpu" else "NCHW"})
    if device.type == "cuda":
        info["graph_ms"], info["graph_error"] = cuda_graph_ms(fn)
    benchmark.extra_info.update(info)

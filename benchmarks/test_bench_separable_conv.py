"""A depthwise conv followed by a grouped 1×1 conv (one stage of a batched sep/dil conv stack),
PyTorch's two convolutions vs ndarts' fused Triton kernels (kernels/separable_conv.py).

Why: the batched stacks' convolutions are most of the graphed search step's time (≈ 75 of 106 ms
on the H200 on 2026-11-27, when they were per edge), and each dw → pw pair moves its intermediate
through memory twice each way. The step benchmark times the whole-step variant
(fused_graph_sepconv); this file times one pair, as the step runs it:

- parts: `fwd` (z = pw(dw(x))); `dgrad`, the α step's backward (dL/dx from dL/dz only: no weight
  gradient); `both`, the w step's (dL/dx and both weight gradients);
- impl `torch`: F.conv2d twice, and aten's convolution_backward of each conv with the gradients
  the pass asks for (what autograd runs for nn.Conv2d; the intermediate d made before timing, as
  autograd keeps it); impl `triton`: ndarts_kernels.separable_conv_forward / _backward (CUDA only);
- cases, fp32, batch 64: a normal cell's first conv group (8 edges × 16 channels, 32×32) as sep 3×3
  and dil 5×5, and a later cell's (4 edges × 32 channels at 16×16) sep 5×5.

A whole stage (`test_separable_stage`, CUDA only): the first stage of a normal cell's first conv
group, its four pairs (sep 3×3, sep 5×5, dil 3×3, dil 5×5 on 8 edges × 16 channels, 32×32), each
pair launched alone (`per_pair`, as before 2026-11-30's sixth entry) vs the four in one launch of
each kernel (`stage`: ndarts_kernels.separable_pairs_*, as ndarts.separable_stage runs them).

The precision sweep (`test_separable_conv_precision`, CUDA only): both impls on the first case with
fp32 products rounded to TF32 (PyTorch's default for convolutions: cuDNN's tensor cores; the fused
kernels follow it, kernels/dot_precision.py) and without ("ieee": cuDNN's fp32 kernels, the fused
kernels' FMA), so that the GPU run says what the 1×1 products cost each way.

The tile sweep (`test_separable_conv_tiles`, CUDA only): the fused kernels on the first case with
other (tile elements, warps) pairs than FORWARD_TILE / BACKWARD_TILE, so that the GPU run that
times them also says which tiles to keep.

Time: CUDA events over back-to-back calls and a CUDA-graph replay (`graph_ms`, device time only).
GB/s from the bytes each part must move at least (fwd: x and z; dgrad: dL/dz and dL/dx; both:
those and x), against the copy bandwidth measured in the same run. On a CPU: the torch parts at
batch 2, 16×16, wall clock.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from bench_common import CUDA, record_conv_part, shape_id, triton_skip_reason

# (input shape, groups G, K, padding, dilation, name): stride 1, C = channels // G in and out
CASES = ([((64, 128, 32, 32), 8, 3, 1, 1, "sep3"), ((64, 128, 32, 32), 8, 5, 4, 2, "dil5"),
          ((64, 128, 16, 16), 4, 5, 2, 1, "sep5")] if CUDA else [((2, 32, 16, 16), 2, 3, 1, 1, "sep3")])
PARTS = ["fwd", "dgrad", "both"]
ROUNDS, WARMUP = (10, 3) if CUDA else (5, 1)


def geometry(case) -> str:
    """'sep3 g8x16': the primitive's conv geometry, G groups × channels per group."""
    shape, groups, _, _, _, name = case
    return f"{name} g{groups}x{shape[1] // groups}"


def case_id(case) -> str:
    return f"{shape_id(case[0])}_{geometry(case).replace(' ', '_')}"


# (tile elements, warps) pairs of the sweep, forward and backward (the defaults among them)
FORWARD_TILES = [(2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8)]
BACKWARD_TILES = [(1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8)]


def part_fn(impl: str, part: str, x, w_dw, w_pw, g, padding: int, dilation: int, tile=None):
    """A no-argument callable that computes one part of the pair (tile: the fused kernels')."""
    c, groups = x.shape[1], x.shape[1] // w_pw.shape[1]
    if impl == "triton":
        import ndarts_kernels

        if part == "fwd":
            return lambda: ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, 1, padding, dilation, tile=tile)
        return lambda: ndarts_kernels.separable_conv_backward(g, x, w_dw, w_pw, 1, padding, dilation,
                                                              need_weight=part == "both", tile=tile)
    if part == "fwd":
        return lambda: F.conv2d(F.conv2d(x, w_dw, None, 1, padding, dilation, c), w_pw, groups=groups)
    d = F.conv2d(x, w_dw, None, 1, padding, dilation, c)  # kept by autograd for pw's weight gradient
    weights = part == "both"

    def backward():
        gd = torch.ops.aten.convolution_backward(g, d, w_pw, None, [1, 1], [0, 0], [1, 1], False, [0, 0], groups,
                                                 [True, weights, False])[0]
        return torch.ops.aten.convolution_backward(gd, x, w_dw, None, [1, 1], [padding] * 2, [dilation] * 2,
                                                   False, [0, 0], c, [True, weights, False])

    return backward


@contextlib.contextmanager
def conv_precision(precision: str | None):
    """PyTorch's fp32 precision for convolutions ("tf32" / "ieee"; None: as it is), restored after."""
    saved = torch.backends.cudnn.conv.fp32_precision
    if precision is not None:
        torch.backends.cudnn.conv.fp32_precision = precision
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved


def _time_part(benchmark, copy_bandwidth, device, impl, part, case, tile=None, precision=None, **fields):
    shape, groups, k, padding, dilation, _ = case
    c = shape[1] // groups
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen)
    w_dw = torch.randn(shape[1], 1, k, k, device=device, generator=gen) / k
    w_pw = torch.randn(shape[1], c, 1, 1, device=device, generator=gen) / c ** 0.5
    g = torch.randn(shape, device=device, generator=gen)  # stride 1, "same" padding: dL/dz is x's shape
    fn = part_fn(impl, part, x, w_dw, w_pw, g, padding, dilation, tile)
    # x and dL/dz (fwd: x and z; dgrad: dL/dz and dL/dx), plus x once more for the w step's backward
    extra = x.numel() * x.element_size() if part == "both" else 0
    if tile is not None:
        import ndarts_kernels.separable_conv as fused

        fields["tile"] = list(tile)
        fields["default_tile"] = tile == (fused.FORWARD_TILE if part == "fwd" else fused.BACKWARD_TILE)
    with conv_precision(precision):  # read at each launch (cuDNN's and the fused kernels'), and when captured
        fields["precision"] = torch.backends.cudnn.conv.fp32_precision
        record_conv_part(benchmark, fn, device, copy_bandwidth, x=x, dy=g, rounds=ROUNDS, warmup=WARMUP,
                         extra_bytes=extra, impl=impl, part=part, geometry=geometry(case), shape=list(shape),
                         groups=groups, **fields)


# first in the file: the newest question of the GPU run (gpu_check.sh runs the file in order under one limit)
@pytest.mark.parametrize("precision", ["tf32", "ieee"])
@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("part", PARTS)
def test_separable_conv_precision(benchmark, copy_bandwidth, device, precision, impl, part):
    if device.type != "cuda":
        pytest.skip("TF32 is a GPU's: a CPU's convolutions and the interpreter compute in fp32 either way")
    reason = triton_skip_reason(device) if impl == "triton" else None
    if reason:
        pytest.skip(reason)
    case = CASES[0]
    benchmark.group = f"separable_conv precision {part} {geometry(case)} {shape_id(case[0])}"
    _time_part(benchmark, copy_bandwidth, device, impl, part, case, precision=precision,
               kind="separable_conv_precision")


# a stage's four pairs: (K, padding, dilation) of sep 3×3, sep 5×5, dil 3×3, dil 5×5 (stride 1)
STAGE_PAIRS = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2)]
STAGE_SHAPE, STAGE_GROUPS = ((64, 128, 32, 32), 8) if CUDA else ((2, 32, 16, 16), 2)


def stage_fn(impl: str, part: str, xs, w_dws, w_pws, gs):
    """A no-argument callable computing one part of a stage's pairs (pair i: input xs[i], output
    gradient gs[i]): one launch per pair or per stage."""
    import ndarts_kernels

    geometry = [(1, p, d) for _, p, d in STAGE_PAIRS]
    if impl == "stage":
        if part == "fwd":
            return lambda: ndarts_kernels.separable_pairs_forward(xs, w_dws, w_pws, geometry)
        return lambda: ndarts_kernels.separable_pairs_backward(gs, xs, w_dws, w_pws, geometry,
                                                               need_weight=part == "both")
    if part == "fwd":
        return lambda: [ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, *geo)
                        for x, w_dw, w_pw, geo in zip(xs, w_dws, w_pws, geometry)]
    return lambda: [ndarts_kernels.separable_conv_backward(g, x, w_dw, w_pw, *geo, need_weight=part == "both")
                    for g, x, w_dw, w_pw, geo in zip(gs, xs, w_dws, w_pws, geometry)]


@pytest.mark.parametrize("impl", ["per_pair", "stage"])
@pytest.mark.parametrize("part", PARTS)
def test_separable_stage(benchmark, copy_bandwidth, device, impl, part):
    reason = triton_skip_reason(device)
    if reason:
        pytest.skip(reason)
    c = STAGE_SHAPE[1] // STAGE_GROUPS
    gen = torch.Generator(device=device).manual_seed(0)
    # four pairs, each its own input and output gradient (distinct tensors: a shared one could be
    # served from L2 on its second read, which the byte count below does not allow for)
    xs = [torch.randn(STAGE_SHAPE, device=device, generator=gen) for _ in STAGE_PAIRS]
    gs = [torch.randn(STAGE_SHAPE, device=device, generator=gen) for _ in STAGE_PAIRS]
    w_dws = [torch.randn(STAGE_SHAPE[1], 1, k, k, device=device, generator=gen) / k for k, _, _ in STAGE_PAIRS]
    w_pws = [torch.randn(STAGE_SHAPE[1], c, 1, 1, device=device, generator=gen) / c ** 0.5 for _ in STAGE_PAIRS]
    benchmark.group = f"separable_stage {part} {shape_id(STAGE_SHAPE)}"
    # each pair's least bytes (as test_separable_conv's), four pairs; conv_part_bytes counts one pair's x and g
    plane = xs[0].numel() * xs[0].element_size()
    pair_bytes = (3 if part == "both" else 2) * plane
    record_conv_part(benchmark, stage_fn(impl, part, xs, w_dws, w_pws, gs), device, copy_bandwidth, x=xs[0], dy=gs[0],
                     rounds=ROUNDS, warmup=WARMUP, extra_bytes=len(STAGE_PAIRS) * pair_bytes - 2 * plane,
                     kind="separable_stage", impl=impl, part=part, geometry="sep3 sep5 dil3 dil5",
                     shape=list(STAGE_SHAPE), groups=STAGE_GROUPS)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_separable_conv(benchmark, copy_bandwidth, device, impl, part, case):
    reason = triton_skip_reason(device) if impl == "triton" else None
    if reason:
        pytest.skip(reason)
    benchmark.group = f"separable_conv {part} {geometry(case)} {shape_id(case[0])}"
    _time_part(benchmark, copy_bandwidth, device, impl, part, case, kind="separable_conv")


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("index", range(len(FORWARD_TILES)))
def test_separable_conv_tiles(benchmark, copy_bandwidth, device, part, index):
    reason = triton_skip_reason(device)
    if reason:
        pytest.skip(reason)
    tile = (FORWARD_TILES if part == "fwd" else BACKWARD_TILES)[index]
    case = CASES[0]
    benchmark.group = f"separable_conv tiles {part} {geometry(case)} {shape_id(case[0])}"
    _time_part(benchmark, copy_bandwidth, device, "triton", part, case, tile=tile, kind="separable_conv_tile")


"""Depthwise convolutions without the taps that only ever meet the zero padding.

On small feature maps a dilated or large kernel reaches past the image from every output pixel
with its outer taps: DARTS's dil_conv_5x5 (5×5, dilation 2, padding 4) on a 2×2 map meets the
image with its centre tap only, and on a 4×4 map with its inner 3×3. The search's default
preset on the embedded digits (8×8 images, two reductions: 4×4 and 2×2 maps) runs many of
these. A tap that only meets padding adds w·0 = 0 to every output and gets the gradient Σ g·0 = 0,
so the convolution with the kernel cut to its other taps (and the padding cut alike) gives the
same outputs, the same input gradient and the same gradient for the taps it keeps; the cut taps'
gradient is exactly 0 either way (autograd's slice backward writes it). oneDNN and cuDNN compute
every tap of the kernel, padding included, so the cut saves their time: on a 2-core CPU the
digits preset's search step went from 0.45 to 0.42 of the plain DARTS step's time (0.75 to 0.63 in
NCHW) and `python -m ndarts.search --fused` from 71.9 to 62.6 s (benchmarks/RESULTS.md, 2026-12-05).
The search network's batched edge convs (ndarts.edge_groups) use it on PyTorch's kernels, and the
evaluation networks' cells (ndarts.eval_model, LiveTapsConv2d: −20 % per digits epoch for a cell of
dil_conv_5x5s); at CIFAR's sizes (maps of 8×8 and up) no DARTS kernel has a dead tap, so the GPU
search step is unchanged. The per-edge ops of ndarts.operations are left as DARTS wrote them (they
are also the plain DARTS baseline of the benchmarks).

Only a symmetric cut, the same number t of taps from both ends of both axes, is made: the output
size is then unchanged ((size + 2(p − t·d) − d(k − 2t − 1) − 1) / s + 1 is the full kernel's), and
the padding stays ≥ 0. Outputs differ from the full kernel's only by the summation order of the
kept taps (rounding).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .backend import cpu_conv_forms
from .conv_geometry import conv_output_size
from .conv_geometry import pair as _pair
from .depthwise_cpu_grads import depthwise_conv2d


def _dead_border_taps(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """t: how many taps at each end of one axis of a k-tap kernel meet only the zero padding at
    every output position (the same count at both ends, the smaller of the two), for an input of
    `size` along that axis; 0 when every tap meets the image somewhere (or the output is empty)."""
    out = conv_output_size(size, k, stride, padding, dilation)
    if out < 1 or size < 1:
        return 0

    def meets(i: int) -> bool:
        return any(0 <= o * stride - padding + i * dilation < size for o in range(out))

    low = next((i for i in range(k) if meets(i)), k)
    high = next((i for i in range(k) if meets(k - 1 - i)), k)
    t = min(low, high, (k - 1) // 2)
    return min(t, padding // dilation)  # the cut padding p − t·d stays ≥ 0


# a step asks for the same few geometries again and again (torch.compile traces the plain function:
# it would ignore the cache and warn)
dead_border_taps = functools.lru_cache(maxsize=4096)(_dead_border_taps)


def live_kernel(weight: torch.Tensor, input_hw, stride, padding, dilation):
    """(weight, padding) of a convolution of an input of spatial size input_hw with its dead
    border taps cut (dead_border_taps, the same t on both axes: the smaller): a view of the weight
    and the padding (an int pair) that give the same outputs; the weight itself and the padding
    as an int pair when nothing is cut."""
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = _pair(stride), _pair(padding), _pair(dilation)
    k_h, k_w = weight.shape[-2:]
    dead = _dead_border_taps if torch.compiler.is_compiling() else dead_border_taps
    t = min(dead(int(input_hw[0]), k_h, s_h, p_h, d_h), dead(int(input_hw[1]), k_w, s_w, p_w, d_w))
    if t == 0:
        return weight, (p_h, p_w)
    return weight[:, :, t:k_h - t, t:k_w - t], (p_h - t * d_h, p_w - t * d_w)


def reads_one_phase(stride, padding, dilation) -> bool:
    """Whether a convolution reads only every d-th row and column of its input, from the first:
    stride = dilation = d > 1 and padding a multiple of d on both axes (DARTS's dil convs at
    stride 2: d = 2, padding 2 or 4). Output o, tap i then read input d·(o + i − p/d)."""
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = _pair(stride), _pair(padding), _pair(dilation)
    return s_h == d_h > 1 and s_w == d_w > 1 and p_h % d_h == 0 and p_w % d_w == 0


def conv2d_live_taps(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1,
                     groups: int = 1, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding, dilation, groups) with the kernel's dead border
    taps cut (live_kernel): the same outputs and gradients (module docstring); zero padding given
    as ints (not 'same'/'valid').

    On a CPU, a conv that reads one phase of its input (reads_one_phase) runs as the undilated
    stride-1 conv of that phase, x[..., ::d, ::d], with padding p/d: the same taps on the same
    pixels, and the same output size (ceil(H/d) + 2p/d − (k − 1) both ways), so the same outputs
    and gradients (the unread pixels' gradient an exact 0, from the slice's backward). oneDNN's
    dilated depthwise kernels are several times slower than its undilated ones, and the dilated
    conv walks the unread three quarters of the input too: a reduction cell's dil_conv (stride 2,
    fwd+bwd, 1 thread) takes 0.35–0.64 instead of 1.4–4.0 ms on the digits preset's maps
    (benchmarks/RESULTS.md, 2026-12-05, second entry). Not applied on a GPU, where it is untimed
    (benchmarks/test_bench_strided_dilated_conv.py times both there)."""
    w, p = live_kernel(weight, x.shape[-2:], stride, padding, dilation)
    if cpu_conv_forms(x) and reads_one_phase(stride, p, dilation):
        return _conv_of_the_phase(x, w, p, dilation, groups, bias)
    # an axis left with one tap reads no neighbour, so its dilation changes nothing (and oneDNN's
    # backward of a dilated 1×1 depthwise conv is 3–6× slower than the undilated one's)
    dilation = tuple(1 if k == 1 else d for k, d in zip(w.shape[-2:], _pair(dilation)))
    return _conv(x, w, bias, stride, p, dilation, groups)


def _conv(x, weight, bias, stride, padding, dilation, groups):
    """F.conv2d; a bias-free depthwise conv (groups = x's channels) by ndarts.depthwise_cpu_grads'
    depthwise_conv2d, whose gradients are forward convs where those are the faster (CPU). On a
    CPU a depthwise 1×1 conv at stride 1 without padding or channel multiplier (a dil conv cut to
    its centre tap on a 2×2 map) is the per-channel scale it is, x·w: 3–4× faster fwd+bwd than
    oneDNN's conv (benchmarks/RESULTS.md, 2026-12-05, fourth entry); the same products, each a
    single one (no sum), so the same outputs."""
    if bias is None and groups == x.shape[1] and weight.shape[1] == 1:
        if (cpu_conv_forms(x) and tuple(weight.shape) == (groups, 1, 1, 1) and x.dtype == weight.dtype
                and _pair(stride) == (1, 1) and _pair(padding) == (0, 0) and not torch.is_autocast_enabled("cpu")):
            return x * weight.view(1, groups, 1, 1)
        return depthwise_conv2d(x, weight, stride, padding, dilation)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv2d_one_phase(x: torch.Tensor, weight: torch.Tensor, padding, dilation, groups: int = 1,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, dilation, padding, dilation, groups) of a conv that reads one phase
    of its input (reads_one_phase: stride = dilation = d, padding a multiple of d), as the undilated
    stride-1 conv of x[..., ::d, ::d] with padding p/d (benchmarks/test_bench_strided_dilated_conv.py
    times the two on the device at hand)."""
    if not reads_one_phase(dilation, padding, dilation):
        raise ValueError(f"conv2d_one_phase: dilation {dilation} with padding {padding} reads more than one "
                         "phase of the input (each dilation must be > 1 and divide its padding)")
    return _conv_of_the_phase(x, weight, padding, dilation, groups, bias)


def _conv_of_the_phase(x, weight, padding, dilation, groups, bias):
    """conv2d_one_phase without its check (conv2d_live_taps has made it already)."""
    (d_h, d_w), (p_h, p_w) = _pair(dilation), _pair(padding)
    return _conv(x[:, :, ::d_h, ::d_w], weight, bias, 1, (p_h // d_h, p_w // d_w), 1, groups)


def _zero_padded(conv: torch.nn.Conv2d) -> bool:
    """Whether conv pads with zeros by a number of pixels (what conv2d_live_taps can cut)."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


class LiveTapsConv2d(torch.nn.Conv2d):
    """nn.Conv2d whose forward leaves out the dead border taps (conv2d_live_taps): the same
    parameters, state_dict and outputs. ``cut_dead_taps`` turns a network's convs into it."""

    def _conv_forward(self, input, weight, bias):
        if not _zero_padded(self):
            return super()._conv_forward(input, weight, bias)
        return conv2d_live_taps(input, weight, self.stride, self.padding, self.dilation, self.groups, bias)


def _cuttable(m: torch.nn.Module) -> bool:
    return (type(m) is torch.nn.Conv2d and _zero_padded(m) and max(m.kernel_size) > 1
            and max(_pair(m.padding)) > 0)


def cut_dead_taps(model: torch.nn.Module) -> torch.nn.Module:
    """Turns every plain zero-padded nn.Conv2d of `model` with a kernel larger than 1×1 into a
    LiveTapsConv2d, in place (the same module objects and parameters: optimizers and state_dicts
    are unaffected); returns the model."""
    for m in model.modules():
        if _cuttable(m):
            m.__class__ = LiveTapsConv2d
    return model


def depthwise_live_taps(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a bias-free, zero-padded nn.Conv2d, its dead border taps cut (conv2d_live_taps);
    any other conv (a subclass, a bias, another padding mode) is simply called."""
    if type(conv) is not torch.nn.Conv2d or conv.bias is not None or not _zero_padded(conv):
        return conv(x)
    # under autocast F.conv2d casts as nn.Conv2d's forward would (the dispatcher's autocast, not the module)
    return conv2d_live_taps(x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups)

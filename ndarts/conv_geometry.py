"""A convolution's geometry in PyTorch's conventions (per-axis arguments, output sizes) and the
layout of the tensors it reads."""
from __future__ import annotations

import torch


def pair(v) -> tuple[int, int]:
    """(h, w) of a per-axis conv argument given as an int or a pair."""
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv_output_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """A convolution's output size along one axis."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def output_positions(hw, kernel_hw, stride, padding, dilation) -> int:
    """Ho·Wo of a convolution of an (H, W) map."""
    (k_h, k_w), (s_h, s_w), (p_h, p_w), (d_h, d_w) = pair(kernel_hw), pair(stride), pair(padding), pair(dilation)
    return conv_output_size(hw[0], k_h, s_h, p_h, d_h) * conv_output_size(hw[1], k_w, s_w, p_w, d_w)


def stored_channels_last(t: torch.Tensor) -> bool:
    """Whether t is laid out channels_last (NHWC in memory) and not also contiguous (as a tensor
    with one channel or a 1×1 map is both)."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)

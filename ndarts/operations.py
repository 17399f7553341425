"""The candidate operations of the DARTS cell search space, exactly as DARTS defines them.

Module and attribute names follow DARTS's ``operations.py`` so that state_dicts written by a
classic DARTS code base load here and the other way round.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Primitive order of the classic DARTS search space; ``_ops.<i>`` keys follow this order.
DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
# The official NoisyDARTS search space: DARTS's without the zero op.
NOISYDARTS_PRIMITIVES = tuple(p for p in DARTS_PRIMITIVES if p != "none")

# NAS-Bench-201's cell space (Dong & Yang, ICLR 2020), in its order: 4 nodes, 6 edges, stride 1 only;
# its cells are searched in its fixed network (ndarts.nasbench201).
NAS_BENCH_201 = "nas-bench-201"
NAS_BENCH_201_PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

SPACES = {"darts": DARTS_PRIMITIVES, "noisydarts": NOISYDARTS_PRIMITIVES, NAS_BENCH_201: NAS_BENCH_201_PRIMITIVES}


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)

    def pre_norm(self, x):
        """relu and conv: the BatchNorm's input (a search cell runs both preprocessing BatchNorms
        in one launch)."""
        return self.op[1](self.op[0](x))

    def pre_norm_from_relu(self, r):
        """pre_norm(x) from r = relu(x) (a cell output's relu, made once for the two cells that read it)."""
        return self.op[1](r)

    @property
    def norm(self) -> nn.Module:
        return self.op[2]


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The ``none`` op. Mixed ops never call it (it contributes nothing); kept for layout."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset 1x1 stride-2 convolutions.

    DARTS shifts the second path by one pixel; on an odd input size that path would come out one
    pixel smaller, so it is padded back by one on the bottom/right. Even sizes run exactly as DARTS.
    """

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        """DARTS's op as written: relu, two offset 1×1 stride-2 convs, cat, BatchNorm (what the plain
        DARTS baseline and the evaluation network run; the search's entry points below compute the
        same function with one convolution, factorized_convs). A channels_last input on a CPU takes
        that one convolution too: torch 2.14's CPU weight gradient of a 1×1 stride-2 convolution over
        a channels_last input of 2–6 channels corrupts the heap (a segfault, or free(): invalid size)."""
        r = self.relu(x)
        if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous() \
                and x.is_contiguous(memory_format=torch.channels_last):
            return self.bn(self.convs_from_relu(r))
        return self.bn(torch.cat([self.conv_1(r), self.conv_2(shifted_by_one(r))], dim=1))

    def forward_from_relu(self, x):
        """The op applied to an input already passed through ReLU (shared per node in the search)."""
        return self.bn(self.convs_from_relu(x))

    def pre_norm(self, x):
        """relu, the two convs and their cat: the BatchNorm's input."""
        return self.convs_from_relu(self.relu(x))

    def pre_norm_from_relu(self, r):
        """pre_norm(x) from r = relu(x)."""
        return self.convs_from_relu(r)

    @property
    def norm(self) -> nn.Module:
        return self.bn

    def convs_from_relu(self, x):
        """The two offset convs of relu(x), concatenated (the BatchNorm's input)."""
        return factorized_convs(x, [self])


def shifted_by_one(x: torch.Tensor) -> torch.Tensor:
    """FactorizedReduce's second path's input: x one pixel down and right, padded back by one on
    the bottom/right for an odd size (so that its stride-2 output matches the first path's)."""
    shifted = x[:, :, 1:, 1:]
    if x.shape[2] % 2 or x.shape[3] % 2:
        shifted = F.pad(shifted, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
    return shifted


def factorized_convs(x: torch.Tensor, ops) -> torch.Tensor:
    """[N, E·C_out, ⌈H/2⌉, ⌈W/2⌉]: per FactorizedReduce op of `ops` (E of them, one input x),
    cat(conv_1(x), conv_2(shifted_by_one(x))), edge-major (FactorizedReduce.forward's convs), as ONE
    convolution.

    conv_1 reads x[2i, 2j] and conv_2 x[2i+1, 2j+1] (zero beyond an odd edge): the taps (0, 0) and
    (1, 1) of a 2×2 stride-2 window. A 2×2 stride-2 conv whose weight holds conv_1's at tap (0, 0)
    and conv_2's at (1, 1), zeros elsewhere, is the same linear map: no shifted copy of x (a
    sliced view that a convolution reads through a contiguous copy, and whose backward zero-fills
    a gradient of x's size and copies into it), no second convolution each way, no cat of the two
    paths and no sum of x's two gradients. The weights stay the ops' own parameters (state dicts
    unchanged); the zero taps get no gradient."""
    half = ops[0].conv_1.out_channels
    c = x.shape[1]
    w1 = torch.cat([op.conv_1.weight for op in ops]) if len(ops) > 1 else ops[0].conv_1.weight
    w2 = torch.cat([op.conv_2.weight for op in ops]) if len(ops) > 1 else ops[0].conv_2.weight
    taps = torch.stack([F.pad(w1, (0, 1, 0, 1)).view(len(ops), half, c, 2, 2),  # conv_1 at (0, 0)
                        F.pad(w2, (1, 0, 1, 0)).view(len(ops), half, c, 2, 2)], dim=1)  # conv_2 at (1, 1)
    if x.shape[2] % 2 or x.shape[3] % 2:  # conv_2's zero row/column past an odd edge
        x = F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
    return F.conv2d(x, taps.view(len(ops) * 2 * half, c, 2, 2), stride=2)


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    # NAS-Bench-201's ReLU-conv-BN ops
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine=affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine=affine),
}


def check_primitives(primitives) -> tuple:
    """Validates a list of primitive names and returns it as a tuple."""
    primitives = tuple(primitives)
    if not primitives:
        raise ValueError("the list of primitives is empty")
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; known: {sorted(OPS)}")
    if len(set(primitives)) != len(primitives):
        raise ValueError(f"duplicate operations in {list(primitives)}")
    return primitives


def make_search_op(primitive: str, C: int, stride: int, pool_norm: bool = True) -> nn.Module:
    """A search-time op: affine=False, and pooling followed by BatchNorm(affine=False) as in DARTS
    (pool_norm=False: the bare pool, as NAS-Bench-201's search cells have it)."""
    op = OPS[primitive](C, stride, False)
    if pool_norm and "pool" in primitive:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


class SequentialTail:
    """seq's modules after the first, applied in order. It looks them up at call time, so a module
    swapped in later (SearchBatchNorm2d) is used; an object, not a closure, so that copy.deepcopy of
    the op that keeps it points it at the copied modules, and torch.save can pickle it."""

    def __init__(self, seq: nn.Sequential):
        self.seq = seq

    def __call__(self, x):
        for i, m in enumerate(self.seq):
            if i:
                x = m(x)
        return x


def relu_tail(op: nn.Module):
    """For an op that begins with ReLU (sep/dil conv, FactorizedReduce, ReLUConvBN): a function of
    relu(x) giving op(x), so that the ReLU of a node's output is computed once for all its edges.
    None for the other ops."""
    if isinstance(op, FactorizedReduce):
        return op.forward_from_relu
    if isinstance(op, (SepConv, DilConv, ReLUConvBN)) and isinstance(op.op[0], nn.ReLU):
        return SequentialTail(op.op)
    return None

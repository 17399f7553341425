"""The DARTS evaluation networks, built from a Genotype and trained from scratch.

Structure exactly as DARTS's ``model.py`` (module names included, so DARTS state_dicts load):
stem conv3×3 with 3·C channels (CIFAR) or two downsampling stems (ImageNet, mobile setting),
``layers`` cells with reductions at layers//3 and 2·layers//3 (channels doubled), the auxiliary
tower after cell 2·layers//3, global average pooling and a linear classifier. Parameter counts
exclude the auxiliary tower (``count_parameters(model)``): DARTS_V2 at C 36, 20 cells, 10
classes has 3.35 M, the published "3.3 M".

Departures from DARTS, all for inputs of other sizes (none changes a parameter or a 32×32 /
224×224 forward):
- the auxiliary towers pool their input to 2×2. On the map size DARTS assumes (8×8 CIFAR,
  7×7 ImageNet) that is DARTS's AvgPool2d(5, stride 3 / 2) exactly; on any other size
  (e.g. 2×2 for the 8×8 digits) adaptive average pooling to 2×2 is used instead of crashing.
- NetworkImageNet's final pooling is adaptive (AvgPool2d(7) on DARTS's 7×7 map).
- no in-place ReLU on a tensor that another cell reads.
- the cells' convolutions leave out the kernel taps that meet only the zero padding on the map
  they run on (ndarts.conv_taps: the same outputs and gradients; on the digits preset's 2×2 and
  4×4 maps a dil_conv_5x5 keeps 1 and 9 of its 25 taps; none is cut on CIFAR's 8×8 maps and up).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cell_layout import reduction_cells
from .conv_taps import cut_dead_taps
from .determinism import GlobalAvgPool, adaptive_avg_pool_2x2
from .genotype import Genotype
from .operations import OPS, FactorizedReduce, Identity, ReLUConvBN

NETWORKS = ("cifar", "imagenet")


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zeroes whole samples of a branch with probability drop_prob, rescaling the rest (DARTS)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
        self.reduction = reduction
        self._steps = len(edges) // 2
        self._concat = tuple(concat)
        self.multiplier = len(concat)
        self._indices = tuple(j for _, j in edges)
        self._ops = nn.ModuleList()
        for name, j in edges:
            stride = 2 if reduction and j < 2 else 1
            self._ops.append(OPS[name](C, stride, True))
        cut_dead_taps(self._ops)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            hs = []
            for e in (2 * i, 2 * i + 1):
                op = self._ops[e]
                h = op(states[self._indices[e]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


class _AuxiliaryHead(nn.Module):
    """ReLU → pool to 2×2 → conv1×1 128 → BN → ReLU → conv2×2 768 → [BN] → ReLU → linear."""

    def __init__(self, C: int, num_classes: int, pool_stride: int, final_bn: bool):
        super().__init__()
        self.pool_stride = pool_stride
        layers = [
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if final_bn:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        h, w = x.shape[-2:]
        darts_size = all(s >= 5 and (s - 5) // self.pool_stride + 1 == 2 for s in (h, w))
        x = self.features[0](x)
        # DARTS's pooling where it yields 2×2 (its intended map size), adaptive pooling elsewhere
        x = self.features[1](x) if darts_size else adaptive_avg_pool_2x2(x)
        for layer in self.features[2:]:
            x = layer(x)
        return self.classifier(x.flatten(1))


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """DARTS's CIFAR tower, for the 8×8 map after the second reduction (AvgPool 5, stride 3)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, pool_stride=3, final_bn=True)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """DARTS's ImageNet tower, for the 7×7 map after the second reduction (AvgPool 5, stride 2).
    DARTS omits the last BatchNorm (a typo kept for consistency with its paper); so do we."""

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, pool_stride=2, final_bn=False)


class _Network(nn.Module):
    """The cell stack shared by both networks. forward returns (logits, logits_aux); logits_aux
    is None unless the auxiliary tower exists and the model is training."""

    drop_path_prob: float

    def _build_cells(self, genotype, C, layers, C_prev_prev, C_prev, reduction_prev):
        if layers < 1 or C < 1:
            raise ValueError(f"bad network size: C={C} layers={layers}")
        self._layers = layers
        self.cells = nn.ModuleList()
        C_curr, C_aux = C, None
        for i in range(layers):
            reduction = i in reduction_cells(layers)
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_aux = C_prev
        return C_prev, C_aux

    def _cells_forward(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


class NetworkCIFAR(_Network):
    """DARTS's CIFAR network. Args: C initial channels, num_classes, layers (cells), auxiliary
    (build the tower), genotype, in_channels of the images, drop_path_prob (set it per epoch)."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, drop_path_prob: float = 0.0, stem_multiplier: int = 3):
        super().__init__()
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        C_prev, C_aux = self._build_cells(genotype, C, layers, C_stem, C_stem, reduction_prev=False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s = self.stem(x)
        s1, logits_aux = self._cells_forward(s, s)
        return self.classifier(self.global_pooling(s1).flatten(1)), logits_aux


class NetworkImageNet(_Network):
    """DARTS's ImageNet network (mobile setting: C 48, 14 cells): two stems downsample 8×."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, drop_path_prob: float = 0.0):
        super().__init__()
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_prev, C_aux = self._build_cells(genotype, C, layers, C, C, reduction_prev=True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        s1, logits_aux = self._cells_forward(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1)), logits_aux


def build_network(network: str, genotype: Genotype, C: int, num_classes: int, layers: int,
                  auxiliary: bool, in_channels: int = 3, drop_path_prob: float = 0.0) -> _Network:
    """'cifar' → NetworkCIFAR, 'imagenet' → NetworkImageNet."""
    if network == "cifar":
        return NetworkCIFAR(C, num_classes, layers, auxiliary, genotype, in_channels, drop_path_prob)
    if network == "imagenet":
        return NetworkImageNet(C, num_classes, layers, auxiliary, genotype, in_channels, drop_path_prob)
    raise ValueError(f"unknown network {network!r}; choose one of {NETWORKS}")


def count_parameters(model: nn.Module, include_auxiliary: bool = False) -> int:
    """Parameters of the network; the auxiliary tower is excluded (as published counts are)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if include_auxiliary or not n.startswith("auxiliary_head."))

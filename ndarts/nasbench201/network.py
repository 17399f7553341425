"""NAS-Bench-201's search network: its fixed skeleton around searched cells of noisy mixed ops.

stem (conv 3×3 + BatchNorm) → N cells at C channels → residual block (stride 2) → N cells at 2C →
residual block → N cells at 4C → BatchNorm + ReLU → global average pool → linear; N = 5 and C = 16
in the benchmark. Every cell shares one α ([6 edges, 5 ops], ``alphas_cell``). The search ops are
affine-free, the pool has no BatchNorm after it (as the benchmark's search cells have them), and the
skip connection gets NoisyDARTS's noise like on DARTS's space (every edge has stride 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..arch_network import ArchNetwork
from ..determinism import GlobalAvgPool
from ..fused_sum import SeedBlock
from ..mixed_op import FusedMixedOp, MixedOp, NodeShare
from ..noise import NoiseConfig
from ..operations import NAS_BENCH_201_PRIMITIVES, ReLUConvBN
from .node_convs import batchable, stacked_relu_conv_bn
from .space import EDGES, NODES, derive_nb201_genotype

STAGES = 3


class Nb201SearchCell(nn.Module):
    """One cell: node j = Σ_{i<j} mixed_op_{j←i}(node i); the output is node 3. ``edges.<e>`` follow
    EDGES (the benchmark's order). share_node_ops: what the edges leaving a node compute alike,
    once per node (a NodeShare: relu(h) for all their convs, the pool, the skip noise's std(h));
    batch_node_convs: their nor_conv ops stacked (one conv and one BatchNorm per kind and node).
    The same outputs, gradients and BatchNorm statistics either way (up to rounding)."""

    def __init__(self, C: int, make_mixed_op, share_node_ops: bool = True, batch_node_convs: bool = True):
        super().__init__()
        self.edges = nn.ModuleList(make_mixed_op(C) for _ in EDGES)
        self.share_node_ops = share_node_ops
        self.batch_node_convs = batch_node_convs

    def _share(self, h, i: int, seeds):
        """The NodeShare of node i (output h); with batch_node_convs, the ReLU-conv-BN ops of all its
        edges already run together (ndarts.nasbench201.node_convs)."""
        leaving = [self.edges[e] for e, (_, src) in enumerate(EDGES) if src == i]
        share = NodeShare(h, [], seeds=seeds, backend=getattr(leaving[0], "backend", None))
        if self.batch_node_convs and len(leaving) > 1:
            for k in range(len(leaving[0]._ops)):
                ops = [edge._ops[k] for edge in leaving]
                if all(batchable(op) for op in ops):
                    for op, out in zip(ops, stacked_relu_conv_bn(share.relu, ops)):
                        share.batched[id(op)] = out
        return share

    def forward(self, x, weights, seeds=None):
        nodes = [x]
        shares = {}
        for j in range(1, NODES):
            total = None
            for e, (to, i) in enumerate(EDGES):
                if to != j:
                    continue
                op = self.edges[e]
                if self.share_node_ops:
                    if i not in shares:
                        shares[i] = self._share(nodes[i], i, seeds)
                    out = op(nodes[i], weights[e], share=shares[i])
                else:
                    out = op(nodes[i], weights[e], seeds=seeds) if isinstance(op, FusedMixedOp) else op(nodes[i], weights[e])
                total = out if total is None else total + out
            nodes.append(total)
        return nodes[-1]


class ResidualReduction(nn.Module):
    """The benchmark's stride-2 residual block between stages: ReLU-conv3×3(stride 2)-BN →
    ReLU-conv3×3-BN, plus a 2×2 average pool and a 1×1 conv on the shortcut (affine BatchNorms).
    The pool rounds up an odd size (ceil_mode), as the stride-2 conv does; even sizes are unchanged."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1, affine=True)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine=True)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True),
                                        nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class Nb201SearchNetwork(ArchNetwork):
    """Args: C channels of the first stage (16 in the benchmark), num_classes, cells_per_stage (N,
    5 in the benchmark), noise (NoiseConfig), fused (FusedMixedOp on every edge, Philox seeds drawn
    once per forward: graph-safe), in_channels of the images, arch_activation 'softmax' or
    'sigmoid', backend for the fused op, channels_last (None: on a CPU with the torch ops),
    autocast (None or torch.bfloat16: α, its softmax, the sums' accumulation and the logits stay fp32),
    share_node_ops (Nb201SearchCell; False: every edge by itself, as the benchmark's code runs them),
    batch_node_convs (with share_node_ops: the ReLU-conv-BN ops of a node's edges as one conv and one
    BatchNorm per kind, ndarts.nasbench201.node_convs)."""

    def __init__(self, C: int = 16, num_classes: int = 10, cells_per_stage: int = 5,
                 noise: NoiseConfig | None = None, fused: bool = False, in_channels: int = 3,
                 arch_activation: str = "softmax", backend: str | None = None,
                 channels_last: bool | None = None, autocast: torch.dtype | None = None,
                 share_node_ops: bool = True, batch_node_convs: bool = True):
        super().__init__()
        self._set_options(arch_activation, backend, channels_last, autocast)
        for name, value in (("C", C), ("num_classes", num_classes), ("cells_per_stage", cells_per_stage),
                            ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"bad network size: {name} must be an int >= 1, got {value!r}")
        self.primitives = NAS_BENCH_201_PRIMITIVES
        self.noise = NoiseConfig() if noise is None else noise
        self.fused = fused
        self.num_classes = num_classes

        def make_mixed_op(c):
            if fused:
                return FusedMixedOp(c, 1, self.primitives, self.noise, backend=backend, pool_norm=False)
            return MixedOp(c, 1, self.primitives, self.noise, pool_norm=False)

        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        blocks, c = [], C
        for stage in range(STAGES):
            if stage:
                blocks.append(ResidualReduction(c, 2 * c))
                c *= 2
            blocks.extend(Nb201SearchCell(c, make_mixed_op, share_node_ops, batch_node_convs)
                          for _ in range(cells_per_stage))
        self.cells = nn.ModuleList(blocks)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(c, num_classes)
        self._seed_block_size = len(EDGES) * STAGES * cells_per_stage
        self.alphas_cell = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(self.primitives)))

    # -- parameters (the rest: ArchNetwork)
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_cell]

    def arch_record(self) -> dict:
        """α's weights, for the search's metrics ([6 edges][5 ops])."""
        return {"alphas_cell": self.arch_weights(self.alphas_cell).tolist()}

    def genotype(self):
        return derive_nb201_genotype(self.arch_weights(self.alphas_cell), self.primitives)

    # -- forward
    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Nb201SearchNetwork expects images [N, C, H, W], got {got}")
        channels_last = self._use_channels_last(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weights = self.arch_weights(self.alphas_cell)  # fp32 under autocast too (computed outside it)
        with self._autocast(x):
            h = self.stem(x)
            if channels_last:  # a 1-channel image is NCHW and NHWC at once: set the layout here too
                h = h.contiguous(memory_format=torch.channels_last)
            # the Philox seeds of every fused sum of this pass, in one draw (graph-safe: drawn on the device)
            seeds = SeedBlock(x.device, self._seed_block_size) if self.fused and self.training else None
            for block in self.cells:
                h = block(h, weights, seeds) if isinstance(block, Nb201SearchCell) else block(h)
            h = self.global_pooling(self.lastact(h))
            logits = self.classifier(h.flatten(1))
        return logits.float() if self.autocast is not None else logits

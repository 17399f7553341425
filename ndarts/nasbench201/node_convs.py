"""The ReLU-conv-BN ops of all edges leaving one node of a NAS-Bench-201 cell, run together.

The edges leaving a node read the same relu(h); each of its nor_conv_1x1 (nor_conv_3x3) ops is a
conv of it followed by an affine-free BatchNorm. Those E convs are one conv with the E weights
stacked along the output channels, and the E BatchNorms one BatchNorm over the E·C channels (its
statistics are per channel): two convs and two BatchNorms per node instead of 2·E each. Each edge
reads its C channels of the result; the weights and running statistics stay the edges' own
(state_dicts unchanged), and every BatchNorm's running statistics are updated as its own forward
would update them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..operations import ReLUConvBN


def batchable(op: nn.Module) -> bool:
    """A ReLU-conv-BN search op whose BatchNorm is affine-free with an exponential running average."""
    if not isinstance(op, ReLUConvBN):
        return False
    conv, bn = op.op[1], op.op[2]
    return conv.bias is None and conv.groups == 1 and not bn.affine and bn.momentum is not None


def stacked_relu_conv_bn(r: torch.Tensor, ops: list) -> list:
    """[op.op[2](op.op[1](r)) for op in ops] (r = relu(h), every op batchable, the same conv shape),
    as one conv and one BatchNorm; returns each op's output, a channel slice of the stacked one."""
    convs, bns = [op.op[1] for op in ops], [op.op[2] for op in ops]
    c = convs[0].out_channels
    y = F.conv2d(r, torch.cat([conv.weight for conv in convs]), None, convs[0].stride, convs[0].padding,
                 convs[0].dilation)
    bn = bns[0]
    training = bn.training or not bn.track_running_stats
    if bn.track_running_stats:
        mean, var = torch.cat([b.running_mean for b in bns]), torch.cat([b.running_var for b in bns])
    else:
        mean = var = None
    y = F.batch_norm(y, mean, var, None, None, training, bn.momentum, bn.eps)
    if training and bn.track_running_stats:
        with torch.no_grad():  # the moving averages F.batch_norm updated in the stacked copies, back to each
            for b, m, v in zip(bns, mean.split(c), var.split(c)):
                b.running_mean.copy_(m)
                b.running_var.copy_(v)
                b.num_batches_tracked.add_(1)
    return list(y.split(c, dim=1))

"""Size of the evaluation network a genotype gives: parameters and multiply-adds.

Multiply-adds are counted with forward hooks on every Conv2d and Linear for one image, in eval
mode (so without the auxiliary tower and drop-path):
    conv:   output elements · (in_channels / groups) · kh · kw
    linear: in_features · out_features
BatchNorm, pooling, ReLU and additions are not counted, as in DARTS-family papers. Parameters
exclude the auxiliary tower (published counts do).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import Genotype


def count_madds(model: nn.Module, input_shape) -> int:
    """Multiply-adds of one forward of `model` on zeros of `input_shape` (eval mode)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, output):
        nonlocal total
        kh, kw = m.kernel_size
        total += output.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inputs, output):
        nonlocal total
        total += m.in_features * m.out_features * (output.numel() // m.out_features)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def network_stats(genotype: Genotype, network: str = "cifar", C: int = 36, layers: int = 20,
                  num_classes: int = 10, image_size: int = 32, in_channels: int = 3) -> dict:
    """Params (M, auxiliary tower excluded) and multiply-adds (M) of the evaluation network;
    defaults are the CIFAR-10 evaluation network of DARTS (C 36, 20 cells, 32×32)."""
    from ..eval_model import build_network, count_parameters

    model = build_network(network, genotype, C, num_classes, layers, auxiliary=True, in_channels=in_channels)
    params = count_parameters(model)
    madds = count_madds(model, (1, in_channels, image_size, image_size))
    return {
        "network": network, "init_channels": C, "layers": layers, "num_classes": num_classes,
        "image_size": image_size, "params": params, "params_m": params / 1e6,
        "params_with_auxiliary_m": count_parameters(model, include_auxiliary=True) / 1e6,
        "madds": madds, "madds_m": madds / 1e6,
    }

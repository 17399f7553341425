"""What every search network shares, whatever its cell space: its architecture weights (α, the
parameters named ``alphas_*``) apart from the weights, their activation, the noise scale of its
mixed ops, its memory layout and autocast (ndarts.search_model: DARTS's space;
ndarts.nasbench201.network: NAS-Bench-201's)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backend import resolve_backend
from .mixed_op import MixedOp

ARCH_ACTIVATIONS = ("softmax", "sigmoid")


class ArchNetwork(nn.Module):
    """Subclasses set ``arch_activation``, ``channels_last`` (None: auto), ``autocast`` (None or
    torch.bfloat16) and ``backend`` with _set_options, and define arch_parameters() (the α tensors, in a fixed order),
    arch_record() (α's weights for the search's metrics) and genotype()."""

    arch_activation = "softmax"
    channels_last: bool | None = None
    autocast: torch.dtype | None = None
    backend: str | None = None

    def _set_options(self, arch_activation: str, backend: str | None, channels_last: bool | None,
                     autocast: torch.dtype | None) -> None:
        """Checks and sets the options every search network takes (called by the subclasses' __init__)."""
        if arch_activation not in ARCH_ACTIVATIONS:
            raise ValueError(f"unknown arch activation {arch_activation!r}; choose one of {ARCH_ACTIVATIONS}")
        if autocast not in (None, torch.bfloat16):
            raise ValueError(f"autocast takes torch.bfloat16 or None, got {autocast} (float16 would need "
                             "loss scaling, which the search loop does not do)")
        self.arch_activation = arch_activation
        self.backend = backend
        self.channels_last = channels_last
        self.autocast = autocast

    # -- parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def named_weight_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("alphas_")]

    def arch_weights(self, alphas: torch.Tensor) -> torch.Tensor:
        if self.arch_activation == "sigmoid":
            return torch.sigmoid(alphas)
        return F.softmax(alphas, dim=-1)

    # -- noise
    def set_noise_scale(self, scale: float) -> None:
        """The decay scale for every mixed op (cosine decay of the noise): with decay on, a fill of
        each op's device copy, which the noise reads when it runs."""
        for m in self.modules():
            if isinstance(m, MixedOp):
                m.noise_scale = float(scale)

    @property
    def noise_scale_is_read_on_device(self) -> bool:
        """Whether every mixed op's noise reads its scale from the device (or the scale never
        changes: no decay), so that a captured step needs no new capture for a new scale."""
        ops = [m for m in self.modules() if isinstance(m, MixedOp)]
        return all(not (m.noise.decay and m.noise.enabled) or "noise_scale_device" in m._buffers for m in ops)

    # -- layout and precision
    def _use_channels_last(self, x) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        # auto: on a CPU running the torch ops (oneDNN's convolutions are 1.3–3× faster in NHWC at
        # the search shapes); NCHW wherever the Triton kernels run (they take NCHW)
        return x.device.type == "cpu" and resolve_backend(self.backend, x.device) == "torch"

    def _autocast(self, x):
        if self.autocast is None:
            return contextlib.nullcontext()
        # no weight-cast cache: the cached casts would outlive a captured CUDA graph's replays
        return torch.autocast(x.device.type, dtype=self.autocast, cache_enabled=False)

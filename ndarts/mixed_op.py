"""Mixed ops: the weighted sum of all candidate operations on one edge of a DARTS cell.

``MixedOp`` is the reference, in plain PyTorch autograd. ``FusedMixedOp`` computes the same sum
with the fused op (Triton kernels on CUDA, the reference elsewhere). Both keep the classic DARTS
MixedOp's constructor, ``forward(x, weights)`` and state_dict layout (``_ops.<i>`` in primitive
order, pooling ops wrapped with their BatchNorm), so one replaces the other in a DARTS code base
and checkpoints load both ways.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .fused_sum import noisy_mixed_sum
from .noise import NoiseConfig, add_noise
from .operations import DARTS_PRIMITIVES, check_primitives, make_search_op, relu_tail

SKIP = "skip_connect"


class MixedOp(nn.Module):
    """Reference noisy mixed op.

    Args:
        C: channels. stride: 1 (normal edge) or 2 (reduction edge).
        primitives: operation names, in order (default: DARTS's 8, for drop-in use).
        noise: NoiseConfig for the skip connection (default: Gaussian, λ = 0.2). Noise is drawn
            only in training mode.
    ``noise_scale`` (attribute) multiplies the noise: the search sets it for cosine decay.
    """

    def __init__(self, C: int, stride: int, primitives=DARTS_PRIMITIVES, noise: NoiseConfig | None = None):
        super().__init__()
        self.primitives = check_primitives(primitives)
        self.stride = stride
        self.noise = NoiseConfig() if noise is None else noise
        self.noise_scale = 1.0
        self._ops = nn.ModuleList(make_search_op(p, C, stride) for p in self.primitives)
        # `none` contributes nothing: never computed, but its weight stays in the softmax.
        self._live = [i for i, p in enumerate(self.primitives) if p != "none"]
        self._skip = self.primitives.index(SKIP) if SKIP in self.primitives else None
        # ops that begin with ReLU can take a shared relu(x) (SearchCell computes it once per node)
        self._tails = tuple(relu_tail(op) for op in self._ops)

    @property
    def noisy(self) -> bool:
        return self.training and self.noise.enabled and self._skip is not None

    def _noise_on_input(self) -> bool:
        return self.stride != 1 and self.noise.reduction_position == "input"

    def _check_weights(self, weights):
        if weights.dim() != 1 or weights.shape[0] != len(self.primitives):
            raise ValueError(f"MixedOp: weights must have shape ({len(self.primitives)},), one per primitive "
                             f"{list(self.primitives)}; got {tuple(weights.shape)}")

    def _run(self, i: int, x, x_relu):
        tail = self._tails[i]
        if x_relu is not None and tail is not None:
            return tail(x_relu)
        return self._ops[i](x)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, x_relu: torch.Tensor | None = None) -> torch.Tensor:
        """x_relu: optionally relu(x), already computed (shared by all edges leaving a node)."""
        self._check_weights(weights)
        if not self._live:
            return self._ops[0](x)
        out = None
        for i in self._live:
            op = self._ops[i]
            if i == self._skip and self.noisy:
                if self._noise_on_input():
                    o = op(add_noise(x, self.noise, self.noise_scale))
                else:
                    o = add_noise(self._run(i, x, x_relu), self.noise, self.noise_scale)
            else:
                o = self._run(i, x, x_relu)
            term = weights[i] * o
            out = term if out is None else out + term
        return out


class FusedMixedOp(MixedOp):
    """The same mixed op, its weighted sum + skip noise fused into one op (forward and backward).

    backend: 'auto' (Triton on CUDA, reference elsewhere), 'triton' or 'torch'; None reads the
    NDARTS_BACKEND environment variable (default auto).
    """

    def __init__(self, C: int, stride: int, primitives=DARTS_PRIMITIVES, noise: NoiseConfig | None = None,
                 backend: str | None = None):
        super().__init__(C, stride, primitives, noise)
        self.backend = backend
        self.register_buffer("_live_index", torch.tensor(self._live, dtype=torch.long), persistent=False)
        self._all_live = len(self._live) == len(self.primitives)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, x_relu: torch.Tensor | None = None) -> torch.Tensor:
        self._check_weights(weights)
        if not self._live:
            return self._ops[0](x)
        noisy = self.noisy
        operands = []
        skip_position = None
        for pos, i in enumerate(self._live):
            op = self._ops[i]
            if i == self._skip:
                skip_position = pos
                if noisy and self._noise_on_input():
                    # the paper's variant: noise on FactorizedReduce's input, via the same op (one operand, weight 1)
                    x_noisy = noisy_mixed_sum([x], x.new_ones((1,), dtype=torch.float32), 0, self.noise,
                                              scale=self.noise_scale, backend=self.backend)
                    operands.append(op(x_noisy))
                    skip_position = None
                    continue
            operands.append(self._run(i, x, x_relu))
        live_weights = weights if self._all_live else weights.index_select(0, self._live_index)
        dtype = operands[0].dtype
        for o in operands[1:]:
            dtype = torch.promote_types(dtype, o.dtype)
        if any(o.dtype != dtype for o in operands):
            # ops of one edge can disagree under autocast (a BatchNorm output in fp32 beside a bf16
            # pool): promote as the reference's `w * o` sum would, instead of refusing
            operands = [o.to(dtype) for o in operands]
        return noisy_mixed_sum(operands, live_weights, skip_position, self.noise, scale=self.noise_scale,
                               training=noisy, backend=self.backend)

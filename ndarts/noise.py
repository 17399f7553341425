"""The noise NoisyDARTS injects into the skip connection, and its reference implementation.

Additive (the paper's default):       o + x̃,  x̃ = s·(μ + λ·std(o)·ε)
Multiplicative (ablation):            o·(μ + s·λ·ε), σ = λ absolute (not scaled by std), μ = 1
ε ~ N(0, 1), or U(−√3, √3) (same variance) for the uniform variant; s is the decay scale
(1 unless cosine decay is on). std is the unbiased std over all elements of o, detached: the
noise is a constant for autograd.

The scale s is a number, or a one-element float32 tensor on the operands' device (a decay scale
kept on the device: the kernels read it when they run, so a CUDA graph captured once follows the
value each epoch fills in; MixedOp's noise scale with decay on).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch

NOISE_KINDS = ("gaussian", "uniform", "none")
MIXTURES = ("additive", "multiplicative")
POSITIONS = ("output", "input")
SQRT3 = math.sqrt(3.0)

# Integer codes shared with the fused kernels.
KIND_CODE = {"none": 0, "gaussian": 1, "uniform": 2}


@dataclass(frozen=True)
class NoiseConfig:
    """What noise the skip connection gets during search.

    kind: ``gaussian`` (paper), ``uniform`` (same variance) or ``none`` (plain DARTS).
    lam: λ, the noise strength relative to std(o) (additive) or absolute (multiplicative).
    mean: μ; ``None`` means 0 for additive and 1 for multiplicative noise.
    mixture: ``additive`` or ``multiplicative``.
    decay: cosine decay of the noise over the search, s = (1 + cos(π·epoch/epochs)) / 2.
    reduction_position: on stride-2 edges, ``output`` adds the noise to FactorizedReduce's
        output (official code), ``input`` to its input (the paper's formula).
    """

    kind: str = "gaussian"
    lam: float = 0.2
    mean: float | None = None
    mixture: str = "additive"
    decay: bool = False
    reduction_position: str = "output"

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {self.kind!r}; choose one of {NOISE_KINDS}")
        if self.mixture not in MIXTURES:
            raise ValueError(f"unknown noise mixture {self.mixture!r}; choose one of {MIXTURES}")
        if self.reduction_position not in POSITIONS:
            raise ValueError(
                f"unknown reduction_position {self.reduction_position!r}; choose one of {POSITIONS}"
            )
        if not (_is_real(self.lam) and math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"noise lambda must be a finite number >= 0, got {self.lam!r}")
        if self.mean is not None and not (_is_real(self.mean) and math.isfinite(self.mean)):
            raise ValueError(f"noise mean must be a finite number or None, got {self.mean!r}")
        # plain floats (a NumPy λ from a sweep's grid too): they go into JSON configs and checkpoints
        object.__setattr__(self, "lam", float(self.lam))
        if self.mean is not None:
            object.__setattr__(self, "mean", float(self.mean))

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def effective_mean(self) -> float:
        if self.mean is not None:
            return float(self.mean)
        return 1.0 if self.mixture == "multiplicative" else 0.0

    def scale_at(self, epoch: int, epochs: int) -> float:
        """The decay scale s for an epoch (0-based); 1 when decay is off."""
        if not self.decay or epochs <= 0:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))

    def kernel_params(self, scale: float = 1.0) -> tuple[int, bool, float, float]:
        """(kind code, multiplicative, λ_eff, μ_eff) as the fused op takes them."""
        mult = self.mixture == "multiplicative"
        mean = self.effective_mean if mult else scale * self.effective_mean
        return KIND_CODE[self.kind], mult, scale * float(self.lam), mean

    def to_dict(self) -> dict:
        return asdict(self)


def _is_real(value) -> bool:
    """A real number: int, float or NumPy's, not a bool, a string or a tensor."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


NO_NOISE = NoiseConfig(kind="none")


def sample_eps(shape, kind: str, *, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ε of unit variance: standard normal, or uniform on (−√3, √3). Drawn in fp32."""
    if kind == "gaussian":
        return torch.randn(shape, device=like.device, dtype=torch.float32, generator=generator)
    if kind == "uniform":
        u = torch.rand(shape, device=like.device, dtype=torch.float32, generator=generator)
        return (2.0 * u - 1.0) * SQRT3
    raise ValueError(f"no ε for noise kind {kind!r}")


def apply_noise_with_eps(o: torch.Tensor, eps: torch.Tensor, multiplicative: bool, lam: float, mean: float,
                         std: torch.Tensor | None = None) -> torch.Tensor:
    """The noisy operand for a given ε; the noise (std and ε) is detached from autograd.

    lam and mean are the effective values (decay applied, see NoiseConfig.kernel_params): numbers,
    or 0-dim tensors (scaled_params).
    std: std(o) when the caller has it already (``operand_std``); None computes it here.
    """
    eps = eps.to(torch.float32)
    if multiplicative:
        factor = (mean + lam * eps).to(o.dtype)
        return o * factor
    if std is None:
        std = operand_std(o)
    noise = (mean + lam * std * eps).to(o.dtype)
    return o + noise


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 operands, float64 for float64 ones (never less precise than the data)."""
    return torch.promote_types(dtype, torch.float32)


def operand_std(o: torch.Tensor) -> torch.Tensor:
    """The std the additive noise scales with: unbiased, over all elements, detached, in the
    accumulation dtype."""
    return o.detach().to(accumulation_dtype(o.dtype)).std()


def split_scale(scale, device) -> tuple[float, torch.Tensor | None]:
    """(host scale, device scale) of a noise scale s: a number is applied on the host
    (NoiseConfig.kernel_params(s), device scale None); a tensor is checked (one float32 element on
    `device`) and returned as the device scale, the host scale then 1."""
    if not isinstance(scale, torch.Tensor):
        return float(scale), None
    if scale.numel() != 1 or scale.dtype != torch.float32:
        raise ValueError(f"noise scale: a tensor scale must hold one float32 value, got {scale.dtype} "
                         f"{tuple(scale.shape)}")
    if scale.device != torch.device(device):
        raise ValueError(f"noise scale: the scale tensor is on {scale.device}, the operands on {device}")
    return 1.0, scale


def scaled_params(lam, mean, multiplicative: bool, scale: torch.Tensor | None):
    """(λ_eff, μ_eff) for the reference math: lam and mean with a device scale applied as
    NoiseConfig.kernel_params applies a number (λ·s, and μ·s for additive noise), as 0-dim tensors
    (no host read: capturable); unchanged without one."""
    if scale is None:
        return lam, mean
    s = scale.reshape(())
    return lam * s, mean if multiplicative else mean * s


def add_noise(o: torch.Tensor, cfg: NoiseConfig, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The reference noisy operand, ε drawn from torch's global RNG (``torch.manual_seed``)."""
    if not cfg.enabled:
        return o
    host, device_scale = split_scale(scale, o.device)
    _, mult, lam, mean = cfg.kernel_params(host)
    lam, mean = scaled_params(lam, mean, mult, device_scale)
    eps = sample_eps(o.shape, cfg.kind, like=o)
    return apply_noise_with_eps(o, eps, mult, lam, mean)

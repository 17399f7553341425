"""ndarts: NoisyDARTS with fused Triton kernels."""
from .fused_sum import noisy_mixed_sum
from .mixed_op import FusedMixedOp, MixedOp
from .noise import NoiseConfig
from .operations import DARTS_PRIMITIVES, NAS_BENCH_201_PRIMITIVES, NOISYDARTS_PRIMITIVES, OPS

__all__ = [
    "MixedOp",
    "FusedMixedOp",
    "NoiseConfig",
    "noisy_mixed_sum",
    "DARTS_PRIMITIVES",
    "NOISYDARTS_PRIMITIVES",
    "NAS_BENCH_201_PRIMITIVES",
    "OPS",
]
__version__ = "0.1.0"

"""Triton kernels of ndarts, installed under the import name ``ndarts_kernels``.

The folder is ``kernels/`` (the project's layout); it installs as ``ndarts_kernels`` so that it
never shadows or is shadowed by the unrelated PyPI package called ``kernels``.

Triton decides at definition time whether a kernel runs compiled or in its CPU interpreter:
``TRITON_INTERPRET=1`` must be set before this package is first imported. INTERPRETED records
which mode the kernels here were defined in.
"""
import os

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERPRETED:
    from .interpreter import (
        memoize_numpy_dtypes,
        patch_language_once_per_launch,
        round_bf16_to_nearest_even,
        skip_discarded_overflow_checks,
    )

    skip_discarded_overflow_checks()  # the interpreter's overflow checks are computed, then dropped
    patch_language_once_per_launch()  # not again at each call of a @triton.jit helper
    memoize_numpy_dtypes()  # not a new table of numpy dtypes at each op
    round_bf16_to_nearest_even()  # fp32 → bf16 rounded as a GPU does, not truncated

from .batch_norm import BatchNormGrad, batch_norm_backward, batch_norm_forward, batch_norms_backward, batch_norms_forward  # noqa: E402
from .depthwise_conv import depthwise_conv_backward, depthwise_conv_forward  # noqa: E402
from .noisy_group_sum import noisy_group_sum_backward, noisy_group_sum_forward  # noqa: E402
from .noisy_mixed_sum import (  # noqa: E402
    MAX_OPERANDS,
    noisy_mixed_sum_backward,
    noisy_mixed_sum_forward,
    skip_std,
    skip_stds,
    unit_noise,
)
from .pointwise_conv import pointwise_conv_backward, pointwise_conv_forward  # noqa: E402
from .pools import pools_3x3_backward, pools_3x3_forward  # noqa: E402
from .relu_repeat import relu_repeat_backward, relu_repeat_forward  # noqa: E402
from .separable_conv import (  # noqa: E402
    separable_conv_backward,
    separable_conv_forward,
    separable_pairs_backward,
    separable_pairs_forward,
)
from .tensor_sum import tensor_sum  # noqa: E402

__all__ = [
    "INTERPRETED",
    "BatchNormGrad",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norms_forward",
    "batch_norms_backward",
    "depthwise_conv_forward",
    "depthwise_conv_backward",
    "MAX_OPERANDS",
    "noisy_group_sum_forward",
    "noisy_group_sum_backward",
    "noisy_mixed_sum_forward",
    "noisy_mixed_sum_backward",
    "pointwise_conv_forward",
    "pointwise_conv_backward",
    "pools_3x3_forward",
    "pools_3x3_backward",
    "relu_repeat_forward",
    "relu_repeat_backward",
    "separable_conv_forward",
    "separable_conv_backward",
    "separable_pairs_forward",
    "separable_pairs_backward",
    "skip_std",
    "skip_stds",
    "tensor_sum",
    "unit_noise",
]

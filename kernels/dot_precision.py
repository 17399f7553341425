"""The precision of the fused convolutions' fp32 products (``tl.dot``): the one PyTorch's own
convolutions use.

On an H100/H200 PyTorch runs fp32 convolutions through cuDNN with TF32 tensor cores by default
(``torch.backends.cudnn.conv.fp32_precision == "tf32"``, the legacy flag
``torch.backends.cudnn.allow_tf32 = True``): the inputs of each product are rounded to 10 mantissa
bits, the sums kept in fp32. The Triton kernels that replace those convolutions
(kernels/separable_conv.py, kernels/pointwise_conv.py) follow the same setting, so that a step
with them and a step with cuDNN's compute the same kind of numbers and are timed on equal terms;
with TF32 turned off (``torch.backends.cudnn.conv.fp32_precision = "ieee"``, or the legacy flag
False) their products are plain fp32 FMA ("ieee"), as cuDNN's then are. The choice is read at
each launch (a CUDA graph keeps the one of its capture). Products of bf16/fp16 operands are not
affected. Triton's CPU interpreter computes every product in fp32 whichever is asked.
"""
from __future__ import annotations

import torch


def conv_dot_precision() -> str:
    """"tf32" where PyTorch lets cuDNN convolutions round fp32 inputs to TF32, else "ieee"."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # "tf32", "ieee", or "none" (not set at any level: no TF32); inherited settings resolved
        return "tf32" if conv.fp32_precision == "tf32" else "ieee"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"  # torch without the fp32_precision API

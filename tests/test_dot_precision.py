"""The fused convolutions' products follow PyTorch's TF32 setting for convolutions (kernels/dot_precision.py).

Triton's interpreter computes every product in fp32, so what the CPU can check is the choice
itself: the setting each launch passes to its kernels (here), and that the two choices compile to
tensor-core and to FMA instructions for sm_90 (tests/test_gpu_compile.py compiles both,
tests/test_kernel_resources.py counts the step's tensor-core instructions).
"""
import contextlib
from unittest import mock

import pytest
import torch

import ndarts_kernels
from ndarts_kernels.dot_precision import conv_dot_precision


@contextlib.contextmanager
def _restored_precisions():
    backends = (torch.backends, torch.backends.cudnn, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    saved = [b.fp32_precision for b in backends]
    try:
        yield
    finally:
        for b, value in zip(backends, saved):
            b.fp32_precision = value


def test_follows_pytorchs_conv_setting():
    with _restored_precisions():
        assert conv_dot_precision() == "tf32"  # PyTorch's default for cuDNN convolutions
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        assert conv_dot_precision() == "ieee"
        torch.backends.cudnn.conv.fp32_precision = "none"  # inherited: cuDNN's, then the global setting
        torch.backends.cudnn.fp32_precision = "tf32"
        assert conv_dot_precision() == "tf32"
        torch.backends.cudnn.fp32_precision = "ieee"
        assert conv_dot_precision() == "ieee"
    with _restored_precisions():
        torch.backends.cudnn.allow_tf32 = False  # the legacy flag
        assert conv_dot_precision() == "ieee"
        torch.backends.cudnn.allow_tf32 = True
        assert conv_dot_precision() == "tf32"


def _launched_precisions(call) -> set:
    """The DOT_PRECISION of each kernel launch `call` makes (the kernels still run)."""
    from triton.runtime import interpreter

    seen = set()
    run = interpreter.GridExecutor.__call__

    def record(executor, *args, **kwargs):
        if "DOT_PRECISION" in kwargs:
            seen.add((executor.fn.__name__, kwargs["DOT_PRECISION"]))
        return run(executor, *args, **kwargs)

    with mock.patch.object(interpreter.GridExecutor, "__call__", record):
        call()
    return seen


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_every_conv_launch_passes_the_setting(fresh_seed, precision):
    x = torch.randn(2, 32, 5, 6)
    w_pw, w_dw = torch.randn(32, 16, 1, 1), torch.randn(32, 1, 3, 3)

    def convs():
        y = ndarts_kernels.pointwise_conv_forward(x, w_pw)
        ndarts_kernels.pointwise_conv_backward(y, x, w_pw)
        z = ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1)
        ndarts_kernels.separable_conv_backward(z, x, w_dw, w_pw, 1, 1, 1)

    with _restored_precisions():
        torch.backends.cudnn.conv.fp32_precision = precision
        seen = _launched_precisions(convs)
    assert seen == {(k, precision) for k in ("_pw_conv_kernel", "_pw_conv_wgrad_kernel", "_sep_conv_fwd_kernel",
                                             "_sep_conv_bwd_kernel")}

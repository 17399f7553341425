"""The interpreter runs without the overflow checks it would compute and drop (kernels/interpreter.py):
every value the kernels compute is the same with them and without."""
import dataclasses

import pytest
import torch

import ndarts_kernels
from ndarts_kernels.interpreter import skip_discarded_overflow_checks

interpreter = pytest.importorskip("triton.runtime.interpreter")


@pytest.fixture
def options():
    """The interpreter's options, restored after the test."""
    saved = interpreter.interpreter_builder.options
    yield saved
    interpreter.interpreter_builder.options = saved


def _kernels_outputs(seed):
    """A noisy mixed sum forward+backward (Philox noise, std reduction) and a depthwise conv with
    stride, padding and dilation: integer index arithmetic of every kind, on odd shapes."""
    g = torch.Generator().manual_seed(seed)
    ops = [torch.randn(3, 5, 7, 6, generator=g) for _ in range(4)]
    w = torch.rand(4, generator=g)
    philox = torch.tensor([seed % 1000], dtype=torch.int64)
    y, std = ndarts_kernels.noisy_mixed_sum_forward(ops, w, philox, 2, 1, False, 0.2, 0.0)
    grads, dw = ndarts_kernels.noisy_mixed_sum_backward(torch.randn(y.shape, generator=g), ops, w, philox, std,
                                                        2, 1, False, 0.2, 0.0)
    x, k = torch.randn(2, 6, 9, 7, generator=g), torch.randn(6, 1, 3, 3, generator=g)
    conv = ndarts_kernels.depthwise_conv_forward(x, k, 2, 2, 2)
    return [y, std, *grads, dw, conv]


def test_values_are_those_of_the_interpreter_with_its_checks(options, fresh_seed):
    assert ndarts_kernels.INTERPRETED
    assert options.sanitize_overflow is False and options.debug is False  # set when the kernels were imported
    fast = _kernels_outputs(fresh_seed)
    interpreter.interpreter_builder.options = dataclasses.replace(options, sanitize_overflow=True)
    checked = _kernels_outputs(fresh_seed)
    assert all(torch.equal(a, b) for a, b in zip(fast, checked))
    assert skip_discarded_overflow_checks() and interpreter.interpreter_builder.options.sanitize_overflow is False


def test_checks_that_would_assert_are_kept(options):
    """With debug on, the interpreter's overflow checks raise: then they are left on."""
    interpreter.interpreter_builder.options = dataclasses.replace(options, sanitize_overflow=True, debug=True)
    assert not skip_discarded_overflow_checks()
    assert interpreter.interpreter_builder.options.sanitize_overflow is True

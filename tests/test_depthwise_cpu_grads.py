"""A depthwise conv's gradients as forward convolutions (ndarts.depthwise_cpu_grads) equal PyTorch's."""
import itertools
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import ndarts.depthwise_cpu_grads as dcg
from ndarts.depthwise_cpu_grads import (depthwise_conv2d, input_grad_by_forward_conv, uses_forward_input_grad,
                                        uses_forward_weight_grad, weight_grad_by_forward_conv)

# (H, W, k_h, k_w, stride, padding, dilation, multiplier): odd and non-square maps and kernels, the
# DARTS sep/dil conv geometries, asymmetric padding and dilation, maps smaller than the kernel
GEOMETRIES = [
    (5, 7, 3, 3, 1, 1, 1, 1), (4, 4, 5, 5, 1, 2, 1, 1), (2, 2, 3, 3, 1, 1, 1, 1), (6, 5, 3, 3, 1, 2, 2, 1),
    (9, 8, 5, 5, 1, 4, 2, 1), (7, 7, 3, 3, 2, 1, 1, 1), (8, 9, 5, 5, 2, 2, 1, 2), (5, 6, 3, 3, 1, 2, 2, 3),
    (3, 4, 2, 3, (1, 2), (0, 1), 1, 1), (6, 3, 3, 1, 1, (2, 0), (2, 1), 1), (11, 10, 3, 3, 1, 3, 3, 2),
    (4, 5, 1, 1, 1, 0, 1, 1), (2, 3, 5, 5, 1, 2, 1, 1), (8, 8, 3, 3, 1, 1, 1, 4),
]


def _aten_grads(g, x, w, stride, padding, dilation):
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return torch.ops.aten.convolution_backward(g, x, w, None, pair(stride), pair(padding), pair(dilation), False,
                                               [0, 0], x.shape[1], [True, True, False])[:2]


def _inputs(geometry, dtype, channels_last, gen, n=3, c=4):
    h, w, k_h, k_w, stride, padding, dilation, m = geometry
    x = torch.randn(n, c, h, w, dtype=dtype, generator=gen)
    weight = torch.randn(c * m, 1, k_h, k_w, dtype=dtype, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, weight, None, stride, padding, dilation, c)
    g = torch.randn(y.shape, dtype=dtype, generator=gen)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    return x, weight, g


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 3e-5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_form_gradients_equal_pytorchs(dtype, tol, channels_last, fresh_seed):
    """Both forward forms against PyTorch's convolution backward, at every geometry (the input
    gradient's at stride 1 without a channel multiplier, where it applies)."""
    gen = torch.Generator().manual_seed(fresh_seed)
    for geometry in GEOMETRIES:
        x, w, g = _inputs(geometry, dtype, channels_last, gen)
        stride, padding, dilation = geometry[4:7]
        want_x, want_w = _aten_grads(g, x, w, stride, padding, dilation)
        got_w = weight_grad_by_forward_conv(g, x, w.shape[-2:], stride, padding, dilation)
        assert got_w.shape == want_w.shape and got_w.dtype == dtype
        torch.testing.assert_close(got_w, want_w, atol=tol * want_w.abs().max().item(), rtol=tol, msg=str(geometry))
        if stride in (1, (1, 1)) and geometry[7] == 1:
            got_x = input_grad_by_forward_conv(g, w, padding, dilation)
            assert got_x.shape == x.shape
            torch.testing.assert_close(got_x, want_x, atol=tol * want_x.abs().max().item(), rtol=tol,
                                       msg=str(geometry))


@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv2d_is_conv2d_with_the_same_gradients(channels_last, fresh_seed):
    """depthwise_conv2d: F.conv2d's outputs exactly, its gradients to float64 rounding, through the
    Function where a rule holds (and F.conv2d itself elsewhere); an autograd.grad that asks for x
    alone never computes the weight gradient (an α step)."""
    gen = torch.Generator().manual_seed(fresh_seed)
    through_function = 0
    for geometry in GEOMETRIES:
        x, w, g = _inputs(geometry, torch.float64, channels_last, gen)
        stride, padding, dilation = geometry[4:7]
        x.requires_grad_(), w.requires_grad_()
        y = depthwise_conv2d(x, w, stride, padding, dilation)
        want = F.conv2d(x, w, None, stride, padding, dilation, x.shape[1])
        assert torch.equal(y, want)
        ruled = uses_forward_input_grad(x, w, stride, padding, dilation) or uses_forward_weight_grad(
            x, w, stride, padding, dilation)
        assert (type(y.grad_fn).__name__ == "_DepthwiseConvBackward") == ruled, geometry
        through_function += ruled
        want_grads = torch.autograd.grad(want, (x, w), g)
        for a, b in zip(torch.autograd.grad(y, (x, w), g), want_grads):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        with mock.patch.object(dcg, "depthwise_weight_grad", side_effect=AssertionError("a weight gradient")):
            dx, = torch.autograd.grad(depthwise_conv2d(x, w, stride, padding, dilation), (x,), g)
        torch.testing.assert_close(dx, want_grads[0], atol=1e-12, rtol=1e-12)
    assert through_function >= len(GEOMETRIES) // 2


def test_double_backward_through_the_forward_forms():
    """The backward is differentiable (ndarts.hessian's exact Hessian-vector products): gradgradcheck
    in float64 on a dilated and a 5×5 geometry, with and without a channel multiplier."""
    gen = torch.Generator().manual_seed(0)
    for h, w, k, stride, padding, dilation, m in ((4, 5, 3, 1, 2, 2, 1), (4, 4, 5, 1, 2, 1, 1), (4, 4, 3, 1, 2, 2, 2)):
        x = torch.randn(2, 2, h, w, dtype=torch.float64, generator=gen).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(2 * m, 1, k, k, dtype=torch.float64, generator=gen)
        x.requires_grad_(), weight.requires_grad_()
        assert uses_forward_weight_grad(x, weight, stride, padding, dilation)
        fn = lambda a, b: depthwise_conv2d(a, b, stride, padding, dilation)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, weight))
        assert torch.autograd.gradgradcheck(fn, (x, weight))


def _x(h, w, c=8, dtype=torch.float32, nhwc=True, device="cpu"):
    x = torch.empty(2, c, h, w, dtype=dtype, device=device)
    return x.contiguous(memory_format=torch.channels_last) if nhwc and device == "cpu" else x


def _w(c, k, m=1, dtype=torch.float32):
    return torch.empty(c * m, 1, k, k, dtype=dtype)


def test_the_rules_take_the_forward_forms_where_they_were_measured_faster():
    """The rules of benchmarks/RESULTS.md 2026-12-05 (fourth entry), case by case."""
    # input gradient: stride 1, no multiplier, padding ≤ d·(k − 1); CPU fp32/fp64 only
    assert uses_forward_input_grad(_x(16, 16), _w(8, 3), 1, 1, 1) and uses_forward_input_grad(_x(4, 4), _w(8, 3), 1, 2, 2)
    assert uses_forward_input_grad(_x(4, 4, dtype=torch.float64, nhwc=False), _w(8, 5, dtype=torch.float64), 1, 2, 1)
    assert not uses_forward_input_grad(_x(4, 4, dtype=torch.float64), _w(8, 5), 1, 2, 1)  # the weight's dtype differs
    assert not uses_forward_input_grad(_x(8, 8), _w(8, 3), 2, 1, 1)  # stride 2
    assert not uses_forward_input_grad(_x(8, 8), _w(8, 3, m=2), 1, 1, 1)  # a channel multiplier
    assert not uses_forward_input_grad(_x(8, 8), _w(8, 3), 1, 3, 1)  # padding > d·(k − 1)
    assert not uses_forward_input_grad(_x(8, 8, dtype=torch.bfloat16), _w(8, 3), 1, 1, 1)
    assert not uses_forward_input_grad(_x(8, 8, device="meta"), _w(8, 3), 1, 1, 1)
    # weight gradient, one output per channel: a dilated, larger than 3×3 or larger-than-the-map
    # kernel, 2…64 output positions
    assert uses_forward_weight_grad(_x(8, 8), _w(8, 5), 1, 2, 1) and uses_forward_weight_grad(_x(4, 4), _w(8, 3), 1, 2, 2)
    assert uses_forward_weight_grad(_x(2, 2), _w(8, 3), 1, 1, 1) and uses_forward_weight_grad(_x(8, 8), _w(8, 5), 2, 2, 1)
    assert not uses_forward_weight_grad(_x(4, 4), _w(8, 3), 1, 1, 1)  # oneDNN's fast depthwise path
    assert not uses_forward_weight_grad(_x(16, 16), _w(8, 5), 1, 2, 1)  # 256 positions
    assert uses_forward_weight_grad(_x(16, 16), _w(8, 5), 2, 2, 1)  # 64
    assert not uses_forward_weight_grad(_x(2, 2), _w(8, 5), 2, 2, 1)  # 1 position
    # with a channel multiplier: dilated, on NHWC, larger than 3×3 or ≤ 16 positions
    assert uses_forward_weight_grad(_x(4, 4), _w(8, 3, m=4), 1, 2, 2)
    assert uses_forward_weight_grad(_x(8, 8), _w(8, 5, m=2), 1, 4, 2)
    assert not uses_forward_weight_grad(_x(8, 8), _w(8, 3, m=2), 1, 2, 2)  # 64 positions, 3×3
    assert not uses_forward_weight_grad(_x(4, 4, nhwc=False), _w(8, 3, m=4), 1, 2, 2)
    assert not uses_forward_weight_grad(_x(8, 8), _w(8, 5, m=2), 1, 2, 1)  # undilated
    assert not uses_forward_weight_grad(_x(8, 8, dtype=torch.float16), _w(8, 5), 1, 2, 1)
    assert not uses_forward_weight_grad(_x(8, 8), _w(8, 5, dtype=torch.float64), 1, 2, 1)


def test_a_weight_that_does_not_fit_gets_pytorchs_error():
    """A weight that is not depthwise for x never takes a forward form; F.conv2d names the problem."""
    x = _x(4, 4).requires_grad_()
    w = torch.randn(12, 1, 3, 3, requires_grad=True)  # 12 outputs for 8 channels
    assert not uses_forward_weight_grad(x, w, 1, 2, 2) and not uses_forward_input_grad(x, w, 1, 2, 2)
    with pytest.raises(RuntimeError):
        depthwise_conv2d(x, w, 1, 2, 2)


@pytest.mark.parametrize("shape", [(3, 5), (4, 4)])
def test_the_forward_form_runs_on_any_batch(shape, fresh_seed):
    """The weight gradient's image of N·C·M planes for batch sizes 1 and 5, in both layouts."""
    gen = torch.Generator().manual_seed(fresh_seed)
    for n, nhwc in itertools.product((1, 5), (False, True)):
        x = torch.randn(n, 3, *shape, dtype=torch.float64, generator=gen)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(6, 1, 3, 3, dtype=torch.float64, generator=gen)
        g = torch.randn(n, 6, *shape, dtype=torch.float64, generator=gen)
        want = _aten_grads(g, x, w, 1, 2, 2)[1]
        torch.testing.assert_close(weight_grad_by_forward_conv(g, x, (3, 3), 1, 2, 2), want, atol=1e-12, rtol=1e-12)


def test_a_step_standing_in_for_cuda_takes_no_cpu_formulation():
    """Inside ndarts.backend.standing_in_for_cuda (the census, memory and byte models of a GPU step)
    no CPU-only formulation applies: the forward forms, the one-phase and per-channel convs of
    ndarts.conv_taps, the channel-multiplier first stage."""
    import ndarts.conv_taps as conv_taps
    from ndarts.backend import cpu_conv_forms, standing_in_for_cuda
    from ndarts.conv_taps import conv2d_live_taps
    from ndarts.edge_groups import make_grouped_op

    x = _x(2, 2).requires_grad_()
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    dil3 = make_grouped_op("dil_conv_3x3", 8, 4, 1)
    assert cpu_conv_forms(x) and uses_forward_input_grad(x, w, 1, 2, 2) and uses_forward_weight_grad(x, w, 1, 1, 1)
    assert dil3.uses_multiplier(_x(32, 32), (2, 2))
    with standing_in_for_cuda():
        assert not cpu_conv_forms(x) and not dil3.uses_multiplier(_x(32, 32), (2, 2))
        assert not uses_forward_input_grad(x, w, 1, 2, 2) and not uses_forward_weight_grad(x, w, 1, 1, 1)
        # a dil conv cut to its centre tap stays a convolution, a strided one reads its input dilated
        assert conv2d_live_taps(x, w, 1, 2, 2, 8).grad_fn.name().startswith("Convolution")
        with mock.patch.object(conv_taps, "_conv_of_the_phase", side_effect=AssertionError("one phase")):
            conv2d_live_taps(_x(8, 8), w, 2, 2, 2, 8)
    assert cpu_conv_forms(x)
    assert type(conv2d_live_taps(x, w, 1, 2, 2, 8).grad_fn).__name__ == "MulBackward0"


@pytest.mark.parametrize("channels_last", [False, True])
def test_under_cpu_autocast_the_conv_is_pytorchs(channels_last, fresh_seed):
    """Under CPU bf16 autocast (--amp bf16) F.conv2d casts an fp32 x and weight to bf16 and its
    gradient arrives in bf16: depthwise_conv2d and conv2d_live_taps then give F.conv2d's output
    and gradients (the forward forms would mix fp32 weights with a bf16 gradient); bf16 operands
    take PyTorch's backward."""
    from ndarts.conv_taps import conv2d_live_taps
    from ndarts.depthwise_cpu_grads import depthwise_input_grad, depthwise_weight_grad

    gen = torch.Generator().manual_seed(fresh_seed)
    for geometry in [(5, 7, 3, 3, 1, 2, 2, 1), (8, 8, 5, 5, 1, 2, 1, 1), (4, 4, 5, 5, 1, 4, 2, 1)]:
        x, w, _ = _inputs(geometry, torch.float32, channels_last, gen)
        stride, padding, dilation = geometry[4:7]
        assert uses_forward_input_grad(x, w, stride, padding, dilation)
        results = []
        for conv in (lambda a, b: F.conv2d(a, b, None, stride, padding, dilation, a.shape[1]),
                     lambda a, b: depthwise_conv2d(a, b, stride, padding, dilation),
                     lambda a, b: conv2d_live_taps(a, b, stride, padding, dilation, a.shape[1])):
            a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = conv(a, b)
            assert y.dtype == torch.bfloat16
            y.float().square().sum().backward()
            results.append((y.float(), a.grad, b.grad))
        want = results[0]
        for got in results[1:]:
            for g_, w_ in zip(got, want):
                torch.testing.assert_close(g_, w_, atol=3e-2, rtol=3e-2)
        g = torch.randn(want[0].shape, generator=gen).to(torch.bfloat16)
        want_x, want_w = torch.ops.aten.convolution_backward(
            g, x.to(torch.bfloat16), w.to(torch.bfloat16), None, [stride] * 2, [padding] * 2, [dilation] * 2, False,
            [0, 0], x.shape[1], [True, True, False])[:2]
        got_x = depthwise_input_grad(g, x.to(torch.bfloat16), w.to(torch.bfloat16), stride, padding, dilation)
        torch.testing.assert_close(got_x, want_x)
        got_w = depthwise_weight_grad(g, x.to(torch.bfloat16), w.to(torch.bfloat16), stride, padding, dilation)
        torch.testing.assert_close(got_w, want_w)

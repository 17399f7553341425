"""A node's two DARTS pools in one op (ndarts.pools, kernels/pools.py): the Triton kernels
(interpreter) against torch's max_pool2d and avg_pool2d(count_include_pad=False), values and
gradients, on odd shapes, with ties, NaN and -inf as torch treats them."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ndarts_kernels
from ndarts.pools import darts_pools_stride, pools_3x3

SHAPES = [(2, 3, 7, 5), (1, 2, 1, 1), (3, 4, 8, 8), (1, 1, 2, 9), (2, 1, 5, 2)]


def _torch_pools(x, stride):
    return F.max_pool2d(x, 3, stride, 1), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_pools_match_torch(stride, shape, dtype, tol, fresh_seed):
    """Small integers make ties everywhere (the max's gradient goes to the first maximum, as in
    torch); a random real part elsewhere; the gradient of x is the sum of both pools'.

    The reference is torch's pools in fp32 on the same (bf16-exact) values: the kernels sum in
    fp32 and round once, while torch's bf16 backward rounds every partial sum (up to 18 terms of
    magnitude ~3), which a bf16 tolerance on the result cannot bound."""
    x = torch.where(torch.rand(shape) < 0.5, torch.randint(-2, 3, shape).float(), torch.randn(shape)).to(dtype)
    got_in, want_in = x.clone().requires_grad_(), x.float().requires_grad_()
    got = pools_3x3(got_in, stride, "triton")
    want = _torch_pools(want_in, stride)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=tol, rtol=tol)
    grads = [torch.randn(want[0].shape).to(dtype) for _ in range(2)]
    torch.autograd.backward(got, grads)
    torch.autograd.backward(want, [g.float() for g in grads])
    assert got_in.grad.dtype == dtype
    torch.testing.assert_close(got_in.grad.float(), want_in.grad, atol=2 * tol, rtol=tol)


@pytest.mark.parametrize("stride", [1, 2])
def test_nan_and_infinities_as_torch(stride):
    """A NaN in a window wins the max (the last NaN gets the gradient, as torch's `> || isnan`),
    poisons the average; a window of -inf keeps its first position."""
    x = torch.randn(1, 2, 6, 5)
    x[0, 0, 1, 1] = x[0, 0, 2, 3] = float("nan")
    x[0, 1, :3, :3] = float("-inf")
    got_in, want_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = pools_3x3(got_in, stride, "triton"), _torch_pools(want_in, stride)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, equal_nan=True)
    g = torch.randn(want[0].shape)
    got[0].backward(g)  # the max alone: the average's gradient is None, not zeros
    want[0].backward(g)
    torch.testing.assert_close(got_in.grad, want_in.grad)


def test_one_pool_only_gets_a_gradient(fresh_seed):
    x = torch.randn(2, 3, 5, 6)
    got_in, want_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 3, 5, 6)
    (pools_3x3(got_in, 1, "triton")[1] * g).sum().backward()
    (_torch_pools(want_in, 1)[1] * g).sum().backward()
    torch.testing.assert_close(got_in.grad, want_in.grad, atol=1e-6, rtol=1e-6)


def test_one_launch_each_way_where_the_kernels_run_and_torch_elsewhere():
    from unittest import mock

    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with mock.patch.object(ndarts_kernels, "pools_3x3_forward", wraps=ndarts_kernels.pools_3x3_forward) as fwd, \
            mock.patch.object(ndarts_kernels, "pools_3x3_backward", wraps=ndarts_kernels.pools_3x3_backward) as bwd:
        sum(y.sum() for y in pools_3x3(x, 2, "triton")).backward()
        sum(y.sum() for y in pools_3x3(x, 2, "torch")).backward()
    assert fwd.call_count == 1 and bwd.call_count == 1


def test_darts_pools_are_recognised():
    assert darts_pools_stride(nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False)) == 2
    assert darts_pools_stride(nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1, count_include_pad=False)) == 1
    for max_pool, avg_pool in [(nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1)),  # counts the padding
                               (nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
                               (nn.MaxPool2d(5, 1, 2), nn.AvgPool2d(5, 1, 2, count_include_pad=False)),
                               (nn.MaxPool2d(3, 1, 1, ceil_mode=True), nn.AvgPool2d(3, 1, 1, count_include_pad=False)),
                               (nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.MaxPool2d(3, 1, 1))]:
        assert darts_pools_stride(max_pool, avg_pool) is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"x must be \[N, C, H, W\]"):
        ndarts_kernels.pools_3x3_forward(torch.randn(3, 4, 4), 1)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ndarts_kernels.pools_3x3_forward(torch.randn(1, 1, 4, 4), 3)
    with pytest.raises(TypeError, match="float32"):
        ndarts_kernels.pools_3x3_forward(torch.ones(1, 1, 4, 4, dtype=torch.int32), 1)
    _, _, arg = ndarts_kernels.pools_3x3_forward(torch.randn(1, 2, 4, 4), 2)
    with pytest.raises(ValueError, match=r"grad_max must be \(1, 2, 2, 2\)"):
        ndarts_kernels.pools_3x3_backward(torch.randn(1, 2, 4, 4), None, arg, (1, 2, 4, 4), 2)
    with pytest.raises(ValueError, match="at least one gradient"):
        ndarts_kernels.pools_3x3_backward(None, None, arg, (1, 2, 4, 4), 2)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", SHAPES + [(3, 5, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moments_are_the_outputs_statistics(stride, shape, dtype, fresh_seed):
    """The forward's partial moments of both outputs (moments=True), merged, are each channel's
    count, mean and sum of squared deviations of the outputs as stored; the outputs are those
    without moments; the BatchNorm kernels given the moments normalise as from the outputs."""
    x = torch.randn(shape).to(dtype)
    ymax, yavg, arg, m_max, m_avg = ndarts_kernels.pools_3x3_forward(x, stride, moments=True)
    plain = ndarts_kernels.pools_3x3_forward(x, stride)
    assert all(torch.equal(a, b) for a, b in zip((ymax, yavg, arg), plain))
    for y, m in ((ymax, m_max), (yavg, m_avg)):
        assert m.dtype == torch.float32 and m.shape[0] == y.shape[1] and m.shape[2] == 3 and m.is_contiguous()
        count, mean, m2 = m.double().unbind(2)
        total = count.sum(1)
        merged = (count * mean).sum(1) / total
        merged_m2 = (m2 + count * (mean - merged[:, None]) ** 2).sum(1)
        yd = y.double().transpose(0, 1).reshape(y.shape[1], -1)
        assert torch.equal(total, torch.full_like(total, yd.shape[1]))
        torch.testing.assert_close(merged, yd.mean(1), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(merged_m2, ((yd - yd.mean(1, keepdim=True)) ** 2).sum(1), atol=1e-5, rtol=1e-5)
    if ymax[:, 0].numel() < 2:
        return  # a BatchNorm needs more than one value per channel
    with_m, _, rstd_m = ndarts_kernels.batch_norms_forward([ymax, yavg], None, None, None, 0.1, 1e-5,
                                                           moments=[m_max, m_avg])
    without, _, rstd = ndarts_kernels.batch_norms_forward([ymax, yavg], None, None, None, 0.1, 1e-5)
    torch.testing.assert_close(rstd_m, rstd, atol=1e-5, rtol=1e-5)
    for a, b in zip(with_m, without):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=1e-4)

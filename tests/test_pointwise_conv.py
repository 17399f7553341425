"""The Triton 1×1 (pointwise) convolution (interpreter on CPU): values and both gradients against
conv2d in float64, per dtype, on odd shapes and group counts; the search network with it equals the
network without it."""
from unittest import mock

import ndarts_kernels
from network_checks import assert_same_forward_backward
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ndarts.pointwise_conv import SearchPointwiseConv2d, is_plain_pointwise, pointwise_conv, use_search_pointwise_conv

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (N, groups, CI, CO, H, W): the batched stacks' (groups = edges, 16 channels), a preprocessing conv
# (48 → 16), channel counts off the blocks (5 → 3) and over one block (70 → 80: two tiles each way)
SHAPES = [(2, 4, 16, 16, 5, 7), (3, 1, 48, 16, 6, 5), (2, 3, 5, 3, 3, 9), (1, 1, 70, 80, 4, 4), (2, 8, 16, 16, 1, 1)]
DTYPES = [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)]


def check_against_conv2d(shape, dtype, tol, device="cpu", rounded_products=False):
    """rounded_products: fp32 with TF32 products (a GPU's default): dW's bound grows with the number
    of its products, as in bf16."""
    n, g, ci, co, h, w = shape
    x = torch.randn(n, g * ci, h, w, device=device).to(dtype)
    weight = (torch.randn(g * co, ci, 1, 1, device=device) / ci ** 0.5).to(dtype)
    grad = torch.randn(n, g * co, h, w, device=device).to(dtype)
    xr, wr = x.double().requires_grad_(), weight.double().requires_grad_()
    want = F.conv2d(xr, wr, groups=g)
    want.backward(grad.double())
    xt, wt = x.clone().requires_grad_(), weight.clone().requires_grad_()
    got = pointwise_conv(xt, wt)
    got.backward(grad)
    for name, a, b in (("y", got, want), ("dx", xt.grad, xr.grad), ("dw", wt.grad, wr.grad)):
        assert a.dtype == dtype and a.shape == b.shape, name
        # dW sums over N·H·W products: its bound grows with their number in bf16
        scale = (n * h * w) ** 0.5 if name == "dw" and (dtype != torch.float32 or rounded_products) else 1.0
        torch.testing.assert_close(a.double(), b.detach(), atol=tol * scale, rtol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_conv2d(fresh_seed, device, dtype, tol, shape):
    check_against_conv2d(shape, dtype, tol, device)


def test_only_the_needed_gradients(fresh_seed):
    x, weight = torch.randn(2, 8, 3, 5), torch.randn(6, 4, 1, 1)
    grad = torch.randn(2, 6, 3, 5)
    dx, dw = ndarts_kernels.pointwise_conv_backward(grad, x, weight, need_input=True, need_weight=False)
    assert dw is None and torch.allclose(dx, torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 2, [True, False, False])[0], atol=1e-5)
    dx, dw = ndarts_kernels.pointwise_conv_backward(grad, x, weight, need_input=False, need_weight=True)
    assert dx is None and dw.shape == weight.shape and dw.is_contiguous()


def test_a_weight_gradient_is_computed_only_when_the_pass_uses_it(fresh_seed):
    """An α step's autograd.grad(loss, alphas) asks for no conv weight's gradient."""
    conv = SearchPointwiseConv2d(8, 8, 1, groups=2, bias=False, backend="triton")
    alpha = torch.randn(1, requires_grad=True)
    x = torch.randn(2, 8, 3, 3)
    with mock.patch.object(ndarts_kernels, "pointwise_conv_backward",
                           wraps=ndarts_kernels.pointwise_conv_backward) as bwd:
        torch.autograd.grad((conv(x * alpha) ** 2).sum(), [alpha])
        torch.autograd.backward((conv(x * alpha) ** 2).sum(), inputs=[conv.weight])
    assert [c.kwargs["need_weight"] for c in bwd.call_args_list] == [False, True]
    assert [c.kwargs["need_input"] for c in bwd.call_args_list] == [True, False]


def test_bad_input_is_named():
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(ValueError, match="4-D"):
        ndarts_kernels.pointwise_conv_forward(x[0], torch.randn(8, 8, 1, 1))
    with pytest.raises(ValueError, match="weight of shape"):
        ndarts_kernels.pointwise_conv_forward(x, torch.randn(8, 8, 3, 3))
    with pytest.raises(ValueError, match="weight of shape"):
        ndarts_kernels.pointwise_conv_forward(x, torch.randn(8, 3, 1, 1))  # 3 does not divide 8
    with pytest.raises(ValueError, match="groups"):
        ndarts_kernels.pointwise_conv_forward(x, torch.randn(7, 2, 1, 1))  # 7 outputs for 4 groups
    with pytest.raises(TypeError, match="dtype"):
        ndarts_kernels.pointwise_conv_forward(x, torch.randn(8, 8, 1, 1).double())
    with pytest.raises(ValueError, match="output gradient"):
        ndarts_kernels.pointwise_conv_backward(torch.randn(2, 5, 3, 3), x, torch.randn(8, 8, 1, 1))
    conv = SearchPointwiseConv2d(8, 8, 1, bias=False, backend="triton")
    with pytest.raises(ValueError, match="expected 8 channels"):
        conv(torch.randn(2, 6, 3, 3))


def test_which_convs_are_converted(fresh_seed):
    """1×1 stride-1 bias-free convs only: a FactorizedReduce's stride-2 ones and the rest stay;
    the conversion keeps the parameters and draws nothing."""
    model = nn.Sequential(nn.Conv2d(8, 8, 1, groups=4, bias=False), nn.Conv2d(8, 8, 1, stride=2, bias=False),
                          nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, bias=False))
    before = [p.clone() for p in model.parameters()]
    state = torch.get_rng_state()
    use_search_pointwise_conv(model, backend="triton")
    assert torch.equal(state, torch.get_rng_state())
    assert [type(m) is SearchPointwiseConv2d for m in model] == [True, False, False, False]
    assert [is_plain_pointwise(m) for m in model] == [False] * 4  # converted ones are no longer plain nn.Conv2d
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_torch_backend_is_conv2d(fresh_seed):
    conv = SearchPointwiseConv2d(6, 4, 1, bias=False, backend="torch")
    x = torch.randn(2, 6, 5, 5)
    with mock.patch.object(ndarts_kernels, "pointwise_conv_forward") as fwd:
        assert torch.equal(conv(x), F.conv2d(x, conv.weight))
    fwd.assert_not_called()


def test_search_network_with_triton_pointwise_conv_equals_torch(fresh_seed):
    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork

    # one normal cell of two nodes: batched stacks (grouped 1×1 convs) and the preprocessing convs
    kw = dict(C=4, num_classes=5, layers=1, primitives=["skip_connect", "sep_conv_3x3", "dil_conv_3x3"],
              noise=NoiseConfig(kind="none"), fused=True, steps=2, multiplier=2, in_channels=2, backend="torch",
              fused_batch_norm=False, channels_last=False)  # NCHW: the kernels' layout
    torch.manual_seed(3)
    ref = SearchNetwork(**kw)
    torch.manual_seed(3)
    tri = SearchNetwork(**kw, fused_pointwise_conv=True)
    for a, b in zip(tri.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)  # same RNG stream: the conversion draws nothing
    convs = [m for m in tri.modules() if isinstance(m, SearchPointwiseConv2d)]
    # 2 preprocessing convs, and per conv group (the inputs' one, node 0's) sep_conv's 2 and dil_conv's 1
    assert len(convs) == 2 + 2 * 3
    assert any(m.groups > 1 for m in convs)
    for m in convs:
        m.backend = "triton"
    with mock.patch.object(ndarts_kernels, "pointwise_conv_backward",
                           wraps=ndarts_kernels.pointwise_conv_backward) as bwd:
        assert_same_forward_backward((ref, tri), torch.randn(3, 2, 9, 9), out_tol=(1e-5, 1e-4))
    assert bwd.call_count == len(convs)  # every pointwise conv ran on the kernels


def test_int64_indexing_path(monkeypatch, fresh_seed):
    """The int64-index variant (tensors of ≥ 2^31 elements) on a small tensor: the launchers take it
    when the size passes INT32_LIMIT, lowered here."""
    import ndarts_kernels.pointwise_conv as pw
    from triton.runtime import interpreter

    monkeypatch.setattr(pw, "INT32_LIMIT", 16)
    run = interpreter.GridExecutor.__call__
    seen = []

    def recorded(executor, *args, **kwargs):
        seen.append((executor.fn.__name__, kwargs.get("INDEX_64")))
        return run(executor, *args, **kwargs)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", recorded)
    check_against_conv2d((2, 2, 16, 16, 3, 5), torch.float32, 2e-5)
    assert {(name, True) for name in ("_pw_conv_kernel", "_pw_conv_wgrad_kernel")} <= set(seen)

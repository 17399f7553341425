"""The fused depthwise → grouped 1×1 convolution (interpreter on CPU): values and all three
gradients against the two conv2d calls in float64, per dtype, on odd shapes, strides, dilations,
channel counts off the blocks; only the gradients a pass uses; the search network with it equals
the network without it."""
from unittest import mock

import ndarts_kernels
from network_checks import assert_same_forward_backward
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ndarts.edge_groups import GroupedConvStack
from ndarts.separable_conv import separable_conv, separable_fits

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (N, groups, C, CO, H, W, K, stride, padding, dilation): a batched sep conv (4 edges of 16
# channels), a dil conv 5×5, a stride-2 reduction stage on odd sizes, channels off the blocks
# (5 → 3) and over one block (20 → 12), a 1×1 image
SHAPES = [(2, 4, 16, 16, 6, 7, 3, 1, 1, 1), (2, 2, 8, 8, 9, 8, 5, 1, 4, 2), (3, 3, 4, 4, 9, 7, 3, 2, 1, 1),
          (2, 2, 5, 3, 5, 6, 3, 1, 2, 2), (1, 1, 20, 12, 6, 5, 5, 2, 2, 1), (2, 2, 4, 4, 1, 1, 3, 1, 1, 1)]
DTYPES = [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)]


def _reference(x, w_dw, w_pw, stride, padding, dilation):
    d = F.conv2d(x, w_dw, None, stride, padding, dilation, groups=x.shape[1])
    return F.conv2d(d, w_pw, groups=x.shape[1] // w_pw.shape[1])


def check_against_conv2d(shape, dtype, tol, relu, device="cpu", rounded_products=False):
    """rounded_products: fp32 with TF32 products (a GPU's default): the weight gradients' bound grows
    with the number of their products, as in bf16."""
    n, g, c, co, h, w, k, stride, padding, dilation = shape
    y = torch.randn(n, g * c, h, w, device=device).to(dtype)  # relu: the conv's input is relu(y)
    x = F.relu(y) if relu else y
    w_dw = (torch.randn(g * c, 1, k, k, device=device) / k).to(dtype)
    w_pw = (torch.randn(g * co, c, 1, 1, device=device) / c ** 0.5).to(dtype)
    xr, dr, pr = (t.double().requires_grad_() for t in (x, w_dw, w_pw))
    want = _reference(xr, dr, pr, stride, padding, dilation)
    grad = torch.randn(want.shape, device=device).to(dtype)
    want.backward(grad.double())
    got = ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, stride, padding, dilation)
    dx, d_dw, d_pw = ndarts_kernels.separable_conv_backward(grad, y if relu else x, w_dw, w_pw, stride, padding,
                                                            dilation, relu_input=relu)
    # the relu_input backward keeps y, reads relu(y): the same values
    for name, a, b in (("z", got, want), ("dx", dx, xr.grad), ("d_dw", d_dw, dr.grad), ("d_pw", d_pw, pr.grad)):
        assert a.dtype == dtype and a.shape == b.shape, name
        # weight gradients sum over N·H·W products: their bound grows with their number in bf16
        scale = (n * h * w) ** 0.5 if name.startswith("d_") and (dtype != torch.float32 or rounded_products) else 1.0
        torch.testing.assert_close(a.double(), b.detach(), atol=tol * scale, rtol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_conv2d(fresh_seed, device, dtype, tol, shape):
    check_against_conv2d(shape, dtype, tol, relu=False, device=device)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_relu_input_matches_conv2d_of_relu(fresh_seed, shape):
    check_against_conv2d(shape, torch.float32, 2e-5, relu=True)


def test_only_the_needed_gradients_bitwise(fresh_seed):
    """Each part alone is bitwise the part of the full backward; a pass without weight gradients
    reads no input (a poisoned x changes nothing)."""
    x, w_dw, w_pw = torch.randn(2, 8, 5, 6), torch.randn(8, 1, 3, 3), torch.randn(8, 4, 1, 1)
    grad = torch.randn(2, 8, 5, 6)
    full = ndarts_kernels.separable_conv_backward(grad, x, w_dw, w_pw, 1, 1, 1)
    dx, d_dw, d_pw = ndarts_kernels.separable_conv_backward(grad, torch.full_like(x, float("nan")), w_dw, w_pw,
                                                            1, 1, 1, need_weight=False)
    assert d_dw is None and d_pw is None and torch.equal(dx, full[0])
    dx, d_dw, d_pw = ndarts_kernels.separable_conv_backward(grad, x, w_dw, w_pw, 1, 1, 1, need_input=False)
    assert dx is None and torch.equal(d_dw, full[1]) and torch.equal(d_pw, full[2])
    assert ndarts_kernels.separable_conv_backward(grad, x, w_dw, w_pw, 1, 1, 1, need_input=False,
                                                  need_weight=False) == (None, None, None)


def test_an_empty_batch_matches_conv2d(fresh_seed):
    """No image: an empty output, and the gradients PyTorch's convs give (no division by zero
    programs)."""
    x, w_dw, w_pw = torch.randn(0, 8, 5, 5), torch.randn(8, 1, 3, 3), torch.randn(8, 4, 1, 1)
    xr, dr, pr = (t.clone().requires_grad_() for t in (x, w_dw, w_pw))
    want = _reference(xr, dr, pr, 1, 1, 1)
    want.sum().backward()
    z = ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1)
    assert z.shape == want.shape
    got = ndarts_kernels.separable_conv_backward(torch.ones_like(z), x, w_dw, w_pw, 1, 1, 1)
    for a, b in zip(got, (xr.grad, dr.grad, pr.grad)):
        assert a.shape == b.shape and torch.equal(a, b)


def test_bitwise_reproducible(fresh_seed):
    x, w_dw, w_pw = torch.randn(3, 8, 7, 5), torch.randn(8, 1, 5, 5), torch.randn(8, 4, 1, 1)
    grad = torch.randn(3, 8, 4, 3)
    a = ndarts_kernels.separable_conv_backward(grad, x, w_dw, w_pw, 2, 2, 1)
    b = ndarts_kernels.separable_conv_backward(grad, x.clone(), w_dw, w_pw, 2, 2, 1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def _pair(c=8, groups=2, k=3, stride=1, padding=1, dilation=1):
    dw = nn.Conv2d(c, c, k, stride, padding, dilation=dilation, groups=c, bias=False)
    pw = nn.Conv2d(c, c, 1, groups=groups, bias=False)
    return dw, pw


def test_a_weight_gradient_is_computed_only_when_the_pass_uses_it(fresh_seed):
    """An α step's autograd.grad(loss, alphas) asks for no conv weight's gradient, a w step's
    backward(loss, inputs=weights) for no input gradient."""
    dw, pw = _pair()
    alpha = torch.randn(1, requires_grad=True)
    x = torch.randn(2, 8, 4, 4)
    with mock.patch.object(ndarts_kernels, "separable_conv_backward",
                           wraps=ndarts_kernels.separable_conv_backward) as bwd:
        torch.autograd.grad((separable_conv(x * alpha, dw, pw) ** 2).sum(), [alpha])
        torch.autograd.backward((separable_conv(x * alpha, dw, pw) ** 2).sum(), inputs=[dw.weight, pw.weight])
    assert [c.kwargs["need_weight"] for c in bwd.call_args_list] == [False, True]
    assert [c.kwargs["need_input"] for c in bwd.call_args_list] == [True, False]
    assert dw.weight.grad is not None and pw.weight.grad is not None


def test_relu_of_keeps_y_not_relu_y(fresh_seed):
    """With relu_of, the Function keeps y (which the caller keeps anyway), not relu(y), and its
    gradients equal those of the conv of relu(y)."""
    dw, pw = _pair()
    y = torch.randn(2, 8, 5, 5, requires_grad=True)
    r = F.relu(y)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = separable_conv(r, dw, pw, relu_of=y.detach())
    assert len(saved) == 3 and torch.equal(saved[0], y.detach())  # y, the two weights
    assert not any(t.shape == r.shape and torch.equal(t, r.detach()) for t in saved)
    out.square().sum().backward()
    got = (y.grad.clone(), dw.weight.grad.clone(), pw.weight.grad.clone())
    for t in (y, dw.weight, pw.weight):
        t.grad = None
    _reference(F.relu(y), dw.weight, pw.weight, 1, 1, 1).square().sum().backward()
    for a, b in zip(got, (y.grad, dw.weight.grad, pw.weight.grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_input_is_named():
    x = torch.randn(2, 8, 4, 4)
    w_dw, w_pw = torch.randn(8, 1, 3, 3), torch.randn(8, 4, 1, 1)
    with pytest.raises(ValueError, match="4-D"):
        ndarts_kernels.separable_conv_forward(x[0], w_dw, w_pw, 1, 1, 1)
    with pytest.raises(ValueError, match="one output per input channel"):
        ndarts_kernels.separable_conv_forward(x, torch.randn(16, 1, 3, 3), w_pw, 1, 1, 1)
    with pytest.raises(ValueError, match="1×1 weight"):
        ndarts_kernels.separable_conv_forward(x, w_dw, torch.randn(8, 3, 1, 1), 1, 1, 1)
    with pytest.raises(ValueError, match="groups"):
        ndarts_kernels.separable_conv_forward(x, w_dw, torch.randn(7, 4, 1, 1), 1, 1, 1)
    with pytest.raises(ValueError, match="at most 64 channels"):
        ndarts_kernels.separable_conv_forward(torch.randn(1, 80, 2, 2), torch.randn(80, 1, 3, 3),
                                              torch.randn(80, 80, 1, 1), 1, 1, 1)
    with pytest.raises(TypeError, match="1×1 weight must be"):
        ndarts_kernels.separable_conv_forward(x, w_dw, w_pw.double(), 1, 1, 1)
    with pytest.raises(ValueError, match="too small"):
        ndarts_kernels.separable_conv_forward(torch.randn(1, 8, 2, 2), torch.randn(8, 1, 5, 5), w_pw, 1, 0, 1)
    with pytest.raises(ValueError, match="output gradient"):
        ndarts_kernels.separable_conv_backward(torch.randn(2, 5, 4, 4), x, w_dw, w_pw, 1, 1, 1)
    dw, pw = _pair()
    assert separable_fits(x, dw, pw)
    with pytest.raises(ValueError, match="not a depthwise"):
        separable_conv(x, dw, nn.Conv2d(8, 8, 1, groups=2, bias=True))
    assert not separable_fits(torch.randn(2, 6, 4, 4), dw, pw)
    with pytest.raises(ValueError, match="fused_separable_conv needs batch_edge_convs"):
        _network(backend="torch", batch_edge_convs=False, fused_separable_conv=True)


def _network(**kw):
    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork

    # one normal cell of two nodes: two conv groups (the inputs' one, node 0's), sep and dil convs
    kw = dict(C=4, num_classes=5, layers=1, primitives=["skip_connect", "sep_conv_3x3", "dil_conv_3x3"],
              noise=NoiseConfig(kind="none"), fused=True, steps=2, multiplier=2, in_channels=2,
              channels_last=False, **kw)
    torch.manual_seed(3)
    return SearchNetwork(**kw)


@pytest.mark.parametrize("batch_norm_kernels", [False, True], ids=["torch_bn", "triton_bn"])
def test_search_network_with_separable_conv_equals_without(fresh_seed, batch_norm_kernels):
    """Outputs, every gradient and the BatchNorm statistics of the network with each dw → pw pair of
    its stacks fused equal the network without. With the BatchNorm kernels (the fused stages of
    ndarts.separable_stage), the sep convs' second pair reads bn1's output with the ReLU on load."""
    backend = "triton" if batch_norm_kernels else "torch"
    ref = _network(backend=backend, fused_batch_norm=batch_norm_kernels)
    tri = _network(backend=backend, fused_batch_norm=batch_norm_kernels, fused_separable_conv=True)
    for a, b in zip(tri.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)  # the flag draws nothing
    stacks = [m for m in tri.modules() if isinstance(m, GroupedConvStack)]
    assert len(stacks) == 2 * 2 and all(m.fused_separable for m in stacks)
    for m in stacks:
        m.backend = "triton"  # on the torch backend too: only the pairs on the kernels
    with mock.patch.object(ndarts_kernels, "separable_conv_backward",
                           wraps=ndarts_kernels.separable_conv_backward) as bwd, \
            mock.patch.object(ndarts_kernels, "separable_pairs_backward",
                              wraps=ndarts_kernels.separable_pairs_backward) as stage_bwd:
        assert_same_forward_backward((ref, tri), torch.randn(3, 2, 9, 9), out_tol=(1e-5, 1e-4),
                                     grad_tol=(2e-5, 2e-4), buffer_tol=(1e-6, 1e-5))
    pairs = sum(m.repeats for m in stacks)  # sep: two pairs, dil: one
    # (pairs, relu_input) per launch: one per pair, or (fused stages) one per stage
    launches = [(1, c.kwargs["relu_input"]) for c in bwd.call_args_list]
    launches += [(len(c.args[0]), c.kwargs["relu_input"]) for c in stage_bwd.call_args_list]
    assert sum(count for count, _ in launches) == pairs
    assert len(launches) == (2 * 2 if batch_norm_kernels else pairs)  # two groups, two stages each
    # the two sep convs' second pairs, and (fused stages) node 0's group's two first pairs reading its source
    assert sum(count for count, relu in launches if relu) == (4 if batch_norm_kernels else 0)


@pytest.mark.parametrize("counts", [(3,), (2, 1)], ids=["one_source", "two_sources"])
def test_source_inputs_read_as_the_repeated_input(fresh_seed, counts):
    """With counts, the kernels read each group's source node (its ReLU applied on load) where the
    repeated relu input would be: z, the moments and all three gradients bitwise as from the
    repeated tensor; bad sources named."""
    from ndarts.edge_groups import repeat_sources

    hs = [torch.randn(2, 5, 7, 6) for _ in counts]
    groups = sum(counts)
    w_dw, w_pw = torch.randn(groups * 5, 1, 3, 3), torch.randn(groups * 4, 5, 1, 1)
    repeated = repeat_sources([F.relu(h) for h in hs], counts)
    want = ndarts_kernels.separable_conv_forward(repeated, w_dw, w_pw, 2, 1, 1, moments=True)
    got = ndarts_kernels.separable_conv_forward(hs, w_dw, w_pw, 2, 1, 1, relu_input=True, moments=True, counts=counts)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    grad = torch.randn_like(want[0])
    want = ndarts_kernels.separable_conv_backward(grad, repeated, w_dw, w_pw, 2, 1, 1)
    got = ndarts_kernels.separable_conv_backward(grad, hs, w_dw, w_pw, 2, 1, 1, relu_input=True, counts=counts)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="alike 4-D"):
        ndarts_kernels.separable_conv_forward([hs[0], hs[0][:, :4]], w_dw, w_pw, 2, 1, 1, counts=(2, 1))
    with pytest.raises(ValueError, match="one or two source inputs"):
        ndarts_kernels.separable_conv_forward(hs, w_dw, w_pw, 2, 1, 1, counts=counts + (1,))

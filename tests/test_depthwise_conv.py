"""The Triton depthwise convolution (interpreter on CPU) against torch's conv2d.

Every DARTS configuration (3×3 / 5×5, stride 1 / 2, dilation 1 / 2 with its padding) and odd
sizes, output and both gradients, per dtype, on fresh random inputs; the module conversion keeps
parameters and RNG; a small search network with the kernels equals the plain one.
"""
import ndarts_kernels
from network_checks import assert_same_forward_backward
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ndarts.depthwise_conv import (
    SearchDepthwiseConv2d,
    depthwise_conv,
    use_search_depthwise_conv,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [(torch.float32, 2e-5), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)]
# (K, stride, padding, dilation): sep_conv_3x3/5x5 and dil_conv_3x3/5x5, at stride 1 and 2
CONFIGS = [(3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (5, 1, 4, 2), (3, 2, 1, 1), (5, 2, 2, 1), (3, 2, 2, 2),
           (5, 2, 4, 2)]
SHAPES = [(2, 3, 8, 8), (3, 2, 7, 5), (1, 4, 13, 11)]


# every configuration on every shape in fp32; the half types on the first shape (the interpreter
# is slow: ~1 s per case)
CASES = [(shape, dt) for shape in SHAPES for dt in DTYPES if dt[0] == torch.float32 or shape == SHAPES[0]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,stride,padding,dilation", CONFIGS)
@pytest.mark.parametrize("shape,dtype,tol", [(s, d, t) for s, (d, t) in CASES])
def test_matches_conv2d(fresh_seed, device, dtype, tol, k, stride, padding, dilation, shape):
    if device == "cuda" and ndarts_kernels.INTERPRETED:
        pytest.skip("kernels defined for the interpreter")
    check_against_conv2d(shape, dtype, tol, k, stride, padding, dilation, device)


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (5, 2, 4, 2), (5, 1, 2, 1)])
@pytest.mark.parametrize("multiplier", [2, 3])
def test_channel_multiplier_matches_conv2d(fresh_seed, k, stride, padding, dilation, multiplier):
    """M outputs per input channel (the first depthwise conv of E batched edges)."""
    check_against_conv2d((2, 3, 7, 6), torch.float32, 2e-5, k, stride, padding, dilation, "cpu", multiplier)


@pytest.mark.parametrize("k,stride,padding,dilation", [(5, 1, 2, 1), (3, 2, 2, 2), (5, 1, 4, 2)])
def test_images_wider_than_a_tile(fresh_seed, k, stride, padding, dilation):
    """Rows of 70 pixels: several tiles per image in every kernel (tiles are at most 64 wide in
    the interpreter, 32 on a GPU), the weight gradient's tap accumulators summed over all of them."""
    check_against_conv2d((2, 2, 5, 70), torch.float32, 2e-5, k, stride, padding, dilation, "cpu")


@pytest.mark.parametrize("k,stride,padding,dilation", CONFIGS)
@pytest.mark.parametrize("dtype,tol,multiplier", [(torch.float32, 2e-5, 1), (torch.float32, 2e-5, 2),
                                                  (torch.bfloat16, 3e-2, 1)])
def test_weight_grad_kernels_match_conv2d(fresh_seed, k, stride, padding, dilation, dtype, tol, multiplier):
    """kernels="weight_grad": torch's forward and input gradient, the Triton weight gradient."""
    check_against_conv2d((3, 2, 7, 5), dtype, tol, k, stride, padding, dilation, "cpu", multiplier,
                         kernels="weight_grad")


def check_against_conv2d(shape, dtype, tol, k, stride, padding, dilation, device, multiplier=1, kernels="all"):
    """Output and both gradients of depthwise_conv against conv2d in float64 on fresh random data."""
    c = shape[1]
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    w = torch.randn(c * multiplier, 1, k, k, device=device).to(dtype).requires_grad_()
    y = depthwise_conv(x, w, stride, padding, dilation, kernels=kernels)
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    y_ref = F.conv2d(xr, wr, stride=stride, padding=padding, dilation=dilation, groups=c)
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    assert y.shape == y_ref.shape
    scale = k * k ** 0.5  # sums of K² terms of unit size
    torch.testing.assert_close(y.double(), y_ref, atol=tol * scale, rtol=tol)
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=tol * scale, rtol=tol)
    # the weight gradient sums N·OH·OW products
    n_terms = y.numel() / w.shape[0]
    torch.testing.assert_close(w.grad.double(), wr.grad, atol=tol * n_terms ** 0.5 * 4, rtol=tol * 4)


def test_only_the_needed_gradient(fresh_seed):
    """A frozen input or weight: the other gradient alone, equal to conv2d's."""
    x = torch.randn(2, 3, 9, 9)
    w = torch.randn(3, 1, 3, 3)
    g = torch.randn(2, 3, 9, 9)
    for grad_x in (False, True):
        xa, wa = x.clone().requires_grad_(grad_x), w.clone().requires_grad_(not grad_x)
        xb, wb = x.clone().requires_grad_(grad_x), w.clone().requires_grad_(not grad_x)
        depthwise_conv(xa, wa, 1, 1, 1).backward(g)
        F.conv2d(xb, wb, padding=1, groups=3).backward(g)
        got, want = (xa.grad, xb.grad) if grad_x else (wa.grad, wb.grad)
        assert (xa.grad is None) != grad_x and (wa.grad is None) == grad_x
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["all", "weight_grad"])
def test_a_weight_gradient_is_computed_only_when_the_pass_uses_it(fresh_seed, kernels):
    """An α step's autograd.grad(loss, alphas) does not use the conv weights' gradients although
    they require grad: the Triton weight-gradient kernels do not run (as torch's convolution
    backward skips it). loss.backward() and autograd.grad on the weight itself get it."""
    from unittest import mock

    a = torch.randn(2, 3, 9, 8, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, requires_grad=True)
    g = torch.randn(2, 6, 9, 8)

    def loss():
        return (depthwise_conv(a * 1.5, w, 1, 1, 1, kernels=kernels) * g).sum()

    def want(t):
        x, v = a.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        out = (F.conv2d(x * 1.5, v, padding=1, groups=3) * g.double()).sum()
        return torch.autograd.grad(out, [x if t is a else v])[0]

    with mock.patch.object(ndarts_kernels, "depthwise_conv_backward",
                           wraps=ndarts_kernels.depthwise_conv_backward) as bwd:
        (ga,) = torch.autograd.grad(loss(), [a])
        weight_runs = [c.kwargs["need_weight"] for c in bwd.call_args_list]
        assert weight_runs == ([False] if kernels == "all" else [])
        torch.testing.assert_close(ga.double(), want(a), atol=1e-4, rtol=1e-4)
        (gw,) = torch.autograd.grad(loss(), [w])  # the engine cannot tell for an input leaf: computed
        torch.testing.assert_close(gw.double(), want(w), atol=1e-4, rtol=1e-4)
        bwd.reset_mock()
        loss().backward()
        assert [c.kwargs["need_weight"] for c in bwd.call_args_list] == [True]
        torch.testing.assert_close(w.grad.double(), want(w), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.grad.double(), want(a), atol=1e-4, rtol=1e-4)


def test_conversion_keeps_parameters_and_rng(fresh_seed):
    seq = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.Conv2d(4, 8, 1, bias=False),
                        nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False),
                        nn.Conv2d(4, 12, 3, padding=1, groups=4, bias=False))
    weights = [m.weight for m in seq]
    state = torch.random.get_rng_state()
    use_search_depthwise_conv(seq, backend="triton")
    assert torch.equal(torch.random.get_rng_state(), state)  # no parameter drawn
    assert type(seq[0]) is SearchDepthwiseConv2d
    assert type(seq[1]) is nn.Conv2d and type(seq[2]) is nn.Conv2d  # pointwise / grouped: untouched
    assert type(seq[3]) is SearchDepthwiseConv2d  # 3 outputs per channel
    assert all(m.weight is w for m, w in zip(seq, weights))
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(seq[0](x), F.conv2d(x, seq[0].weight, padding=1, groups=4), atol=1e-5, rtol=1e-5)


def test_torch_backend_is_conv2d(fresh_seed):
    conv = SearchDepthwiseConv2d(3, 3, 3, padding=1, groups=3, bias=False, backend="torch")
    y = conv(torch.randn(2, 3, 5, 5, requires_grad=True))
    assert "Convolution" in type(y.grad_fn).__name__


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="weight of shape"):
        depthwise_conv(torch.randn(2, 3, 5, 5), torch.randn(4, 1, 3, 3))
    with pytest.raises(TypeError, match="dtype"):
        depthwise_conv(torch.randn(2, 3, 5, 5), torch.randn(3, 1, 3, 3).double())
    with pytest.raises(ValueError, match="too small"):
        depthwise_conv(torch.randn(2, 3, 2, 2), torch.randn(3, 1, 5, 5), 1, 0, 2)
    conv = SearchDepthwiseConv2d(3, 3, 3, padding=1, groups=3, bias=False, backend="triton")
    with pytest.raises(ValueError, match="channels"):
        conv(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="kernels must be one of"):
        depthwise_conv(torch.randn(2, 3, 5, 5), torch.randn(3, 1, 3, 3), kernels="forward")
    from ndarts.search_model import SearchNetwork

    with pytest.raises(ValueError, match="fused_depthwise_conv must be"):
        SearchNetwork(C=4, layers=1, steps=1, multiplier=1, fused_depthwise_conv="weights")


@pytest.mark.parametrize("kernels", [True, "weight_grad"])
def test_search_network_with_triton_depthwise_conv_equals_torch(fresh_seed, kernels):
    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork

    # one reduction cell of one node (2 edges, stride 2): the interpreter runs ~10 s per conv fwd+bwd
    kw = dict(C=4, num_classes=5, layers=1, primitives=["skip_connect", "sep_conv_3x3", "dil_conv_5x5"],
              noise=NoiseConfig(kind="none"), fused=True, steps=1, multiplier=1, in_channels=2, backend="torch",
              fused_batch_norm=False, channels_last=False)  # NCHW: the kernels' layout
    torch.manual_seed(3)
    ref = SearchNetwork(**kw)
    torch.manual_seed(3)
    tri = SearchNetwork(**kw, fused_depthwise_conv=kernels)
    for a, b in zip(tri.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)  # same RNG stream: the conversion draws nothing
    convs = [m for m in tri.modules() if isinstance(m, SearchDepthwiseConv2d)]
    assert len(convs) == 2 + 1  # the 2 edges' group (a cell's inputs share one): 2 in sep_conv + 1 in dil_conv
    for m in convs:
        m.backend = "triton"
    from unittest import mock

    with mock.patch.object(ndarts_kernels, "depthwise_conv_backward", wraps=ndarts_kernels.depthwise_conv_backward) as bwd:
        assert_same_forward_backward((ref, tri), torch.randn(3, 2, 9, 9), out_tol=(1e-5, 1e-4))
    assert bwd.call_count == len(convs)  # every depthwise conv ran on the kernels
    assert all(m.kernels == ("all" if kernels is True else kernels) for m in convs)


@pytest.mark.parametrize("kernels", ["torch", "all", "weight_grad"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_conv_of_relu_keeps_y_not_relu_y(fresh_seed, kernels, dtype, tol):
    """depthwise_conv_of_relu(relu(y), y, conv): conv(relu(y)) and its gradients as conv2d gives
    them, relu(y) not among the tensors kept for the backward, and made again only for the weight
    gradient (not in an α step's pass)."""
    from unittest import mock

    from ndarts.depthwise_conv import depthwise_conv_of_relu

    conv = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False).to(dtype)
    if kernels != "torch":  # the Triton kernels (in the interpreter), all or the weight gradient only
        conv.__class__ = SearchDepthwiseConv2d
        conv._setup("triton", kernels)
    y = torch.randn(2, 6, 7, 9, dtype=dtype)
    g = torch.randn(2, 6, 7, 9, dtype=dtype)
    a = torch.ones((), requires_grad=True)  # stands in for α: upstream of r

    def run(of_relu: bool):
        yy = y.clone().requires_grad_()
        r = torch.relu(yy) * a
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = depthwise_conv_of_relu(r, (yy * a).detach(), conv) if of_relu else F.conv2d(
                r, conv.weight, None, 1, 2, 2, groups=6)
        return out, r, yy, saved

    out, r, yy, saved = run(True)
    want, r_ref, yy_ref, _ = run(False)
    torch.testing.assert_close(out.float(), want.float(), atol=tol, rtol=tol)
    assert not any(t.data_ptr() == r.data_ptr() for t in saved)  # relu(y) is not kept
    with mock.patch("torch.nn.functional.relu", wraps=F.relu) as relu, \
            mock.patch.object(ndarts_kernels, "depthwise_conv_backward",
                              wraps=ndarts_kernels.depthwise_conv_backward) as bwd:
        (ga,) = torch.autograd.grad((out * g).sum(), [a], retain_graph=True)
        assert relu.call_count == 0  # an α step's pass: no weight gradient, no ReLU made again
        (out * g).sum().backward()
        # PyTorch's weight gradient gets relu(y) made; the Triton one applies the ReLU as it reads y
        assert relu.call_count == (1 if kernels == "torch" else 0)
        assert [c.kwargs.get("relu_input") for c in bwd.call_args_list if c.kwargs["need_weight"]] == (
            [] if kernels == "torch" else [True])
    (want_ga,) = torch.autograd.grad((want * g).sum(), [a], retain_graph=True)
    torch.testing.assert_close(ga.float(), want_ga.float(), atol=tol * 50, rtol=tol)
    w_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    (want * g).sum().backward()
    torch.testing.assert_close(w_grad.float(), conv.weight.grad.float(), atol=tol * 50, rtol=tol)
    torch.testing.assert_close(yy.grad.float(), yy_ref.grad.float(), atol=tol, rtol=tol)


def test_conv_of_relu_under_autocast(fresh_seed):
    """bf16 autocast (the search's --amp bf16): bf16 activations, the fp32 weight cast where autograd
    sees it, so its gradient comes back fp32, as autocast's own conv gives it."""
    from ndarts.depthwise_conv import depthwise_conv_of_relu

    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4, bias=False)
    y = torch.randn(2, 4, 6, 7).bfloat16()
    g = torch.randn(2, 4, 6, 7)
    outs, grads = [], []
    for of_relu in (True, False):
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = torch.relu(y)
            out = depthwise_conv_of_relu(r, y, conv) if of_relu else conv(r)
        assert out.dtype == torch.bfloat16
        (out.float() * g).sum().backward()
        assert conv.weight.grad.dtype == torch.float32
        outs.append(out.float())
        grads.append(conv.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-2, rtol=1e-2)

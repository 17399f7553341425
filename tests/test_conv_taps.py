"""Depthwise convolutions with their dead border taps cut (ndarts.conv_taps) keep the full kernel's math."""
import pytest
import torch
import torch.nn.functional as F

from ndarts.conv_taps import (conv2d_live_taps, conv2d_one_phase, dead_border_taps, depthwise_live_taps, live_kernel,
                              reads_one_phase)


def _dead_at_ends(size, k, stride, padding, dilation):
    """(dead taps from the low end, from the high end) of one axis, found by counting each tap's
    hits on an image of ones (an independent definition: a conv's weight gradient)."""
    x = torch.ones(1, 1, size, 1, dtype=torch.float64)
    w = torch.zeros(1, 1, k, 1, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, None, (stride, 1), (padding, 0), (dilation, 1))
    hits = torch.autograd.grad(y, w, torch.ones_like(y))[0].flatten().tolist()
    low = next((i for i, h in enumerate(hits) if h), k)
    high = next((i for i, h in enumerate(reversed(hits)) if h), k)
    return low, high


GEOMETRIES = [(size, k, s, d, p) for size in range(1, 10) for k in (1, 2, 3, 5, 7) for s in (1, 2, 3) for d in (1, 2, 3)
              for p in range(0, (k // 2) * d + 2) if (size + 2 * p - d * (k - 1) - 1) // s + 1 >= 1]


def test_dead_border_taps_are_the_taps_that_meet_only_padding():
    """At every geometry of the sweep: t is the smaller count of taps at either end that meet no
    image pixel at any output position, bounded so that a tap is kept and the padding stays ≥ 0;
    the sweep includes DARTS's dil/sep convs on the digits preset's 4×4 and 2×2 maps, which cut."""
    cuts = 0
    for size, k, s, d, p in GEOMETRIES:
        low, high = _dead_at_ends(size, k, s, p, d)
        want = min(low, high, (k - 1) // 2, p // d)
        assert dead_border_taps(size, k, s, p, d) == want, (size, k, s, d, p)
        cuts += want > 0
    assert cuts > 50
    # dil_conv_5x5 (5, dilation 2, padding 4) on 2×2 keeps its centre; on 4×4 its inner 3×3; sep_conv_5x5 on 2×2 3×3
    assert [dead_border_taps(n, 5, 1, 4, 2) for n in (2, 4, 8)] == [_dead_at_ends(n, 5, 1, 4, 2)[0] for n in (2, 4, 8)]
    assert dead_border_taps(2, 5, 1, 4, 2) == 2 and dead_border_taps(4, 5, 1, 4, 2) == 1
    assert dead_border_taps(8, 5, 1, 4, 2) == 0 and dead_border_taps(2, 5, 1, 2, 1) == 1


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_cut_convolutions_equal_the_full_kernel(dtype, tol, fresh_seed):
    """Outputs, input gradient and weight gradient (the cut taps' exactly 0, as the full kernel's)
    over the sweep, on non-square inputs (the cut is the smaller axis's), depthwise with a channel
    multiplier, fresh random values."""
    gen = torch.Generator().manual_seed(fresh_seed)
    for size, k, s, d, p in GEOMETRIES[::3]:
        x = torch.randn(2, 3, size, size + 1, dtype=dtype, generator=gen).requires_grad_()
        w = torch.randn(6, 1, k, k, dtype=dtype, generator=gen).requires_grad_()
        full = F.conv2d(x, w, None, s, p, d, 3)
        cut = conv2d_live_taps(x, w, s, p, d, 3)
        assert cut.shape == full.shape
        g = torch.randn(full.shape, dtype=dtype, generator=gen)
        want = torch.autograd.grad(full, (x, w), g)
        got = torch.autograd.grad(cut, (x, w), g)
        torch.testing.assert_close(cut, full, atol=tol, rtol=tol)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
        t = min(dead_border_taps(size, k, s, p, d), dead_border_taps(size + 1, k, s, p, d))
        if t:
            assert not got[1][..., :t, :].any() and not got[1][..., -t:, :].any()


def test_strided_dilated_convs_read_one_phase():
    """reads_one_phase: stride = dilation > 1 and the padding a multiple of it, on both axes
    (DARTS's dil convs at stride 2); anything else reads every pixel."""
    assert reads_one_phase(2, 2, 2) and reads_one_phase(2, 4, 2) and reads_one_phase(3, (0, 3), 3)
    assert reads_one_phase((2, 2), (0, 2), (2, 2))
    for stride, padding, dilation in ((1, 2, 2), (2, 1, 2), (2, 2, 1), (1, 0, 1), ((2, 1), 2, (2, 1)), (2, 3, 2),
                                      (3, 2, 2), ((2, 2), (2, 1), (2, 2))):
        assert not reads_one_phase(stride, padding, dilation), (stride, padding, dilation)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_one_phase_convolutions_run_undilated_on_the_phase(dtype, tol, monkeypatch, fresh_seed):
    """Every geometry of the sweep that reads one phase (after the cut) runs as an undilated
    stride-1 conv of x[..., ::d, ::d] (the convolution call recorded) with the full conv's outputs and
    gradients, on odd and even, non-square inputs, NCHW and NHWC, depthwise with a channel
    multiplier; the other geometries call F.conv2d with their own stride and dilation."""
    import ndarts.conv_taps as conv_taps

    calls = []
    conv = conv_taps._conv

    def recording_conv(x, w, bias, stride, padding, dilation, groups):
        calls.append((tuple(x.shape[-2:]), stride, tuple(dilation) if isinstance(dilation, tuple) else (dilation,) * 2))
        return conv(x, w, bias, stride, padding, dilation, groups)

    monkeypatch.setattr(conv_taps, "_conv", recording_conv)
    gen = torch.Generator().manual_seed(fresh_seed)
    phased = 0
    for size, k, s, d, p in GEOMETRIES:
        x = torch.randn(2, 3, size, size + 1, dtype=dtype, generator=gen)
        if size % 2:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(6, 1, k, k, dtype=dtype, generator=gen).requires_grad_()
        calls.clear()
        got = conv2d_live_taps(x, w, s, p, d, 3)
        cut, cut_padding = live_kernel(w, x.shape[-2:], s, p, d)
        if reads_one_phase(s, cut_padding, d):
            phased += 1
            assert calls == [(((size + d - 1) // d, (size + d) // d), 1, (1, 1))], (size, k, s, d, p)
        else:  # an axis cut to one tap runs undilated (its dilation changes nothing)
            want_dilation = tuple(1 if taps == 1 else d for taps in cut.shape[-2:])
            assert calls == [((size, size + 1), s, want_dilation)], (size, k, s, d, p)
        want = F.conv2d(x, w, None, s, p, d, 3)
        assert got.shape == want.shape
        g = torch.randn(want.shape, dtype=dtype, generator=gen)
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        for a, b in zip(torch.autograd.grad(got, (x, w), g), torch.autograd.grad(want, (x, w), g)):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    assert phased > 40


@pytest.mark.parametrize("padding,dilation", [(1, 2), (2, 1), ((2, 3), 2), (2, (2, 1))])
def test_conv2d_one_phase_refuses_a_conv_that_reads_every_pixel(padding, dilation):
    """conv2d_one_phase names the geometry it cannot run instead of computing another conv."""
    with pytest.raises(ValueError, match=r"reads more than one phase.*dilation must be > 1 and divide its padding"):
        conv2d_one_phase(torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3), padding, dilation, 2)


def test_live_kernel_is_a_view_and_the_padding_shrinks_with_it():
    w = torch.randn(4, 1, 5, 5)
    cut, padding = live_kernel(w, (2, 2), 1, 4, 2)
    assert cut.shape == (4, 1, 1, 1) and padding == (0, 0) and cut.data_ptr() == w[:, :, 2:3, 2:3].data_ptr()
    same, padding = live_kernel(w, (8, 8), 1, 4, 2)
    assert same is w and padding == (4, 4)
    _, padding = live_kernel(w, (4, 2), (1, 1), (4, 4), (2, 2))  # the smaller axis's cut on both: 1 tap
    assert padding == (2, 2)


def test_depthwise_live_taps_calls_what_it_cannot_cut(fresh_seed):
    """A module it cannot express as a cut F.conv2d (a bias, reflect padding, a subclass) is called
    as it is; a plain one gives the module's output, also under CPU bf16 autocast."""
    x = torch.randn(2, 4, 2, 2)
    plain = torch.nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4, bias=False)
    torch.testing.assert_close(depthwise_live_taps(plain, x), plain(x), atol=1e-6, rtol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = plain(x), depthwise_live_taps(plain, x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    for conv in (torch.nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4, bias=True),
                 torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, padding_mode="reflect")):
        called = []
        conv.register_forward_hook(lambda *a: called.append(1))
        torch.testing.assert_close(depthwise_live_taps(conv, x), conv(x))
        assert called == [1, 1]


@pytest.mark.parametrize("primitive", ["sep_conv_5x5", "dil_conv_5x5", "dil_conv_3x3"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size,stride", [(1, 1), (2, 1), (4, 1), (5, 2), (8, 2)])
def test_grouped_stacks_on_small_maps_equal_the_per_edge_convs(primitive, channels_last, size, stride, fresh_seed):
    """A batched conv stack (both first-stage formulations: edge-major NCHW, the channel multiplier
    on NHWC) on maps where its kernels cut taps, and at stride 2 (a reduction cell's: the dil convs
    on one phase of the input), against each edge's DARTS op with the same weights on the full
    kernels: outputs, input and every weight gradient (float64)."""
    from ndarts.edge_groups import make_grouped_op
    from ndarts.grouped_state import edge_views
    from ndarts.operations import OPS

    C, edges = 3, 2
    stack = make_grouped_op(primitive, C, edges, stride).double()
    ops = [OPS[primitive](C, stride, False).double() for _ in range(edges)]
    for e, op in enumerate(ops):
        op.load_state_dict({n: v for n, (_, v) in edge_views(stack.state_dict(), e).items()})
    x = torch.randn(2, C, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    y = stack(F.relu(xs[0]))
    want = torch.cat([op(xs[1]) for op in ops], dim=1)  # DARTS's ops begin with their own ReLU
    torch.testing.assert_close(y, want, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    want.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-12, rtol=1e-12)
    grads = {n: p.grad for n, p in stack.named_parameters()}
    for e, op in enumerate(ops):
        got = edge_views(grads, e)
        for n, p in op.named_parameters():
            torch.testing.assert_close(got[n][1], p.grad, atol=1e-12, rtol=1e-12, msg=f"edge {e} {n}")


@pytest.mark.parametrize("size", [2, 4])
def test_depthwise_conv_of_relu_on_torch_cuts_taps(size, fresh_seed):
    """The sep convs' dw2 that keeps bn1's output (recompute_relu) on PyTorch's kernels: cut taps,
    the same output and gradients as conv(relu(y)) with the full kernel (float64)."""
    from ndarts.depthwise_conv import depthwise_conv_of_relu

    conv = torch.nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4, bias=False).double()
    y = torch.randn(2, 4, size, size, dtype=torch.float64)
    r = F.relu(y).requires_grad_()
    got = depthwise_conv_of_relu(r, y, conv)
    want = F.conv2d(F.relu(y), conv.weight, None, 1, 4, 2, 4)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(got)
    dr, dw = torch.autograd.grad(got, (r, conv.weight), g)
    rr = F.relu(y).requires_grad_()
    want_dr, want_dw = torch.autograd.grad(F.conv2d(rr, conv.weight, None, 1, 4, 2, 4), (rr, conv.weight), g)
    torch.testing.assert_close(dr, want_dr, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dw, want_dw, atol=1e-12, rtol=1e-12)


def test_live_taps_conv2d_equals_nn_conv2d(fresh_seed):
    """LiveTapsConv2d over a share of the sweep: dense and depthwise, with a bias, float64: the same
    outputs and gradients as nn.Conv2d with the same parameters."""
    from ndarts.conv_taps import LiveTapsConv2d

    gen = torch.Generator().manual_seed(fresh_seed)
    for size, k, s, d, p in GEOMETRIES[1::7]:
        for groups, bias in ((1, True), (4, False)):
            conv = torch.nn.Conv2d(4, 8, k, s, p, d, groups, bias=bias).double()
            cut = torch.nn.Conv2d(4, 8, k, s, p, d, groups, bias=bias).double()
            cut.load_state_dict(conv.state_dict())
            cut.__class__ = LiveTapsConv2d
            x = torch.randn(2, 4, size + 1, size, dtype=torch.float64, generator=gen)
            want, got = conv(x), cut(x)
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
            g = torch.randn(want.shape, dtype=torch.float64, generator=gen)
            for a, b in zip(torch.autograd.grad(got, list(cut.parameters()), g),
                            torch.autograd.grad(want, list(conv.parameters()), g)):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_evaluation_cells_cut_their_dead_taps_with_the_same_math(fresh_seed):
    """The DARTS evaluation network's cells run LiveTapsConv2d (the stem and the 1×1 convs stay
    nn.Conv2d; the state_dict keys are DARTS's): on 8×8 digits-sized inputs, where cells run on
    4×4 and 2×2 maps, outputs and every gradient equal those of the same network with plain
    nn.Conv2d (float64)."""
    from ndarts.conv_taps import LiveTapsConv2d
    from ndarts.eval_model import build_network
    from ndarts.genotype import load_genotype

    genotype = load_genotype("DARTS_V2")
    net = build_network("cifar", genotype, 6, 5, 5, auxiliary=True, in_channels=1).double()
    kinds = {type(m) for m in net.cells.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kinds == {torch.nn.Conv2d, LiveTapsConv2d}
    assert all(type(m) is torch.nn.Conv2d for m in net.stem.modules() if isinstance(m, torch.nn.Conv2d))
    plain = build_network("cifar", genotype, 6, 5, 5, auxiliary=True, in_channels=1).double()
    for m in plain.modules():
        if type(m) is LiveTapsConv2d:
            m.__class__ = torch.nn.Conv2d
    assert net.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(net.state_dict())
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    grads = []
    for model in (net, plain):
        model.train()
        logits, aux = model(x)
        (logits.logsumexp(1).sum() + aux.square().sum()).backward()
        grads.append((logits.detach(), aux.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-10, rtol=1e-10)
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("stride,size", [(1, (2, 3)), (2, (5, 7))])  # stride 2: the one-phase conv
def test_cut_convolutions_compile_without_a_graph_break(stride, size, fresh_seed, recwarn):
    """torch.compile(fullgraph=True) traces LiveTapsConv2d (the cut is decided from the static
    shape, outside the cache that dynamo would warn about) and gives nn.Conv2d's output."""
    from ndarts.conv_taps import LiveTapsConv2d

    torch._dynamo.reset()
    conv = torch.nn.Conv2d(4, 4, 5, stride=stride, padding=4, dilation=2, groups=4, bias=False)
    want = conv(x := torch.randn(2, 4, *size))
    conv.__class__ = LiveTapsConv2d
    compiled = torch.compile(conv, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), want)
    assert not [w for w in recwarn if "lru_cache" in str(w.message)]


@pytest.mark.parametrize("k,padding", [(3, 2), (5, 4)])
def test_a_depthwise_kernel_cut_to_its_centre_tap_is_a_per_channel_scale(k, padding, monkeypatch, fresh_seed):
    """A dil conv on a 2×2 map keeps only its centre tap: on a CPU conv2d_live_taps runs it as x·w
    (no convolution call), with F.conv2d's outputs exactly (one product each) and its gradients;
    with a channel multiplier it stays a convolution, undilated (a 1×1 kernel reads no neighbour)."""
    import ndarts.conv_taps as conv_taps

    gen = torch.Generator().manual_seed(fresh_seed)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64, generator=gen).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 1, k, k, dtype=torch.float64, generator=gen).requires_grad_()
    want = F.conv2d(x, w, None, 1, padding, 2, 4)
    with monkeypatch.context() as patched:
        patched.setattr(conv_taps, "depthwise_conv2d", lambda *a: pytest.fail("a convolution was called"))
        patched.setattr(conv_taps.F, "conv2d", lambda *a: pytest.fail("a convolution was called"))
        got = conv2d_live_taps(x, w, 1, padding, 2, 4)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    for a, b in zip(torch.autograd.grad(got, (x, w), g), torch.autograd.grad(want, (x, w), g)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    w2 = torch.randn(8, 1, k, k, dtype=torch.float64, generator=gen)
    seen = []
    depthwise = conv_taps.depthwise_conv2d
    monkeypatch.setattr(conv_taps, "depthwise_conv2d", lambda *a: seen.append(a[4]) or depthwise(*a))
    torch.testing.assert_close(conv2d_live_taps(x, w2, 1, padding, 2, 4), F.conv2d(x, w2, None, 1, padding, 2, 4),
                               atol=1e-12, rtol=1e-12)
    assert seen == [(1, 1)]

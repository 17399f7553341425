"""The Triton BatchNorm of the search ops (interpreter on CPU) against torch's BatchNorm2d.

Forward output, input gradient and the running statistics after several steps, on fresh random
inputs with odd shapes and a large mean (Chan's merge), per dtype; the module swap keeps the
state_dict; eval mode and the torch backend are plain nn.BatchNorm2d (search_batch_norms in eval
mode under no_grad runs the kernels on the running statistics, against nn.BatchNorm2d in eval mode).
"""
from unittest import mock

import pytest
import torch
import torch.nn as nn

import ndarts_kernels
from network_checks import assert_same_forward_backward, random_running_stats
from ndarts.batch_norm import SearchBatchNorm2d, batch_norm_train, use_search_batch_norm

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (dtype, atol, rtol) on y and dx; the kernels compute in fp32 and round once.
DTYPES = [(torch.float32, 3e-5, 3e-5), (torch.bfloat16, 4e-2, 2e-2), (torch.float16, 5e-3, 3e-3)]
SHAPES = [(2, 3, 5, 7), (5, 4, 8, 8), (3, 2, 1, 1), (1, 5, 13, 11), (7, 1, 3, 4)]


def _reference(x, g, momentum, eps, steps=1):
    bn = nn.BatchNorm2d(x.shape[1], affine=False, momentum=momentum, eps=eps).to(x.device)
    xr = x.detach().float().clone().requires_grad_()
    for _ in range(steps):
        y = bn(xr)
    y.backward(g.float())
    return y.detach(), xr.grad, bn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_batch_norm(fresh_seed, device, dtype, atol, rtol, shape):
    if device == "cuda" and ndarts_kernels.INTERPRETED:
        pytest.skip("kernels defined for the interpreter")
    offset = float(torch.empty(()).uniform_(-3, 3))
    x = (torch.randn(shape, device=device) * torch.rand(shape[1], 1, 1, device=device).add(0.2) + offset).to(dtype)
    g = torch.randn(shape, device=device).to(dtype)
    momentum, eps = float(torch.empty(()).uniform_(0.05, 0.5)), 1e-5
    bn = SearchBatchNorm2d(shape[1], affine=False, momentum=momentum, eps=eps, backend="triton").to(device).train()
    xt = x.detach().clone().requires_grad_()
    for _ in range(3):
        y = bn(xt)
    y.backward(g)
    y_ref, dx_ref, ref = _reference(x, g, momentum, eps, steps=3)
    torch.testing.assert_close(y.float(), y_ref, atol=atol, rtol=rtol)
    rstd = (x.double().var((0, 2, 3), unbiased=False) + eps).rsqrt().view(1, -1, 1, 1)  # the batch's, exact
    if dtype == torch.float32:
        # both sides round the channel mean a few ulps of |x| apart; dx = rstd·(g − ḡ − x̂·mean(g·x̂)) scales
        # that by rstd², and rstd reaches ~40 with 3 values per channel (seed 3684082989: 1.6e-4 off, 2026-12-06)
        spread = float(x.abs().max() * g.abs().max() * rstd.max() ** 2)
        dx_atol = max(atol * 4, 2 * torch.finfo(torch.float32).eps * spread)
        torch.testing.assert_close(xt.grad.float(), dx_ref, atol=dx_atol, rtol=rtol * 4)
    # the backward reads y as stored (x̂ rounded to the dtype: the BatchNorm keeps only its output), which
    # with few values per channel and a large rstd moves dx by more than the dtype's rounding; so dx
    # against rstd·(g − mean g − y·mean g·y) in float64 from that y and the batch's exact rstd
    yd, gd = y.detach().double(), g.double()
    want = rstd * (gd - gd.mean((0, 2, 3), keepdim=True) - yd * (gd * yd).mean((0, 2, 3), keepdim=True))
    torch.testing.assert_close(xt.grad.double(), want, atol=atol * 4, rtol=rtol * 4)
    # running statistics: three momentum updates with the unbiased batch variance, as torch
    stat_tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=stat_tol, rtol=stat_tol)
    torch.testing.assert_close(bn.running_var, ref.running_var, atol=stat_tol, rtol=stat_tol)
    assert int(bn.num_batches_tracked) == 3 == int(ref.num_batches_tracked)


def test_large_mean_does_not_cancel(fresh_seed):
    """mean 1e4, std 1: Σx and Σx² in fp32 would return garbage; the Chan merge gives the std."""
    x = torch.randn(4, 3, 9, 9) + 1e4
    y, _ = ndarts_kernels.batch_norm_forward(x, None, None, None, 0.1, 1e-5)
    ref = (x.double() - x.double().mean((0, 2, 3), keepdim=True)) / (x.double().var((0, 2, 3), unbiased=False,
                                                                                    keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(y.double(), ref, atol=2e-3, rtol=1e-3)


def test_backward_keeps_only_the_output(fresh_seed):
    """The op saves y (and rstd), not x: x can be freed after the forward."""
    x = torch.randn(3, 4, 6, 6, requires_grad=True)
    y = batch_norm_train(x)
    saved = y.grad_fn.saved_tensors
    assert any(t.data_ptr() == y.data_ptr() for t in saved)
    assert all(t.data_ptr() != x.data_ptr() for t in saved)


def test_module_swap_keeps_state_and_eval_is_torch(fresh_seed):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4))
    net[1].running_mean.uniform_()
    net[1].num_batches_tracked.fill_(7)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    use_search_batch_norm(net, backend="triton")
    assert type(net[1]) is SearchBatchNorm2d and type(net[2]) is nn.BatchNorm2d  # affine BN untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.randn(2, 3, 7, 7)
    net.eval()
    plain = nn.BatchNorm2d(4, affine=False)
    plain.load_state_dict(net[1].state_dict())
    plain.eval()
    h = net[0](x)
    torch.testing.assert_close(net[1](h), plain(h))


def test_torch_backend_is_nn_batch_norm(fresh_seed):
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    bn = SearchBatchNorm2d(3, affine=False, backend="torch").train()
    y = bn(x)
    assert "Native" in type(y.grad_fn).__name__ or "BatchNorm" in type(y.grad_fn).__name__


def test_bad_input_is_named():
    bn = SearchBatchNorm2d(3, affine=False, backend="triton").train()
    with pytest.raises(ValueError, match="channels"):
        bn(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="more than 1 value"):
        batch_norm_train(torch.randn(1, 3, 1, 1))
    with pytest.raises(TypeError, match="float32"):
        ndarts_kernels.batch_norm_forward(torch.randn(2, 3, 4, 4).double(), None, None, None, 0.1, 1e-5)


def test_search_network_with_triton_batch_norm_equals_torch(fresh_seed):
    """A small search network: the Triton BatchNorms (interpreter) give the outputs, gradients
    and BatchNorm buffers of torch's, through a forward and backward."""
    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork

    kw = dict(C=4, num_classes=5, layers=2, primitives=["max_pool_3x3", "skip_connect", "sep_conv_3x3"],
              noise=NoiseConfig(kind="none"), fused=True, steps=2, multiplier=2, in_channels=2, backend="torch",
              channels_last=False)  # NCHW: the kernels' layout (switched to 'triton' below)
    ref = SearchNetwork(**kw, fused_batch_norm=False)
    tri = SearchNetwork(**kw, fused_batch_norm=True)
    tri.load_state_dict(ref.state_dict())
    for m in tri.modules():
        if isinstance(m, SearchBatchNorm2d):
            m.backend = "triton"
    assert sum(isinstance(m, SearchBatchNorm2d) for m in tri.modules()) > 10
    from unittest import mock

    with mock.patch.object(ndarts_kernels, "batch_norm_forward", wraps=ndarts_kernels.batch_norm_forward) as fwd, \
            mock.patch.object(ndarts_kernels, "batch_norms_forward", wraps=ndarts_kernels.batch_norms_forward) as fwds:
        assert_same_forward_backward((ref, tri), torch.randn(5, 2, 7, 7), out_tol=(1e-5, 1e-4),
                                     buffer_tol=(1e-5, 1e-4))
    # the BatchNorms ran on the kernels (several per launch where a cell batches them)
    assert fwd.call_count + sum(len(c.args[0]) for c in fwds.call_args_list) > 10


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES[:2])
@pytest.mark.parametrize("relu", [(True, False, True, False, True), (False,), (True,), (False, True, True)])
def test_several_batch_norms_per_launch_with_fused_relus(fresh_seed, dtype, atol, rtol, relu):
    """batch_norms_forward/backward: T tensors of one shape, each with its own statistics (eight per
    launch), ReLUs fused where asked, against torch's BatchNorm2d + ReLU."""
    from unittest import mock

    from ndarts.batch_norm import search_batch_norms

    shape = (3, 5, 7, 6)
    xs = [(torch.randn(shape) * (t + 1) + 2.0 * t).to(dtype).requires_grad_() for t in range(len(relu))]
    gs = [torch.randn(shape).to(dtype) for _ in relu]
    momentum = float(torch.empty(()).uniform_(0.05, 0.5))
    bns = [SearchBatchNorm2d(shape[1], affine=False, momentum=momentum, backend="triton").train() for _ in relu]
    refs = [nn.BatchNorm2d(shape[1], affine=False, momentum=momentum).train() for _ in relu]
    for bn, ref in zip(bns, refs):  # start the running statistics away from their init
        bn.running_mean.uniform_(-1, 1)
        ref.running_mean.copy_(bn.running_mean)
    from triton.runtime import interpreter

    launches = []
    run = interpreter.GridExecutor.__call__

    def counted(executor, *args, **kwargs):
        launches.append(executor.fn.__name__)
        return run(executor, *args, **kwargs)

    with mock.patch.object(interpreter.GridExecutor, "__call__", counted), \
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        outs = search_batch_norms(xs, bns, relu)
        torch.autograd.backward(outs, gs)
    chunks = -(-len(relu) // ndarts_kernels.batch_norm.MAX_TENSORS)
    assert sorted(launches) == sorted(["_bn_stats_kernel", "_bn_apply_kernel", "_bn_grad_stats_kernel",
                                       "_bn_grad_apply_kernel"] * chunks)
    assert not [e.name for e in prof.events() if e.name in ("aten::relu", "aten::threshold_backward")]  # fused
    for x, g, out, bn, ref, r in zip(xs, gs, outs, bns, refs, relu):
        xr = x.detach().float().requires_grad_()
        y_ref = ref(xr)
        y_ref = torch.relu(y_ref) if r else y_ref
        y_ref.backward(g.float())
        torch.testing.assert_close(out.float(), y_ref, atol=atol, rtol=rtol)
        torch.testing.assert_close(x.grad.float(), xr.grad, atol=atol * 4, rtol=rtol * 4)
        if r:
            assert bool((out >= 0).all()) and bool((out == 0).any())
        stat_tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=stat_tol, rtol=stat_tol)
        torch.testing.assert_close(bn.running_var, ref.running_var, atol=stat_tol, rtol=stat_tol)
        assert int(bn.num_batches_tracked) == 1 == int(ref.num_batches_tracked)


def test_several_batch_norms_need_alike_inputs():
    with pytest.raises(ValueError, match="alike"):
        ndarts_kernels.batch_norms_forward([torch.randn(2, 3, 4, 4), torch.randn(2, 3, 5, 4)], None, None, None,
                                           0.1, 1e-5)


@pytest.mark.parametrize("channels", [(5, 1, 12, 3), (2, 7, 1, 4, 9, 3, 6, 5, 8, 2)])  # 10: two launches
def test_batch_norms_of_different_channel_counts_share_a_launch(fresh_seed, channels):
    """One launch takes up to eight tensors of one batch and image size whatever their channel
    counts (a node's pools with its conv group's first stage): each channel its own statistics,
    the running statistics of each tensor, ReLUs fused where asked; against torch."""
    from ndarts.batch_norm import search_batch_norms

    n, h, w = 3, 5, 6
    relu = [k % 2 == 0 for k in range(len(channels))]
    xs = [(torch.randn(n, c, h, w) * (k + 1) - k).requires_grad_() for k, c in enumerate(channels)]
    gs = [torch.randn(n, c, h, w) for c in channels]
    bns = [SearchBatchNorm2d(c, affine=False, backend="triton").train() for c in channels]
    refs = [nn.BatchNorm2d(c, affine=False).train() for c in channels]
    for bn, ref in zip(bns, refs):
        bn.running_var.uniform_(0.5, 2)
        ref.running_var.copy_(bn.running_var)
    from unittest import mock

    with mock.patch.object(ndarts_kernels, "batch_norms_forward", wraps=ndarts_kernels.batch_norms_forward) as fwd:
        outs = search_batch_norms(xs, bns, relu)
    assert fwd.call_count == 1
    torch.autograd.backward(outs, gs)
    for x, g, out, bn, ref, r in zip(xs, gs, outs, bns, refs, relu):
        xr = x.detach().clone().requires_grad_()
        y = torch.relu(ref(xr)) if r else ref(xr)
        y.backward(g)
        torch.testing.assert_close(out, y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-6, rtol=1e-5)
        assert int(bn.num_batches_tracked) == 1


def test_given_partial_moments_of_any_count_merge_like_the_statistics_kernel(fresh_seed):
    """Statistics handed in as partial (count, mean, M2) per channel, here one partial per image of
    a 300-image batch (more than the apply kernel merges per step: two chunks), off-centre: the
    outputs, rstd and running statistics equal those of the launch that makes them itself."""
    x = torch.randn(300, 3, 2, 3) * 0.5 + 3.0
    flat = x.transpose(0, 1).reshape(3, 300, 6)
    mean = flat.mean(2)
    moments = torch.stack([torch.full_like(mean, 6.0), mean, ((flat - mean[..., None]) ** 2).sum(2)], 2)
    assert moments.shape[1] > ndarts_kernels.batch_norm.MERGE_CHUNK
    runs = []
    for given in ([moments.contiguous()], None):
        buffers = [[torch.zeros(3)], [torch.ones(3)], [torch.zeros((), dtype=torch.long)]]
        ys, _, rstd = ndarts_kernels.batch_norms_forward([x], *buffers, 0.1, 1e-5, moments=given)
        runs.append([ys[0], rstd, *sum(buffers, [])])
    # y = (x - mean)·rstd: the two merge orders may round mean a few ulps of |x| apart (the data sit
    # off-centre, at 3), which rstd scales; a fixed atol of 1e-6 failed about 1 seed in 50 (2026-12-01)
    y_atol = 8 * torch.finfo(torch.float32).eps * float(x.abs().max() * runs[1][1].max())
    for i, (a, b) in enumerate(zip(*runs)):
        torch.testing.assert_close(a, b, atol=y_atol if i == 0 else 1e-6, rtol=1e-5)
    torch.testing.assert_close(runs[0][0], torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("given_for", [(0, 2), (2,)], ids=["lazy_given", "lazy_summed_here"])
def test_given_gradient_sums_of_any_count_merge_like_the_statistics_kernel(fresh_seed, fold, given_for):
    """The backward's Σg and Σg·y handed in as partial sums per channel (as the group-sum kernels
    make them for a deferred BatchNorm: one per image), for some tensors of a launch, one with 300
    partials (more than the apply kernel merges per step): every dx (or fold) equals that of the
    launch that sums itself, ReLU-masked and lazy tensors among the others (the lazy one given its
    sums, or summed here beside a given one: its statistics gathered for the partial launch)."""
    n, h, w = 300, 2, 3
    channels, relu, lazy = (3, 2, 4), [False, True, False], [True, False, False]
    xs = [torch.randn(n, c, h, w) * 2 + 1 for c in channels]
    mean = torch.empty(sum(channels))
    ys, _, rstd = ndarts_kernels.batch_norms_forward(xs, None, None, None, 0.1, 1e-5, relu=relu,
                                                     apply=[not z for z in lazy], mean_out=mean)
    outs = [x if z else y for x, y, z in zip(xs, ys, lazy)]
    gs = [torch.randn_like(x) for x in xs]
    y0 = (xs[0] - mean[:3].view(1, -1, 1, 1)) * rstd[:3].view(1, -1, 1, 1)  # the lazy tensor's y
    given = [None] * 3
    for t in given_for:  # per image, as the group sums give them (ReLU-free tensors)
        y = y0 if t == 0 else outs[2]
        given[t] = torch.stack([gs[t].sum((2, 3)), (gs[t] * y).sum((2, 3))], 2).transpose(0, 1).contiguous()
    assert given[2].shape == (4, n, 2) and n > ndarts_kernels.batch_norm.MERGE_CHUNK
    runs = [ndarts_kernels.batch_norms_backward(gs, outs, rstd, relu=relu, fold=[fold] * 3, lazy=lazy, mean=mean,
                                                sums=sums) for sums in (given, None)]
    for t, (a, b) in enumerate(zip(*runs)):
        if fold:  # the fold's sums merge to the same per-channel totals
            torch.testing.assert_close(a.sums.sum(1), b.sums.sum(1), atol=1e-3, rtol=1e-4, msg=f"tensor {t}")
            assert a.sums.shape[1] == (n if given[t] is not None else b.sums.shape[1])
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"tensor {t}")
    with pytest.raises(ValueError, match="gradient sums for 4 channels"):
        ndarts_kernels.batch_norms_backward(gs, outs, rstd, relu=relu, lazy=lazy, mean=mean,
                                            sums=[None, None, given[2][:2]])


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("channels,relu,defer", [
    ((5, 1, 12, 3), (True, False, False, True), (False, True, False, False)),
    ((2, 7, 1, 4, 9, 3, 6, 5, 8, 2), (True,) * 4 + (False,) * 6, (False,) * 6 + (True,) * 4),  # two launches
    ((3,), (False,), (True,))])
def test_eval_mode_batch_norms_run_the_kernels_with_the_running_statistics(fresh_seed, dtype, atol, rtol,
                                                                         channels, relu, defer):
    """search_batch_norms in eval mode under no_grad (an evaluation): one apply launch per eight
    tensors normalising with the running statistics, the ReLUs fused, no statistics pass, the
    running statistics untouched; a deferred BatchNorm's output is its input, with the running mean
    and rstd for its reader. Equal to nn.BatchNorm2d in eval mode (+ ReLU)."""
    from ndarts.batch_norm import search_batch_norms

    xs = [(torch.randn(3, c, 5, 7) * 2 + 1).to(dtype) for c in channels]
    bns = [SearchBatchNorm2d(c, affine=False, eps=0.05, backend="triton").eval() for c in channels]  # eps matters
    for bn in bns:
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.05, 3.0)
        bn.num_batches_tracked.fill_(5)
    state = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    norms = []
    with torch.no_grad(), \
            mock.patch.object(ndarts_kernels, "batch_norms_forward", wraps=ndarts_kernels.batch_norms_forward) as fwd:
        outs = search_batch_norms(xs, bns, relu=[r and not d for r, d in zip(relu, defer)], defer=defer,
                                  norms_out=norms)
    assert fwd.call_count == 1 and fwd.call_args.kwargs["use_running"]
    for x, bn, out, r, d, norm, saved in zip(xs, bns, outs, relu, defer, norms, state):
        plain = nn.BatchNorm2d(x.shape[1], affine=False, eps=0.05).eval()
        plain.load_state_dict(saved)
        want = plain(x.float())
        if d:
            assert out is x and norm is not None
            shape = (1, -1, 1, 1)
            got = (x.float() - norm.mean.view(shape)) * norm.rstd.view(shape)
            torch.testing.assert_close(got, want, atol=3e-5, rtol=3e-5)
        else:
            assert norm is None and out.dtype == dtype
            torch.testing.assert_close(out.float(), want.relu() if r else want, atol=atol, rtol=rtol)
        for k, v in bn.state_dict().items():
            assert torch.equal(v, saved[k]), k


def test_eval_mode_batch_norms_with_gradients_to_take_are_torch_s(fresh_seed):
    """Eval mode with a gradient to take (not an evaluation): torch's BatchNorm, differentiable."""
    from ndarts.batch_norm import search_batch_norms

    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    bn = SearchBatchNorm2d(4, affine=False, backend="triton").eval()
    with mock.patch.object(ndarts_kernels, "batch_norms_forward") as fwd:
        (y,) = search_batch_norms([x], [bn], relu=[True])
    assert fwd.call_count == 0
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("separable", [False, True])
def test_search_network_evaluation_on_the_kernels_equals_torch(fresh_seed, separable):
    """A search network in eval mode under no_grad with the Triton kernels (interpreter: eval-mode
    BatchNorms on the running statistics, the stacks' last BatchNorms normalised by the group sums)
    gives the logits of the same network on torch's ops, with running statistics far from (0, 1)."""
    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.search_model import SearchNetwork

    kw = dict(C=4, num_classes=5, layers=3, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(), in_channels=3,
              fused=True, steps=2, multiplier=2, channels_last=False)
    tri = SearchNetwork(**kw, backend="triton", fused_separable_conv=separable)
    random_running_stats(tri)
    ref = SearchNetwork(**kw, backend="torch")
    ref.load_state_dict(tri.state_dict())
    x = torch.randn(3, 3, 7, 9)
    with torch.no_grad(), \
            mock.patch.object(ndarts_kernels, "batch_norms_forward", wraps=ndarts_kernels.batch_norms_forward) as fwd:
        got = tri.eval()(x)
    assert sum(c.kwargs.get("use_running", False) for c in fwd.call_args_list) >= 3 * 4  # every cell's stages
    with torch.no_grad():
        torch.testing.assert_close(got, ref.eval()(x), atol=1e-5, rtol=1e-5)

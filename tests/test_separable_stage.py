"""A batched conv stage as one Function (interpreter on CPU): the BatchNorm's statistics made by the
separable conv's forward kernel, its backward folded into the separable conv's backward kernel,
against float64 convs + BatchNorm per dtype, with and without the ReLU, on odd shapes; the other
tensors of the BatchNorm launch bitwise as unfolded; a deferred BatchNorm (no y written, its
consumers and its backward normalising z on load) as its y written and read back; the search
network with the stages fused equals the network without (outputs, every gradient, BatchNorm
statistics), pools joining the first stage; the deferred bn1 + ReLU (no y, no relu(y) written);
only the gradients a pass uses."""
import contextlib
from unittest import mock

import ndarts_kernels
from network_checks import assert_same_forward_backward
import pytest
import torch
import torch.nn.functional as F

from ndarts.edge_groups import EdgeGroup, GroupedConvStack

DTYPES = [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)]
# (N, groups, C, CO, H, W, K, stride, padding, dilation): a sep conv stage, a stride-2 dil conv on
# odd sizes, channels off the blocks
SHAPES = [(2, 2, 16, 16, 6, 7, 3, 1, 1, 1), (3, 2, 5, 3, 9, 7, 5, 2, 4, 2), (2, 3, 4, 6, 5, 5, 3, 1, 1, 1)]


def _draw(shape, dtype):
    n, g, c, co, h, w, k, *_ = shape
    x = torch.randn(n, g * c, h, w).to(dtype)
    w_dw = (torch.randn(g * c, 1, k, k) / k).to(dtype)
    w_pw = (torch.randn(g * co, c, 1, 1) / c ** 0.5).to(dtype)
    return x, w_dw, w_pw


@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_folded_batch_norm_matches_float64(fresh_seed, shape, dtype, tol, relu):
    check_folded_against_float64(shape, dtype, tol, relu)


def check_folded_against_float64(shape, dtype, tol, relu, device="cpu"):
    """bn(pw(dw(x))) (and its ReLU) with the BatchNorm's backward applied inside the conv's backward
    kernel: all three gradients as float64 convs and F.batch_norm give them; a second tensor of the
    BatchNorm launch (a pool's) gets its dx bitwise as without the fold."""
    n, g, c, co, h, w, k, stride, padding, dilation = shape
    x, w_dw, w_pw = (t.to(device) for t in _draw(shape, dtype))
    z = ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, stride, padding, dilation)
    other = torch.randn(n, 5, *z.shape[2:], device=device).to(dtype)
    ys, _, rstd = ndarts_kernels.batch_norms_forward([other, z], None, None, None, 0.1, 1e-5)
    grads = [torch.randn_like(y) for y in ys]
    folded = ndarts_kernels.batch_norms_backward(grads, ys, rstd, relu=[False, relu], fold=[False, True])
    plain = ndarts_kernels.batch_norms_backward(grads, ys, rstd, relu=[False, relu])
    assert torch.equal(folded[0], plain[0])
    assert isinstance(folded[1], ndarts_kernels.BatchNormGrad) and folded[1].relu == relu
    got = ndarts_kernels.separable_conv_backward(grads[1], x, w_dw, w_pw, stride, padding, dilation, bn=folded[1])

    xr, dr, pr = (t.double().requires_grad_() for t in (x, w_dw, w_pw))
    d = F.conv2d(xr, dr, None, stride, padding, dilation, groups=g * c)
    zr = F.conv2d(d, pr, groups=g)
    # the kernel's z (rounded to dtype) as the value, the float64 convs' gradient: the ReLU's mask and
    # the BatchNorm's statistics as the kernels saw them
    y = F.batch_norm(zr + (z.double() - zr).detach(), None, None, training=True, eps=1e-5)
    (F.relu(y) if relu else y).backward(grads[1].double())
    for name, a, b in (("dx", got[0], xr.grad), ("d_dw", got[1], dr.grad), ("d_pw", got[2], pr.grad)):
        assert a.dtype == dtype and a.shape == b.shape, name
        # relative to the gradient's largest value (bf16: the forward's z and y are rounded)
        torch.testing.assert_close(a.double(), b, atol=tol * b.abs().max().item(), rtol=tol,
                                   msg=lambda m: f"{name}: {m}")


def test_the_fold_over_two_launches_and_only_what_is_used(fresh_seed):
    """Nine tensors (two BatchNorm launches): each folded one's gradient statistics are its own;
    the α-step backward (no weight gradients) reads no conv input."""
    x, w_dw, w_pw = _draw(SHAPES[0], torch.float32)
    z = ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1)
    others = [torch.randn(2, 3 + t, *z.shape[2:]) for t in range(8)]
    ys, _, rstd = ndarts_kernels.batch_norms_forward(others + [z], None, None, None, 0.1, 1e-5)
    grads = [torch.randn_like(y) for y in ys]
    plain = ndarts_kernels.batch_norms_backward(grads, ys, rstd)
    fold = [t % 3 == 2 for t in range(9)]  # the last (z's) too, alone in the second launch
    folded = ndarts_kernels.batch_norms_backward(grads, ys, rstd, fold=fold)
    for t, f in enumerate(fold):
        assert isinstance(folded[t], ndarts_kernels.BatchNormGrad) == f
        if not f:
            assert torch.equal(folded[t], plain[t])
    want = ndarts_kernels.separable_conv_backward(plain[8], x, w_dw, w_pw, 1, 1, 1)
    got = ndarts_kernels.separable_conv_backward(grads[8], x, w_dw, w_pw, 1, 1, 1, bn=folded[8])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    dx, d_dw, d_pw = ndarts_kernels.separable_conv_backward(grads[8], torch.full_like(x, float("nan")), w_dw, w_pw,
                                                            1, 1, 1, need_weight=False, bn=folded[8])
    assert d_dw is None and d_pw is None and torch.equal(dx, got[0])


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_moments_from_the_forward_kernel(fresh_seed, dtype, tol):
    """The pair's forward kernel writes its output's BatchNorm statistics (partial moments, here of
    two pixel blocks per image: 2 250 pixels): z bitwise as without them; a BatchNorm launch that
    takes them (beside a tensor it makes the statistics of itself) gives the outputs, rstd and
    running statistics of the launch that reads z; an off-centre z (|mean| ≫ std) loses nothing."""
    x, w_dw, w_pw = _draw((2, 1, 16, 16, 50, 45, 3, 1, 1, 1), dtype)
    x = x + 4.0
    z, moments = ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1, moments=True)
    assert torch.equal(z, ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1))
    assert moments.shape == (16, 2 * 2, 3) and torch.equal(moments[..., 0].sum(1), torch.full((16,), 2 * 2250.0))
    other = torch.randn(2, 3, 50, 45).to(dtype)
    runs = []
    for given in ([None, moments], None):
        buffers = [[torch.zeros(3), torch.zeros(16)], [torch.ones(3), torch.ones(16)],
                   [torch.zeros((), dtype=torch.long) for _ in range(2)]]
        ys, _, rstd = ndarts_kernels.batch_norms_forward([other, z], *buffers, 0.1, 1e-5, moments=given)
        runs.append((ys, rstd, buffers))
    (ys, rstd, buffers), (ys_ref, rstd_ref, buffers_ref) = runs
    assert torch.equal(ys[0], ys_ref[0])
    torch.testing.assert_close(ys[1].float(), ys_ref[1].float(), atol=tol, rtol=tol)
    torch.testing.assert_close(rstd, rstd_ref, atol=0, rtol=1e-5)
    for a, b in zip(sum(buffers, []), sum(buffers_ref, [])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    want = F.batch_norm(z.double(), None, None, training=True, eps=1e-5)
    torch.testing.assert_close(ys[1].double(), want, atol=tol * 4, rtol=tol)
    with pytest.raises(ValueError, match="partial moments for 16 channels"):
        ndarts_kernels.batch_norms_forward([z], None, None, None, 0.1, 1e-5, moments=[moments[:8]])


def test_a_fold_that_does_not_fit_is_named():
    x, w_dw, w_pw = _draw(SHAPES[0], torch.float32)
    z = ndarts_kernels.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1)
    ys, _, rstd = ndarts_kernels.batch_norms_forward([z[:, :16]], None, None, None, 0.1, 1e-5)
    fold = ndarts_kernels.batch_norms_backward([torch.randn_like(ys[0])], ys, rstd, fold=[True])[0]
    with pytest.raises(ValueError, match="folded BatchNorm"):
        ndarts_kernels.separable_conv_backward(torch.randn_like(z), x, w_dw, w_pw, 1, 1, 1, bn=fold)


def _network(primitives, **kw):
    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork

    # one reduction cell (layers=1) of two nodes: a stride-2 group (the inputs') and a stride-1 one,
    # pools, sep and dil convs in both
    kw = dict(C=4, num_classes=5, layers=1, primitives=primitives, noise=NoiseConfig(kind="none"), fused=True,
              steps=2, multiplier=2, in_channels=2, channels_last=False, backend="triton", **kw)
    torch.manual_seed(5)
    return SearchNetwork(**kw)


PRIMITIVES = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"]


@pytest.mark.parametrize("primitives", [PRIMITIVES, [p for p in PRIMITIVES if p != "skip_connect"]],
                         ids=["with_skip", "without_skip"])
def test_search_network_with_fused_stages_equals_without(fresh_seed, primitives):
    """The network whose stacks run as fused stages (pairs and BatchNorms one Function each, the
    BatchNorm backward folded, the sep convs' ReLU deferred) equals the one on PyTorch's convs and
    the BatchNorm kernels: outputs, every gradient, the BatchNorm statistics. The pools' BatchNorms
    join the first stage's launch (their dx written) with their statistics from the pools kernel; no
    fused ReLU is written. A group whose
    sources' relu nothing else reads has its first stage read the sources themselves (the
    reduction cell's inputs group does only without skip_connect, whose FactorizedReduce reads it)."""
    ref = _network(primitives)
    tri = _network(primitives, fused_separable_conv=True)
    stacks = [m for m in tri.modules() if isinstance(m, GroupedConvStack)]
    with mock.patch.object(ndarts_kernels, "batch_norms_backward", wraps=ndarts_kernels.batch_norms_backward) as bwd, \
            mock.patch.object(ndarts_kernels, "batch_norms_forward", wraps=ndarts_kernels.batch_norms_forward) as fwd, \
            mock.patch.object(ndarts_kernels, "separable_pairs_forward",
                              wraps=ndarts_kernels.separable_pairs_forward) as sep_fwd, \
            mock.patch.object(ndarts_kernels, "relu_repeat_forward", wraps=ndarts_kernels.relu_repeat_forward) as rep, \
            mock.patch.object(ndarts_kernels, "separable_pairs_backward",
                              wraps=ndarts_kernels.separable_pairs_backward) as sep:
        assert_same_forward_backward((ref, tri), torch.randn(3, 2, 7, 7), out_tol=(1e-5, 1e-4),
                                     grad_tol=(2e-5, 2e-4), buffer_tol=(1e-6, 1e-5))
    read = sorted(c.kwargs["counts"] for c in sep_fwd.call_args_list if c.kwargs["counts"] is not None)
    skip = "skip_connect" in primitives
    # per first stage (both stacks' pairs in one launch) read from its sources: the node-0 group (one
    # source, one edge), and the inputs' (2 + 2)
    assert read == [(1,)] + ([] if skip else [(2, 2)])
    # relu + repeat launches (one per group whose sources' relu nothing else reads): all the reference's; and
    # each network's stem relu (one launch, an alias per reader: SearchNetwork._cell_relus)
    assert rep.call_count == (1 if skip else 2) + 2
    folds = [c.kwargs["fold"] for c in bwd.call_args_list if c.kwargs.get("fold")]
    groups = len(stacks) // 2  # two stacks (sep, dil) per group
    sources = [m.sources for m in tri.modules() if isinstance(m, EdgeGroup)]
    assert len(folds) == 2 * groups  # two stages per group
    # the first stage: both stacks folded, the two pools' BatchNorms of each source node not; the second:
    # the sep conv's
    assert sorted(folds) == sorted([[True]] * groups + [[True, True] + [False] * 2 * len(s) for s in sources])
    # the stages' BatchNorm launches: statistics from the pair kernels, no fused ReLU written
    given = [c.kwargs for c in fwd.call_args_list if c.kwargs.get("moments")]
    full = [all(m is not None for m in k["moments"]) for k in given]
    # each stage's launch has every statistic from the kernel that wrote the tensor: the pairs' and the
    # pools' (no statistics kernel reads the pools' outputs)
    staged = [k for k, f in zip(given, full) if f]
    assert len(staged) == 2 * groups
    # the reference's first BatchNorm launch of each group takes its pools' statistics from the pools
    # kernel too (its stacks' outputs: the statistics kernel's)
    assert sorted(sum(m is not None for m in k["moments"]) for k, f in zip(given, full) if not f) == \
        sorted(2 * len(s) for s in sources)
    assert all(not any(k.get("relu") or []) for k in staged)
    # deferred BatchNorms write no y: the first stage's launch the sep conv's bn1 (the second stage normalises on
    # load) and the dil conv's bn, the second's the sep conv's bn2 (the group sums normalise on load)
    assert sorted(list(k["apply"]).count(False) for k in staged) == [1] * groups + [2] * groups
    # one launch per stage: the sep and dil convs' first pairs, the sep conv's second, BatchNorms folded
    assert sorted(len(c.args[0]) for c in sep.call_args_list) == [1] * groups + [2] * groups
    assert all(len(c.kwargs["bns"]) == len(c.args[0]) for c in sep.call_args_list)
    # the ReLU read in: the sep convs' second pairs, and the first pairs that read their sources
    assert [c.kwargs["relu_input"] for c in sep.call_args_list].count(True) == groups + len(read)
    # the sep conv's bn1 takes the backward sums its second pair's input-gradient kernel made; the dil conv's bn
    # those of the group sums where they make them (4×4 planes: the reduction cell; not 7×7), the pools' none
    first = [(c.kwargs.get("sums"), c.args[1][0].shape[2:]) for c in bwd.call_args_list
             if len(c.kwargs.get("fold") or []) > 1]
    assert len(first) == groups
    for sums, size in first:
        assert sums[0] is not None and (sums[1] is not None) == (size == (4, 4)) and all(t is None for t in sums[2:])


def test_a_weight_gradient_is_computed_only_when_the_pass_uses_it(fresh_seed):
    """The α step's autograd.grad asks the stages for no weight gradient, a w step for no input
    gradient of the first stage (relu(h) of the inputs does not require grad)."""
    net = _network(["skip_connect", "sep_conv_3x3"], fused_separable_conv=True)
    x = torch.randn(2, 2, 5, 5)
    with mock.patch.object(ndarts_kernels, "separable_pairs_backward",
                           wraps=ndarts_kernels.separable_pairs_backward) as sep:
        torch.autograd.grad(net(x).logsumexp(1).sum(), net.arch_parameters(), allow_unused=True)
        assert sep.call_count and not any(c.kwargs["need_weight"] for c in sep.call_args_list)
        sep.reset_mock()
        net(x).logsumexp(1).sum().backward(inputs=net.weight_parameters())
        assert sep.call_count and all(c.kwargs["need_weight"] for c in sep.call_args_list)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_a_deferred_batch_norm_equals_its_output_read_back(fresh_seed, dtype, tol):
    check_deferred_batch_norm(dtype, tol, (2, 2, 5, 7, 6))


def check_deferred_batch_norm(dtype, tol, shape, device="cpu"):
    """A sep conv's bn1 deferred (ndarts.separable_stage): its launch writes the statistics (and the
    running ones) but no y; the next pairs read relu((z − mean)·rstd), the backward makes y from z
    on load (gradient statistics, the fold). Against y written and read back: fp32 bitwise in the
    interpreter, else within the dtype's rounding (bf16: y is then never rounded to bf16); the
    launch's other tensor bitwise.
    shape: (N, groups, C, H, W)."""
    n, g, c, h, w = shape
    zs = [torch.randn(n, g * c, h, w, device=device).to(dtype) * 3 + 1 for _ in range(2)]
    other = torch.randn(n, 3, h, w, device=device).to(dtype)
    running = [[torch.zeros(t.shape[1], device=device), torch.ones(t.shape[1], device=device),
                torch.zeros((), dtype=torch.long, device=device)] for t in zs + [other]] * 2
    plain, lazy_run = running[:3], [[t.clone() for t in r] for r in running[3:]]
    ys, _, rstd = ndarts_kernels.batch_norms_forward(zs + [other], *zip(*plain), 0.1, 1e-5)
    mean = torch.empty_like(rstd)
    ys_l, _, rstd_l = ndarts_kernels.batch_norms_forward(zs + [other], *zip(*lazy_run), 0.1, 1e-5,
                                                         apply=[False, False, True], mean_out=mean)
    assert ys_l[0] is None and ys_l[1] is None and torch.equal(ys_l[2], ys[2]) and torch.equal(rstd_l, rstd)
    for a, b in zip(plain, lazy_run):
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # the running statistics updated alike
    torch.testing.assert_close(mean[:g * c], zs[0].double().mean((0, 2, 3)).float(), atol=1e-5, rtol=1e-5)
    # the next pairs read relu(y) of the z's
    w_dws = [(torch.randn(g * c, 1, k, k, device=device) / k).to(dtype) for k in (3, 5)]
    w_pws = [(torch.randn(g * c, c, 1, 1, device=device) / c ** 0.5).to(dtype) for _ in range(2)]
    geometry = [(1, 1, 1), (1, 2, 1)]
    stats = [(mean[i * g * c:(i + 1) * g * c], rstd[i * g * c:(i + 1) * g * c]) for i in range(2)]
    read_back, _ = ndarts_kernels.separable_pairs_forward(ys[:2], w_dws, w_pws, geometry, relu_input=True)
    on_load, _ = ndarts_kernels.separable_pairs_forward(zs, w_dws, w_pws, geometry, relu_input=True, input_norm=stats)
    grads = [torch.randn_like(y) for y in ys]
    dxs_back, dws_back, dps_back = ndarts_kernels.separable_pairs_backward(read_back, ys[:2], w_dws, w_pws, geometry,
                                                                           relu_input=True)
    dxs_load, dws_load, dps_load = ndarts_kernels.separable_pairs_backward(read_back, zs, w_dws, w_pws, geometry,
                                                                           relu_input=True, input_norm=stats)
    folded = ndarts_kernels.batch_norms_backward(grads, ys, rstd, relu=[True, False, False], fold=[True, True, False])
    folded_l = ndarts_kernels.batch_norms_backward(grads, zs + [ys_l[2]], rstd, relu=[True, False, False],
                                                   fold=[True, True, False], lazy=[True, True, False], mean=mean)
    assert torch.equal(folded_l[2], folded[2])
    # the producing pairs' backward with the fold, from y or from z
    x = [torch.randn(n, g * c, h, w, device=device).to(dtype) for _ in range(2)]
    want = ndarts_kernels.separable_pairs_backward(grads[:2], x, w_dws, w_pws, geometry, bns=folded[:2])
    got = ndarts_kernels.separable_pairs_backward(grads[:2], x, w_dws, w_pws, geometry, bns=folded_l[:2])
    pairs = [(on_load, read_back), (dxs_load, dxs_back), (dws_load, dws_back), (dps_load, dps_back),
             ([f.sums for f in folded_l[:2]], [f.sums for f in folded[:2]])] + list(zip(got, want))
    for a_list, b_list in pairs:
        for a, b in zip(a_list, b_list):
            if dtype == torch.float32 and device == "cpu":
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a.float(), b.float(), atol=tol * max(1.0, b.float().abs().max().item()),
                                           rtol=tol)
    # the next pairs' depthwise input-gradient kernel makes bn1's backward sums (with its ReLU) as it writes the
    # gradients (input_sums): the gradients unchanged, the sums those the BatchNorm backward makes from them
    sums = []
    dxs_sums, _, _ = ndarts_kernels.separable_pairs_backward(read_back, zs, w_dws, w_pws, geometry, relu_input=True,
                                                             input_norm=stats, input_sums=sums)
    assert len(sums) == 2 and all(torch.equal(a, b) for a, b in zip(dxs_sums, dxs_load))
    gc = g * c
    made = ndarts_kernels.batch_norms_backward(dxs_load, zs, rstd[:2 * gc], relu=[True, True], fold=[True, True],
                                               lazy=[True, True], mean=mean[:2 * gc])
    for got_sums, fold in zip(sums, made):
        assert got_sums.shape[:1] == (gc,) and got_sums.shape[2] == 2
        want_sums = fold.sums.double().sum(1)
        torch.testing.assert_close(got_sums.double().sum(1), want_sums, rtol=1e-4,
                                   atol=1e-5 * fold.sums.double().abs().sum(1).max().item())


@pytest.mark.parametrize("relu_fused", [True, False], ids=["sources", "repeated"])
@pytest.mark.parametrize("defer_last", [True, False])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_an_evaluation_s_stages_equal_the_stacks_in_eval_mode(fresh_seed, relu_fused, defer_last, dtype, tol):
    """EdgeGroup.run in eval mode under no_grad on the fused stages (eval_conv_stages: one pair launch
    per stage, the sep convs' bn1 + ReLU applied by the second pairs on load, the last BatchNorms
    deferred with their running statistics or applied, the pools' BatchNorms in one launch) against
    each stack and pool BatchNorm run by torch in eval mode, with running statistics far from (0, 1);
    a cell's two inputs as sources (3 + 2 edges), on odd image sizes."""
    import copy

    from ndarts.batch_norm import use_search_batch_norm
    from ndarts.edge_groups import relu_repeat_sources
    import ndarts.separable_stage as stage

    primitives = ["sep_conv_3x3", "dil_conv_5x5", "sep_conv_5x5", "dil_conv_3x3"]
    group = EdgeGroup(3, (3, 2), 1, primitives)
    pool_bns = [torch.nn.BatchNorm2d(3, affine=False) for _ in range(2)]
    for m in [*group.modules(), *pool_bns]:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.3, 3.0)
    reference = copy.deepcopy(group).eval()
    ref_pool_bns = [copy.deepcopy(bn).eval() for bn in pool_bns]
    use_search_batch_norm(group, backend="triton")
    pool_bns = [use_search_batch_norm(torch.nn.Sequential(bn), backend="triton")[0] for bn in pool_bns]
    for s in group.ops.values():
        s.fused_separable, s.backend = True, "triton"
    group.eval()
    for bn in pool_bns:
        bn.eval()
    hs = [torch.randn(2, 3, 7, 5).to(dtype) for _ in range(2)]
    pools = [torch.randn(2, 3, 7, 5).to(dtype) for _ in range(2)]
    norms = {}
    # bf16 as the search network runs it: under autocast, the weights fp32
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with torch.no_grad(), autocast, mock.patch.object(stage, "eval_conv_stages", wraps=stage.eval_conv_stages) as spy:
        if relu_fused:
            outs, pooled = group.run(hs, extra=list(zip(pools, pool_bns)), relu_fused=True, backend="triton",
                                     defer_last=defer_last, norms_out=norms)
        else:
            repeated = relu_repeat_sources(hs, group.sources, "triton")
            outs, pooled = group.run([F.relu(h) for h in hs], repeated=repeated, extra=list(zip(pools, pool_bns)),
                                     backend="triton", defer_last=defer_last, norms_out=norms)
        assert spy.call_count == 1
    with torch.no_grad():
        for i, stack in reference.ops.items():
            want = stack([F.relu(h.float()) for h in hs], counts=group.sources)
            got = outs[int(i)].float()
            if defer_last:
                mean, rstd = norms[int(i)][:2]
                got = (got - mean.view(1, -1, 1, 1)) * rstd.view(1, -1, 1, 1)
            else:
                assert int(i) not in norms
            torch.testing.assert_close(got, want, atol=tol * max(1.0, want.abs().max().item()), rtol=tol,
                                       msg=lambda m: f"{primitives[int(i)]}: {m}")
        for got, x, bn in zip(pooled, pools, ref_pool_bns):
            torch.testing.assert_close(got.float(), bn(x.float()), atol=tol, rtol=tol)

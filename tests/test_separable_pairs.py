"""The pairs of one conv stage in one launch each way (ndarts_kernels.separable_pairs_*,
interpreter on CPU): each pair's z, moments and weight gradients bitwise as the pair launched
alone, on pairs of different kernel sizes, paddings and dilations, stride 1 and 2, odd shapes; the
input gradients as the depthwise kernel gives them per pair, or (source inputs) summed over each
source's edges and the pairs with the ReLU's mask, as relu_repeat's backward sums the pairs' own;
BatchNorms folded per pair (each with or without its ReLU, each with its own count of partial sums);
bad launches named."""
import ndarts_kernels
import pytest
import torch

DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]
# (K, padding, dilation): sep 3×3, sep 5×5, dil 3×3, dil 5×5 (DARTS' same-size geometries)
GEOMETRY = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2)]


def _weights(pairs, groups, c, co, dtype, device="cpu"):
    w_dws = [(torch.randn(groups * c, 1, k, k) / k).to(dtype).to(device) for k, _, _ in GEOMETRY[:pairs]]
    w_pws = [(torch.randn(groups * co, c, 1, 1) / c ** 0.5).to(dtype).to(device) for _ in range(pairs)]
    return w_dws, w_pws


def _folds(zs, relus):
    """A BatchNorm of each z in one launch, folded: (its outputs, the folds)."""
    ys, _, rstd = ndarts_kernels.batch_norms_forward(zs, None, None, None, 0.1, 1e-5)
    grads = [torch.randn_like(y) for y in ys]
    return grads, ndarts_kernels.batch_norms_backward(grads, ys, rstd, relu=relus, fold=[True] * len(zs))


def _repartitioned(folds):
    """The folds with the same sums in partial counts that differ per pair (as where one fold's sums
    come from the group sums' backward and another's from the BatchNorm's): pair 1's in one partial,
    pair 2's after three zero partials."""
    sums = [f.sums for f in folds]
    sums[1] = sums[1].sum(1, keepdim=True)
    sums[2] = torch.cat([torch.zeros_like(sums[2][:, :3]), sums[2]], dim=1)
    return [f._replace(sums=t.contiguous()) for f, t in zip(folds, sums)]


def _same_weight_grads(got, want, device, tol):
    """Bitwise in the interpreter (the same split of the partial sums); on a GPU a launch of P pairs
    splits each pair's images over fewer programs: the dtype's rounding."""
    if device == "cpu":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got.float(), want.float(), atol=tol * want.float().abs().max().item(), rtol=10 * tol)


@pytest.mark.parametrize("dtype,tol,stride", [DTYPES[0] + (1,), DTYPES[1] + (2,)], ids=["fp32_stride1", "bf16_stride2"])
def test_pairs_in_one_launch_equal_each_pair_alone(fresh_seed, dtype, tol, stride):
    check_pairs_in_one_launch(dtype, tol, stride, (2, 2, 5, 3, 7, 6))


def check_pairs_in_one_launch(dtype, tol, stride, shape, device="cpu"):
    """shape: (N, groups, C, CO, H, W) of the four pairs."""
    pairs = 4
    n, groups, c, co, h, w = shape
    xs = [torch.randn(n, groups * c, h, w).to(dtype).to(device) for _ in range(pairs)]
    w_dws, w_pws = _weights(pairs, groups, c, co, dtype, device)
    geometry = [(stride, p, d) for _, p, d in GEOMETRY]
    zs, moments = ndarts_kernels.separable_pairs_forward(xs, w_dws, w_pws, geometry, relu_input=True, moments=True)
    for i in range(pairs):
        z, mom = ndarts_kernels.separable_conv_forward(xs[i], w_dws[i], w_pws[i], *geometry[i], relu_input=True,
                                                       moments=True)
        assert torch.equal(zs[i], z) and torch.equal(moments[i], mom)
    relus = [True, False, True, False]
    grads, folds = _folds(zs, relus)
    for bns in (None, folds, _repartitioned(folds)):
        dxs, d_dws, d_pws = ndarts_kernels.separable_pairs_backward(grads, xs, w_dws, w_pws, geometry,
                                                                     relu_input=True, bns=bns)
        for i in range(pairs):
            dx, d_dw, d_pw = ndarts_kernels.separable_conv_backward(grads[i], xs[i], w_dws[i], w_pws[i], *geometry[i],
                                                                    relu_input=True,
                                                                    bn=bns[i] if bns is not None else None)
            assert torch.equal(dxs[i], dx)
            _same_weight_grads(d_dws[i], d_dw, device, tol)
            _same_weight_grads(d_pws[i], d_pw, device, tol)
    # only what is asked for; with no input gradient, no input values are read
    nan = [torch.full_like(x, float("nan")) for x in xs]
    dxs, d_dws, d_pws = ndarts_kernels.separable_pairs_backward(grads, nan, w_dws, w_pws, geometry, need_weight=False)
    assert d_dws is None and d_pws is None and all(torch.isfinite(dx).all() for dx in dxs)
    dxs, d_dws, _ = ndarts_kernels.separable_pairs_backward(grads, xs, w_dws, w_pws, geometry, need_input=False)
    assert dxs is None and [d.shape for d in d_dws] == [wt.shape for wt in w_dws]


@pytest.mark.parametrize("counts", [(3,), (2, 1)], ids=["one_source", "two_sources"])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_source_gradients_summed_over_edges_and_pairs(fresh_seed, dtype, tol, counts):
    check_source_gradients(dtype, tol, counts, (2, 4, 6, 5))


def check_source_gradients(dtype, tol, counts, shape, device="cpu"):
    """With source inputs, each source's gradient (the ReLU's mask applied) as relu_repeat's backward
    makes it from the pairs' gradients of the repeated input, within the dtype's rounding (one
    rounding here, one per pair there: the reference sums edges × pairs terms each rounded to the
    dtype, so where they cancel its error is a rounding of their magnitudes, not of the result);
    the weight gradients as each pair alone. shape: (N, C, H, W)."""
    pairs = 3
    n, c, h, w = shape
    hs = [torch.randn(n, c, h, w).to(dtype).to(device) for _ in counts]
    edges = sum(counts)
    w_dws, w_pws = _weights(pairs, edges, c, c, dtype, device)
    geometry = [(1, p, d) for _, p, d in GEOMETRY[:pairs]]
    zs, _ = ndarts_kernels.separable_pairs_forward(hs, w_dws, w_pws, geometry, relu_input=True, counts=counts)
    grads, folds = _folds(zs, [True, True, False])
    dhs, d_dws, d_pws = ndarts_kernels.separable_pairs_backward(grads, hs, w_dws, w_pws, geometry, relu_input=True,
                                                                 bns=folds, counts=counts)
    alone = [ndarts_kernels.separable_conv_backward(grads[i], hs, w_dws[i], w_pws[i], *geometry[i], relu_input=True,
                                                    bn=folds[i], counts=counts) for i in range(pairs)]
    want = ndarts_kernels.relu_repeat_backward([dx for dx, _, _ in alone], hs, list(counts))
    # Σ over the edges and pairs of |term|, per element: the scale of the reference's roundings
    magnitude = ndarts_kernels.relu_repeat_backward([dx.float().abs() for dx, _, _ in alone],
                                                    [h.float() for h in hs], list(counts))
    assert len(dhs) == len(hs)
    for got, ref, mag in zip(dhs, want, magnitude):
        assert got.dtype == dtype and got.shape == ref.shape
        # assert_close's atol + rtol·|ref|, plus one unit of the dtype's rounding per unit of magnitude
        error = (got.float() - ref.float()).abs()
        excess = error - (tol + tol * ref.float().abs() + torch.finfo(dtype).eps * mag)
        assert (excess <= 0).all(), f"largest error {error.max().item():.3g}, over its bound by {excess.max().item():.3g}"
    for h_s, got in zip(hs, dhs):
        assert (got[h_s <= 0] == 0).all()  # the ReLU's mask
    for i, (_, d_dw, d_pw) in enumerate(alone):
        _same_weight_grads(d_dws[i], d_dw, device, tol)
        _same_weight_grads(d_pws[i], d_pw, device, tol)


def test_a_launch_that_does_not_fit_is_named():
    x = torch.randn(2, 8, 6, 6)
    w_dws, w_pws = _weights(2, 2, 4, 4, torch.float32)
    with pytest.raises(ValueError, match="one stride"):
        ndarts_kernels.separable_pairs_forward([x, x], w_dws, w_pws, [(1, 1, 1), (2, 2, 1)])
    with pytest.raises(ValueError, match="alike inputs"):
        ndarts_kernels.separable_pairs_forward([x, x[:1]], w_dws, w_pws, [(1, 1, 1), (1, 2, 1)])
    with pytest.raises(ValueError, match="pairs"):
        ndarts_kernels.separable_pairs_forward([x] * 5, w_dws * 3, w_pws * 3, [(1, 1, 1)] * 5)
    zs, _ = ndarts_kernels.separable_pairs_forward([x, x], w_dws, w_pws, [(1, 1, 1), (1, 2, 1)])
    with pytest.raises(ValueError, match="one output gradient"):
        ndarts_kernels.separable_pairs_backward(zs[:1], [x, x], w_dws, w_pws, [(1, 1, 1), (1, 2, 1)])
    _, folds = _folds(zs, [False, False])
    lazy = [f._replace(y=z, mean=f.rstd[:3]) for f, z in zip(folds, zs)]  # a mean for 3 of the 8 channels
    with pytest.raises(ValueError, match="folded BatchNorm"):
        ndarts_kernels.separable_pairs_backward(zs, [x, x], w_dws, w_pws, [(1, 1, 1), (1, 2, 1)], bns=lazy)
    with pytest.raises(ValueError, match="input_norm"):
        ndarts_kernels.separable_pairs_forward([x, x], w_dws, w_pws, [(1, 1, 1), (1, 2, 1)],
                                               input_norm=[(folds[0].rstd, folds[0].rstd[:4])] * 2)
    # an input BatchNorm's backward sums need its statistics and the ReLU read in
    with pytest.raises(ValueError, match="input_sums"):
        ndarts_kernels.separable_pairs_backward(zs, [x, x], w_dws, w_pws, [(1, 1, 1), (1, 2, 1)], relu_input=True,
                                                input_sums=[])
    stats = [(folds[0].rstd, folds[0].rstd)] * 2
    with pytest.raises(ValueError, match="input_sums"):
        ndarts_kernels.separable_pairs_backward(zs, [x, x], w_dws, w_pws, [(1, 1, 1), (1, 2, 1)], input_norm=stats,
                                                input_sums=[])
    from ndarts_kernels.depthwise_conv import depthwise_pairs_input_grad

    grad = torch.randn(1, *x.shape)
    for relu_norm, sums_out in [([(x, folds[0].rstd[:4], folds[0].rstd)], []),  # a mean for 4 of the 8 channels
                                ([(x[:1], folds[0].rstd, folds[0].rstd)], []),  # z of another shape
                                ([(x, folds[0].rstd, folds[0].rstd)], None)]:  # nowhere to put the sums
        with pytest.raises(ValueError, match="relu_norm"):
            depthwise_pairs_input_grad(grad, x, w_dws[:1], [(1, 1, 1)], relu_norm=relu_norm, sums_out=sums_out)

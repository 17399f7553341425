"""A node's fan-out (ndarts.fan_out): aliases of one tensor whose gradients are summed in one
launch (ndarts_kernels.tensor_sum, in Triton's interpreter here) give autograd's gradient."""
import pytest
import torch

import ndarts_kernels
from ndarts.fan_out import fan_out
from ndarts_kernels.tensor_sum import MAX_TERMS

# (dtype, atol per term, rtol): the sum accumulates in fp32, also between the launches of a longer
# list, so a bf16 sum is off by its one final rounding (2^-8 relative) and fp32's summation error.
DTYPES = [(torch.float32, 1e-6, 1e-6), (torch.bfloat16, 1e-5, 2 ** -8)]


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 13])
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (1, 1, 1, 33), (2, 3, 4, 4)])
def test_tensor_sum_matches_torch(dtype, atol, rtol, count, shape, fresh_seed):
    """Odd shapes; more tensors than one launch takes (6): the later chunks accumulate."""
    xs = [(torch.randn(shape) * (i + 1) + i).to(dtype) for i in range(count)]
    want = torch.stack([x.double() for x in xs]).sum(0)
    got = ndarts_kernels.tensor_sum(xs)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=atol * count, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "channel_slices"])
def test_a_low_precision_sum_over_several_launches_is_rounded_once(dtype, layout, fresh_seed):
    """Large terms in the first launch, their negatives in the second, small ones in the third: the
    running sums between the launches (≈ 10^3) are far coarser in bf16/fp16 than the result (≈ 1), so
    rounding them to the output dtype would be off by many of the result's ulps; kept in fp32 they
    are exact here, and the result is the exact sum rounded once."""
    shape = (2, 5, 7, 3)
    big = [(torch.randn(shape) * 300 + 700).to(dtype) for _ in range(MAX_TERMS)]
    small = [torch.randn(shape).to(dtype) for _ in range(2)]
    xs = big + [-b for b in big] + small
    if layout == "channels_last":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    elif layout == "channel_slices":
        xs = [torch.cat([x, x], 1)[:, :shape[1]] for x in xs]
    want = torch.stack([x.double() for x in xs]).sum(0)
    got = ndarts_kernels.tensor_sum(xs)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=torch.finfo(dtype).eps / 2)


def test_tensor_sum_keeps_a_shared_layout_and_takes_mixed_ones(fresh_seed):
    xs = [torch.randn(2, 6, 5, 3).contiguous(memory_format=torch.channels_last) for _ in range(3)]
    got = ndarts_kernels.tensor_sum(xs)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, xs[0] + xs[1] + xs[2])
    mixed = [xs[0], xs[1].contiguous(), xs[2].transpose(2, 3).contiguous().transpose(2, 3)]
    torch.testing.assert_close(ndarts_kernels.tensor_sum(mixed), xs[0] + xs[1] + xs[2])


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("count", [2, 4, 8])
def test_tensor_sum_reads_channel_slices_in_place(dtype, atol, rtol, count, fresh_seed, device="cpu"):
    """Terms that are channel slices of wider tensors (a cell output's gradient, sliced by
    torch.cat's backward) mixed with dense ones: read where they lie, summed into a dense result;
    the later chunk of 8 terms accumulates."""
    shape = (3, 5, 7, 6)
    wide = [(torch.randn(shape[0], 4 * shape[1], *shape[2:], device=device) * (i + 1)).to(dtype) for i in range(count)]
    xs = [w[:, (i % 4) * shape[1]:(i % 4 + 1) * shape[1]] if i % 2 == 0 else w[:, :shape[1]].contiguous()
          for i, w in enumerate(wide)]
    assert not xs[0].is_contiguous()
    got = ndarts_kernels.tensor_sum(xs)
    assert got.is_contiguous() and got.dtype == dtype
    torch.testing.assert_close(got.double(), torch.stack([x.double() for x in xs]).sum(0), atol=atol * count, rtol=rtol)


def test_tensor_sum_names_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        ndarts_kernels.tensor_sum([])
    with pytest.raises(ValueError, match="share shape, dtype and device"):
        ndarts_kernels.tensor_sum([torch.randn(2, 3), torch.randn(3, 2)])
    with pytest.raises(TypeError, match="float64"):
        ndarts_kernels.tensor_sum([torch.randn(2, 3, dtype=torch.float64)] * 3)


def _consumers(aliases):
    """What a node's consumers do with x: a relu, two pools, the identity; one alias unused."""
    r, m, a, s, _ = aliases
    f = torch.nn.functional
    return (f.relu(r) * 2).sum() + f.max_pool2d(m, 3, 1, 1).sum() + (f.avg_pool2d(a, 3, 1, 1) ** 2).sum() + (s * s).sum()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fan_out_gradient_is_autograds(backend, fresh_seed):
    """Triton (interpreter): the consumers' gradients summed in one launch; torch: by adds."""
    from unittest import mock

    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    ref = x.detach().clone().requires_grad_()
    with mock.patch.object(ndarts_kernels, "tensor_sum", wraps=ndarts_kernels.tensor_sum) as launched:
        _consumers(fan_out(x, 5, backend)).backward()
    _consumers([ref] * 5).backward()
    torch.testing.assert_close(x.grad, ref.grad, atol=1e-6, rtol=1e-6)
    assert launched.call_count == (1 if backend == "triton" else 0)
    for alias in fan_out(x, 3, backend):
        assert alias.data_ptr() == x.data_ptr() and torch.equal(alias, x)  # aliases: no copy


@pytest.mark.parametrize("terms", [1, 2, 3, 4, 5])
def test_torch_sum_adds_in_autograds_order_and_leaves_the_terms(terms, fresh_seed):
    """Off the kernels, Σ grads is ((g0 + g1) + g2) + …, bit for bit, in a new tensor (the terms from
    the third on are accumulated into it in place), on mixed NCHW / channels_last terms as a
    reduction cell's inputs receive them; no term is changed."""
    from ndarts.fan_out import sum_gradients

    grads = [torch.randn(3, 5, 7, 6) for _ in range(terms)]
    grads[::2] = [g.contiguous(memory_format=torch.channels_last) for g in grads[::2]]
    before = [g.clone() for g in grads]
    want = before[0]
    for g in before[1:]:
        want = want + g
    with torch.no_grad():
        got = sum_gradients(list(grads), "torch")
    assert torch.equal(got, want)
    assert all(torch.equal(g, b) for g, b in zip(grads, before))
    assert terms == 1 or all(got.data_ptr() != g.data_ptr() for g in grads)


def test_fan_out_is_twice_differentiable(fresh_seed):
    """Under double backward (the architect's exact Hessian-vector product) the sum stays torch's,
    so the gradient is differentiable."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_consumers(fan_out(x, 5, "triton")), x, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), x)
    ref = x.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(_consumers([ref] * 5), ref, create_graph=True)
    (gg_ref,) = torch.autograd.grad((g_ref * g_ref).sum(), ref)
    torch.testing.assert_close(gg, gg_ref)


def test_cell_output_relus_are_one_launch_with_an_alias_per_reader(fresh_seed):
    """Where the kernels run, each cell output's relu (read by the next two cells' preprocessings; the
    stem's by three: both inputs of cell 0, the first of cell 1) is one relu_repeat launch with one
    alias per reader, whose backward kernel sums the readers' gradients with the ReLU's mask; the
    last cell but one's output (one reader) keeps F.relu. The network equals the same one on torch's
    ops: outputs, every gradient and buffer."""
    from unittest import mock

    import ndarts.search_model as search_model
    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork
    from network_checks import assert_same_forward_backward

    # four cells (two reduction cells among them) of one node; no convs: small, for the interpreter
    kw = dict(C=4, num_classes=5, layers=4, steps=1, multiplier=1, noise=NoiseConfig(kind="none"), fused=True,
              primitives=["skip_connect", "avg_pool_3x3"], in_channels=2)
    torch.manual_seed(fresh_seed)
    ref = SearchNetwork(**kw, backend="torch")
    tri = SearchNetwork(**kw, backend="triton")
    tri.load_state_dict(ref.state_dict())
    with mock.patch.object(search_model, "relu_repeat_sources", wraps=search_model.relu_repeat_sources) as made, \
            mock.patch.object(ndarts_kernels, "relu_repeat_backward", wraps=ndarts_kernels.relu_repeat_backward) as bwd:
        # fp32; four cells of BatchNorms over 3 images of 8×8 amplify the kernels' summation-order rounding
        # in the stem's gradient up to ~1e-4 absolute, 0.7 % relative (CI at e956e4c, one fresh
        # seed), as tests/test_edge_groups.py's all-levers network test measured (2e-3); a reader's gradient
        # left out, or the ReLU's mask misplaced, is O(1)
        assert_same_forward_backward((ref, tri), torch.randn(3, 2, 8, 8), out_tol=(1e-5, 1e-4),
                                     grad_tol=(2e-3, 2e-3), buffer_tol=(1e-6, 1e-5))
    # the stem's output, cell 0's and cell 1's (cell 2's has one reader, cell 3's none)
    assert [c.kwargs["aliases"] for c in made.call_args_list] == [3, 2, 2]
    assert sorted(len(c.args[0]) for c in bwd.call_args_list) == [2, 2, 3]  # every reader's gradient, one launch

"""The search network's levers keep the semantics of the plain per-edge network."""
import pytest
import torch
from network_checks import assert_same_forward_backward

from ndarts import DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES, NoiseConfig
from ndarts.search_model import SearchNetwork


def _pair(fused, primitives, noise, **kw):
    torch.manual_seed(0)
    plain = SearchNetwork(C=4, num_classes=10, layers=3, primitives=primitives, noise=noise, fused=fused,
                          in_channels=3, share_node_ops=False, **kw)
    shared = SearchNetwork(C=4, num_classes=10, layers=3, primitives=primitives, noise=noise, fused=fused,
                           in_channels=3, share_node_ops=True, batch_edge_convs=False, **kw)
    shared.load_state_dict(plain.state_dict())
    return plain, shared


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES])
@pytest.mark.parametrize("noise", [NoiseConfig(kind="none"), NoiseConfig(), NoiseConfig(reduction_position="input")])
def test_node_sharing_equals_per_edge_ops(fused, primitives, noise):
    """relu(h) once per node instead of once per op: same outputs, gradients (weights and α) and
    BatchNorm statistics; with noise too, as the noise draws happen in the same order."""
    plain, shared = _pair(fused, primitives, noise)
    with torch.no_grad():
        for a in plain.arch_parameters():
            a.normal_()
        for a, b in zip(shared.arch_parameters(), plain.arch_parameters()):
            a.copy_(b)
    assert_same_forward_backward((plain, shared), torch.randn(4, 3, 9, 9), out_tol=(1e-6, 1e-5),
                                 buffer_tol=(1e-6, 1e-5), seed=1)


@pytest.mark.parametrize("batch_edge_convs", [False, True])
def test_a_state_whose_shared_pool_statistics_differ_is_refused(batch_edge_convs, fresh_seed):
    """Node sharing computes a node's pools + BatchNorm once and gives its edges' BNs one set of
    statistics: exact for the states a search makes (a per-edge network trained in train mode, whose
    BNs see the same input, loads and tests alike), refused by name for one whose BNs differ."""
    torch.manual_seed(fresh_seed)
    kw = dict(C=4, num_classes=5, layers=3, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(kind="none"),
              in_channels=3)
    plain = SearchNetwork(**kw, share_node_ops=False)
    for _ in range(2):  # train-mode forwards: the running statistics move away from their initial values
        plain(torch.randn(4, 3, 9, 9))
    shared = SearchNetwork(**kw, share_node_ops=True, batch_edge_convs=batch_edge_convs)
    shared.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 9, 9)
    torch.testing.assert_close(shared.eval()(x), plain.eval()(x), atol=1e-5, rtol=1e-5)

    state = plain.state_dict()
    pool = DARTS_PRIMITIVES.index("avg_pool_3x3")
    key = f"cells.0._ops.3._ops.{pool}.1.running_var"  # edge 3 leaves input 1, as edges 1, 6 and 10 do
    state[key] = state[key] * (1.5 + torch.rand(()))
    with pytest.raises(RuntimeError, match=r"avg_pool_3x3 BatchNorms of the edges leaving state 1 hold different "
                                           rf"statistics \(cells\.0\._ops\.\{{1,3,6,10\}}\._ops\.{pool}\.1\.running_var\)"
                                           r", which node sharing would make one: .*share_node_ops=False"):
        SearchNetwork(**kw, share_node_ops=True, batch_edge_convs=batch_edge_convs).load_state_dict(state)
    SearchNetwork(**kw, share_node_ops=False).load_state_dict(state)  # the per-edge network takes it


def test_node_sharing_launches_fewer_ops():
    """Fewer dispatched ops per forward+backward (each is a kernel launch on a GPU)."""
    counts = []
    for share in (False, True):
        torch.manual_seed(0)
        net = SearchNetwork(C=4, layers=3, primitives=DARTS_PRIMITIVES, in_channels=3, share_node_ops=share)
        x = torch.randn(2, 3, 8, 8)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            net(x).sum().backward()
        counts.append(sum(1 for e in prof.events() if e.name in ("aten::relu", "aten::threshold_backward")))
    assert counts[1] < counts[0] / 2, counts


@pytest.mark.parametrize("share_node_ops", [False, True])
def test_fused_cells_gather_live_weights_once_and_equal_the_reference(share_node_ops):
    """On a space with `none`, a fused cell gathers its edges' live weights in one index_select (not
    one per edge); outputs and all gradients (α's `none` column too) equal the reference MixedOp's."""
    torch.manual_seed(0)
    kw = dict(C=4, num_classes=6, layers=3, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(kind="none"),
              in_channels=3, share_node_ops=share_node_ops)
    ref, fused = SearchNetwork(**kw), SearchNetwork(**kw, fused=True)
    fused.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for a in ref.arch_parameters():
            a.normal_()
        for a, b in zip(fused.arch_parameters(), ref.arch_parameters()):
            a.copy_(b)
    x = torch.randn(3, 3, 9, 7)
    assert_same_forward_backward((ref, fused), x, out_tol=(1e-6, 1e-5), grad_tol=(1e-6, 1e-5))
    assert all(float(a.grad[:, 0].abs().max()) > 0 for a in fused.arch_parameters())  # `none` stays in the softmax
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fused(x)
    assert sum(1 for e in prof.events() if e.name == "aten::index_select") == len(fused.cells)


def test_fused_cells_compute_the_identity_skips_std_once_per_node():
    """The noise of a stride-1 edge's skip operand scales with std(h) of its source node: one std
    per node, not one per edge (the equality with per-edge sums: test_node_sharing_equals_per_edge_ops)."""
    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=5, layers=3, primitives=NOISYDARTS_PRIMITIVES, fused=True,
                        noise=NoiseConfig())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        net(torch.randn(2, 3, 8, 8))
    stds = sum(1 for e in prof.events() if e.name == "aten::std")
    expected = 0
    for cell in net.cells:
        states = [j for i in range(cell._steps) for j in range(2 + i)]  # each edge's source state
        sources = {j for j, op in zip(states, cell._ops) if op.stride == 1}
        expected += len(sources) + sum(op.stride == 2 for op in cell._ops)  # FactorizedReduce: per edge
    assert stds == expected < sum(len(c._ops) for c in net.cells)


def test_live_weights_of_the_wrong_length_are_a_clear_error():
    from ndarts import FusedMixedOp

    op = FusedMixedOp(4, 1, DARTS_PRIMITIVES)
    with pytest.raises(ValueError, match="live_weights"):
        op(torch.randn(2, 4, 5, 5), torch.rand(8), live_weights=torch.rand(8))


def test_edge_streams_option_on_cpu_is_the_plain_path():
    """edge_streams only acts on CUDA tensors: on a CPU the network is the one without it (same
    parameters, same outputs), and the stream pool pickles without its streams."""
    import pickle

    from ndarts.search_model import EdgeStreams

    torch.manual_seed(0)
    a = SearchNetwork(C=4, layers=2, primitives=NOISYDARTS_PRIMITIVES, noise=NoiseConfig(kind="none"), in_channels=3)
    torch.manual_seed(0)
    b = SearchNetwork(C=4, layers=2, primitives=NOISYDARTS_PRIMITIVES, noise=NoiseConfig(kind="none"), in_channels=3,
                      edge_streams=2)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(b(x), a(x))
    pool = pickle.loads(pickle.dumps(EdgeStreams(3)))
    assert pool.count == 3 and pool._streams == {}
    with pytest.raises(ValueError, match="edge_streams"):
        SearchNetwork(C=4, layers=2, edge_streams=-1)


@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES])
@pytest.mark.parametrize("fused", [False, True])
def test_channels_last_equals_nchw(primitives, fused, fresh_seed):
    """channels_last (auto on a CPU with the torch ops): the same outputs, gradients and BatchNorm
    statistics as NCHW, with noise (the same draws); the activations really are NHWC.

    In float64: at these odd, tiny sizes the last cell's BatchNorms normalise 3-6 values each, and
    in fp32 the rounding differences of oneDNN's NHWC and NCHW convolutions (which change from run
    to run with the buffers' alignment) were amplified to 1e-3 relative in the gradients for some
    seeds; in float64 the same amplification stays far inside the tolerances."""
    kw = dict(C=4, num_classes=7, layers=3, primitives=primitives, noise=NoiseConfig(), fused=fused, in_channels=3)
    nchw = SearchNetwork(**kw, channels_last=False).double()
    auto = SearchNetwork(**kw).double()
    auto.load_state_dict(nchw.state_dict())
    layouts = []
    auto.cells[0].register_forward_pre_hook(
        lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    assert_same_forward_backward((nchw, auto), torch.randn(3, 3, 9, 7, dtype=torch.float64), out_tol=(1e-10, 1e-10),
                                 grad_tol=(1e-9, 1e-8), buffer_tol=(1e-12, 1e-10), seed=fresh_seed)
    assert layouts == [True]


def test_channels_last_is_off_where_the_triton_kernels_run():
    net = SearchNetwork(C=4, layers=3, fused=True, backend="triton")
    x = torch.randn(2, 3, 8, 8)
    assert not net._use_channels_last(x) and SearchNetwork(C=4, layers=3)._use_channels_last(x)
    assert SearchNetwork(C=4, layers=3, backend="triton", channels_last=True)._use_channels_last(x)


def _darts_factorized_convs(x, op):
    """DARTS's FactorizedReduce convs, literally: cat(conv_1(x), conv_2(x[:, :, 1:, 1:])), the
    shifted path padded back by one on the bottom/right for an odd size."""
    shifted = x[:, :, 1:, 1:]
    if x.shape[2] % 2 or x.shape[3] % 2:
        shifted = torch.nn.functional.pad(shifted, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
    return torch.cat([op.conv_1(x), op.conv_2(shifted)], dim=1)


@pytest.mark.parametrize("shape", [(3, 6, 8, 10), (2, 5, 9, 7), (2, 4, 1, 1)])
@pytest.mark.parametrize("ops", [1, 3])
def test_factorized_convs_are_dartss_two_offset_convs(shape, ops, fresh_seed):
    """Both paths of E FactorizedReduce ops as one 2×2 stride-2 conv (operations.factorized_convs):
    outputs, the input's and every weight's gradient as DARTS's two 1×1 stride-2 convs of x and of x
    shifted by one pixel (even, odd and 1×1 inputs, float64 and float32)."""
    from ndarts.operations import FactorizedReduce, factorized_convs

    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        modules = [FactorizedReduce(shape[1], 8, affine=False).to(dtype) for _ in range(ops)]
        x = torch.randn(shape, dtype=dtype)
        runs, grad = [], None
        for fused in (True, False):
            xi = x.clone().requires_grad_()
            y = factorized_convs(xi, modules) if fused else torch.cat([_darts_factorized_convs(xi, m) for m in modules], 1)
            grad = torch.randn_like(y) if grad is None else grad
            y.backward(grad)
            grads = [p.grad.clone() for m in modules for p in (m.conv_1.weight, m.conv_2.weight)]
            for m in modules:
                m.zero_grad(set_to_none=True)
            runs.append((y, xi.grad, *grads))
        assert runs[0][0].shape == (shape[0], 8 * ops, (shape[2] + 1) // 2, (shape[3] + 1) // 2)
        for a, b in zip(*runs):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)


_CHANNELS_LAST_REDUCE = """
import sys, torch
from ndarts.operations import FactorizedReduce
torch.set_num_threads(1)
torch.manual_seed(int(sys.argv[1]))
for c, cout in ((2, 2), (2, 4), (3, 6), (4, 2), (6, 12)):
    for size in (8, 16):
        op = FactorizedReduce(c, cout, affine=False)  # float32: float64 did not corrupt
        x = torch.randn(2, c, size, size)
        grads = []
        for layout in (torch.contiguous_format, torch.channels_last):
            xi = x.clone(memory_format=layout).requires_grad_()
            op.zero_grad(set_to_none=True)
            y = op(xi)
            (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
            grads.append((y.detach(), xi.grad, op.conv_1.weight.grad, op.conv_2.weight.grad))
        for a, b in zip(*grads):  # float32 sums in another order: 7e-5 of the tensor's largest, 30 seeds
            torch.testing.assert_close(b, a, atol=3e-4 * float(a.abs().max()), rtol=1e-4)
print("ok")
"""


def test_factorized_reduce_on_a_channels_last_cpu_input(fresh_seed):
    """FactorizedReduce.forward (the per-edge baseline's, the noise-on-input reduction skip's) on a
    channels_last CPU input of 2-6 channels, as --init-channels 2 gives: torch 2.14's weight gradient
    of its 1×1 stride-2 convs there corrupted the heap (MALLOC_CHECK_=3 aborts at once); the op takes
    the 2×2 conv instead, and equals the NCHW op. In a process of its own: a corrupt heap crashes it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_CHECK_": "3"}
    r = subprocess.run([sys.executable, "-c", _CHANNELS_LAST_REDUCE, str(fresh_seed)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


@pytest.mark.parametrize("shape", [(3, 6, 8, 10), (2, 6, 9, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_reduces_of_a_node_run_together(shape, channels_last, fresh_seed):
    """A reduction cell input's FactorizedReduce skip ops, batched (stacked conv weights, one
    interleaving copy, their BatchNorms together): each output, the input's and every weight's
    gradient and the BatchNorm statistics equal those of the ops run one by one (odd sizes too)."""
    from ndarts.mixed_op import factorized_reduce_all
    from ndarts.operations import FactorizedReduce

    ops = [FactorizedReduce(shape[1], 8, affine=False).double() for _ in range(3)]
    solo = [FactorizedReduce(shape[1], 8, affine=False).double() for _ in range(3)]
    for a, b in zip(solo, ops):
        a.load_state_dict(b.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    r = torch.rand(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    runs = []
    for batched, modules in ((True, ops), (False, solo)):
        x = r.detach().clone().requires_grad_()
        ys = factorized_reduce_all(x, modules) if batched else [m.forward_from_relu(x) for m in modules]
        sum((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape) * (i + 1)).sum()
            for i, y in enumerate(ys)).backward()
        grads = [p.grad for m in modules for p in (m.conv_1.weight, m.conv_2.weight)]
        stats = [b for m in modules for b in (m.bn.running_mean, m.bn.running_var)]
        runs.append((ys, [x.grad], grads, stats))
    for got, want in zip(*runs):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert runs[0][0][0].is_contiguous(memory_format=fmt)


def test_preprocessing_splits_at_its_batch_norm(fresh_seed):
    """A cell runs its two preprocessing ops as pre_norm then norm (both BatchNorms in one launch
    where the Triton kernels run): the same as their forward, FactorizedReduce on odd sizes too."""
    from ndarts.operations import FactorizedReduce, ReLUConvBN

    for op, x in ((ReLUConvBN(5, 6, 1, 1, 0, affine=False), torch.randn(2, 5, 7, 7)),
                  (FactorizedReduce(5, 6, affine=False), torch.randn(2, 5, 7, 9))):
        op = op.double()
        x = x.double()
        torch.testing.assert_close(op.norm(op.pre_norm(x)), op(x), atol=0, rtol=0)
        torch.testing.assert_close(op.pre_norm_from_relu(torch.relu(x)), op.pre_norm(x), atol=0, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_a_cell_outputs_relu_is_made_once_for_the_two_cells_that_read_it(fused, fresh_seed):
    """Both preprocessings that read a cell output (the next cell's, and FactorizedReduce's or
    ReLUConvBN's of the cell after) begin with its relu: made once per cell output (and once for
    the stem's, both inputs of the first cell): one relu per cell instead of two, and the same
    outputs and gradients as each preprocessing making its own."""
    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=5, layers=4, primitives=DARTS_PRIMITIVES, in_channels=3, fused=fused)
    x = torch.randn(2, 3, 8, 8)
    results = []
    for share in (False, True):
        net._share_relus = share
        net.zero_grad(set_to_none=True)
        torch.manual_seed(fresh_seed)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = net(x)
            out.logsumexp(1).sum().backward()
        relus = sum(1 for e in prof.events() if e.name == "aten::relu")
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()], relus))
    (out0, grads0, relus0), (out1, grads1, relus1) = results
    assert relus0 - relus1 == len(net.cells)
    torch.testing.assert_close(out1, out0, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads1, grads0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

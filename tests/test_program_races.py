"""No two programs of a Triton launch touch the same bytes where one of them writes, no program
reaches outside its launch's tensors, and none reads memory nothing wrote (tests/program_races.py):
what the interpreter's one-program-after-another order and a CPU's fresh pages hide and a GPU
would not. The launchers size blocks and grids as for a GPU, so that the tiles
and the splits of a tile into programs are the GPU's (on small tensors)."""
import os

import pytest
import torch
import triton
import triton.language as tl

from program_races import ProgramAccesses, gpu_sized, nan_filled_memory

# Triton launches recorded through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="records launches in Triton's interpreter: run with TRITON_INTERPRET=1")


@triton.jit
def _shift_left_in_place(X, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs + 1, mask=offs + 1 < N)  # its right neighbour's first element too
    tl.store(X + offs, x, mask=offs < N)


@triton.jit
def _sum_into_first(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = tl.sum(tl.load(X + offs, mask=offs < N, other=0.0), axis=0)
    tl.store(Y, total)  # every program writes Y[0]


@triton.jit
def _previous(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs - 1, mask=offs < N), mask=offs < N)  # X[-1] too


@triton.jit
def _add_into(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    y = tl.load(Y + offs, mask=offs < N)  # Y as if it held zeros
    tl.store(Y + offs, y + tl.load(X + offs, mask=offs < N), mask=offs < N)


@triton.jit
def _scale(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, 2 * tl.load(X + offs, mask=offs < N), mask=offs < N)


def test_the_check_finds_each_kind_of_race():
    """It must be able to fail: a program reading its neighbour's output, programs writing one
    element, a load before the first element; and pass a kernel whose programs keep to their own
    blocks (in place too)."""
    n = 1 + int(torch.randint(64, 200, ()))
    x, y = torch.randn(n), torch.empty(n)
    with ProgramAccesses() as accesses:
        _shift_left_in_place[(triton.cdiv(n, 32),)](x, n, BLOCK=32)
        _sum_into_first[(triton.cdiv(n, 32),)](x, y, n, BLOCK=32)
        _previous[(triton.cdiv(n, 32),)](x, y, n, BLOCK=32)
        _scale[(triton.cdiv(n, 32),)](x, y, n, BLOCK=32)
        _scale[(triton.cdiv(n, 32),)](x, x, n, BLOCK=32)
    assert sum(accesses.launches.values()) == 5
    assert len(accesses.races) == 3, accesses.races
    shift, first, previous = accesses.races
    blocks = triton.cdiv(n, 32)
    assert shift.startswith("_shift_left_in_place") and f"{4 * (blocks - 1)} bytes loaded" in shift
    assert first.startswith("_sum_into_first") and "4 bytes stored by two or more programs" in first
    assert previous.startswith("_previous") and "4 bytes loaded or stored outside" in previous
    assert accesses.nan_loads == {}
    with ProgramAccesses() as accesses, nan_filled_memory():
        _add_into[(triton.cdiv(n, 32),)](x, torch.empty(n), n, BLOCK=32)  # memory nothing wrote
        _add_into[(triton.cdiv(n, 32),)](x, torch.zeros(n), n, BLOCK=32)
    assert accesses.races == [] and accesses.nan_loads == {"_add_into": triton.cdiv(n, 32)}


def _mixed_sums(g):
    import ndarts_kernels as K

    seed = torch.randint(0, 2**31, (1,), generator=g)
    for dtype, channels_last in ((torch.float32, False), (torch.bfloat16, True)):
        ops = [torch.randn(3, 16, 9, 7, generator=g).to(dtype) for _ in range(K.MAX_OPERANDS + 1)]  # two launches
        if channels_last:
            ops = [o.contiguous(memory_format=torch.channels_last) for o in ops]
        w = torch.rand(len(ops), generator=g)
        for kind, mult in ((1, False), (2, True)):
            y, std = K.noisy_mixed_sum_forward(ops, w, seed, 3, kind, mult, 0.2, 0.0)
            for weight_grad in (True, False):
                K.noisy_mixed_sum_backward(torch.randn(y.shape, generator=g).to(dtype), ops, w, seed, std, 3, kind,
                                           mult, 0.2, 0.0, weight_grad=weight_grad)
        K.skip_stds(ops[:3])
    K.unit_noise(seed, 5000, 1)


def _batch_norms(g):
    import ndarts_kernels as K

    for relu in ((False,), (True, False, True)):
        xs = [torch.randn(4, 6 + i, 9, 7, generator=g) for i in range(len(relu))]
        stats = [[torch.zeros(x.shape[1]) for x in xs] for _ in range(2)]
        ys, _, rstd = K.batch_norms_forward(xs, *stats, [torch.zeros((), dtype=torch.long) for _ in relu], 0.1, 1e-5,
                                            relu)
        K.batch_norms_backward([torch.randn(y.shape, generator=g) for y in ys], ys, rstd, relu)
        K.batch_norms_forward(xs, *stats, None, 0.0, 1e-5, relu, use_running=True)  # eval mode


def _pools_and_sums(g):
    import ndarts_kernels as K

    x = torch.randn(3, 5, 11, 9, generator=g)
    for stride in (1, 2):
        ymax, yavg, arg = K.pools_3x3_forward(x, stride)
        K.pools_3x3_forward(x, stride, moments=True)
        K.pools_3x3_backward(torch.randn(ymax.shape, generator=g), torch.randn(yavg.shape, generator=g), arg, x.shape,
                             stride)
    xs = [torch.randn(3, 5, 11, 9, generator=g) for _ in range(2)]
    y = K.relu_repeat_forward(xs, (2, 3))
    K.relu_repeat_backward([torch.randn(y.shape, generator=g)] * 2, xs, (2, 3))
    K.tensor_sum([torch.randn(3, 10, 11, 9, generator=g)[:, 5:] for _ in range(3)])


def _convs(g):
    import ndarts_kernels as K

    x, k = torch.randn(2, 6, 13, 11, generator=g), torch.randn(12, 1, 3, 3, generator=g)  # channel multiplier 2
    for stride, pad, dil in ((1, 1, 1), (2, 2, 2)):
        y = K.depthwise_conv_forward(x, k, stride, pad, dil)
        K.depthwise_conv_backward(torch.randn(y.shape, generator=g), x, k, stride, pad, dil)
    x, weight = torch.randn(2, 2 * 20, 5, 7, generator=g), torch.randn(2 * 24, 20, 1, 1, generator=g)  # grouped 1×1
    y = K.pointwise_conv_forward(x, weight)
    K.pointwise_conv_backward(torch.randn(y.shape, generator=g), x, weight)
    x = torch.randn(2, 2 * 16, 9, 8, generator=g)
    w_dw, w_pw = torch.randn(32, 1, 3, 3, generator=g), torch.randn(32, 16, 1, 1, generator=g)
    z = K.separable_conv_forward(x, w_dw, w_pw, 1, 1, 1, relu_input=True)
    K.separable_conv_backward(torch.randn(z.shape, generator=g), x, w_dw, w_pw, 1, 1, 1, relu_input=True)
    # a first stage of four pairs reading two source nodes (ndarts.separable_stage), its BatchNorms'
    # statistics from the forward and folded into the backward, the input gradients summed per source
    xs = [torch.randn(2, 8, 6, 5, generator=g) for _ in range(2)]
    geometry = [(1, 1, 1), (1, 2, 1), (1, 2, 2), (1, 4, 2)]
    w_dws = [torch.randn(32, 1, k, k, generator=g) for k in (3, 5, 3, 5)]
    w_pws = [torch.randn(32, 8, 1, 1, generator=g) for _ in range(4)]
    zs, moments = K.separable_pairs_forward(xs, w_dws, w_pws, geometry, relu_input=True, moments=True, counts=(2, 2))
    ys, _, rstd = K.batch_norms_forward(zs, None, None, None, 0.1, 1e-5, moments=moments)
    folds = K.batch_norms_backward([torch.randn(y.shape, generator=g) for y in ys], ys, rstd, fold=[True] * 4)
    K.separable_pairs_backward(zs, xs, w_dws, w_pws, geometry, relu_input=True, bns=folds, counts=(2, 2))


@pytest.mark.parametrize("workload", [_mixed_sums, _batch_norms, _pools_and_sums, _convs], ids=lambda f: f.__name__[1:])
def test_no_two_programs_of_a_launch_touch_the_same_written_bytes(workload, fresh_seed):
    g = torch.Generator().manual_seed(fresh_seed)
    with ProgramAccesses() as accesses, gpu_sized(), nan_filled_memory():
        workload(g)
    assert accesses.races == [] and accesses.nan_loads == {}
    assert accesses.multi_program >= 0.5 * sum(accesses.launches.values()) > 0  # the GPU's splits: several programs


def test_a_search_step_of_the_default_network_has_no_race(fresh_seed):
    """The kernels only the network calls in their search-step forms: the group sums (shared,
    grouped and own operands, node bases, several sources per group, a reduction cell's stride-2
    edges), the group inputs' relu + repeat, the fan-out sums, the pools with their BatchNorms'
    statistics, several BatchNorms per launch; backward as an α step (dW) and as a w step (no dW)."""
    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.search_model import SearchNetwork

    torch.manual_seed(fresh_seed)
    net = SearchNetwork(C=4, num_classes=5, layers=3, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(), fused=True,
                        backend="triton")
    with ProgramAccesses() as accesses, gpu_sized(), nan_filled_memory():
        loss = net(torch.randn(2, 3, 8, 8)).sum()
        torch.autograd.grad(loss, net.arch_parameters(), retain_graph=True)
        torch.autograd.backward(loss, inputs=list(net.weight_parameters()))
    assert accesses.races == [] and accesses.nan_loads == {}
    assert accesses.multi_program >= 0.5 * sum(accesses.launches.values())
    assert {"_group_forward_kernel", "_relu_repeat_forward_kernel", "_tensor_sum_kernel",
            "_pools_forward_kernel", "_bn_stats_kernel"} <= set(accesses.launches)
    assert sum(n for k, n in accesses.launches.items() if k.startswith("_group_") and "backward" in k) >= 2

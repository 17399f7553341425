"""Batched edge convs (SearchNetwork(batch_edge_convs=True)) keep the per-edge network's math."""
import pytest
import torch

from ndarts import DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES, NoiseConfig
from earlier_layouts import old_grouped_layout, split_input_layout
from network_checks import random_running_stats
from ndarts.edge_groups import EdgeGroupSlot
from ndarts.grouped_state import per_edge_state
from ndarts.search_model import SearchNetwork


def _pair(device="cpu", dtype=torch.float32, **kw):
    """A per-edge network with random α and BatchNorm statistics, and the grouped network
    loaded from its state_dict (the layout is converted on load)."""
    per_edge = SearchNetwork(**kw, batch_edge_convs=False).to(device, dtype)
    grouped = SearchNetwork(**kw, batch_edge_convs=True).to(device, dtype)
    with torch.no_grad():
        for a in per_edge.arch_parameters():
            a.normal_()
    random_running_stats(per_edge)
    grouped.load_state_dict(per_edge.state_dict())
    return per_edge, grouped


def _assert_same(per_edge, grouped, x, seed, tol):
    """Outputs, every gradient and every buffer of the two networks agree (the grouped ones
    compared in the per-edge layout)."""
    outs = []
    for net in (per_edge, grouped):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        out = net(x)
        out.logsumexp(1).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
    want = {n: p.grad for n, p in per_edge.named_parameters()}
    got = per_edge_state(grouped, {n: p.grad for n, p in grouped.named_parameters()})
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=tol, rtol=tol, msg=name)
    want, got = per_edge.state_dict(), per_edge_state(grouped, grouped.state_dict())
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES,
                                        ["skip_connect", "sep_conv_7x7", "dil_conv_3x3", "max_pool_3x3"]])
@pytest.mark.parametrize("noise", [NoiseConfig(), NoiseConfig(kind="none"), NoiseConfig(reduction_position="input")])
@pytest.mark.parametrize("fused", [False, True])
def test_grouped_convs_equal_per_edge_ops(primitives, noise, fused, fresh_seed):
    """Outputs, every gradient (α, per-edge conv weights via their views) and the BatchNorm running
    statistics of both networks agree, in training (with noise: same draws) and in eval.

    In float64: the two networks sum in different orders, and in fp32 the gradients of the stem
    (magnitude ~5) differed by up to 6e-5 for some seeds, rounding, not a bug; in float64 that is
    ~1e-13, and any real difference (a wrong weight, channel or statistic) stays far above 1e-9."""
    per_edge, grouped = _pair(C=6, num_classes=7, layers=3, primitives=primitives, noise=noise, fused=fused,
                              in_channels=3, dtype=torch.float64)
    x = torch.randn(3, 3, 11, 9, dtype=torch.float64)  # odd sizes: stride-2 edges and FactorizedReduce padding
    _assert_same(per_edge, grouped, x, seed=fresh_seed, tol=1e-9)
    per_edge.eval()
    grouped.eval()
    with torch.no_grad():
        torch.testing.assert_close(grouped(x), per_edge(x), atol=1e-9, rtol=1e-9)


def test_grouped_convs_on_the_triton_kernels_equal_per_edge_ops(fresh_seed):
    """The same with the fused sum and the BatchNorm on the Triton kernels (interpreter): the
    grouped outputs reach the kernels as contiguous per-edge operands. Per-edge sums on both
    sides, so that the noise is the same draw: a group sum draws one seed for its edges
    (tests/test_group_sum.py checks the group sums, with noise, against their reference)."""
    # one reduction cell of two nodes (groups of 2, 2 and 1 edges): the interpreter is slow
    kw = dict(C=4, num_classes=5, layers=1, steps=2, multiplier=2, primitives=NOISYDARTS_PRIMITIVES,
              noise=NoiseConfig(), fused=True, backend="triton", in_channels=2, group_sums=False)
    per_edge, grouped = _pair(**kw)
    _assert_same(per_edge, grouped, torch.randn(2, 2, 7, 6), seed=fresh_seed, tol=1e-4)


def test_grouped_convs_launch_fewer_convolutions():
    counts = []
    for batched in (False, True):
        net = SearchNetwork(C=4, layers=3, primitives=NOISYDARTS_PRIMITIVES, in_channels=3,
                            batch_edge_convs=batched)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = net(torch.randn(2, 3, 8, 8))
        out.sum().backward()  # (on a CPU some depthwise convs' gradients are convolutions too)
        counts.append(sum(1 for e in prof.events() if e.name == "aten::convolution"))
    # 14 edges × 6 convs per cell become 5 groups × 6 (+ the preprocessing and stem convs)
    assert counts[1] < counts[0] / 2, counts


def test_state_dicts_load_across_the_two_layouts():
    """grouped → grouped, grouped → per-edge and per-edge → grouped give the same network (eval
    outputs, which read every weight and BatchNorm statistic); same parameter count."""
    kw = dict(C=4, layers=3, primitives=DARTS_PRIMITIVES, in_channels=3)
    per_edge, grouped = _pair(**kw)
    x = torch.randn(2, 3, 8, 8)
    nets = [per_edge, grouped]
    for batched in (True, False):
        other = SearchNetwork(**kw, batch_edge_convs=batched)
        other.load_state_dict(grouped.state_dict())
        nets.append(other)
    with torch.no_grad():
        outs = [net.eval()(x) for net in nets]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-6, rtol=1e-5)
    assert len({sum(p.numel() for p in net.parameters()) for net in nets}) == 1
    slots = [m for m in grouped.modules() if isinstance(m, EdgeGroupSlot)]
    assert len(slots) == 3 * 14 * 4 and not any(list(m.parameters()) for m in slots)


@pytest.mark.parametrize("layout", [old_grouped_layout, split_input_layout])
def test_checkpoints_of_the_earlier_grouped_layouts_load_into_both_layouts(layout):
    """A checkpoint written in an earlier grouped layout (before the edge-major one; before the two
    inputs shared a group) loads into today's grouped and per-edge networks: the same eval outputs
    as the network that wrote it."""
    kw = dict(C=4, layers=3, primitives=DARTS_PRIMITIVES, in_channels=3)
    per_edge, grouped = _pair(**kw)
    old = layout(grouped.state_dict())
    assert any(k.startswith("cells.0.edge_groups.4.") for k in old)  # 5 groups of a 4-node cell
    assert any(k.endswith(".pw1") for k in old) == (layout is old_grouped_layout)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = grouped.eval()(x)
        for batched in (True, False):
            net = SearchNetwork(**kw, batch_edge_convs=batched)
            net.load_state_dict(old)
            torch.testing.assert_close(net.eval()(x), want, atol=1e-6, rtol=1e-5)


def test_an_incomplete_per_edge_checkpoint_is_reported_not_guessed():
    kw = dict(C=4, layers=3, primitives=NOISYDARTS_PRIMITIVES, in_channels=3)
    state = SearchNetwork(**kw, batch_edge_convs=False).state_dict()
    del state["cells.1._ops.3._ops.3.op.2.weight"]  # one edge's sep_conv_3x3 pointwise weight
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*cells\.1\.edge_groups\.\d\.ops\.3\.pw1"):
        SearchNetwork(**kw).load_state_dict(state)


def test_grouped_convs_are_the_default_with_node_sharing():
    assert all(c.edge_groups is not None for c in SearchNetwork(C=4, layers=3).cells)
    assert all(c.edge_groups is None for c in SearchNetwork(C=4, layers=3, share_node_ops=False).cells)


def test_grouped_convs_refuse_bad_use():
    with pytest.raises(ValueError, match="share_node_ops"):
        SearchNetwork(C=4, layers=2, batch_edge_convs=True, share_node_ops=False)
    net = SearchNetwork(C=4, layers=3, primitives=NOISYDARTS_PRIMITIVES, batch_edge_convs=True)
    edge = net.cells[0]._ops[0]  # a normal cell's edge: C = 4
    with pytest.raises(RuntimeError, match="EdgeGroup"):
        edge(torch.randn(2, 4, 8, 8), torch.softmax(torch.randn(7), 0))


def test_repeated_relu_keeps_the_memory_format(fresh_seed):
    """relu(h) repeated for the E edges stays channels_last in a channels_last network (Tensor.repeat
    would return NCHW and take every grouped conv off oneDNN's NHWC path); values and gradient as
    Tensor.repeat's."""
    from ndarts.edge_groups import repeat_channels

    r = torch.randn(2, 5, 7, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = repeat_channels(r, 4)
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = r.detach().clone().requires_grad_()
    torch.testing.assert_close(y, ref.repeat(1, 4, 1, 1), atol=0, rtol=0)
    g = torch.randn(y.shape)
    y.backward(g)
    ref.repeat(1, 4, 1, 1).backward(g)
    torch.testing.assert_close(r.grad, ref.grad)


@pytest.mark.parametrize("primitive", ["sep_conv_3x3", "dil_conv_5x5"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("counts", [(3,), (3, 2)])
def test_both_formulations_of_the_first_stage_agree(primitive, stride, counts, fresh_seed):
    """On channels_last CPU tensors the first stage runs in the channel-multiplier formulation
    (oneDNN's faster path; source by source for a group of several sources), elsewhere edge-major
    on the sources' relus repeated: same output and gradients."""
    from ndarts.edge_groups import make_grouped_op, multiplier_path, repeat_sources

    op = make_grouped_op(primitive, 5, sum(counts), stride).double()
    rs = [torch.rand(2, 5, 9, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last) for _ in counts]
    assert multiplier_path(rs[0]) and not multiplier_path(rs[0].contiguous())

    def multiplier(xs):  # the channel-multiplier formulation, source by source (what stage1 runs where it is chosen)
        firsts = [sum(counts[:s]) for s in range(len(counts))]
        return torch.cat([op._multiplier_stage1(x, f, k) for x, f, k in zip(xs, firsts, counts)], dim=1)

    outs = []
    for edge_major in (False, True):
        op.zero_grad(set_to_none=True)
        xs = [r.detach().clone().requires_grad_() for r in rs]
        y = op.stage1(xs, repeat_sources(xs, counts), counts) if edge_major else multiplier(xs)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape))
        outs.append((y.detach(), *[x.grad for x in xs], op.dw1.weight.grad, op.pw1.weight.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_the_multiplier_formulation_is_chosen_where_it_is_the_faster():
    """On oneDNN's NHWC path only a dilated conv that keeps several taps on the map (and does not
    read one phase of it), for a source of several edges, on a map of more than 256 output
    positions, takes the channel-multiplier formulation (benchmarks/RESULTS.md, 2026-12-05, first
    and fourth entries); stage1 then runs it, and elsewhere the edge-major one."""
    from unittest import mock

    from ndarts.edge_groups import EdgeGroup, GroupedConvStack, make_grouped_op, repeat_sources

    def nhwc(size, width=None):
        return torch.rand(2, 4, size, width or size).contiguous(memory_format=torch.channels_last)

    dil5, dil3, sep3 = (make_grouped_op(p, 4, 8, 1) for p in ("dil_conv_5x5", "dil_conv_3x3", "sep_conv_3x3"))
    assert dil5.uses_multiplier(nhwc(32), (4, 4)) and dil3.uses_multiplier(nhwc(17), (3,))  # 1024, 289 positions
    assert dil5.uses_multiplier(nhwc(16, 17), (4, 4)) and dil3.uses_multiplier(nhwc(257, 1), (2,))  # 272, 257
    assert not dil5.uses_multiplier(nhwc(16), (4, 4)) and not dil3.uses_multiplier(nhwc(8), (3,))  # 256, 64
    assert not dil3.uses_multiplier(nhwc(256, 1), (2,))  # 256 positions in a column
    assert not dil3.uses_multiplier(nhwc(2), (3,))  # cut to its centre tap
    assert not dil5.uses_multiplier(nhwc(2), (4, 4)) and not dil5.uses_multiplier(nhwc(32), (1,))
    assert not dil5.uses_multiplier(nhwc(32).contiguous(), (4, 4)) and not sep3.uses_multiplier(nhwc(32), (4, 4))
    # at stride 2 (a reduction cell) a dil conv runs undilated on one phase of its input: edge-major
    assert not any(make_grouped_op(p, 4, 4, 2).uses_multiplier(nhwc(size), (2, 2))
                   for p in ("dil_conv_5x5", "dil_conv_3x3") for size in (4, 5, 8))
    for op, size, multiplier in ((dil5, 17, True), (sep3, 17, False), (dil5, 16, False)):
        rs = [nhwc(size), nhwc(size)]
        with mock.patch.object(GroupedConvStack, "_multiplier_stage1", autospec=True,
                               side_effect=GroupedConvStack._multiplier_stage1) as called:
            op.stage1(rs, counts=(4, 4))
        assert called.call_count == (2 if multiplier else 0)
    # a group of both: the sep conv reads the repeated input (made once), the dil conv its sources
    group = EdgeGroup(4, (4, 4), 1, ["sep_conv_3x3", "dil_conv_5x5"])
    with mock.patch.object(GroupedConvStack, "_multiplier_stage1", autospec=True,
                           side_effect=GroupedConvStack._multiplier_stage1) as called, \
            mock.patch("ndarts.edge_groups.repeat_sources", side_effect=repeat_sources) as repeats:
        out = group([nhwc(17), nhwc(17)])
    assert called.call_count == 2 and repeats.call_count == 1 and sorted(out) == [0, 1]


@pytest.mark.parametrize("channels_last", [False, True])
def test_sources_repeated_in_one_copy(channels_last, fresh_seed):
    """repeat_sources: source s's channels repeated counts[s] times, the sources one after another,
    as a cat of Tensor.repeat's; gradients the sums over the repeats."""
    from ndarts.edge_groups import repeat_sources

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rs = [torch.randn(2, 3, 5, 4).contiguous(memory_format=fmt).requires_grad_() for _ in range(2)]
    y = repeat_sources(rs, (4, 2))
    refs = [r.detach().clone().requires_grad_() for r in rs]
    want = torch.cat([refs[0].repeat(1, 4, 1, 1), refs[1].repeat(1, 2, 1, 1)], dim=1)
    torch.testing.assert_close(y, want, atol=0, rtol=0)
    assert y.is_contiguous(memory_format=fmt)
    g = torch.randn(y.shape)
    y.backward(g)
    want.backward(g)
    for r, ref in zip(rs, refs):
        torch.testing.assert_close(r.grad, ref.grad)


def test_a_cells_two_inputs_share_one_group():
    """The edges leaving a cell's two inputs are one EdgeGroup (input 0's, then input 1's): each
    layer of their convs runs once for both inputs."""
    net = SearchNetwork(C=4, layers=3, primitives=DARTS_PRIMITIVES)
    for cell in net.cells:
        steps = cell._steps
        assert [g.sources for g in cell.edge_groups] == [(steps, steps)] + [(steps - k - 1,) for k in range(steps - 1)]
        slots = cell.edge_slots()
        assert sorted(slots) == sorted(set(slots))  # every (group, slot) once
        assert [slots[k] for k in (0, 1)] == [(0, 0), (0, steps)]  # node 0's two edges


@pytest.mark.parametrize("counts,aliases", [((4, 4), 4), ((3,), 1), ((1, 2, 5), 3)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_relu_repeat_kernels_equal_relu_then_repeat(counts, aliases, dtype, tol, fresh_seed):
    """The group input with the ReLU fused (Triton, interpreter): the values of relu then
    repeat_sources, and the sources' gradients (Σ over their edge slots, zero where x <= 0); odd shapes,
    zeros and NaN as torch.relu treats them. With aliases (one per consumer, as a group's primitives
    read it) the backward kernel sums the aliases' gradients itself: one launch per source, no adds."""
    from unittest import mock

    import ndarts_kernels
    from ndarts.edge_groups import relu_repeat_sources, repeat_sources

    xs = [torch.randn(3, 5, 7, 3).to(dtype) for _ in counts]
    xs[0][0, 0, 0, :2] = torch.tensor([0.0, float("nan")])
    got_in = [x.clone().requires_grad_() for x in xs]
    want_in = [x.clone().requires_grad_() for x in xs]
    with mock.patch.object(ndarts_kernels, "relu_repeat_forward", wraps=ndarts_kernels.relu_repeat_forward) as fwd:
        got = relu_repeat_sources(got_in, counts, "triton", aliases=aliases)
    assert fwd.call_count == 1
    got = [got] if aliases == 1 else list(got)
    assert len(got) == aliases
    want = repeat_sources([torch.relu(x) for x in want_in], counts)
    for alias in got:
        torch.testing.assert_close(alias, want, atol=0, rtol=0, equal_nan=True)
    gs = [torch.randn(want.shape).to(dtype) for _ in got]
    with mock.patch.object(ndarts_kernels, "relu_repeat_backward", wraps=ndarts_kernels.relu_repeat_backward) as bwd:
        torch.autograd.backward(got, gs)
    assert bwd.call_count == 1
    want.backward(sum(g.float() for g in gs).to(dtype))
    for a, b in zip(got_in, want_in):
        torch.testing.assert_close(a.grad, b.grad, atol=tol * aliases, rtol=tol, equal_nan=True)


def test_relu_repeat_sums_only_the_aliases_that_get_a_gradient(fresh_seed):
    """An alias nobody differentiates through adds nothing (its gradient is None, not zeros)."""
    from ndarts.edge_groups import relu_repeat_sources

    x = torch.randn(2, 3, 5, 4)
    got_in, want_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b, c = relu_repeat_sources([got_in], (2,), "triton", aliases=3)
    g = torch.randn(a.shape)
    (b * g).sum().backward()
    (torch.relu(want_in).repeat(1, 2, 1, 1) * g).sum().backward()
    torch.testing.assert_close(got_in.grad, want_in.grad, atol=1e-6, rtol=1e-6)


def test_relu_repeat_masks_by_its_output_where_asked(fresh_seed):
    """keep_output (a cell output's relu, whose readers keep relu(x)): the backward masks by relu(x),
    which it keeps instead of x, with torch's relu gradient at zeros, negative zeros and NaNs too;
    only for one source repeated once."""
    from ndarts.edge_groups import relu_repeat_sources

    x = torch.randn(2, 3, 5, 4)
    x.view(-1)[:4] = torch.tensor([0.0, -0.0, float("nan"), -float("nan")])
    for keep_output in (True, False):
        got_in, want_in = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = relu_repeat_sources([got_in], (1,), "triton", aliases=2, keep_output=keep_output)
        (saved,) = a.grad_fn.saved_tensors
        torch.testing.assert_close(saved, torch.relu(x) if keep_output else x, equal_nan=True, atol=0, rtol=0)
        gs = [torch.randn(a.shape) for _ in range(2)]
        ((a * gs[0]).sum() + (b * gs[1]).sum()).backward()
        (torch.relu(want_in) * gs[0] + torch.relu(want_in) * gs[1]).sum().backward()  # NaN loss, finite gradient
        assert torch.isfinite(want_in.grad).all()
        torch.testing.assert_close(got_in.grad, want_in.grad, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="keep_output"):
        relu_repeat_sources([x, x], (1, 1), "triton", aliases=2, keep_output=True)
    with pytest.raises(ValueError, match="keep_output"):
        relu_repeat_sources([x], (2,), "triton", keep_output=True)


def test_relu_repeat_names_bad_input():
    import ndarts_kernels

    with pytest.raises(ValueError, match="one count in 1..8 per source"):
        ndarts_kernels.relu_repeat_forward([torch.randn(2, 3, 4, 4)], [9])
    with pytest.raises(ValueError, match="share shape"):
        ndarts_kernels.relu_repeat_forward([torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)], [1, 1])
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="grad must be"):
        ndarts_kernels.relu_repeat_backward([torch.randn(2, 6, 4, 4), torch.randn(2, 3, 4, 4)], [x], [2])
    with pytest.raises(ValueError, match="1..6 gradient tensors"):
        ndarts_kernels.relu_repeat_backward([torch.randn(2, 6, 4, 4)] * 7, [x], [2])


@pytest.mark.parametrize("dwconv", [False, True])
def test_recomputed_relu_equals_kept_relu(fresh_seed, dwconv):
    """SearchNetwork(recompute_relu=True), the default where the BatchNorm kernels run: outputs,
    every gradient and the BatchNorm statistics equal those of the network whose sep convs keep
    their inner ReLU's output (the Triton kernels in the interpreter; with the Triton depthwise
    convs too)."""
    from network_checks import assert_same_forward_backward

    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork

    # one cell of one node (a group of the inputs' two edges), both stacks kinds; small: the interpreter
    kw = dict(C=4, num_classes=5, layers=1, primitives=["skip_connect", "sep_conv_3x3", "dil_conv_3x3"],
              noise=NoiseConfig(kind="none"), fused=True, steps=1, multiplier=1, in_channels=2, backend="triton",
              fused_depthwise_conv=dwconv)
    torch.manual_seed(3)
    kept = SearchNetwork(**kw, recompute_relu=False)
    torch.manual_seed(3)
    recomputed = SearchNetwork(**kw)
    assert all(g.recompute_relu for c in recomputed.cells for g in c.edge_groups)
    assert_same_forward_backward((kept, recomputed), torch.randn(2, 2, 6, 7), out_tol=(0, 0), grad_tol=(0, 0),
                                 buffer_tol=(0, 0), seed=fresh_seed)


def test_every_graph_kernel_lever_at_once_equals_the_plain_per_edge_network(fresh_seed):
    """The graph step's network with every Triton-backed lever on (group sums, BatchNorms, the
    remade inner ReLU, and the opt-in depthwise and pointwise conv kernels) against the per-edge
    network on PyTorch's ops, loaded from the same state: outputs, every gradient and every buffer
    (noise off: group sums draw their noise per group)."""
    # a reduction cell of two nodes (stride-2 groups with own FactorizedReduce skips, a stride-1
    # group), a pool, both stack kinds: small, for the interpreter
    kw = dict(C=4, num_classes=5, layers=1, steps=2, multiplier=2, noise=NoiseConfig(kind="none"), fused=True,
              primitives=["skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_5x5"], in_channels=2)
    per_edge = SearchNetwork(**kw, batch_edge_convs=False, backend="torch")
    levers = SearchNetwork(**kw, backend="triton", fused_depthwise_conv=True, fused_pointwise_conv=True)
    assert any(c._sum_plans for c in levers.cells) and all(g.recompute_relu for g in levers.cells[0].edge_groups)
    with torch.no_grad():
        for a in per_edge.arch_parameters():
            a.normal_()
    levers.load_state_dict(per_edge.state_dict())
    # fp32 (the kernels' dtypes), and BatchNorms over 2 images of 6×5: summation-order rounding is
    # amplified up to ~3e-4 relative in the stem's gradient, as much with the Triton network without
    # the conv levers (measured over seeds); a wrong weight, channel or statistic is O(1)
    _assert_same(per_edge, levers, torch.randn(2, 2, 6, 5), seed=fresh_seed, tol=2e-3)


@pytest.mark.parametrize("fused_separable", [False, True], ids=["torch_convs", "fused_stages"])
@pytest.mark.parametrize("reader,shape", [("deferred_output", (2, 4, 6, 5)), ("group_sums", (3, 4, 8, 8)),
                                          ("group_sums", (2, 3, 5, 7))])
def test_deferred_last_batch_norms_equal_their_outputs(fused_separable, reader, shape, fresh_seed, device="cpu"):
    """EdgeGroup.run(defer_last=True), as a group summed by its group sums runs it: each stack's
    last BatchNorm (sep bn2, dil bn) writes no y, its output is its input z and norms_out its
    DeferredNorm; read as y (by deferred_output, whose gradient passes through, or by the group
    sums, which normalise on load) it gives the outputs, every gradient and the running statistics
    of the written y (the BatchNorm kernels on PyTorch's convs, or the fused stages). Where the
    group sums read z and the image splits into their blocks (8×8, not 5×7), their backward kernels
    make the BatchNorms' backward sums, which the BatchNorm backward takes instead of summing."""
    import copy
    from unittest import mock

    import torch.nn.functional as F

    import ndarts_kernels
    from ndarts.batch_norm import deferred_output, use_search_batch_norm
    from ndarts.edge_groups import EdgeGroup
    from ndarts.group_sum import noisy_group_sums

    n, c, h, w = shape
    group = EdgeGroup(c, (2, 2), 1, ["skip_connect", "sep_conv_3x3", "dil_conv_5x5"]).to(device)
    use_search_batch_norm(group, "triton")
    for stack in group.ops.values():
        stack.fused_separable, stack.backend = fused_separable, "triton"
    xs = [torch.randn(shape, device=device) for _ in range(2)]
    weights = torch.softmax(torch.randn(4, 3, device=device), 1)
    grads = torch.randn(4, *shape, device=device)  # the group sums' (4 edges)
    grads_out = torch.randn(2, n, 4 * c, h, w, device=device)  # the two stacks' outputs'

    def run(g, defer):
        inputs = [x.clone().requires_grad_() for x in xs]
        alpha = weights.clone().requires_grad_()
        norms = {} if defer else None
        outs, _ = g.run([F.relu(x) for x in inputs], backend="triton", defer_last=defer, norms_out=norms)
        if defer:
            assert sorted(norms) == [1, 2]  # both stacks' last BatchNorms deferred
            for i, z in outs.items():  # the output is z, not normalised
                assert not torch.allclose(z.mean((0, 2, 3)), torch.zeros_like(z[0, :, 0, 0]), atol=1e-3)
        if reader == "deferred_output":
            if defer:
                outs = {i: deferred_output(z, *norms[i]) for i, z in outs.items()}
            y = torch.stack([outs[1], outs[2]])
            loss = (y * grads_out).sum() + alpha.sum()
        else:  # each input's identity as the shared operand, the two stacks grouped
            y = noisy_group_sums([[inputs[0]], [inputs[1]]], [outs[1], outs[2]], alpha, (2, 2), None,
                                 NoiseConfig(kind="none"), backend="triton",
                                 grouped_norm=[norms[1], norms[2]] if defer else None)
            loss = (y * grads).sum()
        loss.backward()
        return ([y.detach(), alpha.grad] + [x.grad for x in inputs] + [p.grad for p in g.parameters()]
                + [b.clone() for b in g.buffers()])

    want = run(copy.deepcopy(group), False)
    with mock.patch.object(ndarts_kernels, "batch_norms_backward", wraps=ndarts_kernels.batch_norms_backward) as bwd:
        got = run(group, True)
    given = sum(t is not None for call in bwd.call_args_list for t in call.kwargs.get("sums") or ())
    # both deferred BatchNorms' sums where the group sums make them; on the fused stages also the sep conv's bn1's,
    # from its second pair's input-gradient kernel (each fold of the first stage its own partial count)
    assert given == (2 if reader == "group_sums" and h * w == 64 else 0) + int(fused_separable)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"tensor {k}: {m}")

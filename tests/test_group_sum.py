"""The noisy sums of all edges leaving a node in one op: Triton kernels (interpreter on CPU)
against the reference with the very ε the kernels drew, per dtype, on odd shapes."""
import pytest
import torch

import ndarts_kernels
from ndarts import NoiseConfig
from ndarts.fused_sum import draw_seed, reference_eps
from ndarts.group_sum import noisy_group_sum, noisy_group_sums, reference_group_sum, sum_targets
from test_noisy_mixed_sum import VARIANTS  # the noise variants of the paper's ablation

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2)]
# (edges, shared operands, grouped operands, [N, C, H, W])
LAYOUTS = [(4, 3, 4, (3, 5, 7, 6)), (1, 1, 1, (2, 3, 5, 5)), (3, 2, 6, (2, 4, 3, 9)), (2, 3, 5, (1, 2, 1, 33))]


def _inputs(edges, p, q, shape, dtype, device):
    n, c, h, w = shape
    shared = [(torch.randn(shape, device=device) * (1 + i) + i).to(dtype) for i in range(p)]
    grouped = [torch.randn((n, edges * c, h, w), device=device).to(dtype) for _ in range(q)]
    weights = torch.softmax(torch.randn(edges, p + q, device=device), 1)
    grad = torch.randn((edges, *shape), device=device).to(dtype)
    return shared, grouped, weights, grad


def _by_source(flat, p, sources):
    """The flat list of the sources' shared operands (p each) split per source."""
    return [flat[i * p:(i + 1) * p] for i in range(sources)]


def _sources_inputs(layout, dtype, device, noise):
    """(the sources' shared operands, flat; grouped operands; weights; the upstream gradient; a
    seed; the ε the kernels draw from it at scale 0.7) for a group of several sources."""
    edges, p, q, shape = layout
    total = sum(edges)
    sources = [_inputs(total, p, q, shape, dtype, device)[0] for _ in edges]
    _, grouped, weights, grad = _inputs(total, p, q, shape, dtype, device)
    seed = draw_seed(device)
    kind = noise.kernel_params(0.7)[0]
    eps = ndarts_kernels.unit_noise(seed, total * sources[0][0].numel(), kind).view(total, -1)
    return [t for s in sources for t in s], grouped, weights, grad, seed, eps


def _largest_abs_term_sum(shared_by_source, grouped, grad, edges, skip, lam, eps) -> float:
    """max over (edge e, operand k) of Σ|g_e·op_k|, the scale of dW[e, k]'s rounding: shared operands
    per source (the skip's with its noise bounded by λ·std(x)·|ε|), grouped ones edge-major."""
    largest, e = 0.0, 0
    c = grouped[0].shape[1] // sum(edges) if grouped else 0
    for shared, count in zip(shared_by_source, edges):
        for _ in range(count):
            g = grad[e].float().abs()
            ops = [x.float().abs() + (abs(lam) * x.float().std() * eps[e].abs().view_as(x) if k == skip else 0)
                   for k, x in enumerate(shared)] + [y[:, e * c:(e + 1) * c].float().abs() for y in grouped]
            largest = max(largest, *((g * op).sum().item() for op in ops))
            e += 1
    return largest


def _run(fn, shared, grouped, weights, grad):
    s = [t.detach().clone().requires_grad_() for t in shared]
    g = [t.detach().clone().requires_grad_() for t in grouped]
    w = weights.detach().clone().requires_grad_()
    y = fn(s, g, w)
    y.backward(grad)
    return [y.detach(), *[t.grad for t in s], *[t.grad for t in g], w.grad]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_group_kernels_match_reference(device, dtype, atol, rtol, layout, variant):
    edges, p, q, shape = layout
    noise = VARIANTS[variant]
    skip = p - 1  # the skip operand is the last shared one in the search network
    shared, grouped, weights, grad = _inputs(edges, p, q, shape, dtype, device)
    seed = draw_seed(device)
    scale = 0.7
    kind, mult, lam, mean = noise.kernel_params(scale)
    eps = (ndarts_kernels.unit_noise(seed, edges * shared[0].numel(), kind).view(edges, -1)
           if noise.enabled else None)
    want = _run(lambda s, g, w: reference_group_sum([s], g, w, [edges], skip, mult, lam, mean, eps), shared, grouped,
                weights, grad)
    got = _run(lambda s, g, w: noisy_group_sum(s, g, w, skip, noise, scale=scale, backend="triton", seed=seed),
               shared, grouped, weights, grad)
    names = ["y"] + [f"d shared {i}" for i in range(p)] + [f"d grouped {i}" for i in range(q)] + ["dW"]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        # dW sums g·o over all elements: a looser bound in bf16
        tol = (atol * 20, rtol * 5) if name == "dW" and dtype != torch.float32 else (atol, rtol)
        torch.testing.assert_close(a.float(), b.float(), atol=tol[0], rtol=tol[1], msg=lambda m: f"{name}: {m}")


# (edges per source, shared operands per source, grouped operands, [N, C, H, W])
SOURCE_LAYOUTS = [((4, 4), 3, 4, (3, 5, 7, 6)), ((2, 1, 3), 2, 2, (2, 3, 5, 7)), ((1, 2), 1, 6, (1, 2, 1, 33))]


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("layout", SOURCE_LAYOUTS)
@pytest.mark.parametrize("variant", ["gaussian", "multiplicative"])
def test_group_kernels_of_several_sources_match_reference(dtype, atol, rtol, layout, variant, device="cpu"):
    """A group whose edges leave several nodes (a cell's two inputs share one): each source's edges
    take its own shared operands and read their channels of the grouped operands in place; the
    grouped gradients land in one tensor per operand; edge e draws the noise of index e.
    (tests/test_gpu.py runs it on CUDA.)"""
    edges, p, q, shape = layout
    noise = VARIANTS[variant]
    skip = p - 1
    flat, grouped, weights, grad, seed, eps = _sources_inputs(layout, dtype, device, noise)
    mult, lam, mean = noise.kernel_params(0.7)[1:]

    def split(s):
        return _by_source(s, p, len(edges))

    want = _run(lambda s, g, w: reference_group_sum(split(s), g, w, edges, skip, mult, lam, mean, eps), flat,
                grouped, weights, grad)
    got = _run(lambda s, g, w: noisy_group_sums(split(s), g, w, edges, skip, noise, scale=0.7, backend="triton",
                                                seed=seed), flat, grouped, weights, grad)
    # dW[e, k] sums N·C·H·W products: its fp32 rounding scales with Σ|g_e·op_k| (a multiplicative noisy
    # skip reaches 2.3e-5 off at 2e-5 atol), as in test_deferred_batch_norm_operands_are_read_as_their_output
    dw_atol = torch.finfo(dtype).eps * _largest_abs_term_sum(split(flat), grouped, grad, edges, skip, lam, eps)
    names = ["y"] + [f"d shared {i}" for i in range(len(flat))] + [f"d grouped {i}" for i in range(q)] + ["dW"]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        tol = (atol * 20, rtol * 5) if dtype != torch.float32 else (atol + dw_atol, rtol)
        tol = tol if name == "dW" else (atol, rtol)
        torch.testing.assert_close(a.float(), b.float(), atol=tol[0], rtol=tol[1], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("layout", [((4, 4), 3, 4, (3, 5, 7, 6)), ((3,), 2, 3, (2, 4, 3, 9))])
@pytest.mark.parametrize("alpha_grad", [True, False])
def test_deferred_batch_norm_operands_are_read_as_their_output(dtype, atol, rtol, layout, alpha_grad, fresh_seed,
                                                                device="cpu"):
    """A grouped operand that is a deferred BatchNorm's input z (grouped_norm: its mean and rstd)
    is summed as (z − mean)·rstd, and its gradient is that of the BatchNorm's output, as if y had
    been written (deferred_output, whose gradient passes through); per source its channels'
    statistics. alpha_grad False: the w step's backward (no operand read)."""
    from ndarts.batch_norm import deferred_output

    edges, p, q, shape = layout
    total, c, skip = sum(edges), shape[1], p - 1
    noise = VARIANTS["gaussian"]
    flat, grouped, weights, grad, seed, eps = _sources_inputs(layout, dtype, device, noise)
    kind, mult, lam, mean = noise.kernel_params(0.7)
    grouped = [(g.float() * 3 + 2).to(dtype) for g in grouped]  # a BatchNorm input: not normalised
    norms = [(torch.randn(total * c, device=device) + 2, torch.rand(total * c, device=device) + 0.2)
             if i % 2 == 0 else None for i in range(q)]

    def split(s):
        return _by_source(s, p, len(edges))

    def made(g):
        return [deferred_output(z, *n) if n is not None else z for z, n in zip(g, norms)]

    def run(fn):
        out = _run(fn, flat, grouped, weights if alpha_grad else weights.detach(), grad)
        return out if alpha_grad else out[:-1]

    # dW[e, k] sums N·C·H·W products g_e·op_k: its fp32 rounding scales with Σ|g_e·op_k| (the deferred
    # operands, (3·z + 2 − mean)·rstd, reach ~10), not with dW where the terms cancel; the noisy skip's
    # op bounded by |x| + λ·std(x)·|ε|
    dw_atol = torch.finfo(dtype).eps * _largest_abs_term_sum(split(flat), made(grouped), grad, edges, skip, lam, eps)
    # the torch backend draws its ε with torch's generator (fused_sum.reference_eps), the kernels with Philox
    for backend, eps in [("triton", eps), ("torch", reference_eps(seed, eps.shape, kind, device))]:
        want = run(lambda s, g, w: reference_group_sum(split(s), made(g), w if alpha_grad else w.detach(), edges,
                                                       skip, mult, lam, mean, eps))
        got = run(lambda s, g, w: torch.stack(noisy_group_sums(
            split(s), g, w if alpha_grad else w.detach(), edges, skip, noise, scale=0.7, backend=backend,
            seed=seed, per_edge=True, grouped_norm=norms)))
        names = ["y"] + [f"d shared {i}" for i in range(len(flat))] + [f"d grouped {i}" for i in range(q)] + ["dW"]
        for name, a, b in zip(names, got, want):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            tol = (atol * 20, rtol * 5) if dtype != torch.float32 else (atol + dw_atol, rtol)
            tol = tol if name == "dW" else (atol, rtol)
            torch.testing.assert_close(a.float(), b.float(), atol=tol[0], rtol=tol[1],
                                       msg=lambda m: f"{backend} {name}: {m}")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("edges,shape", [((4, 4), (3, 5, 4, 4)), ((3,), (2, 3, 8, 8)), ((1, 2), (1, 2, 2, 2))])
@pytest.mark.parametrize("alpha_grad", [True, False])
def test_the_backward_makes_the_deferred_batch_norms_sums(dtype, atol, rtol, edges, shape, alpha_grad, fresh_seed,
                                                          device="cpu"):
    """A deferred BatchNorm's operand with a GradSums (DeferredNorm): as the backward kernels write
    its gradient d they leave, per channel, partial Σd and Σd·y (y = (z − mean)·rstd) over runs of
    one image's plane, one launch per source into one buffer; their totals are torch's. Also in a
    w step (alpha_grad False), whose kernels otherwise read no operand."""
    from ndarts.batch_norm import DeferredNorm, GradSums
    from ndarts_kernels.noisy_group_sum import batch_norm_sum_slots

    total, c = sum(edges), shape[1]
    sources = [_inputs(total, 2, 3, shape, dtype, device)[0] for _ in edges]
    _, grouped, weights, grad = _inputs(total, 2, 3, shape, dtype, device)
    grouped = [g.requires_grad_() for g in grouped]
    norms = [DeferredNorm(torch.randn(total * c, device=device), torch.rand(total * c, device=device) + 0.2,
                          GradSums()) if q != 1 else None for q in range(3)]
    y = noisy_group_sums(sources, grouped, weights.requires_grad_(alpha_grad), edges, 1, VARIANTS["gaussian"],
                         backend="triton", grouped_norm=norms)
    y.backward(grad)
    for q, norm in enumerate(norms):
        if norm is None:
            continue
        sums = norm.sums.take()
        assert sums.shape == (total * c, batch_norm_sum_slots(shape), 2) and norm.sums.take() is None
        d = grouped[q].grad.float()
        yq = (grouped[q].detach().float() - norm.mean.view(1, -1, 1, 1)) * norm.rstd.view(1, -1, 1, 1)
        want = torch.stack([d.sum((0, 2, 3)), (d * yq).sum((0, 2, 3))], 1)
        torch.testing.assert_close(sums.sum(1), want, atol=atol * 50, rtol=rtol * 5, msg=lambda m: f"operand {q}: {m}")


def test_deferred_batch_norm_sums_are_checked():
    from ndarts_kernels.noisy_group_sum import batch_norm_sum_slots, noisy_group_sum_backward

    shared, grouped, weights, grad = _inputs(3, 1, 2, (2, 4, 4, 4), torch.float32, "cpu")
    seed, std = draw_seed("cpu"), torch.ones(1)
    norm = [(torch.zeros(12), torch.ones(12))] * 2
    slots = batch_norm_sum_slots((2, 4, 4, 4))
    assert slots == 2 and batch_norm_sum_slots((2, 4, 5, 7)) is None
    for kw, what in [(dict(grouped_norm=None, bn_sums=[torch.zeros(12, slots, 2), None]), "no grouped_norm"),
                     (dict(grouped_norm=norm, bn_sums=[torch.zeros(12, slots + 1, 2), None]), r"\(12, 2, 2\)"),
                     (dict(grouped_norm=norm, bn_sums=[None]), "one entry")]:
        with pytest.raises(ValueError, match=what):
            noisy_group_sum_backward(grad, shared, grouped, weights, seed, std, -1, 0, False, 0.0, 0.0, **kw)


def test_deferred_batch_norm_statistics_are_checked():
    from ndarts_kernels.noisy_group_sum import noisy_group_sum_forward

    shared, grouped, weights, _ = _inputs(3, 1, 2, (2, 4, 3, 3), torch.float32, "cpu")
    seed = draw_seed("cpu")
    good = (torch.zeros(12), torch.ones(12))
    for norm, what in [([good], "one entry"), ([good, (torch.zeros(12), torch.ones(11))], r"\[12\]"),
                       ([None, (torch.zeros(12, dtype=torch.float64), torch.ones(12))], "fp32")]:
        with pytest.raises(ValueError, match=what):
            noisy_group_sum_forward(shared, grouped, weights, seed, -1, 0, False, 0.0, 0.0, grouped_norm=norm)


def test_group_sums_name_a_bad_source_layout():
    s = [torch.randn(2, 3, 4, 4)]
    g = [torch.randn(2, 9, 4, 4)]
    with pytest.raises(ValueError, match="one edge count"):
        noisy_group_sums([s, s], g, torch.ones(3, 2), [3], 0, NoiseConfig())
    with pytest.raises(ValueError, match=r"weights must be \[3, 2\]"):
        noisy_group_sums([s, s], g, torch.ones(4, 2), [2, 1], 0, NoiseConfig())


def test_each_edge_draws_its_own_noise():
    """Same skip operand, same weights on every edge: the outputs differ only by their noise, which
    has the std λ·std(skip) on each edge and is uncorrelated between edges."""
    shape = (4, 8, 16, 16)
    skip = torch.randn(shape) * 3 + 1
    grouped = [torch.zeros((4, 3 * 8, 16, 16))]
    weights = torch.tensor([[1.0, 0.0]] * 3)
    y = noisy_group_sum([skip], grouped, weights, 0, NoiseConfig(lam=0.2), backend="triton")
    noise = (y - skip).flatten(1)
    torch.testing.assert_close(noise.std(1), torch.full((3,), 0.2 * skip.std().item()), rtol=0.03, atol=0)
    corr = torch.corrcoef(noise)
    assert corr.sub(torch.eye(3)).abs().max() < 0.05


def test_bad_inputs_are_named():
    s = [torch.randn(2, 3, 4, 4)]
    with pytest.raises(ValueError, match=r"weights must be \[edges, 2\]"):
        noisy_group_sum(s, [torch.randn(2, 6, 4, 4)], torch.ones(2, 3), None, NoiseConfig(kind="none"))
    with pytest.raises(ValueError, match=r"grouped operands must be \[2, 6, 4, 4\]"):
        noisy_group_sum(s, [torch.randn(2, 5, 4, 4)], torch.ones(2, 2), None, NoiseConfig(kind="none"),
                        backend="triton")
    with pytest.raises(ValueError, match="1..3 shared"):
        noisy_group_sum(s * 4, [torch.randn(2, 6, 4, 4)], torch.ones(2, 5), None, NoiseConfig(kind="none"),
                        backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("skip,message", [
    (1, r"skip_index must name a shared operand \(0..0\) or be None, got 1: a grouped operand takes no noise"),
    (-1, "got -1"),
    (5, "got 5"),
])
def test_a_skip_index_that_names_no_shared_operand_is_refused(backend, skip, message):
    """A skip index past the shared operands (a grouped one, or none at all) was summed without
    noise, silently."""
    s, g = [torch.randn(2, 3, 4, 4)], [torch.randn(2, 6, 4, 4)]
    with pytest.raises(ValueError, match=message):
        noisy_group_sum(s, g, torch.ones(2, 2), skip, NoiseConfig(), backend=backend)
    with pytest.raises(TypeError, match="noise must be a NoiseConfig, got str"):
        noisy_group_sum(s, g, torch.ones(2, 2), 0, "gaussian", backend=backend)


def _networks(**kw):
    from ndarts.search_model import SearchNetwork

    torch.manual_seed(0)
    per_edge = SearchNetwork(fused=True, group_sums=False, **kw)
    torch.manual_seed(0)
    grouped = SearchNetwork(fused=True, group_sums=True, **kw)
    with torch.no_grad():
        for a in per_edge.arch_parameters():
            a.normal_()
    grouped.load_state_dict(per_edge.state_dict())
    return per_edge, grouped


@pytest.mark.parametrize("backend,primitives", [("torch", "darts"), ("torch", "noisydarts"), ("triton", "darts")])
def test_network_with_group_sums_equals_per_edge_sums(backend, primitives, fresh_seed):
    """Noise off: outputs, every gradient and the BatchNorm statistics (the pools' BN of every edge
    included) equal the per-edge fused sums'; reduction cells keep per-edge sums on their
    stride-2 edges. Triton: the interpreter (slow: a network of 2-node cells, torch's BatchNorm)."""
    from network_checks import assert_same_forward_backward

    from ndarts.operations import SPACES

    small = dict(steps=2, multiplier=2, fused_batch_norm=False) if backend == "triton" else {}
    kw = dict(C=4, num_classes=5, layers=3, primitives=SPACES[primitives], noise=NoiseConfig(kind="none"),
              in_channels=3, backend=backend, **small)
    nets = _networks(**kw)
    assert any(c._sum_plans for c in nets[1].cells)
    assert_same_forward_backward(nets, torch.randn(3, 3, 7, 9), out_tol=(1e-5, 1e-5), grad_tol=(1e-5, 1e-4),
                                 buffer_tol=(1e-6, 1e-5), seed=fresh_seed)


def test_network_with_group_sums_draws_noise_per_edge():
    per_edge, grouped = _networks(C=4, num_classes=5, layers=3, in_channels=3, noise=NoiseConfig())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(grouped.eval()(x), per_edge.eval()(x), atol=1e-5, rtol=1e-5)  # eval: no noise
        grouped.train()
        a, b = grouped(x), grouped(x)
    assert not torch.allclose(a, b)  # training: fresh noise each call


def test_group_sums_need_fused_batched_convs():
    from ndarts.search_model import SearchNetwork

    for kw in (dict(fused=False), dict(fused=True, batch_edge_convs=False), dict(fused=True, edge_streams=2)):
        with pytest.raises(ValueError, match="group_sums needs"):
            SearchNetwork(C=4, layers=3, group_sums=True, **kw)


@pytest.mark.parametrize("backend,expected", [("triton", True), ("torch", False), ("auto", False)])
def test_group_sums_by_default_where_the_triton_kernels_run(backend, expected):
    """group_sums=None (the default): a fused network with batched convs sums each node's
    stride-1 edges in one op where the fused ops run on Triton (here the interpreter), and keeps
    per-edge sums where they run the torch reference (auto on a CPU), whose group op is no faster."""
    from unittest import mock

    import ndarts.search_model as sm

    torch.manual_seed(0)
    net = sm.SearchNetwork(C=4, num_classes=5, layers=3, steps=2, multiplier=2, fused=True, backend=backend,
                           fused_batch_norm=False, noise=NoiseConfig(kind="none"))
    assert any(c._sum_plans for c in net.cells)  # planned on every backend; run where they pay off
    with mock.patch.object(sm, "node_sums", wraps=sm.node_sums) as spy:
        net(torch.randn(2, 3, 8, 8))
    assert (spy.call_count > 0) == expected


@pytest.mark.parametrize("kw", [dict(fused=False), dict(fused=True, batch_edge_convs=False),
                                dict(fused=True, edge_streams=2), dict(fused=True, group_sums=False)])
def test_no_group_sums_by_default_without_their_conditions(kw):
    from ndarts.search_model import SearchNetwork

    net = SearchNetwork(C=4, layers=3, backend="triton" if kw.get("fused") else None, **kw)
    assert not any(c._sum_plans for c in net.cells)


@pytest.mark.parametrize("position", ["output", "input"])
def test_a_cell_gathers_its_group_sums_weights_once(position):
    """One α gather per cell for all its group sums; the live-weight gather of the per-edge sums
    only where some edge sums by itself: a reduction cell's stride-2 edges with the paper's noise
    on FactorizedReduce's input (by default, noise on its output, they are a group sum too)."""
    from ndarts.operations import DARTS_PRIMITIVES
    from ndarts.search_model import SearchNetwork

    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=5, layers=3, steps=2, multiplier=2, primitives=DARTS_PRIMITIVES, fused=True,
                        backend="triton", fused_batch_norm=False,
                        noise=NoiseConfig(kind="none", reduction_position=position))
    assert all(0 in c._sum_plans for c in net.cells if not c.reduction or position == "output")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        net(torch.randn(2, 3, 8, 8))
    gathers = sum(1 for e in prof.events() if e.name == "aten::index_select")
    assert gathers == sum(2 if c.reduction and position == "input" else 1 for c in net.cells)


def test_per_edge_outputs_take_gradients_in_place(fresh_seed):
    """per_edge=True: one output per edge; their gradients reach the backward kernel as they are,
    here channel slices of one wider tensor (as the cell's output cat hands them back) and a
    contiguous one: the same gradients as the stacked reference."""
    edges, p, q, shape = (3, 2), 2, 2, (2, 3, 5, 4)
    total = sum(edges)
    sources = [_inputs(total, p, q, shape, torch.float32, "cpu")[0] for _ in edges]
    _, grouped, weights, _ = _inputs(total, p, q, shape, torch.float32, "cpu")
    wide = torch.randn(shape[0], 3 * shape[1], *shape[2:])
    grads = [wide[:, (e % 3) * shape[1]:(e % 3 + 1) * shape[1]] for e in range(total - 1)] + [torch.randn(shape)]
    assert not grads[0].is_contiguous()
    flat = [t for s in sources for t in s]

    def split(s):
        return _by_source(s, p, len(edges))

    def run(per_edge_fn):
        s = [t.detach().clone().requires_grad_() for t in flat]
        g = [t.detach().clone().requires_grad_() for t in grouped]
        w = weights.detach().clone().requires_grad_()
        outs = per_edge_fn(s, g, w)
        torch.autograd.backward(list(outs), grads)
        return [torch.stack(outs).detach(), *[t.grad for t in s], *[t.grad for t in g], w.grad]

    noise = NoiseConfig(kind="none")
    got = run(lambda s, g, w: noisy_group_sums(split(s), g, w, edges, None, noise, backend="triton", per_edge=True))
    want = run(lambda s, g, w: reference_group_sum(split(s), g, w, edges, -1, False, 0.0, 0.0, None).unbind(0))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("edges,with_bases", [((3, 3), (True, False, True)), ((4,), (True, True, True, True)),
                                              ((2, 2, 2), (False, False)), ((5,), None)])
def test_target_sums_with_bases_match_reference(dtype, atol, rtol, edges, with_bases, fresh_seed, device="cpu"):
    """by_target=True: each target's sum over the sources' k-th edges plus its base (a partial
    node sum, some of them channel slices of a wider tensor, some missing), added in the kernels;
    the bases' gradients are their targets'. Against the reference with the kernels' own ε.
    (tests/test_gpu.py runs it on CUDA.)"""
    noise = VARIANTS["gaussian"]
    p, q, shape = 2, 3, (2, 3, 5, 7)
    total, targets = sum(edges), edges[0]
    sources = [_inputs(total, p, q, shape, dtype, device)[0] for _ in edges]
    _, grouped, weights, _ = _inputs(total, p, q, shape, dtype, device)
    wide = torch.randn(shape[0], 2 * shape[1], *shape[2:], device=device).to(dtype)
    bases = None if with_bases is None else [
        (wide[:, :shape[1]] if k == 0 else torch.randn(shape, device=device).to(dtype)) if b else None
        for k, b in enumerate(with_bases)]
    grads = [torch.randn(shape, device=device).to(dtype) for _ in range(targets)]
    seed = draw_seed(device)
    kind, mult, lam, mean = noise.kernel_params(0.7)
    eps = ndarts_kernels.unit_noise(seed, total * sources[0][0].numel(), kind).view(total, -1)

    def run(fn):
        src = [[t.detach().clone().requires_grad_() for t in s] for s in sources]
        g = [t.detach().clone().requires_grad_() for t in grouped]
        b = None if bases is None else [x.detach().clone().requires_grad_() if x is not None else None for x in bases]
        w = weights.detach().clone().requires_grad_()
        outs = fn(src, g, w, b)
        assert len(outs) == targets
        torch.autograd.backward(outs, grads)
        base_grads = [x.grad for x in b if x is not None] if b is not None else []
        return [torch.stack(outs).detach(), *[t.grad for s in src for t in s], *[t.grad for t in g], *base_grads, w.grad]

    want = run(lambda s, g, w, b: sum_targets(reference_group_sum(s, g, w, edges, p - 1, mult, lam, mean, eps),
                                              len(edges), b if b is not None else [None] * targets))
    got = run(lambda s, g, w, b: noisy_group_sums(s, g, w, edges, p - 1, noise, scale=0.7, backend="triton", seed=seed,
                                                  by_target=True, bases=b))
    _assert_outputs_close(got, want, dtype, atol, rtol, len(edges))


def _assert_outputs_close(got, want, dtype, atol, rtol, sources):
    """Output by output (the last is dW, a sum over all elements: a looser bound in bf16; the others
    add up `sources` launches' roundings)."""
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        tol = (atol * 20, rtol * 5) if i == len(got) - 1 and dtype != torch.float32 else (atol * sources, rtol)
        torch.testing.assert_close(a.float(), b.float(), atol=tol[0], rtol=tol[1], msg=lambda m: f"output {i}: {m}")


def test_target_sums_name_bad_bases():
    s = [torch.randn(2, 3, 4, 4)]
    g = [torch.randn(2, 12, 4, 4)]
    with pytest.raises(ValueError, match="as many edges"):
        noisy_group_sums([s, s], g, torch.ones(4, 2), [3, 1], 0, NoiseConfig(), by_target=True)
    with pytest.raises(ValueError, match="one entry .* per target"):
        noisy_group_sums([s, s], g, torch.ones(4, 2), [2, 2], 0, NoiseConfig(), by_target=True, bases=[None])
    with pytest.raises(ValueError, match=r"a base must be \(2, 3, 4, 4\)"):
        noisy_group_sums([s, s], g, torch.ones(4, 2), [2, 2], 0, NoiseConfig(), backend="triton", by_target=True,
                         bases=[torch.randn(2, 3, 4, 5), None])


def test_a_cells_node_sums_launch_no_adds():
    """The group sums summed by target are a chain: no cell's node sums launch adds of their own
    (a reduction cell's stride-2 edges are a group sum with their own FactorizedReduce operands);
    the per-edge network: i + 1 per node of 3-node cells."""
    import collections

    from ndarts.operations import DARTS_PRIMITIVES
    from ndarts.search_model import SearchNetwork

    counts = {}
    for group_sums in (True, False):
        torch.manual_seed(0)
        net = SearchNetwork(C=4, num_classes=5, layers=3, steps=3, multiplier=3, primitives=DARTS_PRIMITIVES,
                            fused=True, backend="triton", fused_batch_norm=False, noise=NoiseConfig(kind="none"),
                            group_sums=group_sums)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            net(torch.randn(2, 3, 8, 8))
        counts[group_sums] = collections.Counter(
            e.name for e in prof.events() if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    assert sum(c.reduction for c in net.cells) == 2 and len(net.cells) == 3
    assert counts[True]["aten::add"] == 0
    assert counts[False]["aten::add"] == len(net.cells) * (1 + 2 + 3)


def test_triton_network_equals_the_reference_network(fresh_seed):
    """Everything the Triton backend changes at once (interpreter): group sums chained by target
    (a reduction cell's stride-2 edges with their FactorizedReduce skips as own operands),
    both pools per launch, a node's pool BatchNorms in its conv group's first BatchNorm launch,
    the group input's relu + repeat with the primitives' gradients summed in its backward, the
    Triton BatchNorms. Outputs, every gradient and every BatchNorm buffer (the pools' of every
    edge included) equal the torch reference network's with the same state (noise off)."""
    from unittest import mock

    from network_checks import assert_same_forward_backward

    import ndarts.mixed_op as mixed_op
    import ndarts.search_model as search_model
    from ndarts.search_model import SearchNetwork

    # both pools, the skip, a sep conv (two BatchNorm stages) and a dil conv: every kind of operand
    primitives = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
    kw = dict(C=2, num_classes=5, layers=3, steps=2, multiplier=2, primitives=primitives,
              noise=NoiseConfig(kind="none"), in_channels=3, fused=True, channels_last=False)
    torch.manual_seed(0)
    ref = SearchNetwork(backend="torch", fused_batch_norm=False, **kw)
    with torch.no_grad():
        for a in ref.arch_parameters():
            a.normal_()
    tri = SearchNetwork(backend="triton", fused_batch_norm=True, **kw)
    tri.load_state_dict(ref.state_dict())
    assert all(c._sum_plans for c in tri.cells)
    # the Triton BatchNorm's sums run in another order than torch's: at 2×2 images (8 values per
    # channel) its backward amplifies fp32 rounding to ~2e-5 of a gradient's largest entry
    with mock.patch.object(ndarts_kernels, "noisy_group_sum_forward",
                           wraps=ndarts_kernels.noisy_group_sum_forward) as sums, \
            mock.patch.object(ndarts_kernels, "batch_norms_forward", wraps=ndarts_kernels.batch_norms_forward) as bns, \
            mock.patch.object(ndarts_kernels, "batch_norms_backward",
                              wraps=ndarts_kernels.batch_norms_backward) as bwd:
        assert_same_forward_backward((ref, tri), torch.randn(2, 3, 8, 8), out_tol=(1e-5, 1e-5),
                                     grad_tol=(1e-4, 1e-3), buffer_tol=(1e-5, 1e-5), seed=fresh_seed)
    # the stacks' last BatchNorms (sep bn2, dil bn) deferred into the group sums, which read both
    # grouped operands as (z − mean)·rstd: no y written for them; and (8×8, 4×4, 2×2 images split
    # into the sums' blocks) the group sums' backward made those BatchNorms' backward sums
    assert sums.call_count and all(sum(n is not None for n in c.kwargs["grouped_norm"]) == 2
                                   for c in sums.call_args_list)
    groups = sum(len(c.edge_groups) for c in tri.cells)
    assert sum(list(c.kwargs.get("apply") or []).count(False) for c in bns.call_args_list) == 2 * groups
    assert sum(t is not None for c in bwd.call_args_list for t in c.kwargs.get("sums") or ()) == 2 * groups
    # every node's pools ran with its conv group, a reduction cell's inputs' too (their stride-2
    # edges are a group sum with their FactorizedReduce skips as the edges' own operands)
    with mock.patch.object(mixed_op, "pool_all", wraps=mixed_op.pool_all) as pool_all, \
            mock.patch.object(search_model, "pool_all", pool_all):
        tri(torch.randn(2, 3, 7, 6))
    assert pool_all.call_count == 0


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("edges,p,q,shape", [((4, 4), 2, 4, (3, 5, 4, 6)), ((3,), 1, 2, (2, 3, 5, 7)),
                                             ((1, 2), 3, 1, (1, 2, 1, 33))])
@pytest.mark.parametrize("variant", ["gaussian", "uniform", "multiplicative", "none"])
@pytest.mark.parametrize("by_target", [False, True])
def test_own_operands_match_reference(dtype, atol, rtol, edges, p, q, shape, variant, by_target, fresh_seed,
                                      device="cpu"):
    """Each edge's own operand (a reduction cell's FactorizedReduce skips: one tensor per edge, the
    last weight column), the noisy one: each edge's noise takes its own operand's std. Outputs and
    every gradient against the reference with the kernels' own ε. (tests/test_gpu.py runs it on CUDA.)"""
    if by_target and len(set(edges)) > 1:
        pytest.skip("by target needs as many edges per source")
    noise = VARIANTS[variant]
    total = sum(edges)
    sources = [_inputs(total, p, q, shape, dtype, device)[0] for _ in edges]
    _, grouped, _, _ = _inputs(total, p, q, shape, dtype, device)
    # own operands of different scales and means: a per-edge std that differs from edge to edge
    own = [(torch.randn(shape, device=device) * (0.5 + e) + e).to(dtype) for e in range(total)]
    weights = torch.softmax(torch.randn(total, p + q + 1, device=device), 1)
    rows = edges[0] if by_target else total
    grads = [torch.randn(shape, device=device).to(dtype) for _ in range(rows)]
    seed = draw_seed(device)
    kind, mult, lam, mean = noise.kernel_params(0.7)
    eps = (ndarts_kernels.unit_noise(seed, total * own[0].numel(), kind).view(total, -1) if noise.enabled else None)
    skip = p + q  # the own operand

    def run(fn):
        src = [[t.detach().clone().requires_grad_() for t in s] for s in sources]
        g = [t.detach().clone().requires_grad_() for t in grouped]
        o = [t.detach().clone().requires_grad_() for t in own]
        w = weights.detach().clone().requires_grad_()
        outs = fn(src, g, w, o)
        torch.autograd.backward(list(outs), grads)
        return [torch.stack(list(outs)).detach(), *[t.grad for s in src for t in s], *[t.grad for t in g],
                *[t.grad for t in o], w.grad]

    def reference(s, g, w, o):
        y = reference_group_sum(s, g, w, edges, skip, mult, lam, mean, eps, own=o)
        return sum_targets(y, len(edges), [None] * edges[0]) if by_target else y.unbind(0)

    want = run(reference)
    got = run(lambda s, g, w, o: noisy_group_sums(s, g, w, edges, skip, noise, scale=0.7, backend="triton", seed=seed,
                                                  own=o, per_edge=True, by_target=by_target))
    _assert_outputs_close(got, want, dtype, atol, rtol, len(edges))


def test_own_operands_are_checked():
    s = [torch.randn(2, 3, 4, 4)]
    g = [torch.randn(2, 6, 4, 4)]
    with pytest.raises(ValueError, match="own needs one tensor per edge"):
        noisy_group_sums([s], g, torch.ones(2, 3), [2], 2, NoiseConfig(), own=[s[0]], backend="triton")
    with pytest.raises(ValueError, match=r"weights must be \[2, 3\]"):
        noisy_group_sums([s], g, torch.ones(2, 2), [2], 1, NoiseConfig(), own=[s[0], s[0]], backend="triton")
    with pytest.raises(ValueError, match="own operand must be"):
        noisy_group_sums([s], g, torch.ones(2, 3), [2], 2, NoiseConfig(), own=[s[0], torch.randn(2, 3, 4, 5)],
                         backend="triton")


def test_backward_partials_into_a_shared_buffer_are_checked():
    """The sources of a group write their dW partial sums side by side into one buffer (one sum for
    the group); a buffer of the wrong shape or dtype is named, not written out of bounds."""
    from ndarts_kernels.noisy_group_sum import noisy_group_sum_backward, partial_rows

    s, g, w = [torch.randn(2, 3, 4, 4)], [torch.randn(2, 6, 4, 4)], torch.rand(2, 2)
    grad = torch.randn(2, 2, 3, 4, 4)
    seed, std = torch.zeros(1, dtype=torch.int64), torch.zeros(1)
    rows = partial_rows(s[0].numel())
    wide = torch.empty(rows, 3 * w.numel())
    _, _, _, dw = noisy_group_sum_backward(grad, s, g, w, seed, std, -1, 0, False, 0.0, 0.0, part=wide[:, 4:8])
    assert dw is None
    want = noisy_group_sum_backward(grad, s, g, w, seed, std, -1, 0, False, 0.0, 0.0)[3]
    torch.testing.assert_close(wide[:, 4:8].sum(0).view(2, 2), want)
    for bad in (torch.empty(rows, 5), torch.empty(rows, 4, dtype=torch.float64), torch.empty(rows, 8)[:, ::2]):
        with pytest.raises(ValueError, match="part must be an fp32"):
            noisy_group_sum_backward(grad, s, g, w, seed, std, -1, 0, False, 0.0, 0.0, part=bad)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
@pytest.mark.parametrize("shape", [(3, 5, 37, 41), (1, 1, 1, 7)])
def test_the_first_targets_std_is_taken_as_it_is_written(dtype, rtol, shape, fresh_seed, device="cpu"):
    """row0_std: the std of y[0] from per-program moments taken in the forward pass (several
    programs: 22 755 elements in blocks of ≤ 8 192) equals skip_std of the written y[0], mean far
    from 0 (Chan merges, no Σx² cancellation); of a single element: NaN, as torch.std."""
    from ndarts_kernels.noisy_group_sum import noisy_group_sum_forward

    shared = [(torch.randn(shape, device=device) * 3 + 40).to(dtype)]
    grouped = [torch.randn(shape[0], 2 * shape[1], *shape[2:], device=device).to(dtype)]
    base = torch.randn(shape, device=device).to(dtype)
    w = torch.rand(2, 2, device=device)
    seed = draw_seed(device)
    y, _, std = noisy_group_sum_forward(shared, grouped, w, seed, 0, 1, False, 0.2, 0.0, bases=[base, None],
                                        row0_std=True)
    want = ndarts_kernels.skip_std(y[0])
    if y[0].numel() == 1:
        assert torch.isnan(std).all() and torch.isnan(want).all()
    else:
        torch.testing.assert_close(std, want, atol=0, rtol=rtol)
        torch.testing.assert_close(std.double(), y[0].double().std().reshape(1), atol=0, rtol=rtol)


def test_a_cells_node_stds_come_from_the_kernels_that_finish_the_nodes(fresh_seed):
    """With additive noise on the Triton backend, a node's std for its skip edges' noise is the
    one the group-sum kernel that finished the node took (no std pass over the node): the same
    network output as computing each node's std anew (same seeds; the two differ by rounding)."""
    from unittest import mock

    from ndarts.mixed_op import NodeShare
    from ndarts.operations import DARTS_PRIMITIVES
    from ndarts.search_model import SearchNetwork

    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=5, layers=2, steps=3, multiplier=3, primitives=DARTS_PRIMITIVES,
                        fused=True, backend="triton", fused_batch_norm=False, noise=NoiseConfig(lam=0.5))
    x = torch.randn(2, 3, 8, 8)
    outs, calls = [], []
    real = NodeShare.set_std
    for known in ("kernel", "anew", "doubled"):
        torch.manual_seed(fresh_seed)
        set_std = {"kernel": real, "anew": lambda share, std: None,
                   "doubled": lambda share, std: real(share, 2 * std)}[known]
        with mock.patch.object(NodeShare, "set_std", lambda share, std: (calls.append(known), set_std(share, std))):
            outs.append(net(x))
    # nodes 0 and 1 of each 3-node cell have skip edges summed in a group after them: 2 per cell
    assert calls.count("kernel") == 2 * len(net.cells)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outs[2], outs[0], atol=1e-4)  # the std handed over is the one the noise uses
    with torch.no_grad():  # and the noise is there: another draw gives another output
        assert not torch.allclose(net(x), outs[0])

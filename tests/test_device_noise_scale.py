"""The noise's decay scale read on the device (--noise-decay with --cuda-graph: captured once).

A scale given as a one-element fp32 tensor is applied by the kernels (interpreter on CPU) and by
the reference when they run, exactly as NoiseConfig.kernel_params applies a number: outputs and
every gradient equal those of the number, and a value filled into the same tensor between two
calls is what the second call uses (what a CUDA graph captured once relies on). A search network
with decay on keeps the scale on the device in every mixed op, and every one of its noises (per-edge
sums, group sums, the paper's noise on a reduction's input) reads it there.
"""
import copy

import pytest
import torch

from ndarts import DARTS_PRIMITIVES, FusedMixedOp, MixedOp, NoiseConfig, noisy_mixed_sum
from ndarts.fused_sum import draw_seed
from ndarts.group_sum import noisy_group_sums
from ndarts.search_model import SearchNetwork

NOISES = {
    "gaussian": NoiseConfig(decay=True),
    "uniform": NoiseConfig(kind="uniform", lam=0.3, decay=True),
    "multiplicative": NoiseConfig(mixture="multiplicative", lam=0.3, decay=True),
    "mean": NoiseConfig(mean=0.5, lam=0.2, decay=True),
}
TOL = dict(atol=3e-5, rtol=3e-5)  # fp32: λ·s is rounded once on the host, once in the kernel


def _grads(fn, tensors, grad):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(leaves)
    y.backward(grad)
    return [y.detach(), *[t.grad for t in leaves]]


def _assert_all_close(got, want, what):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{what}, tensor {i}: {m}")


def _two_scales():
    """Two scales drawn fresh in (0.1, 0.9), apart: a call that ignored the device value would use 1
    or the other one."""
    s1 = 0.1 + 0.35 * torch.rand(()).item()
    return s1, s1 + 0.4


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("variant", list(NOISES))
def test_mixed_sum_reads_the_device_scale_when_it_runs(backend, variant, fresh_seed):
    noise = NOISES[variant]
    shape, k, skip = (3, 5, 7, 6), 5, 2
    ops = [torch.randn(shape) * (1 + i) + i for i in range(k)]
    w = torch.softmax(torch.randn(k), 0)
    grad = torch.randn(shape)
    seed = draw_seed("cpu")
    on_device = torch.empty((), dtype=torch.float32)
    for s in _two_scales():
        on_device.fill_(s)  # the same tensor for both calls: filled, as a new epoch's scale is

        def call(t, scale):
            return noisy_mixed_sum(t[:k], t[k], skip, noise, scale=scale, backend=backend, seed=seed)

        want = _grads(lambda t, s=s: call(t, s), [*ops, w], grad)
        got = _grads(lambda t: call(t, on_device), [*ops, w], grad)
        _assert_all_close(got, want, f"{backend} {variant} at scale {s:.3f}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", ["shared skip", "own skip", "by target"])
@pytest.mark.parametrize("variant", ["gaussian", "multiplicative", "mean"])
def test_group_sums_read_the_device_scale_when_they_run(backend, case, variant, fresh_seed):
    """Two sources (a cell's inputs); the noisy operand is a shared one (a stride-1 skip) or each
    edge's own (a reduction's FactorizedReduce skips); by target: the sources' edges summed into
    their target nodes with a base (a cell's chain of node sums, one launch per source)."""
    noise = NOISES[variant]
    edges = (2, 2) if case == "by target" else (2, 1)
    p, q, (n, c, h, wd) = 2, 3, (2, 3, 5, 7)
    total = sum(edges)
    own = case == "own skip"
    shared = [torch.randn(n, c, h, wd) * (1 + i) + i for i in range(p * len(edges))]
    grouped = [torch.randn(n, total * c, h, wd) for _ in range(q)]
    owns = [torch.randn(n, c, h, wd) * (0.5 + e) + e for e in range(total)] if own else []
    bases = [torch.randn(n, c, h, wd)] if case == "by target" else []
    weights = torch.softmax(torch.randn(total, p + q + own), 1)
    rows = edges[0] if case == "by target" else total
    grad = torch.randn(rows, n, c, h, wd)
    skip = p + q if own else p - 1
    seed = draw_seed("cpu")
    on_device = torch.empty((1,), dtype=torch.float32)
    cut = [len(shared), len(shared) + q, len(shared) + q + len(owns), len(shared) + q + len(owns) + len(bases)]

    def call(t, scale):
        sources = [t[i * p:(i + 1) * p] for i in range(len(edges))]
        target = dict(by_target=True, bases=[None, t[cut[2]]]) if bases else {}
        out = noisy_group_sums(sources, t[cut[0]:cut[1]], t[cut[3]], edges, skip, noise, scale=scale,
                               backend=backend, seed=seed, own=t[cut[1]:cut[2]] or None, **target)
        return torch.stack(out) if bases else out

    for s in _two_scales():
        on_device.fill_(s)
        want = _grads(lambda t, s=s: call(t, s), [*shared, *grouped, *owns, *bases, weights], grad)
        got = _grads(lambda t: call(t, on_device), [*shared, *grouped, *owns, *bases, weights], grad)
        _assert_all_close(got, want, f"{backend} {case} {variant} at scale {s:.3f}")


# how the network sums its edges: (backend, fused, group_sums)
# (the Triton kernels' part: the tests above; an interpreted network step takes ~40 s)
NETWORKS = {
    "group sums": ("torch", True, True),
    "per-edge fused sums": ("torch", True, False),
    "reference MixedOp": ("torch", False, False),
}


def _network(kind, noise, device_scale: bool):
    backend, fused, group_sums = NETWORKS[kind]
    torch.manual_seed(0)
    # two cells, both reductions: stride-2 edges (FactorizedReduce skips) and stride-1 ones
    net = SearchNetwork(C=4, num_classes=10, layers=2, primitives=DARTS_PRIMITIVES, noise=noise, fused=fused,
                        in_channels=1, backend=backend, group_sums=group_sums)
    if not device_scale:  # every mixed op holds its scale as a number only
        for m in net.modules():
            if isinstance(m, MixedOp):
                del m._buffers["noise_scale_device"]
    return net


@pytest.mark.parametrize("kind", list(NETWORKS))
@pytest.mark.parametrize("position", ["output", "input"])
def test_every_noise_of_a_search_network_reads_the_device_scale(kind, position, fresh_seed):
    """The device copies hold one scale and the numbers another: the network's output and gradients
    are those of a network that holds the device copies' value as its number. Reductions' noise on
    FactorizedReduce's output (group sums with the edges' own skips, or per-edge sums) and on its
    input (the paper's variant: a one-operand noisy sum before FactorizedReduce)."""
    noise = NoiseConfig(decay=True, reduction_position=position)
    on_device, as_number = _network(kind, noise, True), _network(kind, noise, False)
    assert on_device.noise_scale_is_read_on_device and not as_number.noise_scale_is_read_on_device
    s_device, s_number = _two_scales()
    on_device.set_noise_scale(s_number)
    for m in on_device.modules():
        if isinstance(m, MixedOp):
            m.noise_scale_device.fill_(s_device)  # what a kernel reads, unlike the number
    as_number.set_noise_scale(s_device)
    x = torch.randn(2, 1, 8, 8)
    results = []
    for net in (on_device, as_number):
        torch.manual_seed(1)  # the same seeds for the noise
        loss = net(x).square().mean()
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in net.parameters()])
    _assert_all_close(results[0], results[1], f"{kind}, noise on the reductions' {position}")


def test_the_device_scale_is_no_state_and_follows_the_number():
    """Not in the state_dict (the classic DARTS MixedOp layout stays: checkpoints load both ways);
    setting noise_scale fills it; without decay there is none and the number is what the noise takes."""
    for cls in (MixedOp, FusedMixedOp):
        decaying = cls(4, 1, DARTS_PRIMITIVES, NoiseConfig(decay=True))
        plain = cls(4, 1, DARTS_PRIMITIVES, NoiseConfig())
        assert decaying.state_dict().keys() == plain.state_dict().keys()
        plain.load_state_dict(decaying.state_dict())
        decaying.noise_scale = 0.375
        assert decaying.noise_scale == 0.375 and float(decaying.noise_scale_device) == 0.375
        assert decaying.kernel_noise_scale is decaying.noise_scale_device
        plain.noise_scale = 0.375
        assert plain.kernel_noise_scale == 0.375 and "noise_scale_device" not in plain._buffers
        assert cls(4, 1, DARTS_PRIMITIVES, NoiseConfig(kind="none", decay=True))._buffers.get(
            "noise_scale_device") is None  # no noise, nothing to scale
    net = SearchNetwork(C=4, num_classes=10, layers=2, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(decay=True),
                        in_channels=1)
    net.set_noise_scale(0.25)
    copies = [m.noise_scale_device for m in net.modules() if isinstance(m, MixedOp)]
    assert copies and all(float(t) == 0.25 for t in copies)
    clone = copy.deepcopy(net)
    assert all(float(m.noise_scale_device) == 0.25 for m in clone.modules() if isinstance(m, MixedOp))


def test_the_hessian_leaves_the_device_scale_as_it_found_it():
    """dominant_eigenvalue measures without noise (scale 0) and puts the scale back: the device
    copies too."""
    from ndarts.hessian import dominant_eigenvalue

    net = SearchNetwork(C=4, num_classes=10, layers=2, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(decay=True),
                        in_channels=1)
    net.set_noise_scale(0.625)
    dominant_eigenvalue(net, torch.nn.CrossEntropyLoss(), torch.randn(2, 1, 8, 8), torch.tensor([1, 3]), iters=1)
    assert all(float(m.noise_scale_device) == 0.625 for m in net.modules() if isinstance(m, MixedOp))


@pytest.mark.parametrize("use_triton", [False, True])
def test_the_custom_op_takes_the_device_scale(use_triton):
    ops = [torch.randn(2, 3, 4, 5, requires_grad=True) for _ in range(3)]
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    args = (ops, w, draw_seed("cpu"), 1, 1, False, 0.2, 0.1, use_triton, torch.full((), 0.4))
    torch.library.opcheck(torch.ops.ndarts.noisy_mixed_sum.default, args)


def test_torch_compile_fullgraph_with_a_device_scale():
    """torch.compile(fullgraph=True) through the custom op with the scale a tensor: no graph break,
    the eager result and gradients."""
    noise = NoiseConfig(lam=0.3, mean=0.2, decay=True)

    def f(ops, w, seed, scale):
        return noisy_mixed_sum(ops, w, 2, noise, scale=scale, backend="torch", seed=seed).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ops = [torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(4)]
    w = torch.softmax(torch.randn(4), 0).requires_grad_()
    seed, scale = draw_seed("cpu"), torch.full((), 0.45)
    eager = f(ops, w, seed, scale)
    got = compiled(ops, w, seed, scale)
    torch.testing.assert_close(got, eager)
    for a, b in zip(torch.autograd.grad(got, [*ops, w]), torch.autograd.grad(eager, [*ops, w])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bad,match", [
    (torch.ones(2), "one float32 value"),
    (torch.ones((), dtype=torch.float64), "one float32 value"),
    (torch.ones((), device="meta"), "the scale tensor is on meta"),
])
def test_a_bad_scale_tensor_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        noisy_mixed_sum([torch.randn(3, 4)], torch.ones(1), 0, NoiseConfig(), scale=bad, backend="torch")


def test_a_decaying_search_fills_each_epochs_scale_on_the_device(tmp_path):
    """--noise-decay: the search's network reads the scale on the device (so its graph step needs no
    key: tests/test_gpu.py checks the one capture), and each epoch fills that epoch's cosine scale."""
    import json

    from ndarts.searcher import SearchConfig, Searcher

    cfg = SearchConfig(dataset="digits", layers=2, init_channels=4, batch_size=16, max_steps=1, epochs=3,
                       report_freq=0, noise_decay=True, fused=True, out=str(tmp_path / "run"))
    s = Searcher(cfg)
    assert s.scale_on_device
    s.run_search()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scales = [r["noise_scale"] for r in records]
    assert scales == [cfg.noise_config().scale_at(e, 3) for e in range(3)] and scales[2] < scales[1] < 1.0
    copies = [float(m.noise_scale_device) for m in s.model.modules() if isinstance(m, MixedOp)]
    assert copies and all(c == pytest.approx(scales[-1]) for c in copies)

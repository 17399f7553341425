"""A backward pass that uses no α gradient (the w step's ``backward(loss, inputs=weights)``) runs
the mixed-sum kernels without their dW part: they read only the upstream gradients, no operand.
The operand gradients must be exactly those of a pass that computes dW too, and match the
reference; the α step must still get its dW. Triton kernels in the interpreter, fresh inputs."""
from unittest import mock

import pytest
import torch

import ndarts_kernels
from ndarts import noisy_mixed_sum
from ndarts.fused_sum import draw_seed
from ndarts.grad_use import grads_used
from ndarts.group_sum import noisy_group_sums, reference_group_sum, sum_targets
from test_noisy_mixed_sum import VARIANTS

DTYPES = [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2)]


class _Spy:
    """Wraps a launcher and records the weight_grad each call asked for."""

    def __init__(self, fn):
        self.fn, self.weight_grads = fn, []

    def __call__(self, *args, **kwargs):
        self.weight_grads.append(kwargs.get("weight_grad", True))
        return self.fn(*args, **kwargs)


def _group_case(dtype, variant, edges=(3, 3), p=2, q=3, shape=(2, 5, 7, 9), own=True):
    n, c, h, w = shape
    total = sum(edges)
    sources = [[(torch.randn(shape) * (1 + i) + i).to(dtype) for i in range(p)] for _ in edges]
    grouped = [torch.randn((n, total * c, h, w)).to(dtype) for _ in range(q)]
    owns = [(torch.randn(shape) * (0.5 + e) + e).to(dtype) for e in range(total)] if own else None
    weights = torch.softmax(torch.randn(total, p + q + int(own)), 1)
    grads = [torch.randn(shape).to(dtype) for _ in range(edges[0])]
    return dict(sources=sources, grouped=grouped, own=owns, weights=weights, grads=grads, edges=list(edges),
                skip=p + q if own else p - 1, noise=VARIANTS[variant], seed=draw_seed("cpu"))


def _group_grads(case, fn, with_weight_grad: bool):
    """Operand gradients (and dW, when asked) of the by-target group sums from one backward pass."""
    src = [[t.detach().clone().requires_grad_() for t in s] for s in case["sources"]]
    g = [t.detach().clone().requires_grad_() for t in case["grouped"]]
    o = [t.detach().clone().requires_grad_() for t in case["own"] or []]
    w = case["weights"].detach().clone().requires_grad_()
    outs = fn(src, g, w, o or None)
    operands = [t for s in src for t in s] + g + o
    torch.autograd.backward(list(outs), case["grads"], inputs=operands + ([w] if with_weight_grad else []))
    return [t.grad for t in operands], w.grad


def _triton_group(case):
    return lambda s, g, w, o: noisy_group_sums(s, g, w, case["edges"], case["skip"], case["noise"], scale=0.7,
                                               backend="triton", seed=case["seed"], own=o, by_target=True)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("variant", ["gaussian", "multiplicative", "none"])
@pytest.mark.parametrize("own", [True, False])
def test_group_sums_without_weight_grad(dtype, atol, rtol, variant, own, fresh_seed):
    case = _group_case(dtype, variant, own=own)
    spy = _Spy(ndarts_kernels.noisy_group_sum_backward)
    with mock.patch.object(ndarts_kernels, "noisy_group_sum_backward", spy):
        full, dw = _group_grads(case, _triton_group(case), with_weight_grad=True)
        w_step, no_dw = _group_grads(case, _triton_group(case), with_weight_grad=False)
    # one launch per source and pass: the first pass computes dW, the second does not
    assert spy.weight_grads == [True] * 2 + [False] * 2
    assert dw is not None and no_dw is None
    for i, (a, b) in enumerate(zip(w_step, full)):
        assert torch.equal(a, b), f"operand {i}: the gradient changed without the dW part"
    # and against the reference with the kernels' ε
    kind, mult, lam, mean = case["noise"].kernel_params(0.7)
    total = sum(case["edges"])
    numel = case["sources"][0][0].numel()
    eps = ndarts_kernels.unit_noise(case["seed"], total * numel, kind).view(total, -1) if kind else None

    def reference(s, g, w, o):
        y = reference_group_sum(s, g, w, case["edges"], case["skip"], mult, lam, mean, eps, own=o)
        return sum_targets(y, len(case["edges"]), [None] * case["edges"][0])

    want, _ = _group_grads(case, reference, with_weight_grad=False)
    for i, (a, b) in enumerate(zip(w_step, want)):
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"operand {i}: {m}")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("variant", ["gaussian", "multiplicative"])
def test_mixed_sum_without_weight_grad(dtype, atol, rtol, variant, fresh_seed):
    k, shape = 7, (3, 5, 6, 7)
    ops = [(torch.randn(shape) * (1 + i) + 1.5).to(dtype) for i in range(k)]
    weights = torch.softmax(torch.randn(k), 0)
    skip = int(torch.randint(k, (1,)))
    seed = draw_seed("cpu")
    g = torch.randn(shape).to(dtype)

    def grads(weights_grad: bool):
        o = [t.detach().clone().requires_grad_() for t in ops]
        w = weights.detach().clone().requires_grad_(weights_grad)
        y = noisy_mixed_sum(o, w, skip, VARIANTS[variant], backend="triton", seed=seed)
        y.backward(g)
        return [t.grad for t in o], w.grad

    spy = _Spy(ndarts_kernels.noisy_mixed_sum_backward)
    with mock.patch.object(ndarts_kernels, "noisy_mixed_sum_backward", spy):
        full, dw = grads(True)
        frozen, no_dw = grads(False)  # α frozen: requires no grad
    assert spy.weight_grads == [True, False]
    assert dw is not None and no_dw is None
    for i, (a, b) in enumerate(zip(frozen, full)):
        assert torch.equal(a, b), f"operand {i}: the gradient changed without the dW part"
    # the operand gradient is w_k·g (times the multiplicative noise's factor on the skip)
    i = (skip + 1) % k
    torch.testing.assert_close(frozen[i].float(), (weights[i] * g.float()), atol=atol, rtol=rtol)


def test_group_sum_backward_with_a_part_needs_weight_grad():
    case = _group_case(torch.float32, "none", edges=(2,), own=False)
    shared, grouped, weights = case["sources"][0], case["grouped"], case["weights"]
    with pytest.raises(ValueError, match="part"):
        ndarts_kernels.noisy_group_sum_backward(
            [torch.randn_like(shared[0])] * 2, shared, grouped, weights, case["seed"], torch.ones(1), -1, 0, False,
            0.0, 0.0, part=torch.empty((1, weights.numel())), weight_grad=False)


class _Probe(torch.autograd.Function):
    """a · w; its backward appends grads_used for (a, w) to the list it was given."""

    @staticmethod
    def forward(ctx, a, w, seen):
        ctx.seen = seen
        return a * w

    @staticmethod
    def backward(ctx, g):
        ctx.seen.append(grads_used(ctx, 2))
        return g, g, None


def test_grads_used_follows_the_pass():
    """The engine's view: the α step's autograd.grad skips a weight's gradient, backward(inputs=…)
    an α's, and a plain backward uses both."""
    seen = []
    alpha = torch.randn(3, requires_grad=True)
    weight = torch.randn(3, requires_grad=True)

    def loss():
        return _Probe.apply(torch.softmax(alpha, 0), weight, seen).sum()

    torch.autograd.grad(loss(), [alpha])
    torch.autograd.backward(loss(), inputs=[weight])
    loss().backward()
    assert seen == [(True, False), (False, True), (True, True)]


def test_search_step_weight_grads_unchanged(fresh_seed):
    """A search network's w step: the same weight gradients whether the sums skip dW or not (a
    Triton network in the interpreter; grads_used forced True for the comparison)."""
    from ndarts import NoiseConfig
    from ndarts.search_model import SearchNetwork

    torch.manual_seed(fresh_seed)
    net = SearchNetwork(C=4, num_classes=5, layers=3, steps=2, multiplier=2, fused=True, backend="triton",
                        fused_batch_norm=False, noise=NoiseConfig(), in_channels=3)
    assert any(c._sum_plans for c in net.cells)  # the group sums run
    x, y = torch.randn(2, 3, 7, 9), torch.randint(5, (2,))
    weights = [p for p in net.weight_parameters() if p.requires_grad]

    def w_step_grads():
        for p in weights:
            p.grad = None
        torch.manual_seed(fresh_seed)  # the same noise
        torch.autograd.backward(torch.nn.functional.cross_entropy(net(x), y), inputs=weights)
        return [p.grad.clone() for p in weights]

    spy = _Spy(ndarts_kernels.noisy_group_sum_backward)
    with mock.patch.object(ndarts_kernels, "noisy_group_sum_backward", spy):
        skipped = w_step_grads()
    assert spy.weight_grads and not any(spy.weight_grads)
    with mock.patch("ndarts.group_sum.grads_used", lambda ctx, n: (True,) * n):
        computed = w_step_grads()
    for i, (a, b) in enumerate(zip(skipped, computed)):
        assert torch.equal(a, b), f"weight {i}"


def test_grads_used_without_the_engine_query(monkeypatch):
    """On a torch without the engine's private query every required gradient counts as used (the
    kernels then compute dW as before): correct, only slower."""
    import ndarts.grad_use as grad_use

    monkeypatch.setattr(grad_use, "_will_execute", None)
    seen = []
    alpha = torch.randn(3, requires_grad=True)
    weight = torch.randn(3)
    torch.autograd.grad(_Probe.apply(torch.softmax(alpha, 0), weight, seen).sum(), [alpha])
    assert seen == [(True, False)]  # weight requires no grad: not used either way

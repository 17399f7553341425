"""The second-order architecture step (DARTS's unrolled step)."""
import pytest
import torch

from ndarts import DARTS_PRIMITIVES
from ndarts.architect import Architect, exact_mixed_hvp
from tiny_search import tiny_batch, tiny_search_parts


def _tiny(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net, crit, w_opt = tiny_search_parts(dtype, DARTS_PRIMITIVES, spread_alpha=True)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4)
    x, y = tiny_batch(dtype)
    # r = 1e-8 in float64: central differences of ∇_α L are exact to ~1e-8 unless the step
    # crosses a ReLU or max-pool kink, where ∇_α L jumps (at DARTS's r = 0.01 it does, in a net
    # this small; at r = 1e-6 the unrolled test's direction crossed one for the weights that
    # torch.manual_seed(0) gives since 2026-11-29: relative error 2.9e3 at 1e-6, 2e-8 at 1e-8)
    return net, crit, Architect(net, a_opt, w_opt, crit, "second", hvp_r=1e-8), x, y


def test_finite_difference_hvp_matches_autograd():
    net, crit, arch, x, y = _tiny()
    vector = [torch.randn_like(p) for p in net.weight_parameters()]
    fd = arch.hessian_vector_product(vector, x, y)
    exact = exact_mixed_hvp(net, crit, vector, x, y)
    num = sum(float((a - b).norm() ** 2) for a, b in zip(fd, exact)) ** 0.5
    den = sum(float(b.norm() ** 2) for b in exact) ** 0.5
    assert den > 0
    assert num / den < 1e-6


def test_hvp_leaves_the_weights_exactly_as_they_were():
    net, crit, arch, x, y = _tiny()
    before = [p.detach().clone() for p in net.weight_parameters()]
    arch.hessian_vector_product([torch.randn_like(p) for p in before], x, y)
    for a, b in zip(net.weight_parameters(), before):
        assert torch.equal(a, b)


def test_second_order_gradient_matches_exact_unrolled_gradient():
    """dα = ∇_α L_val(w', α) − ξ·H_{αw}·∇_{w'} L_val, against the same with the exact HVP."""
    net, crit, arch, x, y = _tiny()
    xv, yv = torch.randn_like(x), torch.randint(5, (4,))
    eta = 0.05
    # one real SGD step so that a momentum buffer exists and enters w'
    crit(net(x), y).backward(inputs=net.weight_parameters())
    arch.weight_optimizer.step()
    grads, _ = arch.second_order_grads(x, y, xv, yv, eta)

    # w' = w − η·(μ·m + ∇_w L_train(w) + wd·w), written out here (not Architect.unrolled_weights)
    named = net.named_weight_parameters()
    group = arch.weight_optimizer.param_groups[0]
    g_train = torch.autograd.grad(crit(net(x), y), [p for _, p in named], allow_unused=True)
    unrolled = {}
    for (name, p), g in zip(named, g_train):
        m = arch.weight_optimizer.state[p]["momentum_buffer"]
        step = group["momentum"] * m + (0 if g is None else g) + group["weight_decay"] * p
        unrolled[name] = (p - eta * step).detach().requires_grad_()
    assert group["momentum"] > 0 and group["weight_decay"] > 0 and any(
        float(arch.weight_optimizer.state[p]["momentum_buffer"].abs().max()) > 0 for _, p in named)
    from torch.func import functional_call

    buffers = {n: b.clone() for n, b in net.named_buffers()}
    loss = crit(functional_call(net, {**unrolled, **buffers}, (xv,)), yv)
    g = torch.autograd.grad(loss, net.arch_parameters() + list(unrolled.values()))
    dalpha, vector = g[:2], g[2:]
    exact = exact_mixed_hvp(net, crit, vector, x, y)
    for got, da, h in zip(grads, dalpha, exact):
        torch.testing.assert_close(got, da - eta * h, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("buffered", [False, True])
def test_the_virtual_step_is_the_w_optimizers_step(fresh_seed, nesterov, buffered):
    """w' is where the w optimizer's own step at rate ξ takes w (momentum, weight decay, Nesterov as
    NAS-Bench-201's preset uses it; before the first step, without a momentum buffer, too)."""
    net, crit, arch, x, y = _tiny(seed=fresh_seed)
    group = arch.weight_optimizer.param_groups[0]
    group["nesterov"] = nesterov
    if buffered:
        crit(net(x), y).backward(inputs=net.weight_parameters())
        arch.weight_optimizer.step()
        arch.weight_optimizer.zero_grad(set_to_none=True)
    eta = 0.037
    unrolled = arch.unrolled_weights(x, y, eta)
    group["lr"] = eta
    crit(net(x), y).backward(inputs=net.weight_parameters())
    for p in net.weight_parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    arch.weight_optimizer.step()
    for (name, p) in net.named_weight_parameters():
        torch.testing.assert_close(unrolled[name], p.detach(), rtol=1e-12, atol=1e-14, msg=name)


def test_second_order_step_moves_alpha():
    net, crit, arch, x, y = _tiny(torch.float32)
    before = [a.detach().clone() for a in net.arch_parameters()]
    loss = arch.step(x.float(), y, x.float(), y, 0.05)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), before))


def test_unknown_order_is_refused():
    net, crit, arch, *_ = _tiny()
    with pytest.raises(ValueError, match="unknown order"):
        Architect(net, arch.arch_optimizer, arch.weight_optimizer, crit, "third")


def test_second_order_takes_its_xi_from_a_device_tensor(fresh_seed):
    """ξ as a 0-dim tensor (the graphed step's device rate, read when the step runs): the same α
    gradient and loss as the number, for a ξ drawn fresh; a tensor filled anew gives the new ξ's."""
    net, crit, arch, x, y = _tiny()
    xv, yv = torch.randn_like(x), torch.randint(5, (4,))
    crit(net(x), y).backward(inputs=net.weight_parameters())
    arch.weight_optimizer.step()  # a momentum buffer enters w'
    xi = torch.empty((), dtype=torch.float64)
    for eta in (0.01 + 0.09 * torch.rand(()).item(), 0.2):
        xi.fill_(eta)
        want, want_loss = arch.second_order_grads(x, y, xv, yv, eta)
        got, got_loss = arch.second_order_grads(x, y, xv, yv, xi)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-12, atol=1e-12)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

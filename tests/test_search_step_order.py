"""search_step's order (DARTS's train loop): the α step first, on the current w; then the w step,
whose forward sees the α the α step just made. Also: the w gradient is this step's alone
(zero_grad before backward) and is clipped to grad_clip before the update."""
import copy

import torch

from ndarts.architect import Architect
from ndarts.search_step import search_step
from tiny_search import tiny_batch, tiny_search_parts


def _setup():
    net, crit, w_opt = tiny_search_parts()
    a_opt = torch.optim.Adam(net.arch_parameters(), 0.1, betas=(0.5, 0.999), weight_decay=1e-3)
    arch = Architect(net, a_opt, w_opt, crit, "first")
    batch = (*tiny_batch(), *tiny_batch())
    return net, crit, w_opt, arch, batch


def test_alpha_step_sees_the_old_weights_and_w_step_the_new_alpha(fresh_seed):
    net, crit, w_opt, arch, (x, y, xv, yv) = _setup()
    w0 = [p.detach().clone() for p in net.weight_parameters()]
    a0 = [a.detach().clone() for a in net.arch_parameters()]
    seen = {}
    real_step = arch.step

    def arch_spy(*args):
        seen["w_at_alpha_step"] = [p.detach().clone() for p in net.weight_parameters()]
        return real_step(*args)

    def forward_spy(inp):
        seen["alpha_at_w_step"] = [a.detach().clone() for a in net.arch_parameters()]
        return net(inp)

    arch.step = arch_spy
    search_step(arch, forward_spy, crit, w_opt, net.weight_parameters(), 5.0, x, y, xv, yv, 0.05)
    for got, want in zip(seen["w_at_alpha_step"], w0):
        assert torch.equal(got, want)
    a1 = [a.detach() for a in net.arch_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(a1, a0))  # the α step moved α
    for got, want in zip(seen["alpha_at_w_step"], a1):
        assert torch.equal(got, want)


def test_w_step_uses_this_steps_clipped_gradient_only(fresh_seed):
    """A stale .grad left on the weights (the previous step's) must not enter the update, and the
    gradient is clipped to norm grad_clip: the update equals SGD on clip(∇_w L_train)."""
    net, crit, w_opt, arch, (x, y, xv, yv) = _setup()
    weights = net.weight_parameters()
    for p in weights:
        p.grad = torch.full_like(p, 3.0)  # stale
    clip = 1e-3  # far below the gradient's norm: the clip is active
    # the reference: same α step, then a hand-written w step on a copy of the state
    ref = copy.deepcopy((net, w_opt))
    ref_net, ref_opt = ref
    ref_arch = Architect(ref_net, torch.optim.Adam(ref_net.arch_parameters(), 0.1, betas=(0.5, 0.999),
                                                   weight_decay=1e-3), ref_opt, crit, "first")
    ref_arch.step(x, y, xv, yv, 0.05)
    loss = crit(ref_net(x), y)
    grads = torch.autograd.grad(loss, ref_net.weight_parameters(), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, ref_net.weight_parameters())]
    norm = torch.cat([g.reshape(-1) for g in grads]).norm()
    assert float(norm) > 10 * clip
    scale = clip / (float(norm) + 1e-6)
    want = [p.detach() - 0.05 * (g * scale + 3e-4 * p.detach())
            for p, g in zip(ref_net.weight_parameters(), grads)]  # first SGD step: buffer = d

    _, _, _, grad_norm = search_step(arch, net, crit, w_opt, weights, clip, x, y, xv, yv, 0.05)
    torch.testing.assert_close(grad_norm, norm, rtol=1e-9, atol=0)
    for p, w in zip(weights, want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-9, atol=1e-12)

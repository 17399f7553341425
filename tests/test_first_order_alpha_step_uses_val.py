"""The first-order α step's gradient is ∇_α L_val(w, α), computed on the validation batch (SPEC §1:
α on the validation half), not on the training batch."""
import copy

import torch

from ndarts.architect import Architect
from tiny_search import tiny_batch, tiny_search_parts


def test_first_order_alpha_gradient_is_the_validation_batchs(fresh_seed):
    net, crit, w_opt = tiny_search_parts(spread_alpha=True)
    a_opt = torch.optim.SGD(net.arch_parameters(), lr=1.0)  # α1 = α0 − grad exactly
    arch = Architect(net, a_opt, w_opt, crit, "first")
    (x, y), (xv, yv) = tiny_batch(), tiny_batch()
    ref = copy.deepcopy(net)
    want_loss = crit(ref(xv), yv)
    want = torch.autograd.grad(want_loss, ref.arch_parameters(), allow_unused=True)
    a0 = [a.detach().clone() for a in net.arch_parameters()]
    loss = arch.step(x, y, xv, yv, 0.05)
    torch.testing.assert_close(loss, want_loss.detach())
    for a, a_before, g in zip(net.arch_parameters(), a0, want):
        g = torch.zeros_like(a) if g is None else g
        torch.testing.assert_close(a_before - a.detach(), g, rtol=1e-9, atol=1e-12)
    assert any(g is not None and g.abs().max() > 0 for g in want)

"""The first-order α step's gradient is ∇_α L_val(w, α), computed on the validation batch (SPEC §1:
α on the validation half), not on the training batch."""
import copy

import torch

from ndarts import NoiseConfig
from ndarts.architect import Architect
from ndarts.search_model import SearchNetwork


def test_first_order_alpha_gradient_is_the_validation_batchs(fresh_seed):
    net = SearchNetwork(C=2, num_classes=5, layers=3, noise=NoiseConfig(kind="none"), in_channels=2).double()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    crit = torch.nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.SGD(net.arch_parameters(), lr=1.0)  # α1 = α0 − grad exactly
    arch = Architect(net, a_opt, w_opt, crit, "first")
    x, y = torch.randn(4, 2, 6, 6, dtype=torch.float64), torch.randint(5, (4,))
    xv, yv = torch.randn(4, 2, 6, 6, dtype=torch.float64), torch.randint(5, (4,))
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

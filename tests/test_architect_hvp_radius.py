"""The finite-difference radius of the second-order step: R = 0.01/‖v‖ (DARTS; SPEC: ε = 0.01/‖v‖).

The accuracy test of the HVP (tests/test_architect.py) runs at a tiny r and cannot see R: a central
difference is accurate at any small radius, so R = r (no norm) or another default r passes it.
Here the weights the two ∇_α L_train evaluations see are recorded: w ± 0.01·v/‖v‖.
"""
import torch

from ndarts import DARTS_PRIMITIVES
from ndarts.architect import Architect
from tiny_search import tiny_batch, tiny_search_parts


def test_hvp_evaluates_at_w_plus_and_minus_0_01_v_over_its_norm(fresh_seed):
    net, crit, w_opt = tiny_search_parts(primitives=DARTS_PRIMITIVES)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    arch = Architect(net, a_opt, w_opt, crit, "second")  # the default radius, as the searcher builds it
    x, y = tiny_batch()
    w0 = [p.detach().clone() for p in net.weight_parameters()]
    # a direction whose norm is far from 1, so R = r and R = r/‖v‖ differ
    vector = [torch.randn_like(p) * 7.0 for p in w0]
    norm = torch.cat([v.reshape(-1) for v in vector]).norm()
    assert abs(float(norm) - 1.0) > 1.0
    seen = []
    real_loss = arch._loss

    def spy(xb, yb):
        seen.append([p.detach().clone() for p in net.weight_parameters()])
        return real_loss(xb, yb)

    arch._loss = spy
    arch.hessian_vector_product(vector, x, y)
    assert len(seen) == 2
    R = 0.01 / norm
    for got, w, v in zip(seen[0], w0, vector):
        torch.testing.assert_close(got, w + R * v, rtol=1e-12, atol=1e-14)
    for got, w, v in zip(seen[1], w0, vector):
        torch.testing.assert_close(got, w - R * v, rtol=1e-12, atol=1e-14)
    for p, w in zip(net.weight_parameters(), w0):
        assert torch.equal(p.detach(), w)

"""The search network's levers with the skip noise on: node sharing, batched convs and the group sums
(every incoming edge of a node in one fused sum, reference backend) against the plain per-edge
network, for each noise variant of the paper's ablation. ε is one fixed pattern on both sides (the
draws' order differs between the levers), so the comparison is exact: each edge's std, λ, μ, the
decay scale and the mixture must be applied as the per-edge MixedOp applies them."""
from unittest import mock

import pytest
import torch

import ndarts.fused_sum as fused_sum
import ndarts.noise as noise_module
from ndarts import DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES, NoiseConfig
from ndarts.grouped_state import per_edge_state
from ndarts.search_model import SearchNetwork

NOISES = {
    "gaussian": NoiseConfig(),
    "gaussian-input": NoiseConfig(reduction_position="input"),
    "uniform": NoiseConfig(kind="uniform", lam=0.3),
    "multiplicative": NoiseConfig(mixture="multiplicative", lam=0.3),
    "mean": NoiseConfig(mean=0.5),
    "decay-multiplicative-input": NoiseConfig(decay=True, mixture="multiplicative", mean=0.7, lam=0.4,
                                              reduction_position="input"),
}
LEVERS = {
    "shared": dict(batch_edge_convs=False),
    "group-sums": dict(batch_edge_convs=True, fused=True, group_sums=True, backend="torch"),
}


def _pattern_eps(phase):
    """ε as a function of the element's place only (rows of a stacked draw alike), not of the draw order."""
    def eps(shape, kind, *, like, generator=None):
        shape = tuple(shape)
        row = shape[-1:] if len(shape) == 2 else shape
        numel = 1
        for s in row:
            numel *= s
        base = torch.sin(torch.arange(numel, dtype=torch.float64) * 0.7 + phase).float().to(like.device)
        return base.expand(shape).clone() if len(shape) == 2 else base.reshape(shape)
    return eps


def _run(net, x, scale):
    net.zero_grad(set_to_none=True)
    net.set_noise_scale(scale)
    xi = x.clone().requires_grad_()
    out = net(xi)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    (out.logsumexp(1).sum() + (out * weights).sum()).backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    return out.detach(), xi.grad, grads, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("lever", LEVERS)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES], ids=["darts", "noisydarts"])
def test_levers_apply_each_noise_variant_as_the_per_edge_network(lever, noise, primitives, fresh_seed):
    torch.manual_seed(fresh_seed)
    kw = dict(C=4, num_classes=5, layers=3, in_channels=3, primitives=primitives, noise=NOISES[noise])
    plain = SearchNetwork(**kw, share_node_ops=False, channels_last=False).double()
    levered = SearchNetwork(**kw, share_node_ops=True, **LEVERS[lever]).double()
    with torch.no_grad():
        for a in plain.arch_parameters():
            a.normal_()
    levered.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    scale = float(torch.rand(())) if NOISES[noise].decay else 1.0
    eps = _pattern_eps(float(torch.rand(())))
    with mock.patch.object(noise_module, "sample_eps", eps), mock.patch.object(fused_sum, "sample_eps", eps):
        (o1, x1, g1, s1), (o2, x2, g2, s2) = _run(plain, x, scale), _run(levered, x, scale)
    tol = dict(atol=1e-9, rtol=1e-8)
    torch.testing.assert_close(o2, o1, **tol)
    torch.testing.assert_close(x2, x1, **tol)
    if levered.cells[0].edge_groups is not None:
        g2, s2 = per_edge_state(levered, g2), per_edge_state(levered, s2)
    assert sorted(g2) == sorted(g1)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], **tol, msg=name)
    for name in s1:
        torch.testing.assert_close(s2[name], s1[name], **tol, msg=name)

"""NoisyDARTS noise semantics on the reference MixedOp (SPEC §1)."""
import math

import pytest
import torch

import ndarts.noise as noise_mod
from ndarts import FusedMixedOp, MixedOp, NoiseConfig
from ndarts.architect import Architect
from ndarts.search_model import SearchNetwork


def _skip_only(cls=MixedOp, **noise):
    return cls(3, 1, ["skip_connect"], NoiseConfig(**noise)).train()


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize("mean", [0.0, 0.3])
def test_additive_noise_mean_and_std(cls, kind, mean):
    op = _skip_only(cls, kind=kind, lam=0.2, mean=mean)
    x = torch.randn(16, 3, 32, 32) * 1.7 + 0.4
    n = x.numel()
    noise = op(x, torch.ones(1)) - x
    sigma = 0.2 * float(x.std())
    # 5 standard errors: mean σ/√n; sample std of n draws ≈ σ·(1 ± 1/√(2n)) (uniform is tighter)
    assert abs(float(noise.mean()) - mean) < 5 * sigma / math.sqrt(n)
    assert abs(float(noise.std()) / sigma - 1) < 5 / math.sqrt(2 * n)


def test_multiplicative_noise_is_absolute():
    op = _skip_only(mixture="multiplicative", lam=0.3)
    x = torch.rand(8, 3, 16, 16) * 5 + 1  # positive, far from 0
    factor = op(x, torch.ones(1)) / x
    n = x.numel()
    assert abs(float(factor.mean()) - 1.0) < 5 * 0.3 / math.sqrt(n)
    assert abs(float(factor.std()) / 0.3 - 1) < 5 / math.sqrt(2 * n)


def test_cosine_decay_scale():
    cfg = NoiseConfig(decay=True)
    assert cfg.scale_at(0, 50) == 1.0
    assert cfg.scale_at(25, 50) == pytest.approx(0.5)
    assert cfg.scale_at(50, 50) == pytest.approx(0.0, abs=1e-12)
    assert NoiseConfig().scale_at(25, 50) == 1.0
    op = _skip_only(lam=0.2, decay=True)
    op.noise_scale = 0.25
    x = torch.randn(8, 3, 32, 32)
    noise = op(x, torch.ones(1)) - x
    assert abs(float(noise.std()) / (0.25 * 0.2 * float(x.std())) - 1) < 0.05


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
def test_no_noise_in_eval_or_when_off(cls):
    x = torch.randn(4, 3, 8, 8)
    op = _skip_only(cls).eval()
    torch.testing.assert_close(op(x, torch.ones(1)), x)
    op = _skip_only(cls, kind="none")
    torch.testing.assert_close(op(x, torch.ones(1)), x)


@pytest.mark.parametrize("kwargs,match", [
    ({"lam": -0.1}, "lambda"),
    ({"lam": float("nan")}, "lambda"),
    ({"kind": "laplace"}, "unknown noise kind"),
    ({"mixture": "both"}, "unknown noise mixture"),
    ({"reduction_position": "middle"}, "reduction_position"),
    ({"lam": True}, "lambda must be a finite number"),
    ({"lam": "0.2"}, "lambda must be a finite number"),
    ({"mean": "0.1"}, "mean must be a finite number or None"),
    ({"mean": float("inf")}, "mean must be a finite number or None"),
])
def test_bad_noise_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseConfig(**kwargs)


def test_numpy_numbers_are_taken_as_floats():
    """λ and μ from a NumPy grid (a sweep) are taken, and kept as plain floats: the config goes
    into JSON files and checkpoints."""
    import json

    import numpy as np

    lam, mean = np.float32(np.random.rand()), np.float64(np.random.rand())
    cfg = NoiseConfig(lam=lam, mean=mean)
    assert type(cfg.lam) is float and type(cfg.mean) is float
    assert cfg.lam == float(lam) and cfg.mean == float(mean)
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


def test_noise_is_a_constant_for_autograd(monkeypatch):
    """∂L/∂w_skip = Σ g·(x + x̃) (the noisy operand), ∂L/∂x through skip = w_skip, and ∂L/∂α
    is the softmax Jacobian applied to that — computed by hand with the very same ε."""
    x = torch.randn(2, 3, 6, 5)
    eps = torch.randn(x.shape)
    monkeypatch.setattr(noise_mod, "sample_eps", lambda shape, kind, like, generator=None: eps.clone())
    op = MixedOp(3, 1, ["skip_connect", "avg_pool_3x3"], NoiseConfig(lam=0.2)).train()
    alpha = torch.randn(2, requires_grad=True)
    xr = x.clone().requires_grad_()
    w = torch.softmax(alpha, 0)
    w.retain_grad()
    y = op(xr, w)
    g = torch.randn(y.shape)
    y.backward(g)

    noisy = x + 0.2 * x.std() * eps
    pooled = op._ops[1](x).detach()
    dw = torch.stack([(g * noisy).sum(), (g * pooled).sum()])
    torch.testing.assert_close(w.grad, dw, rtol=1e-5, atol=1e-4)
    wd = w.detach()
    dalpha = (torch.diag(wd) - torch.outer(wd, wd)) @ dw
    torch.testing.assert_close(alpha.grad, dalpha, rtol=1e-5, atol=1e-4)
    # through the skip path the noise adds nothing to ∂/∂x: compare with a noise-free twin
    op_clean = MixedOp(3, 1, ["skip_connect", "avg_pool_3x3"], NoiseConfig(kind="none")).train()
    xc = x.clone().requires_grad_()
    op_clean(xc, wd).backward(g)
    torch.testing.assert_close(xr.grad, xc.grad, rtol=1e-5, atol=1e-5)


def test_noise_in_both_steps_and_not_in_eval(monkeypatch):
    """The search draws noise in the weight step and in the architecture step, never in eval."""
    calls = []
    real = noise_mod.sample_eps

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(noise_mod, "sample_eps", counting)
    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=10, layers=2, in_channels=1)
    crit = torch.nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4)
    arch = Architect(net, a_opt, w_opt, crit, "first")
    x, y = torch.randn(4, 1, 8, 8), torch.randint(10, (4,))
    n_edges = 2 * 14
    net.train()
    arch.step(x, y, x, y, 0.05)
    assert len(calls) == n_edges
    crit(net(x), y).backward()
    assert len(calls) == 2 * n_edges
    net.eval()
    with torch.no_grad():
        net(x)
    assert len(calls) == 2 * n_edges

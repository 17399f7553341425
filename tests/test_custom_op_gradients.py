"""The registered autograd of the custom op torch.ops.ndarts.noisy_mixed_sum (what torch.compile
runs) gives the eager op's gradients for every noise variant, on both backends.

The compile and opcheck tests elsewhere use additive Gaussian noise only, and opcheck compares the
op's backward with itself: a reference backward that dropped the multiplicative factor (the skip
operand's gradient w·g instead of w·g·(μ + λ·ε) under torch.compile on the torch backend) passes
them. Same seed, same ε on both paths (Philox), so the fp32 tolerances are tight.
"""
import pytest
import torch

from ndarts import NoiseConfig, noisy_mixed_sum
from ndarts.fused_sum import draw_seed, noise_arguments

VARIANTS = {
    "gaussian": NoiseConfig(lam=0.3),
    "uniform": NoiseConfig(kind="uniform", lam=0.3),
    "multiplicative": NoiseConfig(mixture="multiplicative", lam=0.3),
    "multiplicative-mean": NoiseConfig(mixture="multiplicative", lam=0.4, mean=0.6),
    "mean": NoiseConfig(mean=0.5, lam=0.2),
}


def _leaves(ops, w):
    return [o.detach().clone().requires_grad_() for o in ops], w.detach().clone().requires_grad_()


@pytest.mark.parametrize("use_triton", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_custom_op_autograd_equals_eager(variant, use_triton, fresh_seed):
    noise = VARIANTS[variant]
    shape, k, skip = (2, 3, 5, 7), 4, 2
    ops = [torch.randn(shape) * (1 + i) + 0.5 * i for i in range(k)]
    w = torch.softmax(torch.randn(k), 0)
    g = torch.randn(shape)
    seed = draw_seed("cpu")
    backend = "triton" if use_triton else "torch"

    ops_e, w_e = _leaves(ops, w)
    y_e = noisy_mixed_sum(ops_e, w_e, skip, noise, backend=backend, seed=seed)
    y_e.backward(g)

    ops_c, w_c = _leaves(ops, w)
    kind, mult, lam, mean, device_scale, _ = noise_arguments(noise, True, 1.0, seed, torch.device("cpu"))
    y_c, _ = torch.ops.ndarts.noisy_mixed_sum(ops_c, w_c, seed, skip, kind, mult, float(lam), float(mean),
                                              use_triton, device_scale)
    y_c.backward(g)

    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_c, y_e, **tol)
    for i, (a, b) in enumerate(zip(ops_c, ops_e)):
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=lambda m, i=i: f"d operand {i}: {m}")
    torch.testing.assert_close(w_c.grad, w_e.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_with_multiplicative_noise(backend, fresh_seed):
    """torch.compile(fullgraph=True) through the custom op, multiplicative noise: eager's gradients."""
    noise = NoiseConfig(mixture="multiplicative", lam=0.3)

    def f(ops, w, seed):
        return noisy_mixed_sum(ops, w, 2, noise, backend=backend, seed=seed).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ops = [torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(4)]
    w = torch.softmax(torch.randn(4), 0).requires_grad_()
    seed = draw_seed("cpu")
    eager = f(ops, w, seed)
    got = compiled(ops, w, seed)
    torch.testing.assert_close(got, eager)
    for a, b in zip(torch.autograd.grad(got, [*ops, w]), torch.autograd.grad(eager, [*ops, w])):
        torch.testing.assert_close(a, b)

"""The fused sums, forward and backward, over many programs each (blocks forced small).

In the interpreter the element-wise block is next_power_of_2(n) up to 8192, so the other gradient
tests of the mixed and group sums run one program (their tensors have ~2k elements at most), while
on a GPU (1024 / 512 elements per program) every real tensor has many, each writing its own row
of the dW partials (PART[pid, k]). A kernel whose programs all wrote row 0 (dW wrong on any GPU)
passes those tests; here the sums run dozens of programs with a partial last one, and y, every
operand's gradient and dW are compared with the reference.
"""
import pytest
import torch

import ndarts_kernels
from ndarts.fused_sum import draw_seed
from ndarts.group_sum import noisy_group_sum, reference_group_sum
from test_noisy_mixed_sum import DTYPES, VARIANTS, _close, _fused, _inputs, _reference


def _small_blocks(monkeypatch, block=64):
    import ndarts_kernels.noisy_group_sum as group_mod
    import ndarts_kernels.noisy_mixed_sum as mixed_mod

    fake = lambda n, many_operands=False: (block, 4)  # noqa: E731
    monkeypatch.setattr(mixed_mod, "_elementwise_block", fake)
    monkeypatch.setattr(group_mod, "_elementwise_block", fake)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("variant", ["gaussian", "multiplicative", "none"])
def test_mixed_sum_over_many_programs(monkeypatch, dtype, atol, rtol, variant, fresh_seed):
    _small_blocks(monkeypatch)
    shape, k = (3, 5, 13, 11), 5  # 2145 elements: 34 programs of 64, the last one partial
    noise = VARIANTS[variant]
    ops, w = _inputs(shape, k, dtype, "cpu", offset=1.5)
    seed = draw_seed("cpu")
    g = torch.randn(shape).to(dtype)
    y_f, d_f, dw_f = _fused(ops, w, 2, noise, 0.8, seed, g)
    y_r, d_r, dw_r = _reference(ops, w, 2, noise, 0.8, seed, g)
    _close(y_f, y_r, atol * 4, rtol, "y")
    for i, (a, b) in enumerate(zip(d_f, d_r)):
        _close(a, b, atol, rtol, f"d operand {i}")
    _close(dw_f, dw_r, atol * ops[0].numel() ** 0.5 * 4, rtol * 4, "dW")


@pytest.mark.parametrize("variant", ["gaussian", "multiplicative", "none"])
def test_group_sum_over_many_programs(monkeypatch, variant, fresh_seed):
    _small_blocks(monkeypatch)
    edges, p, q, shape = 3, 2, 3, (2, 4, 9, 7)  # 504 elements per edge: 8 programs of 64, the last partial
    n, c, h, wd = shape
    noise = VARIANTS[variant]
    shared = [torch.randn(shape) * (1 + i) + i for i in range(p)]
    grouped = [torch.randn((n, edges * c, h, wd)) for _ in range(q)]
    weights = torch.softmax(torch.randn(edges, p + q), 1)
    grad = torch.randn((edges, *shape))
    seed = draw_seed("cpu")
    kind, mult, lam, mean = noise.kernel_params(0.7)
    eps = ndarts_kernels.unit_noise(seed, edges * shared[0].numel(), kind).view(edges, -1) if noise.enabled else None

    def run(fn):
        s = [t.clone().requires_grad_() for t in shared]
        gq = [t.clone().requires_grad_() for t in grouped]
        w = weights.clone().requires_grad_()
        y = fn(s, gq, w)
        y.backward(grad)
        return [y.detach(), *[t.grad for t in s], *[t.grad for t in gq], w.grad]

    want = run(lambda s, g, w: reference_group_sum([s], g, w, [edges], p - 1, mult, lam, mean, eps))
    got = run(lambda s, g, w: noisy_group_sum(s, g, w, p - 1, noise, scale=0.7, backend="triton", seed=seed))
    names = ["y"] + [f"d shared {i}" for i in range(p)] + [f"d grouped {i}" for i in range(q)] + ["dW"]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, atol=2e-4 if name == "dW" else 2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")

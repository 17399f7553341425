"""The group sums add no noise with training=False (SPEC §1: noise only in training mode), on both
backends, for a shared skip and for the edges' own skip operands.

The search network never shows a group sum that ignored `training` (node_sums passes
skip_index=None outside training); these call the public noisy_group_sum(s) in eval directly.
"""
import pytest
import torch

from ndarts import NoiseConfig
from ndarts.group_sum import noisy_group_sum, noisy_group_sums

NOISES = [NoiseConfig(lam=0.5), NoiseConfig(kind="uniform", lam=0.5), NoiseConfig(mixture="multiplicative", lam=0.5),
          NoiseConfig(mean=0.5)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("noise", NOISES, ids=["gaussian", "uniform", "multiplicative", "mean"])
def test_group_sum_in_eval_is_noise_free(backend, noise, fresh_seed):
    edges, shape = 3, (2, 4, 5, 6)
    n, c, h, w = shape
    shared = [torch.randn(shape) * 2 + 1, torch.randn(shape)]
    grouped = [torch.randn(n, edges * c, h, w) for _ in range(2)]
    weights = torch.softmax(torch.randn(edges, 4), 1)
    clean = noisy_group_sum(shared, grouped, weights, 1, NoiseConfig(kind="none"), backend=backend)
    got = noisy_group_sum(shared, grouped, weights, 1, noise, training=False, backend=backend)
    torch.testing.assert_close(got, clean, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_group_sums_with_own_skips_in_eval_are_noise_free(backend, fresh_seed):
    edges, shape = [2, 1], (2, 3, 5, 7)
    n, c, h, w = shape
    total = sum(edges)
    sources = [[torch.randn(shape) + s] for s in range(len(edges))]
    grouped = [torch.randn(n, total * c, h, w)]
    own = [torch.randn(shape) * (1 + e) for e in range(total)]
    weights = torch.softmax(torch.randn(total, 3), 1)
    skip = 2  # the own operand's column: 1 shared + 1 grouped
    clean = noisy_group_sums(sources, grouped, weights, edges, skip, NoiseConfig(kind="none"), backend=backend, own=own)
    got = noisy_group_sums(sources, grouped, weights, edges, skip, NoiseConfig(lam=0.5), training=False,
                           backend=backend, own=own)
    torch.testing.assert_close(got, clean, atol=0, rtol=0)

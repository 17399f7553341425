"""benchmarks/host_time.py: the host time of an eager fused sum with its launches counted, not run;
and the host-side launch arithmetic of kernels/grid.py that replaced Triton's constexpr functions."""
import random

import pytest
import torch
import triton


def test_host_time_counts_the_fused_sums_launches_and_restores_the_kernels():
    import host_time
    import ndarts_kernels
    from triton.runtime.interpreter import InterpretedFunction

    from ndarts import NoiseConfig, noisy_mixed_sum
    from ndarts import backend

    before = ndarts_kernels.INTERPRETED, backend.triton_unavailable_reason, InterpretedFunction.__getitem__
    shape = tuple(random.randrange(1, 6) for _ in range(4))
    rows = host_time.measure(shape=shape, calls=2)
    # fwd+bwd: the skip's moments, their merge, the forward, the backward; fwd: the first three
    assert [(r["mode"], r["triton_launches"]) for r in rows] == [("fwdbwd", 4), ("fwd", 3)]
    assert all(0 < r["host_us"] < 1e6 for r in rows)
    assert (ndarts_kernels.INTERPRETED, backend.triton_unavailable_reason, InterpretedFunction.__getitem__) == before
    # the kernels run again afterwards: without noise the Triton sum is the reference's
    ops, w = [torch.randn(shape) for _ in range(3)], torch.softmax(torch.randn(3), 0)
    torch.testing.assert_close(noisy_mixed_sum(ops, w, 1, NoiseConfig(kind="none"), backend="triton"),
                               noisy_mixed_sum(ops, w, 1, NoiseConfig(kind="none"), backend="torch"))


def test_the_host_launch_arithmetic_equals_tritons():
    from ndarts_kernels.grid import cdiv, next_power_of_2

    values = [0, 1, 2, 3, 4, 5, 7, 8, 9, 1023, 1024, 1025, 2**31 - 1, 2**31, 2**40 + 3,
              *(random.randrange(1, 2**34) for _ in range(200))]
    for n in values:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 7, 128, 1024, random.randrange(1, 5000)):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)


@pytest.mark.parametrize("n", [-1, -5])
def test_next_power_of_2_of_a_negative_is_tritons_too(n):
    from ndarts_kernels.grid import next_power_of_2

    assert next_power_of_2(n) == triton.next_power_of_2(n)

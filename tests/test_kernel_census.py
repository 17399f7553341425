"""benchmarks/count_kernels.py: the kernel census of a search step runs on a CPU and sees the levers."""

import pytest


@pytest.fixture(scope="module")
def census():
    count_kernels = pytest.importorskip("count_kernels")
    return {impl: count_kernels.census(impl) for impl in ("fused_graph_per_edge", "fused_graph")}


def test_census_counts_triton_and_aten_kernels(census):
    for result in census.values():
        assert result["kernels"] == result["triton"] + result["aten"] == sum(result["by_category"].values())
        assert result["by_category"]["BatchNorm (Triton)"] > 0 and result["by_category"]["mixed sums (Triton)"] > 0
        assert result["by_category"]["convolution"] > 0


def test_census_sees_the_default_levers(census):
    """Batched edge convs (a cell's two inputs in one group), several BatchNorms per launch, one
    seed draw per pass, the group sums: the default graph step launches far fewer kernels than the
    per-edge one (measured 4.3k vs 16.5k, 2026-11-29)."""
    per_edge, default = census["fused_graph_per_edge"], census["fused_graph"]
    assert default["kernels"] < 0.6 * per_edge["kernels"]
    assert default["by_category"]["convolution"] < 0.5 * per_edge["by_category"]["convolution"]
    assert default["by_category"]["BatchNorm (Triton)"] < 0.25 * per_edge["by_category"]["BatchNorm (Triton)"]
    assert default["by_category"].get("seed / noise draws", 0) <= 4  # one block per forward pass
    sums = default["triton_by_kernel"]
    # every edge sums in a group, a reduction cell's stride-2 edges too (own FactorizedReduce operands)
    assert sums["_group_forward_kernel"] > 0 and "_noisy_mixed_sum_forward_kernel" not in sums
    assert sums["_tensor_sum_kernel"] > 0 and sums["_relu_repeat_forward_kernel"] > 0  # fan-out sums, fused relu
    assert sums["_pools_forward_kernel"] > 0 and "aten::max_pool2d" not in default["aten_by_op"]  # both pools at once

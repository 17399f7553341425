"""benchmarks/warm_triton_cache.py (gpu_check.sh's background compile): its variants exist, and a
variant that cannot run is reported by name with its reason, not hidden."""

import pytest


def test_the_warmed_variants_are_the_benchmarks_triton_variants():
    warm = pytest.importorskip("warm_triton_cache")
    bench = pytest.importorskip("test_bench_search_step")
    assert set(warm.DEFAULT_IMPLS) <= set(bench.IMPLS)
    # every graph-step variant launches Triton kernels: all of them are warmed, or the variant whose
    # kernels they launch
    graphed = {warm.SAME_KERNELS.get(i, i) for i in bench.IMPLS if i.startswith("fused_graph")}
    assert graphed <= set(warm.DEFAULT_IMPLS)
    assert set(warm.SAME_KERNELS) <= set(bench.IMPLS) and not set(warm.SAME_KERNELS) & set(warm.DEFAULT_IMPLS)


def test_failures_are_reported_per_variant(capsys):
    warm = pytest.importorskip("warm_triton_cache")
    impls = ["not_a_variant"] + ([] if __import__("torch").cuda.is_available() else ["fused_graph"])
    assert warm.main(["--impl", *impls, "--limit-s", "120"]) == 1
    out = capsys.readouterr().out
    assert "warm not_a_variant: FAILED" in out and "unknown variant 'not_a_variant'" in out
    if "fused_graph" in impls:
        assert "warm fused_graph: FAILED" in out and "needs a CUDA device" in out
    assert f"0 of {len(impls)} variants warmed" in out

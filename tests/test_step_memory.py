"""Memory of a search step: no reference cycle keeps a pass's tensors alive, and
benchmarks/step_memory.py's live-bytes tracker counts what is alive."""
import gc

import pytest
import torch


def _cycle_garbage(step) -> list:
    """The objects only Python's cyclic gc would free after one call of step (gc off meanwhile)."""
    gc.collect()
    gc.disable()
    try:
        step()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
    finally:
        gc.set_debug(0)
        gc.enable()
    garbage = list(gc.garbage)
    gc.garbage.clear()
    return garbage


@pytest.mark.parametrize("impl", ["fused_graph", "reference"])
def test_a_search_step_leaves_no_tensor_in_a_reference_cycle(impl):
    """A tensor held by a reference cycle lives until Python's cyclic gc runs, past the backward
    that should free it: the α step's activations then stayed alive into the w step (a NodeShare
    ↔ GroupRun cycle: +1.6 GiB of peak for the default graph step, by step_memory.py). fused_graph:
    the graph step with the Triton launches counted, not run; reference: the CPU default."""
    count_kernels = pytest.importorskip("count_kernels")
    step = count_kernels.graph_step(impl)
    with count_kernels.graph_step_context():
        step()  # warm: optimizer state
        garbage = _cycle_garbage(step)
    tensors = [o for o in garbage if isinstance(o, torch.Tensor)]
    kinds = sorted({type(o).__name__ for o in garbage})
    assert not tensors, f"{len(tensors)} tensors freed only by the cyclic gc; cycle members: {kinds}"


def test_live_storages_counts_views_once_and_frees():
    step_memory = pytest.importorskip("step_memory")
    n = int(torch.randint(1000, 5000, ()))
    x = torch.randn(n)
    with step_memory.LiveStorages([x]) as tracker:
        a = x * 2  # n floats
        v = a[: n // 2]  # a view: no new storage
        b = a + 1  # n floats: 3 alive with x
        del a, v, b
        c = x.sum()  # 1 float, after a and b are freed
    assert tracker.peak == 3 * 4 * n
    assert tracker._sweep() == 4 * n + c.untyped_storage().nbytes()


def test_the_recomputed_relu_lowers_the_peak():
    """The default graph step (recompute_relu) holds less at its peak than the one whose sep convs
    keep their inner ReLU's output (estimated 3.51 vs 4.02 GiB at batch 64, 32×32)."""
    step_memory = pytest.importorskip("step_memory")
    default = step_memory.peak_bytes("fused_graph", 2, 16)
    kept = step_memory.peak_bytes("fused_graph_keep_relu", 2, 16)
    assert default < 0.97 * kept


def test_the_fused_separable_pair_lowers_the_peak():
    """With each dw → pw pair of the stacks fused (fused_graph_sepconv) the depthwise outputs are
    never kept, nor the sep convs' inner ReLU output: the peak drops (estimated 3.48 → 2.05 GiB at
    batch 64, 32×32)."""
    step_memory = pytest.importorskip("step_memory")
    default = step_memory.peak_bytes("fused_graph", 2, 16)
    fused = step_memory.peak_bytes("fused_graph_sepconv", 2, 16)
    assert fused < 0.9 * default

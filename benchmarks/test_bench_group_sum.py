"""The group-sum kernels (kernels/noisy_group_sum.py) at other blocks than their default: a sweep.

Why: the group sums are 8.7 GB of the graphed search step's 42-73 (benchmarks/step_traffic.py).
Compiled for sm_90 at eight elements a thread (1024, 4 warps), their variants used all 255
registers a thread and spilled up to 2 KB to local memory (benchmarks/kernel_resources.py,
RESULTS.md 2026-11-30, ninth entry); since then they run at two (512, 8 warps), which spills
nothing. Whether that is faster has not been timed: this sweep times both, and more, in one run.

The case is the step's largest group-sum launch: a normal cell's first conv group at batch 64,
C 16, 32×32, fp32, 4 edges, each summing 3 shared operands (pools, skip) and 4 grouped ones (its
convs' outputs, read as their deferred BatchNorms' y from z), with a base (the partial node sum)
added and the node's moments taken (row0_std). Parts, as the step runs them: `fwd`; `dgrad`,
the w step's backward (input gradients only: the operands are not read); `both`, the α step's
(input gradients and the weights' gradient, reading every operand). Blocks: (elements, warps)
pairs; `*` in summarize.py's table marks the default. CUDA only (Triton compiled); on a CPU each
case skips with a reason.
"""
from __future__ import annotations

import pytest
import torch

from bench_common import CUDA, cuda_graph_ms, run_benchmark, triton_skip_reason

BLOCKS = [(1024, 4), (512, 8), (512, 4), (256, 4), (256, 2)]
PARTS = ["fwd", "dgrad", "both"]
N, C, H, W = 64, 16, 32, 32
EDGES, SHARED, GROUPED = 4, 3, 4
ROUNDS, WARMUP = 10, 3


def _operands(device):
    gen = torch.Generator(device=device).manual_seed(0)
    shared = [torch.randn(N, C, H, W, device=device, generator=gen) for _ in range(SHARED)]
    grouped = [torch.randn(N, EDGES * C, H, W, device=device, generator=gen) for _ in range(GROUPED)]
    norm = [(torch.randn(EDGES * C, device=device, generator=gen),
             torch.rand(EDGES * C, device=device, generator=gen) + 0.5) for _ in range(GROUPED)]
    weights = torch.softmax(torch.randn(EDGES, SHARED + GROUPED, device=device, generator=gen), dim=1)
    bases = [torch.randn(N, C, H, W, device=device, generator=gen) for _ in range(EDGES)]
    grad = torch.randn(EDGES, N, C, H, W, device=device, generator=gen)
    seed = torch.zeros((1,), dtype=torch.int64, device=device)
    return shared, grouped, norm, weights, bases, grad, seed


def _min_bytes(part: str, elem: int) -> int:
    """Bytes the part must move at least: every tensor it reads or writes, once."""
    plane = N * C * H * W * elem
    if part == "fwd":  # read shared, grouped, bases; write the E sums
        return plane * (SHARED + GROUPED * EDGES + EDGES + EDGES)
    grads_out = plane * (SHARED + GROUPED * EDGES)  # read the E gradients; write every operand's
    reads = plane * (SHARED + GROUPED * EDGES) if part == "both" else 0  # dW: the operands
    return plane * EDGES + grads_out + reads


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b}x{w}" for b, w in BLOCKS])
def test_group_sum_blocks(benchmark, copy_bandwidth, device, monkeypatch, part, block):
    reason = triton_skip_reason(device)
    if reason:
        pytest.skip(reason)
    import ndarts_kernels.noisy_group_sum as group

    default = group._elementwise_block(N * C * H * W, many_operands=True)
    monkeypatch.setattr(group, "_elementwise_block", lambda n, many_operands=False: block)
    shared, grouped, norm, weights, bases, grad, seed = _operands(device)
    args = (shared, grouped, weights, seed, 2, 1, False, 0.2, 0.0)  # Gaussian noise on the third shared operand
    # the skip operand's std as the step passes it (computed once per step, not in every sum)
    _, std = group.noisy_group_sum_forward(*args, grouped_norm=norm)
    if part == "fwd":
        def fn():
            return group.noisy_group_sum_forward(*args, bases=bases, std=std, row0_std=True, grouped_norm=norm)
    else:
        def fn():
            return group.noisy_group_sum_backward(grad, shared, grouped, weights, seed, std, 2, 1, False, 0.2, 0.0,
                                                  grouped_norm=norm, weight_grad=part == "both")
    info = run_benchmark(benchmark, fn, device, rounds=ROUNDS, warmup=WARMUP)
    if info["time_ms"] is None:
        return
    nbytes = _min_bytes(part, shared[0].element_size())
    info.update({"kind": "group_sum_block", "part": part, "tile": list(block), "default_tile": block == default,
                 "shape": [N, C, H, W], "geometry": f"{EDGES} edges x ({SHARED} shared + {GROUPED} grouped)",
                 "dtype": "float32", "device": str(device), "min_bytes": nbytes,
                 "GBps": nbytes / (info["time_ms"] * 1e-3) / 1e9, "copy_GBps": copy_bandwidth["copy_GBps"]})
    info["frac_copy_bw"] = info["GBps"] / info["copy_GBps"]
    if CUDA:
        info["graph_ms"], info["graph_error"] = cuda_graph_ms(fn)
    benchmark.extra_info.update(info)

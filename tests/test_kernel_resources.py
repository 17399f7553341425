"""The search step's Triton kernels fit in an H100/H200's registers (benchmarks/kernel_resources.py).

On 2026-11-30 the tool found, on a CPU, that the group sums, the pools' backward, the fused
depthwise + 1×1 kernels and the opt-in conv kernels used all 255 registers a thread of sm_90 and
spilled 0.2-2.5 KB more to local memory at the search step's shapes (the 1×1 convs' weight-gradient
reduce, 23 KB): traffic the step's byte model does not count, at cache latency. Their launchers now
choose smaller blocks or more warps; this test keeps it so. Every variant that a graph step of SPEC
§6's supernet (batch 64, 32×32: the launches are recorded, not run) launches compiles for sm_90
with at most SPILL_BYTES spilled, in two steps that reach every Triton kernel of the search:
fused_graph_sepconv (the default step's group sums, pools, BatchNorms, relus and gradient sums,
and the fused conv pairs) and fused_graph_convs (the depthwise and 1×1 conv kernels).
"""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "kernel_resources.py")
SPILL_BYTES = 64  # spill stores + loads a thread: a few registers' worth
SM90_SHARED_PER_PROGRAM = 227 * 1024  # the most shared memory one block may use on sm_90 (opted in)
DOT_KERNELS = {"_sep_conv_fwd_kernel", "_sep_conv_bwd_kernel", "_pw_conv_kernel", "_pw_conv_wgrad_kernel"}


@pytest.mark.slow
def test_search_step_kernels_do_not_spill(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    out = tmp_path / "resources.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_CACHE_DIR": str(tmp_path / "triton_cache")}
    run = subprocess.run([sys.executable, SCRIPT, "--impl", "fused_graph_sepconv", "fused_graph_convs",
                          "--workers", "2", "--json", str(out)], capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    kernels = {k["kernel"] for r in results for k in r["kernels"]}
    # the two steps reach every kernel family of the search step's levers
    assert {"_group_forward_kernel", "_group_backward_kernel", "_sep_conv_fwd_kernel", "_sep_conv_bwd_kernel",
            "_dw_pairs_bwd_input_kernel", "_pools_backward_kernel", "_bn_grad_apply_kernel", "_dw_conv_fwd_kernel",
            "_dw_conv_bwd_input_kernel", "_pw_conv_kernel", "_pw_conv_wgrad_kernel",
            "_pw_conv_wgrad_reduce_kernel"} <= kernels
    variants = [(k["kernel"], v) for r in results for k in r["kernels"] for v in k["variants"]]
    assert all("error" not in v for _, v in variants), [(k, v["error"]) for k, v in variants if "error" in v]
    spilled = [(k, v["constexprs"], v["num_warps"], v["spill_stores"] + v["spill_loads"]) for k, v in variants
               if v["spill_stores"] + v["spill_loads"] > SPILL_BYTES]
    assert not spilled, spilled
    assert all(0 < v["registers"] <= 255 for _, v in variants)
    # a launch that asks for more shared memory than a program may have fails on the GPU only
    over = [(k, v["constexprs"], v["shared"]) for k, v in variants if v["shared"] > SM90_SHARED_PER_PROGRAM]
    assert not over, over
    # at PyTorch's default (TF32 convolutions) the fused convs' fp32 products run on tensor cores
    # (kernels/dot_precision.py), the other kernels have no products
    dots = {k: v["mma"] for k, v in variants if k in DOT_KERNELS}
    assert set(dots) == DOT_KERNELS and all(dots.values()), dots
    assert not [k for k, v in variants if k not in DOT_KERNELS and v["mma"]]


_REPORT_BOTH_WAYS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import ndarts_kernels  # defined for the GPU first: kernel_resources sets TRITON_INTERPRET for its recording
import kernel_resources as kr
spec, calls, ptxas_again = json.loads(sys.argv[2]), [], kr._ptxas_report
kr._ptxas_report = lambda ptx: calls.append(ptx) or ptxas_again(ptx)
first = kr.compile_resources(spec)  # a fresh cache: Triton's own ptxas prints the log
n_first = len(calls)
again = kr.compile_resources(spec)  # from Triton's cache: no log, ptxas -v on the PTX once more
print(json.dumps([first, again, n_first, len(calls) - n_first]))
"""


def test_registers_from_tritons_ptxas_log_equal_a_second_ptxas_run(tmp_path, monkeypatch):
    """compile_resources reads the registers and spills from the ptxas -v log of Triton's own cubin
    stage (no second ptxas run); a kernel that Triton's cache holds prints no log and goes through
    ptxas -v again: both give the same report."""
    pytest.importorskip("triton.backends.nvidia")
    import torch
    from triton.runtime import interpreter

    import ndarts_kernels as K

    sys.path.insert(0, os.path.dirname(__file__))
    from gpu_compile import _spec

    specs = []
    monkeypatch.setattr(interpreter.GridExecutor, "__call__",
                        lambda executor, *args, **kwargs: specs.append(_spec(executor.fn, args, kwargs)))
    K.tensor_sum([torch.randn(3, 5, 7) for _ in range(3)])  # recorded, not run
    assert [s["kernel"] for s in specs] == ["_tensor_sum_kernel"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    run = subprocess.run([sys.executable, "-c", _REPORT_BOTH_WAYS, os.path.dirname(SCRIPT),
                          json.dumps(specs[0], default=str)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    first, again, ptxas_first, ptxas_again = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in first, first
    assert (ptxas_first, ptxas_again) == (0, 1)
    assert first == again and 0 < first["registers"] <= 255


def test_resident_programs_follow_sm90_limits():
    """The occupancy arithmetic: registers (allocated per warp in units of 256), warps, programs and
    shared memory (1 KiB reserved a program) each bound the programs resident on a multiprocessor."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    from kernel_resources import resident_programs

    assert resident_programs(255, 4, 0) == 2  # 256 × 32 × 4 = 32 768 registers a program
    assert resident_programs(128, 8, 0) == 2
    assert resident_programs(40, 4, 0) == 12  # 40 registers → 1 280 a warp: 65 536 // 5 120
    assert resident_programs(32, 4, 0) == 16  # and 64 warps // 4
    assert resident_programs(16, 1, 0) == 32  # the most programs a multiprocessor holds
    assert resident_programs(32, 4, 100 * 1024) == 2  # 228 KiB // 101 KiB
    assert resident_programs(255, 8, 0) == 1

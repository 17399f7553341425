"""Shared pieces of the ndarts benchmarks: device, sizes, byte counts, timing.

Two kinds of machine run these files:
- CI and laptops (CPU only): small shapes, the eager implementations only, wall-clock timing.
  The CPU numbers say whether the code paths run and how they compare on a CPU; they are not the
  numbers of SPEC §6.
- a CUDA GPU (benchmarks/gpu_check.sh): the real DARTS shapes, the fused Triton kernels,
  torch.compile, CUDA events.

Minimal bytes (N elements per operand, K operands, e bytes per element; SPEC §6):
  forward:          (K + 1)·N·e  (read K operands, write y)  +  N·e (the std pass over o_skip)
  forward+backward: 24·N·e for K = 7: forward 9·N·e, backward reads g and the K operands and
                    writes the K operand gradients, (2K + 1)·N·e. In general (3K + 3)·N·e.
GB/s below is those bytes over the measured time: an effective bandwidth, comparable across
implementations (an implementation that moves more bytes shows a lower figure).
"""
from __future__ import annotations

import os
import statistics
import time

import torch

# ----------------------------------------------------------------------------- device
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def cpu_threads() -> int:
    """Threads for CPU runs: NDARTS_BENCH_THREADS, default 1.

    One thread, because on a shared 2-core CI machine two OpenMP threads collapse when the other
    core is busy: a 3×3 depthwise conv on 8×8×16×16 took 44 ms with 2 threads against 0.07 ms
    with 1 (2026-11-27, load average 8 on 2 cores, torch 2.14.1 CPU build, oneDNN path).
    """
    return int(os.environ.get("NDARTS_BENCH_THREADS", "1"))


def needs_cuda(what: str) -> str:
    return f"needs CUDA: {what}"


# ----------------------------------------------------------------------------- sizes
# The DARTS feature-map shapes of the mixed-op sum (N, C, H, W) at batch 64, and batch 256.
GPU_SHAPES = [(64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8), (256, 64, 32, 32)]
# CPU: the same C, H, W with batch 2 (8 for the batch-256 shape): milliseconds, not seconds.
CPU_SHAPES = [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8), (8, 64, 32, 32)]
SHAPES = GPU_SHAPES if CUDA else CPU_SHAPES
# The shape the ≥10× / ≥5× speedup targets are stated at, and the one of the bandwidth target.
SPEEDUP_SHAPE = SHAPES[0]
BANDWIDTH_SHAPE = SHAPES[3]


def shape_id(shape) -> str:
    return "x".join(str(s) for s in shape)


def minimal_bytes(mode: str, numel: int, elem: int, num_operands: int) -> int:
    """Bytes the op must move; see the module docstring."""
    if mode == "fwd":
        return (num_operands + 2) * numel * elem
    if mode == "fwdbwd":
        return (3 * num_operands + 3) * numel * elem
    raise ValueError(f"unknown mode {mode!r}")


# ----------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_event_ms(fn, reps: int = 20, batches: int = 3) -> float:
    """Median over `batches` of the mean time of `reps` back-to-back calls, by CUDA events.

    Back-to-back: no host sync between calls, so the figure is the steady-state cost of one call
    in a stream of calls (host launch overhead included where it is the bottleneck).
    """
    times = []
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def cuda_graph_ms(fn, replays: int = 20) -> tuple[float | None, str | None]:
    """Device time of fn captured as one CUDA graph, replayed back to back: the kernels' own cost
    without the host's launch overhead. Returns (ms, None), or (None, why it could not be captured)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        return cuda_event_ms(graph.replay, reps=replays), None
    except Exception as e:  # e.g. a host read of a device value inside fn
        torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def wall_ms(fn, reps: int, device: torch.device) -> float:
    """Median wall-clock ms of `reps` single calls, synchronising the device after each."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_benchmark(benchmark, fn, device: torch.device, *, rounds: int, warmup: int, event_reps: int = 20) -> dict:
    """Times fn with pytest-benchmark (wall clock per call, device synchronised after each call)
    and, on CUDA unless event_reps is 0, with events over back-to-back calls. Returns timing fields for extra_info;
    'time_ms' is the figure bandwidths are computed from."""
    if device.type == "cuda":
        def run():
            fn()
            torch.cuda.synchronize(device)
    else:
        run = fn
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: fn ran once, as a smoke test
        return {"time_ms": None}
    wall = benchmark.stats.stats.median * 1e3
    info = {"wall_median_ms": wall}
    if device.type == "cuda" and event_reps > 0:
        info["device_ms"] = cuda_event_ms(fn, reps=event_reps)
        info["time_ms"], info["time_source"] = info["device_ms"], "cuda events, back-to-back calls"
    else:
        info["time_ms"] = wall
        info["time_source"] = "wall clock median" + (", device synchronised after each call" if device.type == "cuda" else "")
    return info


def measure_copy_bandwidth(device: torch.device) -> dict:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (SPEC §6)."""
    if device.type == "cuda":
        n = 256 * 2**20  # 1 GiB of fp32 per buffer: far beyond any L2
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        ms = cuda_event_ms(lambda: dst.copy_(src), reps=10, batches=5)
        source = "cuda events"
    else:
        n = 16 * 2**20  # 64 MiB of fp32 per buffer: beyond the caches of a CI runner
        src = torch.randn(n)
        dst = torch.empty_like(src)
        dst.copy_(src)
        ms = wall_ms(lambda: dst.copy_(src), reps=10, device=device)
        source = "wall clock median"
    nbytes = 2 * n * src.element_size()
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"copy_GBps": nbytes / (ms * 1e-3) / 1e9, "copy_bytes": nbytes, "copy_ms": ms, "copy_source": source}


# ----------------------------------------------------------------------------- convolution parts
# The part-by-part convolution benchmarks (test_bench_depthwise_conv.py, test_bench_pointwise_conv.py)
# time each part of a stride-1 conv without bias on its own: `fwd` (y = conv(x)), `dgrad` (dL/dx
# from dL/dy), `wgrad` (dL/dw from x and dL/dy).
CONV_PARTS = ["fwd", "dgrad", "wgrad"]


def triton_skip_reason(device: torch.device) -> str | None:
    """Why the Triton cases of a part benchmark cannot run here, or None where they can."""
    if device.type != "cuda":
        return needs_cuda("the Triton kernels run compiled on a CUDA device only "
                          "(TRITON_INTERPRET=1 is for tests, not for timing)")
    from ndarts.backend import triton_unavailable_reason  # here: bench_common stays importable without ndarts

    reason = triton_unavailable_reason(device)
    return f"Triton kernels unavailable: {reason}" if reason else None


def torch_conv_part(part: str, x, w, g, *, padding: int = 0, dilation: int = 1, groups: int = 1):
    """A no-argument callable running PyTorch's kernel of one part of a stride-1 conv without bias,
    as nn.Conv2d runs it: F.conv2d, or aten's convolution_backward asked for the one gradient
    (autograd asks for both at once only where both are needed; the parts are timed apart)."""
    if part == "fwd":
        return lambda: torch.nn.functional.conv2d(x, w, None, 1, padding, dilation, groups)
    mask = [part == "dgrad", part == "wgrad", False]
    return lambda: torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [padding] * 2, [dilation] * 2,
                                                       False, [0, 0], groups, mask)


def conv_part_bytes(x, dy) -> int:
    """Bytes each part must move at least: fwd reads x and writes y, dgrad reads dL/dy and writes
    dL/dx, wgrad reads x and dL/dy; y has dL/dy's size and the weights are negligible, so each is
    x plus dL/dy."""
    return (x.numel() + dy.numel()) * x.element_size()


def record_conv_part(benchmark, fn, device: torch.device, copy_bandwidth: dict, *, x, dy, rounds: int,
                     warmup: int, extra_bytes: int = 0, **fields) -> None:
    """Times one part (run_benchmark; on CUDA also a CUDA-graph replay, `graph_ms`: device time
    only, as the graphed search step runs it) and records in extra_info `fields` (kind, impl, part,
    geometry, shape: what summarize.py's conv-parts table reads), the minimal bytes and the GB/s
    they give, against the copy bandwidth measured in the same run: an implementation that
    re-reads its inputs shows a lower share. extra_bytes: what the part must move beyond x and dy."""
    info = run_benchmark(benchmark, fn, device, rounds=rounds, warmup=warmup)
    if info["time_ms"] is None:
        return
    nbytes = conv_part_bytes(x, dy) + extra_bytes
    info.update(fields)
    info.update({"dtype": str(x.dtype).removeprefix("torch."), "device": str(device), "min_bytes": nbytes,
                 "GBps": nbytes / (info["time_ms"] * 1e-3) / 1e9, "copy_GBps": copy_bandwidth["copy_GBps"]})
    info["frac_copy_bw"] = info["GBps"] / info["copy_GBps"]
    if device.type == "cuda":
        info["graph_ms"], info["graph_error"] = cuda_graph_ms(fn)
    benchmark.extra_info.update(info)

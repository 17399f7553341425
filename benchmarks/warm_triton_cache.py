"""Compiles the Triton kernels of search-step variants into Triton's disk cache, one process per
variant, as many at once as the card's memory holds: what gpu_check.sh starts in the background
while the GPU tests run.

    python benchmarks/warm_triton_cache.py [--impl fused_graph fused_graph_bf16 ...] [--exclude fused_graph]
        [--limit-s 240] [--max-procs N]

Why: a lent GPU is a bare machine with an empty Triton cache, and a process compiles its kernels
one after another. By tests/gpu_compile.py's capture, one default graph step launches ~80
distinct Triton specialisations and the bf16 and Triton-depthwise variants ~140 more (2026-11-30):
at ~0.5 s each, minutes of compiling inside the search-step benchmark's time limit, which would
cut off the variants run last. Here each variant runs the benchmark's own step (same network,
shapes and dtypes: the same specialisations and cache keys) in its own process, so the
compiling runs on as many cores as there are processes, and the benchmark later finds every
kernel in the cache.

Each child runs its variant's warm-up steps and, for the graph variants, the capture and one
replay; its last line is "warm <impl>: ok in <s> s" or the error. At most --max-procs children run
at once: each builds the batch-64 step (5-7 GiB of GPU memory), so the default is what the card's
memory holds beside the GPU tests (max_procs_for: 6 on an 80 GB H100, 13 on a 141 GB H200). The
parent prints one line per variant and exits non-zero if any failed, ran past the limit or was
not started within it. Without CUDA only the variants that run on a CPU can be warmed (a check of
this script's plumbing: nothing is compiled there).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# the variants that launch Triton kernels on a GPU (test_bench_search_step.IMPLS less the torch-only ones),
# in the benchmark's run order: with fewer processes than variants at once, the ones it times first are
# warmed first
DEFAULT_IMPLS = ["fused_graph", "fused_graph_sepconv", "fused_graph_dwwgrad", "fused_graph_pwconv",
                 "fused_graph_dwconv", "fused_graph_convs", "fused_graph_no_groupsum", "fused_graph_per_edge",
                 "fused_graph_bf16", "fused_graph_cl", "fused_graph_streams", "fused"]
# variants whose Triton kernels are another's (a torch setting differs, not the network): not warmed twice
SAME_KERNELS = {"fused_graph_cudnnbench": "fused_graph", "fused_graph_keep_relu": "fused_graph",
                "fused_graph_deterministic": "fused_graph"}
# GPU memory per variant's process: its batch-64 step takes 5-7 GiB (the plain step peaked at 7.8 GiB
# on the H200, 2026-11-27), plus the CUDA context; and what is left to the GPU tests that run beside
# the warm-up (4 pytest workers). 12 processes at once took 60-80 GiB: an 80 GB H100's all.
PROCESS_GIB = 8.0
RESERVED_GIB = 30.0


def max_procs_for(total_gib: float, variants: int) -> int:
    """How many variants' processes fit at once on a card of `total_gib` GiB beside the GPU tests:
    6 on an 80 GB H100 (79.6 GiB), 13 on a 141 GB H200; at least 1, at most one per variant."""
    return max(1, min(variants, int((total_gib - RESERVED_GIB) // PROCESS_GIB)))


def default_max_procs(variants: int) -> int:
    """max_procs_for the card this process sees; without CUDA every variant at once (nothing runs
    on a card there: only the CPU-capable variants can be warmed, which compiles nothing)."""
    import torch

    if not torch.cuda.is_available():
        return max(1, variants)
    return max_procs_for(torch.cuda.get_device_properties(0).total_memory / 2**30, variants)


def warm_one(impl: str) -> None:
    """Runs `impl`'s benchmarked step as the benchmark does, in this process."""
    sys.path.insert(0, HERE)
    import torch

    import test_bench_search_step as bench
    from ndarts.searcher import SearchConfig

    if impl not in bench.IMPLS:
        raise SystemExit(f"warm_triton_cache: unknown variant {impl!r}; expected one of {', '.join(bench.IMPLS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graphed = impl.startswith("fused_graph")
    if graphed and device.type != "cuda":
        raise SystemExit(f"warm_triton_cache: {impl} needs a CUDA device (a CUDA-graph step)")
    parts = bench.build_parts(bench.CONFIG, impl, device)
    batches = bench.make_batches(bench.CONFIG, device)
    lr = SearchConfig().learning_rate
    if graphed:
        fn, reason = bench.graph_step_fn(parts, batches, lr)
        if fn is None:
            raise SystemExit(f"warm_triton_cache: {impl}: {reason}")
        steps = bench.GRAPH_WARMUP + 2  # eager warm-up, the capture, one replay
    else:
        def fn():
            return bench.search_step(parts, *batches, lr)
        steps = 1
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _start(impl: str):
    """A child process warming `impl`, its output in a temporary file (a pipe left unread while
    the parent waits on others could fill and stall the child)."""
    out = tempfile.TemporaryFile("w+")
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", impl],
                             stdout=out, stderr=subprocess.STDOUT, text=True)
    return child, out


def _report(impl: str, child, out) -> int:
    """Prints a finished child's line (its last, or why it failed); 1 if it failed, else 0."""
    out.seek(0)
    lines = [line for line in out.read().strip().splitlines() if line.strip()]
    out.close()
    if child.returncode:
        print(f"warm {impl}: FAILED (exit {child.returncode}): {lines[-1] if lines else 'no output'}", flush=True)
        return 1
    print(lines[-1] if lines else f"warm {impl}: ok", flush=True)
    return 0


def run_children(impls: list, max_procs: int, limit_s: float) -> int:
    """Warms `impls`, at most `max_procs` processes at once, in order, all within `limit_s`: the
    ones still running then are stopped, the ones not started are named. Returns how many failed."""
    t0 = time.perf_counter()
    pending, running, failed = list(impls), {}, 0
    try:
        while (pending or running) and time.perf_counter() - t0 < limit_s:
            while pending and len(running) < max_procs:
                impl = pending.pop(0)
                running[impl] = _start(impl)
            for impl, (child, out) in list(running.items()):
                if child.poll() is not None:
                    failed += _report(impl, child, out)
                    del running[impl]
            time.sleep(0.2)
    finally:
        for impl, (child, out) in running.items():
            child.kill()
            child.wait()
            out.close()
            failed += 1
            print(f"warm {impl}: still running after {limit_s:.0f} s, stopped", flush=True)
    for impl in pending:
        failed += 1
        print(f"warm {impl}: not started within {limit_s:.0f} s ({max_procs} processes at once)", flush=True)
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", nargs="+", default=DEFAULT_IMPLS, help="variants of benchmarks/test_bench_search_step.py")
    ap.add_argument("--exclude", nargs="+", default=[], help="variants not to warm (their kernels are cached already)")
    ap.add_argument("--limit-s", type=float, default=240.0, help="time limit of the whole warm-up")
    ap.add_argument("--max-procs", type=int, default=None,
                    help="processes at once; default: as many as the card's memory holds beside the GPU tests "
                         f"({PROCESS_GIB:.0f} GiB each, {RESERVED_GIB:.0f} GiB kept)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        t0 = time.perf_counter()
        warm_one(args.child)
        print(f"warm {args.child}: ok in {time.perf_counter() - t0:.1f} s", flush=True)
        return 0
    impls = [i for i in args.impl if i not in args.exclude]
    max_procs = args.max_procs or default_max_procs(len(impls))
    print(f"warm_triton_cache: {len(impls)} variants, {max_procs} processes at once", flush=True)
    t0 = time.perf_counter()
    failed = run_children(impls, max_procs, args.limit_s)
    print(f"warm_triton_cache: {len(impls) - failed} of {len(impls)} variants warmed in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compiles the Triton kernels of search-step variants into Triton's disk cache, one process per
variant, all at once: what gpu_check.sh starts in the background while the GPU tests run.

    python benchmarks/warm_triton_cache.py [--impl fused_graph fused_graph_bf16 ...] [--limit-s 240]

Why: a lent GPU is a bare machine with an empty Triton cache, and a process compiles its kernels
one after another. By tests/gpu_compile.py's capture, one default graph step launches ~80
distinct Triton specialisations and the bf16 and Triton-depthwise variants ~140 more (2026-11-30):
at ~0.5 s each, minutes of compiling inside the search-step benchmark's time limit, which would
cut off the variants run last. Here each variant runs the benchmark's own step (same network,
shapes and dtypes: the same specialisations and cache keys) in its own process, so the
compiling runs on as many cores as there are variants, and the benchmark later finds every
kernel in the cache.

Each child runs its variant's warm-up steps and, for the graph variants, the capture and one
replay; its last line is "warm <impl>: ok in <s> s" or the error. The parent prints one line per
variant and exits non-zero if any failed or ran past the limit. Without CUDA only the variants
that run on a CPU can be warmed (a check of this script's plumbing: nothing is compiled there).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# the variants that launch Triton kernels on a GPU (test_bench_search_step.IMPLS less the torch-only ones)
DEFAULT_IMPLS = ["fused_graph", "fused_graph_sepconv", "fused_graph_no_groupsum", "fused_graph_per_edge", "fused_graph_dwwgrad", "fused_graph_dwconv",
                 "fused_graph_pwconv", "fused_graph_convs",
                 "fused_graph_bf16", "fused_graph_cl", "fused_graph_streams", "fused"]
# variants whose Triton kernels are another's (a torch setting differs, not the network): not warmed twice
SAME_KERNELS = {"fused_graph_cudnnbench": "fused_graph", "fused_graph_keep_relu": "fused_graph",
                "fused_graph_deterministic": "fused_graph"}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", nargs="+", default=DEFAULT_IMPLS, help="variants of benchmarks/test_bench_search_step.py")
    ap.add_argument("--limit-s", type=float, default=240.0, help="time limit of each variant's process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        t0 = time.perf_counter()
        warm_one(args.child)
        print(f"warm {args.child}: ok in {time.perf_counter() - t0:.1f} s", flush=True)
        return 0
    t0 = time.perf_counter()
    children = {impl: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", impl],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for impl in args.impl}
    failed = 0
    for impl, child in children.items():
        left = max(1.0, args.limit_s - (time.perf_counter() - t0))
        try:
            out, _ = child.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            child.kill()
            out, _ = child.communicate()
            failed += 1
            print(f"warm {impl}: still running after {args.limit_s:.0f} s, stopped")
            continue
        lines = [line for line in out.strip().splitlines() if line.strip()]
        if child.returncode:
            failed += 1
            print(f"warm {impl}: FAILED (exit {child.returncode}): {lines[-1] if lines else 'no output'}")
        else:
            print(lines[-1] if lines else f"warm {impl}: ok")
    print(f"warm_triton_cache: {len(children) - failed} of {len(children)} variants warmed in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

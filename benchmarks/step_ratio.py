"""Search-step time of ndarts' mixed ops against the plain DARTS MixedOp, rounds interleaved.

    python benchmarks/step_ratio.py [--config cli-digits|nb201-digits|bench-cpu|bench-gpu] [--rounds 7] [--profile]

On a shared machine the load drifts over a minute; running the variants round-robin (plain,
reference, fused, plain, …) exposes them to the same drift, so the ratios of the medians are
steadier than those of three separate pytest-benchmark runs. Configurations:
- cli-digits: what `python -m ndarts.search` runs by default (the embedded digits preset: batch 64,
  C 8, 5 cells, 8×8×1 images, the NoisyDARTS space without `none`, Gaussian noise).
- nb201-digits: `python -m ndarts.search --space nas-bench-201` on the digits preset (batch 64, C 8,
  5 cells per stage, 8×8×1); reference_per_edge: without node sharing or batched node convs (NCHW, as reference_nchw).
- bench-cpu / bench-gpu: the configurations of test_bench_search_step.py.
--profile prints the top operators of one step of `reference` and of `fused` (torch.profiler).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bench_common import cpu_threads, sync  # noqa: E402
from test_bench_search_step import CPU_CONFIG, GPU_CONFIG, StepConfig, build_parts, make_batches, search_step  # noqa: E402

CONFIGS = {
    "cli-digits": StepConfig(batch=64, channels=8, layers=5, image=8, in_channels=1, space="noisydarts"),
    # `python -m ndarts.search --space nas-bench-201` on the digits preset (C 8; layers: 5 cells per stage)
    "nb201-digits": StepConfig(batch=64, channels=8, layers=5, image=8, in_channels=1, space="nas-bench-201"),
    "bench-cpu": CPU_CONFIG,
    "bench-gpu": GPU_CONFIG,
}
IMPLS = ("plain", "reference_per_edge", "reference_nchw", "reference", "fused")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cli-digits", choices=sorted(CONFIGS))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    cfg = CONFIGS[args.config]
    lr = 0.05
    steps = {}
    for impl in IMPLS:
        parts = build_parts(cfg, impl, device)
        batches = make_batches(cfg, device)
        steps[impl] = (lambda parts=parts, batches=batches: search_step(parts, *batches, lr))
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times = {impl: [] for impl in IMPLS}
    for _ in range(args.rounds):
        for impl, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[impl].append((time.perf_counter() - t0) * 1e3)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"config {cfg.name} on {device} ({torch.get_num_threads()} threads), {args.rounds} interleaved rounds, "
          f"loadavg {load}")
    plain = statistics.median(times["plain"])
    for impl in IMPLS:
        med = statistics.median(times[impl])
        print(f"  {impl:18} median {med:9.1f} ms  min {min(times[impl]):9.1f} ms  "
              f"time / plain {med / plain:5.3f}  (all: {', '.join(f'{t:.0f}' for t in times[impl])})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for impl in ("reference", "fused"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                steps[impl]()
            print(f"\n--- {impl}: top operators by self CPU time, one step")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()

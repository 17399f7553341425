"""The host time of an eager fused mixed-op sum, found on a CPU: everything but the kernels.

    python benchmarks/host_time.py                        # 8×16×8×8 fp32, fwd+bwd and fwd
    python benchmarks/host_time.py --shape 64 16 32 32     # the target's shape (see below)

Why: called eagerly (back to back, as the mixed-sum benchmark and an eager search step call it) the
fused op is host-bound on a GPU: on the H200 of 2026-11-27 a fwd+bwd took 0.708 ms per call while
its kernels took 0.043 ms (RESULTS.md). That host time is ndarts's Python (checks, launch
arguments, allocations), PyTorch's autograd and Triton's launcher. The first two run the same on a
CPU: this script runs the Triton backend's whole call, the launchers sizing their blocks and grids as
on a GPU (as kernel_resources.py does), with every Triton launch counted and not run (its outputs
are garbage), and times it. Triton's own launcher, the CUDA allocator and the kernels are not in
the number: it is what ndarts and autograd cost the host, on this machine's cores.

The default shape is small because CPU tensors of the target's 4 MiB are allocated with mmap and
freed with munmap at every call (nine per fwd+bwd: ~180 µs here), a cost the CUDA caching allocator
does not have; the host path is the same at any shape but for that.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined: CPU tensors

import torch  # noqa: E402

from ndarts.operations import NOISYDARTS_PRIMITIVES  # noqa: E402

# SPEC §6: six ops and the noisy skip, in NOISYDARTS_PRIMITIVES order
NUM_OPERANDS, SKIP = len(NOISYDARTS_PRIMITIVES), NOISYDARTS_PRIMITIVES.index("skip_connect")
SHAPE = (8, 16, 8, 8)  # small: CPU allocations stay cheap (module docstring)


@contextlib.contextmanager
def launches_counted():
    """Inside: the Triton backend runs on CPU tensors with its launches sized as on a GPU, and
    every launch only adds 1 to the yielded list's one entry."""
    import ndarts_kernels
    from triton.runtime.interpreter import InterpretedFunction

    from ndarts import backend

    count = [0]

    def launcher(self, grid):
        def launch(*args, **kwargs):
            count[0] += 1
        return launch

    saved = ndarts_kernels.INTERPRETED, backend.triton_unavailable_reason, InterpretedFunction.__getitem__
    ndarts_kernels.INTERPRETED = False  # block sizes and grids as for a GPU
    backend.triton_unavailable_reason = lambda device: None  # CPU tensors, nothing is run
    InterpretedFunction.__getitem__ = launcher
    try:
        yield count
    finally:
        ndarts_kernels.INTERPRETED, backend.triton_unavailable_reason, InterpretedFunction.__getitem__ = saved


def mixed_sum_call(shape, mode: str, dtype=torch.float32):
    """A call of the fused sum as the mixed-sum benchmark makes it (benchmarks/test_bench_noisy_mixed_sum.py):
    7 operands, the paper's noise on the skip, fwd+bwd through autograd.grad or a no-grad forward."""
    from ndarts import NoiseConfig, noisy_mixed_sum

    grad = mode == "fwdbwd"
    operands = [torch.randn(shape, dtype=dtype).requires_grad_(grad) for _ in range(NUM_OPERANDS)]
    weights = torch.softmax(torch.randn(NUM_OPERANDS), 0).requires_grad_(grad)
    upstream, inputs, noise = torch.randn(shape, dtype=dtype), [*operands, weights], NoiseConfig()

    def call():
        if not grad:
            with torch.no_grad():
                return noisy_mixed_sum(operands, weights, SKIP, noise, backend="triton")
        y = noisy_mixed_sum(operands, weights, SKIP, noise, backend="triton")
        return torch.autograd.grad(y, inputs, upstream)
    return call


def host_time(call, calls: int, repeats: int = 7) -> float:
    """Seconds per call: the best of `repeats` timings of `calls` back-to-back calls, after a
    warm-up, with Python's garbage collector off while timing (as timeit does)."""
    for _ in range(max(10, calls // 10)):
        call()
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                call()
            best = min(best, (time.perf_counter() - t0) / calls)
    finally:
        if enabled:
            gc.enable()
    return best


def measure(shape=SHAPE, calls: int = 1000, modes=("fwdbwd", "fwd")) -> list[dict]:
    """Per mode: host µs per call and Triton launches per call."""
    rows = []
    with launches_counted() as count:
        for mode in modes:
            call = mixed_sum_call(shape, mode)
            call()
            count[0] = 0
            call()
            launches = count[0]
            rows.append({"mode": mode, "shape": list(shape), "host_us": host_time(call, calls) * 1e6,
                         "triton_launches": launches})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=list(SHAPE))
    parser.add_argument("--calls", type=int, default=1000, help="calls per timing (best of 7 timings)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'mode':8} {'shape':16} {'host µs per call':>17} {'Triton launches':>16}")
    for r in measure(tuple(args.shape), args.calls):
        print(f"{r['mode']:8} {'×'.join(map(str, r['shape'])):16} {r['host_us']:17.1f} {r['triton_launches']:16d}")


if __name__ == "__main__":
    sys.exit(main())

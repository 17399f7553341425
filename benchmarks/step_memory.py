"""Peak memory of one search step, estimated on a CPU: what a CUDA-graph step would hold at once.

    python benchmarks/step_memory.py                               # plain, fused_graph_per_edge, fused_graph
    python benchmarks/step_memory.py --impl fused_graph fused_graph_bf16 --json mem.json

Why: issue 4's target is a graph step with peak memory ≤ 60 % of the original DARTS supernet's
7.57 GiB (4.54 GiB), and only a GPU measures it (torch.cuda.max_memory_allocated). The step's
allocations do not depend on the device, so the same step run on the CPU (count_kernels.graph_step:
the Triton launchers allocate their outputs, their kernels are not run) shows the live bytes
over time: every op's output storages, each counted until it is freed, plus the parameters,
gradients, optimizer state and batches alive before the step (LiveStorages). Activations grow linearly with batch × pixels while parameters, optimizer state and the
kernels' small partial buffers do not, so the step runs at two sizes and the peak is extrapolated
linearly to SPEC §6's batch 64 at 32×32.

Not counted: cuDNN workspaces and the caching allocator's rounding (a GPU's figure is somewhat
higher); calibration against the H200's measurements is in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import count_kernels  # noqa: E402  (sets TRITON_INTERPRET before the kernels are defined)
import torch  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

GIB = 2**30
SIZES = ((2, 16), (4, 16))  # (batch, image) of the two runs
TARGET = (64, 32)  # SPEC §6: batch 64, 32×32


class LiveStorages(TorchDispatchMode):
    """Tracks the bytes of the tensor storages alive: every op's outputs are recorded (a view's
    storage once), a storage counts until it is freed (a weak reference to it expires). The
    largest total is taken whenever the running total passes it, after dropping what has expired
    since: at op granularity, which is where memory grows."""

    def __init__(self, preexisting=()):
        super().__init__()
        self.live: dict[int, tuple] = {}
        self.total = self.peak = 0
        for t in preexisting:
            self._add(t)
        self.peak = self._sweep()

    def _add(self, t) -> None:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            ref = StorageWeakRef(storage)
            if ref.cdata not in self.live:
                self.live[ref.cdata] = (ref, storage.nbytes())
                self.total += storage.nbytes()

    def _sweep(self) -> int:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.total -= self.live.pop(key)[1]
        return self.total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            self._add(t)
        if self.total > self.peak:
            self.peak = max(self.peak, self._sweep())
        return out


def peak_bytes(impl: str, batch: int, image: int) -> int:
    """The most bytes alive at once during one warm step: the parameters, their gradients, the
    optimizers' state and the batches alive before it, and what the step allocates."""
    step, parts, batches = count_kernels.graph_step(impl, batch, image, with_parts=True)
    with count_kernels.graph_step_context():
        step()  # optimizer state, lazy buffers: the graph captures a warm step
        before = [*parts.model.parameters(), *parts.model.buffers(), *batches,
                  *(p.grad for p in parts.model.parameters() if p.grad is not None)]
        for opt in (parts.w_opt, parts.architect.arch_optimizer):
            before += [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        with LiveStorages(before) as tracker:
            step()
    return tracker.peak


def estimate(impl: str) -> dict:
    """Peaks at SIZES and the linear extrapolation to TARGET (in batch × pixels)."""
    work = [b * i * i for b, i in SIZES]
    peaks = [peak_bytes(impl, b, i) for b, i in SIZES]
    slope = (peaks[1] - peaks[0]) / (work[1] - work[0])
    target = peaks[0] + slope * (TARGET[0] * TARGET[1] ** 2 - work[0])
    return {"impl": impl, "sizes": [list(s) for s in SIZES], "peak_bytes": peaks, "bytes_per_pixel": slope,
            "fixed_bytes": peaks[0] - slope * work[0], "estimate_GiB": target / GIB}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", default=["plain", "fused_graph_per_edge", "fused_graph"],
                        help="variants of benchmarks/test_bench_search_step.py")
    parser.add_argument("--json", help="write the estimates here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [estimate(impl) for impl in args.impl]
    print(f"{'variant':28} {'peak MiB at ' + ' / '.join(f'b{b} {i}x{i}' for b, i in SIZES):>34} "
          f"{'GiB at b64 32x32':>17}")
    for r in results:
        print(f"{r['impl']:28} {' / '.join(f'{p / 2**20:.1f}' for p in r['peak_bytes']):>34} {r['estimate_GiB']:17.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

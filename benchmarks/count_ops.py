"""Dispatched aten ops per forward+backward of the DARTS supernet (C 16, 8 cells, DARTS space,
Gaussian noise, batch 2, 32×32) for the network's levers. On a GPU each top-level op is roughly
one kernel launch, and the eager search is launch-bound (SPEC §6: ≈ 25 µs each); inside a CUDA
graph the step is latency-bound on those kernels (≈ 5 µs each on the H200).

    python benchmarks/count_ops.py
"""
import torch

from ndarts import DARTS_PRIMITIVES, NoiseConfig
from ndarts.search_model import SearchNetwork

VARIANTS = {  # name: SearchNetwork options
    "per edge (DARTS)": dict(share_node_ops=False),
    "node sharing": dict(share_node_ops=True, batch_edge_convs=False),
    "node sharing + batched edge convs (default)": dict(share_node_ops=True, batch_edge_convs=True),
}


def count(options: dict) -> dict:
    torch.manual_seed(0)
    net = SearchNetwork(C=16, layers=8, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(), **options)
    x = torch.randn(2, 3, 32, 32)
    net(x).sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        net(x).sum().backward()
    ev = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ev if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {"top-level ops": len(top),
            "convolutions (fwd + bwd)": sum(1 for e in top if "convolution" in e.name),
            "relu (fwd + bwd)": sum(1 for e in top if e.name in ("aten::relu", "aten::threshold_backward"))}


def main():
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; aten ops per forward+backward, SPEC §6's supernet at batch 2")
    for name, options in VARIANTS.items():
        print(f"  {name:45} " + ", ".join(f"{k} {v}" for k, v in count(options).items()))


if __name__ == "__main__":
    main()

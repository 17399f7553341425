"""Dispatched aten ops per forward+backward of the DARTS supernet (C 16, 8 cells, DARTS space,
Gaussian noise, batch 2, 32×32) with and without the shared per-node ReLU. On a GPU each is
roughly one kernel launch, and the eager search is launch-bound (SPEC §6: ≈ 25 µs each).

    python benchmarks/count_ops.py
"""
import torch
from ndarts import DARTS_PRIMITIVES, NoiseConfig
from ndarts.search_model import SearchNetwork
torch.set_num_threads(1)
def count(share, fused=False):
    torch.manual_seed(0)
    net = SearchNetwork(C=16, layers=8, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(), fused=fused, share_node_ops=share)
    x = torch.randn(2, 3, 32, 32)
    net(x).sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        net(x).sum().backward()
    ev = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ev if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    relu = sum(1 for e in ev if e.name in ("aten::relu", "aten::threshold_backward"))
    return len(top), relu
for share in (False, True):
    print("share_node_ops", share, "top-level aten ops per fwd+bwd, relu+relu_backward:", count(share))

"""SPEC §6's search step at its full size (batch 64, C 16, 8 cells, 32×32), run on PyTorch's meta
device (shapes, no data) with the Triton launchers sized as for an H100/H200 (132 multiprocessors)
and every launch recorded, not run; and at 4× its batch and pixels.

Why: the CPU tests run the kernels on CPU tensors, so a launcher handed a tensor on another device
than its inputs (a buffer made with ``device="cpu"``, or without a device) passes there and fails on
a GPU, as does code that runs only off the CPU (``cpu_conv_forms`` and ``_use_channels_last`` are
false on meta as on CUDA) or only at the full size (grids and blocks of the target's shapes). A GPU
session is short: this runs the whole step's host side in seconds and checks that every Triton
launch gets only tensors on the input's device, on a grid CUDA accepts.
"""
import collections
import os

import pytest
import torch


META = torch.device("meta")

# Triton launches recorded through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="records launches in Triton's interpreter: run with TRITON_INTERPRET=1")


@pytest.fixture
def meta_launches(monkeypatch):
    """Triton launches recorded as (kernel name, devices of its tensor arguments, grid), not run
    (benchmarks/count_kernels.py's TritonLaunches), sized as on a 132-SM GPU (program_races.gpu_sized,
    under which the backend resolves to Triton on any device)."""
    count_kernels = pytest.importorskip("count_kernels")
    from program_races import gpu_sized

    launches = []

    def record(executor, args, kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        size = tuple(executor.grid(kwargs) if callable(executor.grid) else executor.grid)
        launches.append((getattr(executor.fn, "__name__", "kernel"), {t.device for t in tensors}, size))

    autocast_enabled = torch.is_autocast_enabled  # which raises for "meta" (no autocast there)
    monkeypatch.setattr(torch, "is_autocast_enabled",
                        lambda *a: False if a and str(a[0]) == "meta" else autocast_enabled(*a))
    with count_kernels.TritonLaunches() as triton, gpu_sized(multiprocessors=132):
        triton.on_launch = record
        yield launches


LEVERS = {
    "default": {},
    "separable": dict(fused_separable_conv=True),
    "depthwise and pointwise": dict(fused_depthwise_conv=True, fused_pointwise_conv=True),
    "depthwise weight gradient": dict(fused_depthwise_conv="weight_grad"),
    "per-edge convs": dict(batch_edge_convs=False),
}


def _elsewhere(launches) -> collections.Counter:
    return collections.Counter(name for name, devices, _ in launches if devices != {META})


def _over_grid_limits(launches) -> set:
    """(kernel, grid) of the launches whose grid CUDA refuses: at most 2^31 − 1 programs along x,
    65 535 along y and z (the interpreter has no limit)."""
    return {(name, size) for name, _, size in launches
            if not (1 <= size[0] < 2**31 and all(1 <= n <= 65535 for n in size[1:]))}


@pytest.mark.parametrize("lever, order, batch, image", [*((lever, "first", 64, 32) for lever in sorted(LEVERS)),
                                                        ("default", "second", 64, 32),
                                                        ("default", "first", 256, 64), ("separable", "first", 256, 64)])
def test_the_full_size_search_step_launches_only_tensors_on_the_input_device(meta_launches, lever, order, batch,
                                                                            image):
    """SPEC §6's step, and one of 4× its batch on 4× its pixels (an ImageNet-like proxy): the grids
    within CUDA's limits too."""
    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.architect import Architect
    from ndarts.losses import CrossEntropy
    from ndarts.search_model import SearchNetwork
    from ndarts.search_step import search_step
    from ndarts.searcher import SearchConfig

    cfg = SearchConfig()
    with META:
        model = SearchNetwork(C=16, num_classes=10, layers=8, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(),
                              fused=True, backend="triton", **LEVERS[lever])
        w_opt = torch.optim.SGD(model.weight_parameters(), cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=cfg.arch_learning_rate, betas=(0.5, 0.999),
                                 weight_decay=cfg.arch_weight_decay)
        architect = Architect(model, a_opt, w_opt, CrossEntropy(), order, cfg.momentum, cfg.weight_decay)
        x, xv = torch.randn(batch, 3, image, image), torch.randn(batch, 3, image, image)
        y, yv = torch.randint(10, (batch,)), torch.randint(10, (batch,))
    assert model.arch_parameters()[0].device == META
    search_step(architect, model, CrossEntropy(), w_opt, model.weight_parameters(), cfg.grad_clip, x, y, xv, yv,
                cfg.learning_rate)
    assert len(meta_launches) > 500 and _elsewhere(meta_launches) == {}
    assert _over_grid_limits(meta_launches) == set()


def test_a_launch_with_a_tensor_on_another_device_is_seen(meta_launches):
    """The check must be able to fail: a mixed sum whose weights were left on the CPU."""
    import ndarts_kernels as K

    ops = [torch.empty(64, 16, 32, 32, device=META) for _ in range(3)]
    seed = torch.zeros(1, dtype=torch.int64, device=META)
    K.noisy_mixed_sum_forward(ops, torch.rand(3), seed, 1, 1, False, 0.2, 0.0)
    assert "_noisy_mixed_sum_forward_kernel" in _elsewhere(meta_launches)
    assert _over_grid_limits([("k", set(), (4, 65536)), ("k", set(), (2**31, 1, 1)), ("k", set(), (9, 9, 9))]) == \
        {("k", (4, 65536)), ("k", (2**31, 1, 1))}

"""The search step that ``--cuda-graph`` captures reads nothing back to the host (CPU).

Why: while a CUDA graph is being captured, a host read of a device value (``.item()``, ``bool(t)``,
``.tolist()``, ``.cpu()``, ``nonzero``, a boolean-mask index) or a copy of host data to the
device (``torch.tensor(...)`` of Python numbers, a draw from a CPU generator moved over) fails the
capture, or bakes one step's value into every replay. The graph step has run on a GPU only on
2026-11-27 and most of its code is newer, and a GPU session is short: a capture that fails there
costs its one run. Here each ``--cuda-graph`` configuration of the search builds its network as
``ndarts.searcher.Searcher`` does, with its kernels on the Triton backend, then runs the step
``make_graph_step`` captures, as if capturing: the convolutions in their CUDA formulations
(``standing_in_for_cuda``), ``torch.cuda.is_current_stream_capturing()`` true (the w update then
reads its learning rate from the device, as in a capture), and every Triton launch counted, not
run (benchmarks/count_kernels.py: the kernels' values do not matter, no branch may read them).
A ``TorchFunctionMode`` records every call that reads a tensor's value on the host or makes a
tensor from host data. The epoch's evaluation graph (``GraphedEvaluation``) is checked the same way.
"""
import collections
import os
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode


from capture_stand_ins import Capturing, stand_in_for_capture  # noqa: E402

# Triton launches recorded through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="records launches in Triton's interpreter: run with TRITON_INTERPRET=1")

# Tensor methods and functions that read values on the host (a device sync) or whose result's
# shape depends on values (nonzero, masked_select, unique: a sync on CUDA)
HOST_READS = frozenset({
    "item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__",
    "__repr__", "__format__", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive",
    "equal", "allclose", "is_nonzero",
})
# tensors made from host data: on the device each is a host-to-device copy
FROM_HOST = (torch.tensor, torch.as_tensor, torch.from_numpy)
# PyTorch's capturable Adam adds a CPU scalar tensor of its own to the step counts (meant to be captured)
ALLOWED = {("tensor", os.path.join("torch", "optim", "adam.py"))}


class HostReads(TorchFunctionMode):
    """Counts each host read while active, by "name at file:line <- caller …" (innermost frame first)."""

    def __init__(self):
        super().__init__()
        self.found = collections.Counter()
        self._capturing = Capturing.on()

    def __enter__(self):  # the step is "being captured" while the mode is on
        self._capturing.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        self._capturing.__exit__(*exc)
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        if name == "__getitem__" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                         for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            name = "boolean-mask index"
        gen = kwargs.get("generator")
        if isinstance(gen, torch.Generator) and gen.device.type == "cpu":
            name = f"{name} (a CPU generator)"
        if name in HOST_READS or name == "boolean-mask index" or "CPU generator" in name or func in FROM_HOST:
            frames = traceback.extract_stack()[:-1]
            caller = frames[-1].filename
            if not any(name == n and caller.endswith(f) for n, f in ALLOWED):
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-6:]))
                self.found[f"{name} at {where}"] += 1
        return func(*args, **kwargs)


@pytest.fixture
def as_if_capturing(monkeypatch):
    """Triton launches counted, not run; the CUDA formulations of the convolutions; a capture in
    progress while HostReads is on (the capture-only paths: the w update's device learning rate);
    Adam's capturable step allowed on CPU tensors (tests/capture_stand_ins.py)."""
    count_kernels = pytest.importorskip("count_kernels")
    from ndarts.backend import standing_in_for_cuda

    stand_in_for_capture(monkeypatch)
    with count_kernels.TritonLaunches() as launches, standing_in_for_cuda():
        yield launches


def _searcher(tmp_path, **kw):
    from ndarts.searcher import SearchConfig, Searcher

    settings = dict(dataset="digits", layers=3, init_channels=4, batch_size=4, epochs=1, fused=True,
                    backend="triton", device="cpu", channels_last=False, out=str(tmp_path / "run"))
    settings.update(kw)
    return Searcher(SearchConfig(**settings))


def _host_reads(fn, *args) -> list:
    with HostReads() as mode:
        fn(*args)
    return sorted(mode.found)


# the --cuda-graph configurations (ndarts.search's flags as SearchConfig fields)
CONFIGS = {
    "default": {},
    "triton-convs separable": dict(triton_convs="separable"),
    "triton-convs all": dict(triton_convs="all"),
    "triton-convs depthwise-wgrad": dict(triton_convs="depthwise-wgrad"),
    "second order": dict(order="second"),
    "noise decay": dict(noise_decay=True),
    "amp bf16": dict(amp="bf16"),
    "per-edge convs": dict(batch_edge_convs=False),
    "nas-bench-201": dict(space="nas-bench-201", cells_per_stage=1),
    "deterministic": dict(deterministic=True),  # unique_gather, the masked cross entropy
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_captured_search_step_reads_nothing_on_the_host(tmp_path, as_if_capturing, monkeypatch, name):
    from ndarts.conv_tuning import synthetic_batch
    from ndarts.determinism import DeterminismState
    from ndarts.device_lr_sgd import DeviceLrSGD
    from ndarts.graph_step import make_graph_step

    mode = DeterminismState.current()  # --deterministic sets it for the process
    try:
        s = _searcher(tmp_path, **CONFIGS[name])
        graph = make_graph_step(s.model, s.architect, s.w_opt, s.criterion, s.cfg.grad_clip)
        batch = synthetic_batch(s.cfg.batch_size, s.spec.in_channels, s.spec.image_size, s.spec.num_classes, s.device)
        lr = s.scheduler.get_last_lr()[0]
        graph.step_fn(*batch, lr)  # the eager warm-up: optimizer state, lazy buffers
        as_if_capturing.counts.clear()
        device_lr_steps = []
        step = DeviceLrSGD.step
        monkeypatch.setattr(DeviceLrSGD, "step", lambda self: (device_lr_steps.append(1), step(self)))
        assert _host_reads(graph.step_fn, *batch, lr) == []
    finally:
        mode.restore()
    assert device_lr_steps == [1]  # the w update as captured: its learning rate read on the device
    assert sum(as_if_capturing.counts.values()) > 0  # the step ran on the Triton kernels


def test_the_captured_evaluation_reads_nothing_on_the_host(tmp_path, as_if_capturing):
    from ndarts.conv_tuning import synthetic_batch
    from ndarts.graph_step import evaluation_sums

    s = _searcher(tmp_path)
    x, y, _, _ = synthetic_batch(8, s.spec.in_channels, s.spec.image_size, s.spec.num_classes, s.device)
    s.model.eval()
    with torch.no_grad():
        evaluation_sums(s.model, x, y)
        assert _host_reads(evaluation_sums, s.model, x, y) == []


def test_the_check_sees_each_kind_of_host_read():
    """The mode must be able to fail: each way a step could read a value on the host is recorded."""
    x = torch.randn(5, requires_grad=True)
    reads = [
        lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: float(x.detach().sum()), lambda: x.tolist(),
        lambda: x.detach().cpu(), lambda: x.nonzero(), lambda: x[x > 0], lambda: torch.tensor([1.0, 2.0]),
        lambda: torch.randn(3, generator=torch.Generator().manual_seed(0)), lambda: x.unique(),
        lambda: "%s" % x.detach(),
    ]
    for read in reads:
        found = _host_reads(read)
        assert len(found) >= 1 and "test_capture_safety.py" in found[0], found
    assert _host_reads(lambda: (x * 2).sum().backward()) == []

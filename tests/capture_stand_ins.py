"""CPU stand-ins for what a CUDA-graph capture asks of torch.cuda, for the tests that run the
captured search step on a CPU (test_capture_safety.py, test_graph_step.py,
test_graph_search_emulated.py)."""
from __future__ import annotations

import contextlib

import torch


class Capturing:
    """Whether a capture (or an emulated replay) is in progress: what ``torch.cuda.
    is_current_stream_capturing()`` answers ndarts.device_lr_sgd while a stand-in is installed."""

    active = False

    @classmethod
    @contextlib.contextmanager
    def on(cls):
        before, cls.active = cls.active, True
        try:
            yield
        finally:
            cls.active = before


def stand_in_for_capture(monkeypatch) -> None:
    """ndarts.device_lr_sgd sees a CUDA device that is capturing while ``Capturing.active`` (its w
    update then reads the learning rate on the device, as in a graph), and Adam's capturable step is
    allowed on CPU tensors (it refuses them only because CPU tensors are never captured)."""
    import torch.optim.adam as adam

    from ndarts import device_lr_sgd

    devices = adam._get_capturable_supported_devices
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda *a, **k: [*devices(*a, **k), "cpu"])

    class _Cuda:
        is_available = staticmethod(lambda: True)
        is_current_stream_capturing = staticmethod(lambda: Capturing.active)

    class _Torch:
        cuda = _Cuda

        def __getattr__(self, name):
            return getattr(torch, name)

    monkeypatch.setattr(device_lr_sgd, "torch", _Torch())


class _Stream:
    def wait_stream(self, other):
        pass


def no_op_streams(monkeypatch) -> None:
    """torch.cuda's streams as no-ops on a CPU (ndarts.graph_step's eager warm-up on a side stream)."""
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())

"""When the CUDA-graph search step captures, replays and runs eagerly (CPU, with torch.cuda's
stream and graph calls replaced by stand-ins that run the step; the real capture is tested in
tests/test_gpu.py on a GPU)."""
import contextlib

import pytest
import torch

from ndarts.graph_step import GraphedSearchStep


class _FakeStream:
    def wait_stream(self, other):
        pass


class _FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **k: contextlib.nullcontext())


def test_capture_replay_and_recapture_keys(fake_cuda):
    calls = []

    def step_fn(x, y, xv, yv, lr):
        calls.append(lr)
        return (x.sum(),)

    step = GraphedSearchStep(step_fn, warmup=2)
    full = [torch.randn(4, 3), torch.zeros(4), torch.randn(4, 3), torch.zeros(4)]
    partial = [torch.randn(2, 3), torch.zeros(2), torch.randn(2, 3), torch.zeros(2)]
    plan = [(full, 0.1, 1.0), (full, 0.1, 1.0),  # eager warm-up on a side stream
            (full, 0.1, 1.0),  # capture (+ replay)
            (full, 0.1, 1.0), (full, 0.1, 1.0),  # replays
            (partial, 0.1, 1.0),  # another shape: eager
            (full, 0.1, 0.5),  # same lr, new noise scale (--noise-decay): re-capture
            (full, 0.05, 0.5),  # new lr: re-capture
            (full, 0.05, 0.5)]  # replay
    for batch, lr, scale in plan:
        step(*batch, lr, key=scale)
    assert step.eager_steps == 3 and step.captures == 3
    assert step.captured_key == (0.05, 0.5)
    # the step function ran for the 3 eager steps and once per capture, never for a replay
    assert len(calls) == 6
    # the static inputs hold the last batch copied in before its replay
    assert torch.equal(step.static_inputs[0], full[0])

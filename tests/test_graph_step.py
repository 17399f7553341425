"""When the CUDA-graph search step captures, replays and runs eagerly (CPU, with torch.cuda's
stream and graph calls replaced by stand-ins that run the step; the real capture is tested in
tests/test_gpu.py on a GPU)."""
import contextlib

import pytest
import torch

from capture_stand_ins import no_op_streams
from ndarts.graph_step import GraphedSearchStep


class _FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    no_op_streams(monkeypatch)
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
            (full, 0.1, 0.5),  # same lr, a new key (a constant of the caller's graph): re-capture
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


def test_graphed_evaluation_captures_once_and_runs_partial_batches_eagerly(fake_cuda, fresh_seed):
    """A warm-up batch eagerly, a capture, replays (no forward run), the partial batch eagerly; each
    call that runs returns the batch's summed cross-entropy and correct count."""
    from ndarts.graph_step import GraphedEvaluation

    model = torch.nn.Linear(3, 5).eval()
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    evaluate = GraphedEvaluation(model, warmup=1)
    batches = [(torch.randn(8, 3), torch.randint(0, 5, (8,))) for _ in range(4)] + \
        [(torch.randn(3, 3), torch.randint(0, 5, (3,)))]

    def want(x, y):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum()

    with torch.no_grad():
        for i, (x, y) in enumerate(batches):
            got = evaluate(x, y)
            if i != 2 and i != 3:  # warm-up, capture (its replay is the fake's no-op) and the partial batch
                n = len(forwards)
                expected = want(x, y)
                del forwards[n:]
                torch.testing.assert_close(got[0], expected[0])
                assert int(got[1]) == int(expected[1])
    assert forwards == [8, 8, 3]  # the replays ran no forward
    assert evaluate.captures == 1 and evaluate.eager_steps == 2
    assert torch.equal(evaluate.static_inputs[0], batches[3][0])  # the last full batch, copied in

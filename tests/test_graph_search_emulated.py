"""The search loop with ``--cuda-graph`` end to end on a CPU, the CUDA graph emulated: it must
search as the eager loop does.

The loop's graph path runs only on a GPU otherwise: the eager warm-up steps on a side stream, the
capture, the replays, a partial batch run eagerly, the epoch's evaluation graph, the learning rate
and --noise-decay's scale read on the device, the checkpoints written between replays. The emulation keeps
ndarts.graph_step's CapturedCall (when to capture, replay, re-capture, run eagerly; the static
inputs the batches are copied into) and replaces only what a GPU does:
- a capture runs the step once on the static inputs (a real capture records it and the replay
  right after runs it), with ``is_current_stream_capturing()`` true, so that the w update and a
  second-order step take their captured paths (ndarts.device_lr_sgd);
- a replay runs the step again on the static inputs with the lr it was captured with, and copies
  the results into the static outputs, which a real replay overwrites in place: a caller that kept
  an output of the previous replay sees it change, as on a GPU;
- streams are no-ops.
The fused op's torch backend draws its noise with torch.randn, so the emulated and the eager search
draw the same ε in the same order. With the optimizers on their eager paths the two searches are
equal bit for bit; with the captured paths (the device learning rate's update) they differ by that
update's rounding only.
"""
import contextlib
import json

import pytest
import torch

from capture_stand_ins import Capturing, no_op_streams, stand_in_for_capture


class _EmulatedGraph:
    def __init__(self, run, outputs):
        self.run, self.outputs = run, outputs
        self.replays = 0

    def replay(self):
        self.replays += 1
        if self.replays == 1:
            return  # the capture ran this step
        with Capturing.on():
            fresh = self.run()
        for static, new in zip(self.outputs, fresh):
            static.copy_(new)


@pytest.fixture
def emulated_cuda_graph(monkeypatch):
    """CapturedCall's capture and replays as in the module docstring; the Searcher's CUDA-device
    check passes on a CPU."""
    from ndarts.graph_step import CapturedCall
    from ndarts.searcher import Searcher

    stand_in_for_capture(monkeypatch)
    no_op_streams(monkeypatch)
    monkeypatch.setattr(Searcher, "_check_graph_step_allowed", lambda self: None)

    def capture(self, batch, lr, key):
        self.graph = self.static_outputs = None
        self.static_inputs = [t.detach().clone() for t in batch]
        run = lambda: self.step_fn(*self.static_inputs, lr)  # noqa: E731 (what the graph holds: lr too)
        with Capturing.on():
            outputs = run()
        self.graph, self.static_outputs, self.captured_key = _EmulatedGraph(run, outputs), outputs, key
        self.captures += 1

    monkeypatch.setattr(CapturedCall, "_capture", capture)


def _search(tmp_path, name, **kw):
    from ndarts.searcher import SearchConfig, Searcher

    # digits: 719 images for the w steps and 719 for α; batches of 240: 2 full ones and a partial one
    # an epoch from each half (the steps with a partial batch run eagerly); the evaluation's 256: 2
    # full ones and a partial one
    cfg = SearchConfig(dataset="digits", layers=3, init_channels=4, batch_size=240, eval_batch_size=256, epochs=3,
                       fused=True, backend="torch", device="cpu", report_freq=0, out=str(tmp_path / name), **kw)
    searcher = Searcher(cfg)
    before = [a.detach().clone() for a in searcher.model.arch_parameters()]
    genotype = searcher.run_search()
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return searcher, before, genotype, records


@pytest.fixture
def capturable_adam_everywhere(monkeypatch):
    """The α optimizer capturable in the eager search too: Adam's capturable step rounds differently
    from its eager one, which a bitwise comparison of the loops would otherwise see."""
    from ndarts.searcher import Searcher

    optimizers = Searcher._optimizers

    def capturable(self, model):
        w_opt, a_opt, architect = optimizers(self, model)
        for group in a_opt.param_groups:
            group["capturable"] = True
        return w_opt, a_opt, architect

    monkeypatch.setattr(Searcher, "_optimizers", capturable)


@pytest.fixture
def optimizers_uncaptured(monkeypatch):
    """No capture in progress for the optimizers: the w update and Adam take their eager paths
    (the graph is emulated all the same)."""
    monkeypatch.setattr(Capturing, "on", classmethod(lambda cls: contextlib.nullcontext()))


def _check_graph_use(searcher):
    """The step: the first epoch's 3 steps eagerly (the warm-up; its partial batch among them), one
    capture for the whole search (lr and the noise scale are read on the device), a replay for every
    later step of full batches (the capture's own step is its first replay), the 2 later epochs'
    partial-batch steps eagerly. The evaluation: one eager warm-up batch, one capture, its replays,
    each epoch's partial batch eagerly."""
    step, evaluation = searcher.graph_step, searcher.graph_eval
    assert step.captures == 1 and step.eager_steps == 3 + 2 and step.graph.replays == 3 * 3 - 5
    assert evaluation.captures == 1 and evaluation.eager_steps == 1 + 3 and evaluation.graph.replays == 3 * 2 - 1


@pytest.mark.slow
@pytest.mark.parametrize("settings", [dict(noise_decay=True), dict(order="second")], ids=["noise-decay", "second-order"])
def test_the_graphed_search_loop_is_the_eager_one_bitwise(tmp_path, emulated_cuda_graph, capturable_adam_everywhere,
                                                          optimizers_uncaptured, settings):
    """The updates as the eager loop makes them (no capture in progress for the optimizers): the
    graphed loop's batches, static buffers, replays and evaluation must give the eager search bit
    for bit (losses, accuracies, α, weights, genotype)."""
    eager, _, eager_genotype, eager_records = _search(tmp_path, "eager", **settings)
    graphed, _, graphed_genotype, graphed_records = _search(tmp_path, "graphed", cuda_graph=True, **settings)
    _check_graph_use(graphed)
    assert graphed_genotype == eager_genotype
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in graphed_records] == [[r[k] for k in keys] for r in eager_records]
    for a, b in zip([*eager.model.parameters(), *eager.model.buffers()],
                    [*graphed.model.parameters(), *graphed.model.buffers()]):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("nesterov", [False, True])
def test_the_captured_updates_search_as_the_eager_ones(tmp_path, emulated_cuda_graph, capturable_adam_everywhere,
                                                       monkeypatch, nesterov):
    """The captured paths (the w update reading lr from the device, --noise-decay's scale read on
    the device): the same search up to their rounding (their SGD update is p − (lr·buf), torch's
    p − lr·buf fused), which a few steps amplify; α's change over the search within 1 %. Nesterov:
    NAS-Bench-201's preset's w update."""
    from ndarts.device_lr_sgd import DeviceLrSGD

    device_steps = []
    step = DeviceLrSGD.step
    monkeypatch.setattr(DeviceLrSGD, "step", lambda self: (device_steps.append(1), step(self)))
    eager, start, _, eager_records = _search(tmp_path, "eager", noise_decay=True, nesterov=nesterov)
    assert device_steps == []
    graphed, _, _, graphed_records = _search(tmp_path, "graphed", cuda_graph=True, noise_decay=True, nesterov=nesterov)
    _check_graph_use(graphed)
    assert len(device_steps) == graphed.graph_step.graph.replays  # each replayed step, the capture's too
    for a, b in zip(eager_records, graphed_records):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-3), (key, a["epoch"])
    for a0, a, b in zip(start, eager.model.arch_parameters(), graphed.model.arch_parameters()):
        assert float((b - a).detach().norm()) <= 0.01 * float((a - a0).detach().norm())


@pytest.mark.slow
def test_a_graphed_search_killed_after_its_capture_resumes_as_the_uninterrupted_one(
        tmp_path, emulated_cuda_graph, capturable_adam_everywhere, optimizers_uncaptured, monkeypatch):
    """Stopped after epoch 2 of 3 (its graph captured in epoch 2) and resumed with --resume: the
    resumed run warms up and captures again, from the checkpoint's weights, momentum, Adam state
    (capturable) and RNG, and ends bit for bit where the uninterrupted graphed run does (the
    optimizers on their eager paths, as in the bitwise test above)."""
    from test_search import _killed_before_epoch

    full, _, full_genotype, full_records = _search(tmp_path, "full", cuda_graph=True, noise_decay=True)
    with _killed_before_epoch(monkeypatch, 2):
        _search(tmp_path, "cut", cuda_graph=True, noise_decay=True)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed, _, resumed_genotype, resumed_records = _search(tmp_path, "cut", cuda_graph=True, noise_decay=True,
                                                            resume=True)
    assert resumed.start_epoch == 2 and resumed.graph_step.eager_steps == 3  # the warm-up again
    assert resumed_genotype == full_genotype

    def searched(records):  # every field but the wall-clock times
        return [{k: v for k, v in r.items() if "second" not in k} for r in records]
    assert searched(resumed_records) == searched(full_records) and len(full_records) == 3
    for a, b in zip([*full.model.parameters(), *full.model.buffers()],
                    [*resumed.model.parameters(), *resumed.model.buffers()]):
        assert torch.equal(a, b)

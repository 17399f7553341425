"""DeviceLrSGD (the graphed step's w update, lr read from a device tensor) against torch's SGD,
and the graphed step capturing once for a changing learning rate (ndarts.device_lr_sgd)."""
import contextlib

import pytest
import torch

from ndarts.device_lr_sgd import CaptureAwareSGD, DeviceLrSGD


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3, 3, 3), (7,), (4, 11), (1, 1, 1, 1)]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes], g


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [(0.9, 3e-4, False), (0.0, 0.0, False), (0.9, 0.0, False),
                                                       (0.0, 1e-2, False), (0.9, 5e-4, True), (0.5, 0.0, True)])
def test_steps_equal_torch_sgd_with_a_changing_learning_rate(fresh_seed, momentum, weight_decay, nesterov):
    """The same parameters and momentum buffers as torch's SGD step by step, the rate changing
    between steps (set on the SGD's param group for torch's, on the device tensor for ours); the
    first step torch's own (it makes the momentum buffers, as the graph's eager warm-up does)."""
    ours, g = _params(fresh_seed)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = torch.optim.SGD(ours, 0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    opt_theirs = torch.optim.SGD(theirs, 0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    device = DeviceLrSGD(opt_ours)
    for i, lr in enumerate([0.1, 0.1, 0.05, 0.05, 0.0123, 0.3]):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, d in zip(ours, theirs, grads):
            p.grad, q.grad = d.clone(), d.clone()
        for opt in (opt_ours, opt_theirs):
            opt.param_groups[0]["lr"] = lr
        device.set_lr(lr)
        opt_theirs.step()
        if i == 0:
            opt_ours.step()
        else:
            device.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
        if momentum:
            for p, q in zip(ours, theirs):
                torch.testing.assert_close(opt_ours.state[p]["momentum_buffer"], opt_theirs.state[q]["momentum_buffer"],
                                           atol=1e-6, rtol=1e-6)
    assert float(device.lr) == pytest.approx(0.3)


def test_a_parameter_without_gradient_is_left_alone_and_missing_state_is_named():
    params, _ = _params(0)
    opt = torch.optim.SGD(params, 0.1, momentum=0.9)
    device = DeviceLrSGD(opt)
    device.set_lr(0.1)
    params[0].grad = torch.ones_like(params[0])
    with pytest.raises(RuntimeError, match="no momentum buffer yet; run an eager step first"):
        device.step()
    opt.step()  # makes params[0]'s buffer
    before = [p.detach().clone() for p in params]
    device.step()
    assert not torch.equal(params[0], before[0])
    assert all(torch.equal(p, b) for p, b in zip(params[1:], before[1:]))


def test_options_it_does_not_implement_are_refused():
    params, _ = _params(0)
    with pytest.raises(ValueError, match="dampening and maximize are not supported"):
        DeviceLrSGD(torch.optim.SGD(params, 0.1, momentum=0.9, dampening=0.1))
    with pytest.raises(ValueError, match="dampening and maximize are not supported"):
        DeviceLrSGD(torch.optim.SGD(params, 0.1, momentum=0.9, maximize=True))
    with pytest.raises(TypeError, match="steps a torch.optim.SGD, got Adam"):
        DeviceLrSGD(torch.optim.Adam(params))


def test_inside_a_capture_the_device_update_runs_else_torch_s(monkeypatch):
    params, _ = _params(0)
    opt = torch.optim.SGD(params, 0.1, momentum=0.9)
    sgd = CaptureAwareSGD(opt)
    used = []
    monkeypatch.setattr(sgd.device_lr, "step", lambda: used.append("device"))
    monkeypatch.setattr(opt, "step", lambda: used.append("torch"))
    sgd.step()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    sgd.step()
    assert used == ["torch", "device"]


class _FakeStream:
    def wait_stream(self, other):
        pass


class _FakeGraph:
    def replay(self):
        pass


def test_a_new_learning_rate_is_set_on_the_device_not_captured_again(monkeypatch):
    """With device_lr the graph is keyed on the noise scale alone: a new rate fills the device
    tensor before the replay; a new noise scale still captures again."""
    from ndarts.graph_step import GraphedSearchStep

    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **k: contextlib.nullcontext())
    params, _ = _params(0)
    device_lr = DeviceLrSGD(torch.optim.SGD(params, 0.1, momentum=0.9))
    step = GraphedSearchStep(lambda x, y, xv, yv, lr: (x.sum(),), warmup=1, device_lr=device_lr)
    batch = [torch.randn(4, 3), torch.zeros(4), torch.randn(4, 3), torch.zeros(4)]
    for lr, scale in [(0.1, 1.0), (0.1, 1.0), (0.05, 1.0), (0.02, 1.0), (0.02, 0.5)]:
        step(*batch, lr, key=scale)
        assert float(device_lr.lr) == pytest.approx(lr)
    assert step.eager_steps == 1 and step.captures == 2 and step.captured_key == (None, 0.5)


def test_a_second_order_graph_step_reads_xi_from_the_device_and_captures_once(monkeypatch):
    """make_graph_step with a second-order architect: the virtual step's ξ is the device rate
    tensor (filled with each call's lr), so new rates need no new capture."""
    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.architect import Architect
    from ndarts.graph_step import make_graph_step
    from ndarts.search_model import SearchNetwork

    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **k: contextlib.nullcontext())
    torch.manual_seed(0)
    net = SearchNetwork(C=2, num_classes=5, layers=2, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(kind="none"),
                        in_channels=1)
    crit = torch.nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4)
    arch = Architect(net, a_opt, w_opt, crit, "second")
    seen = []
    step_of = arch.step
    monkeypatch.setattr(arch, "step", lambda *a: seen.append(a[-1]) or step_of(*a))
    step = make_graph_step(net, arch, w_opt, crit, 5.0, warmup=1)
    for group in a_opt.param_groups:
        group["capturable"] = False  # Adam's capturable step needs a GPU; the ξ is what is checked here
    x, y = torch.randn(2, 1, 6, 6), torch.randint(5, (2,))
    for lr in (0.05, 0.05, 0.04, 0.03):
        step(x, y, x, y, lr)
        assert float(step.device_lr.lr) == pytest.approx(lr)
    assert step.captures == 1 and step.eager_steps == 1
    # the warm-up and the capture ran the step (replays do not): both with the device tensor
    assert len(seen) == 2 and all(xi is step.device_lr.lr for xi in seen)

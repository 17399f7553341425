"""copy.deepcopy and torch.save of whole modules (EMA copies, supernet snapshots, codebases that save the
model object): the copy computes with its own weights, exactly as a network freshly built and loaded
with its state_dict. Until 2026-12-06 the shared-ReLU tails of sep/dil convs were closures over the
original's modules, so a deep copy ran the original's convolutions, and torch.save failed to pickle them."""
import copy
import io

import pytest
import torch

from ndarts import DARTS_PRIMITIVES, FusedMixedOp, MixedOp, NoiseConfig
from ndarts.search_model import SearchNetwork

NET = dict(C=4, num_classes=5, layers=3, steps=2, multiplier=2, in_channels=3, noise=NoiseConfig(kind="none"))


def _saved_and_loaded(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _perturbed(module):
    """module with every weight changed in place (so a copy that still reads the original would differ)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return module


@pytest.mark.parametrize("copier", [copy.deepcopy, _saved_and_loaded], ids=["deepcopy", "torch.save"])
@pytest.mark.parametrize("options", [
    dict(batch_edge_convs=False),
    dict(batch_edge_convs=False, share_node_ops=False),
    dict(),
    dict(fused=True),
    dict(fused=True, backend="triton"),
], ids=["per-edge", "per-edge-unshared", "batched", "fused", "fused-triton"])
def test_a_copied_search_network_computes_with_its_own_weights(copier, options, fresh_seed):
    net = NET
    if options.get("backend") == "triton":  # the kernels in Triton's interpreter: one node per cell
        net = {**NET, "steps": 1, "multiplier": 1}
    original = SearchNetwork(**net, **options)
    copied = _perturbed(copier(original))
    fresh = SearchNetwork(**net, **options)
    fresh.load_state_dict(copied.state_dict())
    for net in (copied, fresh):
        net.train()
    _assert_computes_as(copied, fresh, original, torch.randn(2, 3, 6, 6))


def _assert_computes_as(copied, fresh, original, x):
    """copied gives fresh's output and gradients on x (a training pass), and original takes no part."""
    y_copied, y_fresh = copied(x), fresh(x)
    torch.testing.assert_close(y_copied, y_fresh, rtol=1e-5, atol=1e-5)
    y_copied.square().sum().backward()
    y_fresh.square().sum().backward()
    for (name, a), b in zip(copied.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert all(p.grad is None for p in original.parameters())  # the original took no part


@pytest.mark.parametrize("copier", [copy.deepcopy, _saved_and_loaded], ids=["deepcopy", "torch.save"])
@pytest.mark.parametrize("fused", [False, True])
def test_a_copied_nas_bench_201_network_computes_with_its_own_weights(copier, fused, fresh_seed):
    """The same for NAS-Bench-201's network (its node sharing and stacked node convs)."""
    from ndarts.nasbench201 import Nb201SearchNetwork

    kw = dict(C=4, num_classes=5, cells_per_stage=1, noise=NoiseConfig(kind="none"), fused=fused, backend="torch")
    original = Nb201SearchNetwork(**kw)
    copied = _perturbed(copier(original))
    fresh = Nb201SearchNetwork(**kw)
    fresh.load_state_dict(copied.state_dict())
    _assert_computes_as(copied, fresh, original, torch.randn(2, 3, 8, 8))
    # the running statistics the copy's training pass updated are its own
    for (name, a), b in zip(copied.named_buffers(), fresh.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
@pytest.mark.parametrize("copier", [copy.deepcopy, _saved_and_loaded], ids=["deepcopy", "torch.save"])
def test_a_copied_mixed_op_equals_its_state(cls, copier, fresh_seed):
    op = cls(4, 2, DARTS_PRIMITIVES, NoiseConfig(kind="none"))
    copied = _perturbed(copier(op))
    fresh = cls(4, 2, DARTS_PRIMITIVES, NoiseConfig(kind="none"))
    fresh.load_state_dict(copied.state_dict())
    x, w = torch.randn(2, 4, 7, 7), torch.softmax(torch.randn(8), 0)
    torch.testing.assert_close(copied(x, w), fresh(x, w), rtol=1e-5, atol=1e-5)

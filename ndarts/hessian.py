"""Collapse monitor: the dominant eigenvalue of ∇²_α L_val (Zela et al.; the official NoisyDARTS
Hessian analysis). Power iteration on Hessian-vector products.

HVPs are exact (double backward) where the network supports it (the reference mixed ops); the
fused op has no double backward, so there they are central differences of ∇_α L at α ± r·v, which
are only approximate: ∇_α L jumps where a ReLU or max-pool switches. The noise is switched off
while measuring (scale 0); BatchNorm stays in training mode as during the search.

Measuring must not change the search it watches: the forwards still draw ε and the fused sums'
Philox seeds from torch's RNGs (scale 0 only zeroes their effect), so the measurement runs on forked
RNG states (CPU and every device the model or batch lives on), and a search with --hessian-every
takes exactly the steps one without it takes.
"""
from __future__ import annotations

import contextlib

import torch

from .architect import _grads_or_zeros


def _grad_alpha(model, criterion, x, y):
    return _grads_or_zeros(criterion(model(x), y), model.arch_parameters())


def exact_hvp_alpha(model, criterion, x, y, vector):
    alphas = model.arch_parameters()
    grads = torch.autograd.grad(criterion(model(x), y), alphas, create_graph=True, allow_unused=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector) if g is not None)
    return _grads_or_zeros(dot, alphas)


def _has_double_backward(model) -> bool:
    return not getattr(model, "fused", False)


def hvp_alpha(model, criterion, x, y, vector, r: float = 1e-3):
    if _has_double_backward(model):
        return exact_hvp_alpha(model, criterion, x, y, vector)
    return fd_hvp_alpha(model, criterion, x, y, vector, r)


def fd_hvp_alpha(model, criterion, x, y, vector, r: float = 1e-3):
    alphas = model.arch_parameters()
    saved = [a.detach().clone() for a in alphas]
    try:
        with torch.no_grad():
            for a, s, v in zip(alphas, saved, vector):
                a.copy_(s + r * v)
        gp = _grad_alpha(model, criterion, x, y)
        with torch.no_grad():
            for a, s, v in zip(alphas, saved, vector):
                a.copy_(s - r * v)
        gn = _grad_alpha(model, criterion, x, y)
    finally:
        with torch.no_grad():
            for a, s in zip(alphas, saved):
                a.copy_(s)
    return [(p - n) / (2 * r) for p, n in zip(gp, gn)]


def _accelerators(model, *tensors) -> dict[str, list[int]]:
    """The non-CPU devices, by type, that the model's tensors and the batch live on."""
    found: dict[str, set[int]] = {}
    for t in [*model.parameters(), *model.buffers(), *tensors]:
        if t.device.type != "cpu":
            index = t.device.index if t.device.index is not None else 0
            found.setdefault(t.device.type, set()).add(index)
    return {kind: sorted(indices) for kind, indices in found.items()}


@contextlib.contextmanager
def untouched_rng(model, *tensors):
    """Restores torch's CPU RNG and the RNGs of the devices in use on leaving: the measurement's
    forwards draw from them, and a monitor must leave the search's random streams as it found them."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))  # the CPU generator
        for kind, indices in _accelerators(model, *tensors).items():
            stack.enter_context(torch.random.fork_rng(devices=indices, device_type=kind))
        yield


def measure_on_stream(model, criterion, stream, device, iters: int = 20, tol: float = 1e-4, seed: int = 0) -> float:
    """dominant_eigenvalue on the first batch of pass 0 of `stream` (a BatchStream). Fetching it
    is inside the forked RNGs too: an image folder's DataLoader and transforms draw from torch's RNG."""
    with untouched_rng(model, torch.empty(0, device=device)):
        x, y = next(iter(stream.iterate(0)))
        return _power_iteration(model, criterion, x.to(device), y.to(device), iters, tol, seed)


def dominant_eigenvalue(model, criterion, x, y, iters: int = 20, tol: float = 1e-4, seed: int = 0) -> float:
    """Largest-magnitude eigenvalue of the Hessian of L(x, y) w.r.t. α (power iteration). Leaves
    α, the BatchNorm statistics, the noise scales and torch's RNG states as it found them."""
    with untouched_rng(model, x, y):
        return _power_iteration(model, criterion, x, y, iters, tol, seed)


def _power_iteration(model, criterion, x, y, iters: int, tol: float, seed: int) -> float:
    was_training = model.training
    scales = {m: getattr(m, "noise_scale") for m in model.modules() if hasattr(m, "noise_scale")}
    model.train()
    model.set_noise_scale(0.0)
    # BatchNorm running statistics must not move while we measure
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    try:
        g = torch.Generator().manual_seed(seed)
        v = [torch.randn(a.shape, generator=g).to(a) for a in model.arch_parameters()]
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        v = [t / norm for t in v]
        eig = 0.0
        for _ in range(iters):
            hv = hvp_alpha(model, criterion, x, y, v)
            new_eig = float(sum((a * b).sum() for a, b in zip(hv, v)))
            norm = torch.sqrt(sum((t * t).sum() for t in hv))
            if float(norm) == 0.0:
                return 0.0
            v = [t / norm for t in hv]
            if abs(new_eig - eig) <= tol * max(1.0, abs(new_eig)):
                eig = new_eig
                break
            eig = new_eig
        return eig
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        for m, s in scales.items():
            m.noise_scale = s
        model.train(was_training)

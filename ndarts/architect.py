"""The architecture step: updates α on a validation batch, first or second order (DARTS).

First order: ∇_α L_val(w, α).
Second order (unrolled): ∇_α L_val(w', α) − ξ·∇²_{α,w} L_train(w, α)·∇_{w'} L_val(w', α), with
w' = w − ξ·(momentum·m + ∇_w L_train + wd·w) one virtual SGD step (with Nesterov momentum, as
NAS-Bench-201's protocol steps w: w − ξ·(d + momentum·(momentum·m + d)), d = ∇_w L_train + wd·w;
either way the step the w optimizer would take at rate ξ), and the mixed second
derivative by central finite differences of ∇_α L_train at w ± r·v, r = 0.01/‖v‖ (DARTS).
"""
from __future__ import annotations

import torch
from torch.func import functional_call


class Architect:
    def __init__(self, model, arch_optimizer, weight_optimizer, criterion, order="first",
                 momentum=0.9, weight_decay=3e-4, grad_hook=None, hvp_r: float = 1e-2):
        if order not in ("first", "second"):
            raise ValueError(f"unknown order {order!r}; choose 'first' or 'second'")
        self.model = model
        self.arch_optimizer = arch_optimizer
        self.weight_optimizer = weight_optimizer
        self.criterion = criterion
        self.order = order
        self.momentum = momentum
        self.weight_decay = weight_decay
        # finite-difference radius r (R = r/‖v‖); DARTS uses 0.01. ∇_α L jumps at ReLU kinks, so
        # a large r trades truncation error for kink crossings; tests use a tiny r in float64.
        self.hvp_r = hvp_r
        # averages a list of gradients over the data-parallel processes, in place (all-reduce mean
        # under DDP): the α gradient before the optimizer step and, second order, the gradients of
        # the virtual step and ∇_{w'} L_val, so every rank unrolls to the same w' with the global batch
        self.grad_hook = grad_hook

    @property
    def alphas(self):
        return self.model.arch_parameters()

    def _loss(self, x, y):
        return self.criterion(self.model(x), y)

    def step(self, x_train, y_train, x_val, y_val, eta: float | torch.Tensor) -> torch.Tensor:
        """One α update; returns the validation loss it was computed from (detached). eta: ξ of the
        second order's virtual step, a number or a 0-dim tensor on the device (read when it runs:
        a CUDA graph captured once follows the rate filled into it)."""
        if self.order == "first":
            loss = self._loss(x_val, y_val)
            grads = _grads_or_zeros(loss, self.alphas)
        else:
            grads, loss = self.second_order_grads(x_train, y_train, x_val, y_val, eta)
        grads = list(grads)
        if self.grad_hook is not None:
            self.grad_hook(grads)
        for a, g in zip(self.alphas, grads):
            a.grad = g
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # ------------------------------------------------------------------ second order
    def unrolled_weights(self, x, y, eta: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """w' = w − η·(momentum·m + ∇_w L_train + wd·w) (Nesterov: the w optimizer's own update,
        module docstring), as leaf tensors that require grad."""
        named = self.model.named_weight_parameters()
        loss = self._loss(x, y)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(named, grads)]
        if self.grad_hook is not None:
            self.grad_hook(grads)
        nesterov = any(group.get("nesterov", False) for group in self.weight_optimizer.param_groups)
        unrolled = {}
        for (name, p), g in zip(named, grads):
            buf = self.weight_optimizer.state.get(p, {}).get("momentum_buffer")
            if nesterov:  # torch's SGD: the first step's buffer is d itself
                d = g + self.weight_decay * p
                step = d + self.momentum * (buf * self.momentum + d if buf is not None else d)
            else:
                moment = buf * self.momentum if buf is not None else torch.zeros_like(p)
                step = moment + g + self.weight_decay * p
            unrolled[name] = (p - eta * step).detach().requires_grad_()
        return unrolled

    def second_order_grads(self, x_train, y_train, x_val, y_val, eta: float | torch.Tensor):
        unrolled = self.unrolled_weights(x_train, y_train, eta)
        # the virtual model gets its own copy of the BatchNorm buffers, as DARTS's model copy does
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        logits = functional_call(self.model, {**unrolled, **buffers}, (x_val,))
        loss = self.criterion(logits, y_val)
        unrolled_list = list(unrolled.values())
        grads = torch.autograd.grad(loss, self.alphas + unrolled_list, allow_unused=True)
        dalpha = [torch.zeros_like(a) if g is None else g for g, a in zip(grads, self.alphas)]
        vector = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[len(self.alphas):], unrolled_list)]
        if self.grad_hook is not None:
            self.grad_hook(vector)  # one finite-difference direction (and R) on every rank
        hvp = self.hessian_vector_product(vector, x_train, y_train, self.hvp_r)
        return [da - eta * h for da, h in zip(dalpha, hvp)], loss

    def hessian_vector_product(self, vector, x, y, r: float | None = None):
        """∇²_{α,w} L_train(w, α)·v by central differences of ∇_α L_train at w ± R·v, R = r/‖v‖."""
        r = self.hvp_r if r is None else r
        weights = self.model.weight_parameters()
        norm = torch.cat([v.reshape(-1) for v in vector]).norm()
        R = r / norm.clamp_min(1e-12)
        saved = [p.detach().clone() for p in weights]
        try:
            with torch.no_grad():
                for p, v in zip(weights, vector):
                    p.add_(R * v)
            grads_p = _grads_or_zeros(self._loss(x, y), self.alphas)
            with torch.no_grad():
                for p, s, v in zip(weights, saved, vector):
                    p.copy_(s - R * v)
            grads_n = _grads_or_zeros(self._loss(x, y), self.alphas)
        finally:
            with torch.no_grad():
                for p, s in zip(weights, saved):
                    p.copy_(s)
        return [(gp - gn) / (2 * R) for gp, gn in zip(grads_p, grads_n)]


def _grads_or_zeros(loss, tensors):
    """Gradients, zeros for tensors the loss does not use (e.g. α of a cell type a 2-layer net lacks)."""
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def exact_mixed_hvp(model, criterion, vector, x, y):
    """∇²_{α,w} L·v by double backward (for tests: the reference for hessian_vector_product)."""
    weights = model.weight_parameters()
    loss = criterion(model(x), y)
    gw = torch.autograd.grad(loss, weights, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(gw, vector))
    return _grads_or_zeros(dot, model.arch_parameters())

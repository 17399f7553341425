"""The w step's SGD update with its learning rate in a device tensor, for the captured search step.

Why: a CUDA graph holds the scalars its kernels were launched with. torch.optim.SGD passes the
learning rate to its kernels as a host float, so the graphed search step had to be captured again
whenever the cosine schedule changed the rate: once an epoch, every kernel of the step recorded
anew and a new graph instantiated (benchmarks/test_bench_search_loop.py times it, `recapture_s`).
Here the update reads the rate from a 0-dim device tensor that the graph reads at every replay, and
a new rate is one fill of that tensor: the step is captured once for the whole search (a
second-order α step reads the same tensor as its virtual step's ξ, ndarts.graph_step).

What: ``DeviceLrSGD(optimizer)`` steps the parameters of a torch.optim.SGD (momentum, weight
decay: DARTS's w optimizer; Nesterov momentum: NAS-Bench-201's; no dampening or maximize) exactly as
its foreach step does,
with the same state: the SGD's own momentum buffers, so its state_dict, the checkpoints and an
eager step see one optimizer. ``CaptureAwareSGD`` is what the graphed step calls: inside a capture
the device-rate update, elsewhere (the warm-up steps, a batch of another shape) the SGD's own
step at its param group's rate, which the scheduler keeps equal to the device tensor's.
"""
from __future__ import annotations

import torch


class DeviceLrSGD:
    def __init__(self, optimizer: torch.optim.SGD):
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"DeviceLrSGD steps a torch.optim.SGD, got {type(optimizer).__name__}")
        for group in optimizer.param_groups:
            if group["dampening"] or group["maximize"]:
                raise ValueError("DeviceLrSGD: dampening and maximize are not supported "
                                 "(DARTS's and NAS-Bench-201's w optimizers use neither)")
        self.optimizer = optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        device = params[0].device if params else torch.device("cpu")
        self.lr = torch.zeros((), device=device, dtype=torch.float32)  # read by the kernels at every replay
        self._host_lr = None

    def set_lr(self, lr: float) -> None:
        """The rate of the next steps (one fill, only when it changed)."""
        if lr != self._host_lr:
            self.lr.fill_(lr)
            self._host_lr = lr

    @torch.no_grad()
    def step(self) -> None:
        """d = grad + weight_decay·p, buf ← momentum·buf + d, p ← p − lr·buf (Nesterov: p ← p −
        lr·(d + momentum·buf)): torch's SGD, lr on the device. Every parameter with a gradient must
        have its momentum buffer (made by an eager step)."""
        state = self.optimizer.state
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                bufs = [state[p].get("momentum_buffer") for p in params]
                if any(b is None for b in bufs):
                    raise RuntimeError("DeviceLrSGD: a parameter has no momentum buffer yet; run an eager "
                                       "step first (the graph's warm-up)")
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
                grads = torch._foreach_add(grads, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
            torch._foreach_sub_(params, torch._foreach_mul(grads, self.lr))


class CaptureAwareSGD:
    """An SGD for search_step inside a graphed step: ``step()`` is the device-rate update while a
    CUDA graph is being captured, the SGD's own step (its param group's float rate) otherwise."""

    def __init__(self, optimizer: torch.optim.SGD):
        self.optimizer = optimizer
        self.device_lr = DeviceLrSGD(optimizer)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            self.device_lr.step()
        else:
            self.optimizer.step()

"""The whole search step (α step + w step) replayed as one CUDA graph.

Why: the eager DARTS search is launch-bound. SPEC §6 measured the original DARTS supernet at
480 ms per forward+backward eagerly (18 908 kernel launches, ≈ 25 µs of host time each) and
131 ms as one CUDA graph, on an H200. A graph replays every kernel of the step with one launch.

How: the first ``warmup`` steps run eagerly on a side stream (lazy initialisation: optimizer
state, cuDNN algorithms, Triton compilation); the next step is captured into static input
buffers and replayed; every later step copies its batch into those buffers and replays. A
captured kernel holds the scalars it was launched with. The noise scale (--noise-decay changes it
once per epoch) is read from the device (MixedOp.noise_scale_device), and so is the learning rate
(the cosine schedule's, once per epoch): the w update and a second-order step's virtual step (its
ξ) read it from a device tensor (ndarts.device_lr_sgd). Anything else a caller's graph holds as a
constant is its ``key``: a new one triggers a new capture. A batch of another shape (the last,
partial batch of an epoch) runs eagerly. Noise stays random: the fused op draws its Philox seed with
torch's CUDA generator, which a graph advances on every replay, and the reference op draws ε with
torch.randn on the device, likewise.

The epoch's evaluation (GraphedEvaluation) is a second graph of the same kind: the forward of one
evaluation batch in eval mode, captured once for the whole search.

Requirements (checked by the caller, ndarts.searcher): a CUDA device, no DDP, the α optimizer
(Adam) built with ``capturable=True``, and a fused op on its Triton backend (the torch reference
backend reads its seed on the host, which a graph cannot capture).
"""
from __future__ import annotations

import torch


class CapturedCall:
    """Calls ``fn(*batch, lr) -> tuple of tensors`` as a replayed CUDA graph (``run(batch, lr, key)``).

    fn must not synchronise with the host (no .item(), no checks that read values): the caller
    inspects the returned tensors after each call instead. The tensors returned for a replayed
    call are the graph's static outputs, overwritten by the next replay.
    """

    def __init__(self, step_fn, warmup: int = 3):
        self.step_fn = step_fn
        self.warmup = warmup
        self.graph = None
        self.static_inputs = None
        self.static_outputs = None
        self.captured_key = None  # (lr, extra key) the current graph was captured with
        self.expected = None  # the signature of the first batch: the full-size batches get the graph
        self.eager_steps = 0  # steps run without the graph (warm-up and odd-shaped batches)
        self.captures = 0

    def _signature(self, tensors):
        return [(t.shape, t.dtype, t.device) for t in tensors]

    def _fits(self, batch) -> bool:
        return self._signature(batch) == self.expected

    def _eager(self, batch, lr, side_stream: bool):
        self.eager_steps += 1
        if not side_stream:
            return self.step_fn(*batch, lr)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.step_fn(*batch, lr)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, batch, lr, key):
        self.graph = None
        self.static_outputs = None  # frees the previous graph's memory pool
        self.static_inputs = [t.detach().clone() for t in batch]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.step_fn(*self.static_inputs, lr)
        self.graph, self.static_outputs, self.captured_key = graph, outputs, key
        self.captures += 1

    def run(self, batch: tuple, lr: float, key=None, lr_in_graph: bool = False):
        """key: anything else the captured kernels hold as a constant (the search passes the noise
        scale where a mixed op holds it as a number: SearchNetwork.noise_scale_is_read_on_device);
        a new (lr, key) triggers a new capture, a new key alone where the graph reads lr from the
        device (lr_in_graph)."""
        if self.expected is None:
            self.expected = self._signature(batch)
        if self.eager_steps < self.warmup and self.graph is None:
            return self._eager(batch, lr, side_stream=True)
        if not self._fits(batch):
            return self._eager(batch, lr, side_stream=False)
        wanted = (None if lr_in_graph else lr, key)
        if self.graph is None or wanted != self.captured_key:
            # capture records the kernels without running them: replay right after runs this step
            self._capture(batch, lr, wanted)
        else:
            for static, t in zip(self.static_inputs, batch):
                static.copy_(t, non_blocking=True)
        self.graph.replay()
        return self.static_outputs


class GraphedSearchStep(CapturedCall):
    """``step(x, y, x_val, y_val, lr, key=None)``: the search step as a replayed CUDA graph.

    device_lr: the captured step reads the learning rate from this DeviceLrSGD's device tensor
    (ndarts.device_lr_sgd: the w update, and a second-order α step's ξ): a new rate is set there
    before the replay instead of triggering a new capture."""

    def __init__(self, step_fn, warmup: int = 3, device_lr=None):
        super().__init__(step_fn, warmup)
        self.device_lr = device_lr

    def __call__(self, x, y, x_val, y_val, lr: float, key=None):
        if self.device_lr is None:
            return self.run((x, y, x_val, y_val), lr, key)
        self.device_lr.set_lr(lr)
        return self.run((x, y, x_val, y_val), lr, key, lr_in_graph=True)


def evaluation_sums(model, x, y):
    """(summed cross-entropy, correct count) of one evaluation batch: what the search's evaluation
    adds up per batch, eagerly or replayed (GraphedEvaluation)."""
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum"), (logits.argmax(1) == y).sum()


class GraphedEvaluation(CapturedCall):
    """``evaluate(x, y) -> (summed loss, correct count)`` of one evaluation batch (the model in eval
    mode, under no_grad) as a replayed CUDA graph.

    Why: an evaluation batch of 256 on the default path launches 1 025 kernels from Python, each
    ~10-25 µs of host time (SPEC §6's measurement of eager DARTS: 10-26 ms), and its kernels' bytes
    take 16.8 ms on an H200 by the byte model (`python benchmarks/step_traffic.py --eval-batch 256`),
    so the eager evaluation may wait on the host (an estimate: the loop benchmark's evaluation µs per
    image, benchmarks/test_bench_search_loop.py, measures it with this graph). Captured once, for the
    whole search: the forward reads the weights, α and the BatchNorm running statistics in their
    storage, which the steps update in place, so each replay evaluates the current model (nothing
    of it is a constant of the graph: no learning rate, no noise in eval mode). The batch's loss
    and count are summed in the graph; the caller adds them to its totals before the next replay.
    The last, partial batch runs eagerly.
    """

    def __init__(self, model, warmup: int = 1):
        super().__init__(lambda x, y, _lr: evaluation_sums(model, x, y), warmup=warmup)

    def __call__(self, x, y):
        return self.run((x, y), 0.0)


def prepare_optimizers_for_capture(arch_optimizer) -> None:
    """Adam must keep its step count on the device to be captured; set before its first step."""
    for group in arch_optimizer.param_groups:
        if "capturable" in group and not group["capturable"]:
            if any(arch_optimizer.state.get(p) for p in group["params"]):
                raise RuntimeError("the α optimizer has already stepped without capturable=True; "
                                   "build it with capturable=True to capture the search step in a CUDA graph")
            group["capturable"] = True


def make_graph_step(model, architect, w_optimizer, criterion, grad_clip, example_batches=None, warmup: int = 3):
    """A graphed search step for a model, its architect and the weight optimizer:
    ``step(x, y, x_val, y_val, lr)`` returns (loss, logits, arch_loss, grad_norm).

    With an SGD w optimizer (the search's) the captured w update reads lr from the device
    (ndarts.device_lr_sgd), and so does a second-order α step's virtual step (its ξ, the same
    rate): the cosine schedule's new rate each epoch needs no new capture."""
    from .device_lr_sgd import CaptureAwareSGD
    from .search_step import search_step

    prepare_optimizers_for_capture(architect.arch_optimizer)
    weights = model.weight_parameters()
    device_lr = type(w_optimizer) is torch.optim.SGD
    optimizer = CaptureAwareSGD(w_optimizer) if device_lr else w_optimizer
    # ξ of a second-order step: the device tensor, which GraphedSearchStep fills with lr before each call
    xi_on_device = device_lr and architect.order == "second"

    def step_fn(x, y, x_val, y_val, lr):
        eta = optimizer.device_lr.lr if xi_on_device else lr
        return search_step(architect, model, criterion, optimizer, weights, grad_clip, x, y, x_val, y_val, eta)

    return GraphedSearchStep(step_fn, warmup=warmup, device_lr=optimizer.device_lr if device_lr else None)

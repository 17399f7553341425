"""``--triton-convs auto``: time the search step with each way of running the cells' convolutions
on this device, and keep the fastest.

Why: the cells' depthwise and 1×1 convolutions can run on PyTorch's (cuDNN's) kernels or on
ndarts' Triton kernels: the depthwise weight gradient alone (``depthwise-wgrad``), or each
depthwise → 1×1 pair of the batched conv stacks fused into one kernel each way (``separable``).
Every way computes the same step (CPU-tested against the plain network). Which is fastest depends
on the card, the cuDNN and Triton versions and the configuration (channels, batch, image size),
and the byte model of benchmarks/step_traffic.py cannot say how fast cuDNN's small convolutions
run. So, like ``torch.backends.cudnn.benchmark``, the choice is measured where the search runs.

How: for each candidate, a fresh network of the run's configuration, its own optimizers, and the
step the search will run (one CUDA graph with --cuda-graph) on a synthetic batch of the run's
shape: ``warmup`` calls unmeasured (graph capture, Triton compilation, cuDNN's algorithm search),
then the median of ``repeats`` calls, each timed to the device's completion. A candidate that fails
(a kernel that does not compile for this card, out of memory) is reported and skipped. Each
candidate's network, optimizers and graph are freed before the next. The caller (ndarts.searcher)
restores the RNG states afterwards, so the search that follows is the one a run given the chosen
variant directly would make.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

import torch

from .errors import NdartsError

# the --triton-convs values "auto" times: PyTorch's convolutions, the Triton depthwise weight gradient
# (PyTorch's took 25 µs per 16-channel call on an H200, benchmarks/RESULTS.md 2026-11-27), the fused pairs
AUTO_CANDIDATES = ("none", "depthwise-wgrad", "separable")

# calls per candidate: unmeasured (a graph step runs 3 eager warm-up steps, then captures), measured
TUNING_CALLS = {"graph": {"warmup": 5, "repeats": 5}, "eager": {"warmup": 1, "repeats": 2}}


@dataclass
class TuningResult:
    choice: str
    seconds: dict[str, float] = field(default_factory=dict)  # median per step, per candidate that ran
    failures: dict[str, str] = field(default_factory=dict)  # candidate → the first line of its error

    def summary(self) -> str:
        timed = ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in self.seconds.items())
        failed = "".join(f"; {name} failed: {why}" for name, why in self.failures.items())
        return f"--triton-convs auto: {self.choice} (per search step: {timed}{failed})"


def synthetic_batch(batch_size: int, channels: int, image_size: int, num_classes: int, device) -> tuple:
    """(x, y, x_val, y_val) of the search's shapes, from a generator of its own (the global RNG
    streams are not drawn from)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, batch_size, channels, image_size, image_size, generator=g)
    y = torch.randint(num_classes, (2, batch_size), generator=g)
    return tuple(t.to(device) for t in (x[0], y[0], x[1], y[1]))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, batch: tuple, lr: float, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of step(*batch, lr) over `repeats` calls after `warmup` unmeasured ones."""
    for _ in range(warmup):
        step(*batch, lr)
    _synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(*batch, lr)
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _release(device: torch.device) -> None:
    gc.collect()  # the candidate's network, optimizers and graph pool
    if device.type == "cuda":
        torch.cuda.empty_cache()


def tune_triton_convs(candidates, build_step, batch: tuple, lr: float, device: torch.device,
                      warmup: int, repeats: int) -> TuningResult:
    """Times build_step(name) (a callable step(x, y, x_val, y_val, lr)) for each candidate name
    and returns the fastest; raises NdartsError if none ran."""
    if not candidates:
        raise NdartsError("--triton-convs auto: no candidate to time")
    result = TuningResult(choice="")
    for name in candidates:
        try:
            step = build_step(name)
            result.seconds[name] = time_step(step, batch, lr, device, warmup, repeats)
        except Exception as e:  # noqa: BLE001  (any failure of a candidate rules it out, the others go on)
            lines = str(e).strip().splitlines()
            result.failures[name] = f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
        finally:
            step = None
            _release(device)
    if not result.seconds:
        raise NdartsError(f"--triton-convs auto: every candidate failed ({result.failures}); "
                          "choose --triton-convs none")
    result.choice = min(result.seconds, key=result.seconds.get)
    return result

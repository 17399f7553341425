"""Where the fused mixed-op sum runs: the Triton kernels or the reference PyTorch code.

Chosen in one place. ``auto`` (the default) takes Triton on CUDA and the reference elsewhere,
quietly. An explicit request that cannot be honoured raises: ``triton`` on a CPU needs Triton's
interpreter (``TRITON_INTERPRET=1`` set before the kernels are imported).
Override with the ``NDARTS_BACKEND`` environment variable or a constructor argument.
"""
from __future__ import annotations

import contextlib
import os

import torch

BACKENDS = ("auto", "triton", "torch")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take


class BackendError(RuntimeError):
    pass


_IMPORT_ERROR: list = []  # filled once: [None] or [reason]


def kernels_import_error() -> str | None:
    """None when the Triton kernels (ndarts_kernels) import, else why not (checked once)."""
    if not _IMPORT_ERROR:
        try:
            import ndarts_kernels  # noqa: F401

            _IMPORT_ERROR.append(None)
        except Exception as e:  # triton missing or broken
            _IMPORT_ERROR.append(f"the Triton kernels could not be imported ({type(e).__name__}: {e})")
    return _IMPORT_ERROR[0]


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on `device`, else why not."""
    err = kernels_import_error()
    if err:
        return err
    import ndarts_kernels

    if device.type == "cuda":
        if ndarts_kernels.INTERPRETED:
            return "the kernels were defined under TRITON_INTERPRET=1, which runs on the CPU only"
        return None
    if device.type == "cpu":
        if not ndarts_kernels.INTERPRETED:
            return ("on a CPU the kernels run only in Triton's interpreter: set TRITON_INTERPRET=1 "
                    "before ndarts is imported")
        return None
    return f"Triton does not run on device type {device.type!r}"


def requested_backend(backend: str | None = None) -> str:
    name = backend if backend is not None else os.environ.get("NDARTS_BACKEND", "auto")
    name = name.strip().lower()
    if name not in BACKENDS:
        source = "argument" if backend is not None else "NDARTS_BACKEND"
        raise BackendError(f"unknown backend {name!r} (from {source}); choose one of {BACKENDS}")
    return name


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """'triton' or 'torch' for tensors on `device`."""
    name = requested_backend(backend)
    if name == "torch":
        return "torch"
    reason = triton_unavailable_reason(device)
    if name == "triton":
        if reason:
            raise BackendError(f"backend 'triton' was requested but cannot run on {device}: {reason}")
        return "triton"
    # auto: the interpreter is for tests, never an automatic choice
    return "triton" if device.type == "cuda" and reason is None else "torch"


def graph_kernels_enabled(backend: str | None, x: torch.Tensor) -> bool:
    """Whether a search-op kernel that pays off only inside a CUDA graph (the BatchNorm and
    depthwise-conv kernels) runs now on input x: for a contiguous 4-D fp32/fp16/bf16 x outside
    torch.compile, 'triton' always (CUDA, or the interpreter in tests), 'torch' never, 'auto' on
    CUDA only while a CUDA graph is being captured. Eagerly, Triton's Python launcher costs more
    host time per launch than these kernels save on the GPU (benchmarks/RESULTS.md, H200,
    2026-11-27: eager search step 778 → 1437 ms with the BatchNorm kernels, graphed 189 → 106 ms)."""
    if x.dim() != 4 or x.dtype not in TRITON_DTYPES or not x.is_contiguous() or torch.compiler.is_compiling():
        return False
    if resolve_backend(backend, x.device) != "triton":
        return False
    if requested_backend(backend) == "triton" or x.device.type != "cuda":
        return True
    return torch.cuda.is_current_stream_capturing()


_STANDING_IN_FOR_CUDA = [False]


def cpu_conv_forms(x: torch.Tensor) -> bool:
    """Whether the CPU-only formulations of the search convolutions apply to x (the one-phase
    strided dil conv and the per-channel 1×1 of ndarts.conv_taps, the forward-conv gradients of
    ndarts.depthwise_cpu_grads, the batched stacks' channel-multiplier first stage of
    ndarts.edge_groups): on a CPU, except while ``standing_in_for_cuda()`` is on."""
    return x.device.type == "cpu" and not _STANDING_IN_FOR_CUDA[0]


@contextlib.contextmanager
def standing_in_for_cuda():
    """A CPU step that stands in for a CUDA one (the kernel census, the memory and byte models of
    benchmarks/count_kernels.py, step_memory.py, step_traffic.py): the convolutions take the
    formulations they take on a GPU, not cpu_conv_forms'."""
    before = _STANDING_IN_FOR_CUDA[0]
    _STANDING_IN_FOR_CUDA[0] = True
    try:
        yield
    finally:
        _STANDING_IN_FOR_CUDA[0] = before


def convert_modules(model: torch.nn.Module, predicate, cls, backend: str | None = None, **setup) -> torch.nn.Module:
    """Turns every submodule of `model` for which predicate holds into `cls` (a subclass that adds
    no parameters or buffers; its ``_setup(backend, **setup)`` sets what it adds), in place: the
    same module objects, parameters and state, so no parameter is drawn (the RNG stream is
    untouched) and optimizers built before keep working. Returns the model."""
    for child in model.children():
        if predicate(child):
            child.__class__ = cls
            child._setup(backend, **setup)
        else:
            convert_modules(child, predicate, cls, backend, **setup)
    return model

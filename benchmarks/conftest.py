"""Benchmark set-up (pytest-benchmark): `pytest benchmarks/ --benchmark-only`.

Unlike tests/, nothing here sets TRITON_INTERPRET: benchmarks time the compiled kernels on a CUDA
device, and the fused cases skip on a CPU. The copy bandwidth every bandwidth figure is compared
with is measured once per session, on the same device, in the same run.
"""
import os
import platform
import subprocess

import pytest
import torch

from bench_common import CUDA, DEVICE, cpu_threads, measure_copy_bandwidth

if not CUDA:
    torch.set_num_threads(cpu_threads())


def pytest_configure(config):
    """The markers of the cases issue 4's targets are judged on (test_bench_noisy_mixed_sum.py):
    gpu_check.sh selects them by marker, first."""
    config.addinivalue_line("markers", "target_speedup: the fp32 fwd+bwd case of the >= 10x / >= 5x targets")
    config.addinivalue_line("markers", "target_bandwidth: the fp32 fwd+bwd case of the >= 80% copy-bandwidth target")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return DEVICE


@pytest.fixture(scope="session")
def copy_bandwidth(device) -> dict:
    return measure_copy_bandwidth(device)


def _commit() -> str:
    """NDARTS_COMMIT (gpu_check.sh sets it: the device's copy of the tree may have no .git), else git."""
    if os.environ.get("NDARTS_COMMIT"):
        return os.environ["NDARTS_COMMIT"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    """The card, the software and the load, in the JSON next to every result."""
    info = {
        "device": torch.cuda.get_device_name(0) if CUDA else f"CPU: {os.cpu_count()} cores, no GPU",
        "torch": torch.__version__,
        "commit": _commit(),
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if not CUDA:
        info["torch_threads"] = torch.get_num_threads()
        if hasattr(os, "getloadavg"):
            info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    machine_info["ndarts"] = info


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """A run cut short (gpu_check.sh's `timeout --signal=INT`) leaves the interrupted benchmark
    without rounds, and pytest-benchmark 5.3 then writes no JSON at all (min() of an empty
    sequence): drop the empty one so the finished results are saved."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None:
        bs.benchmarks[:] = [b for b in bs.benchmarks if b]

"""Test set-up: the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before the kernels are defined (first import of ndarts_kernels),
so it is set here, before any test module imports ndarts.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("NDARTS_BACKEND", None)

import pytest  # noqa: E402
import torch  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:
    # 2 threads on an idle 2-core CI runner; set OMP_NUM_THREADS=1 where other jobs share the cores
    # (2 OpenMP threads then collapse: a depthwise conv took 44 ms instead of 0.07 ms)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def fresh_seed():
    """A seed drawn fresh for each test run (printed on failure by pytest's -l)."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed

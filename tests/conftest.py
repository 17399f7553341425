"""Test set-up: the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before the kernels are defined (first import of ndarts_kernels),
so it is set here, before any test module imports ndarts.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("NDARTS_BACKEND", None)

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread unless OMP_NUM_THREADS says otherwise: the tensors here are tiny, and two OpenMP
# threads on a 2-core machine whose other core is busy collapse (a depthwise conv took 44 ms
# instead of 0.07 ms; a Hessian test 640 s instead of 4 s). Subprocesses inherit the setting, and
# each pytest-xdist worker (`pytest -n auto`, one per core) reads this file: one thread per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The tests of the benchmark scripts (summarize, step_memory, count_kernels, ...) import them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))


@pytest.fixture
def fresh_seed():
    """A seed drawn fresh for each test run (printed on failure by pytest's -l)."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed

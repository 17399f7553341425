"""Test set-up: the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before the kernels are defined (first import of ndarts_kernels),
so it is set here, before any test module imports ndarts.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("NDARTS_BACKEND", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def fresh_seed():
    """A seed drawn fresh for each test run (printed on failure by pytest's -l)."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed

"""The std of a low-precision skip operand is accumulated and returned in fp32 (noise.operand_std,
skip_operand_std), as the kernels' std is.

A std taken in the operand's dtype and cast after is off by up to 2^-9 relative in bf16 (2^-11 in
fp16); the fused-vs-reference tests cast the operands to fp32 first (reference_sum_with_eps) and
the autocast tests' tolerances are loose, so only this test sees it.
"""
import pytest
import torch

from ndarts.fused_sum import skip_operand_std
from ndarts.noise import operand_std


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_std_of_a_low_precision_operand_is_fp32(dtype, backend, fresh_seed):
    x = (torch.randn(4, 5, 9, 11) * 1.7 + 0.3).to(dtype)
    want = x.double().std()
    got = skip_operand_std(x, backend)
    assert got.dtype == torch.float32
    # fp32 accumulation: ~1e-7 relative; a std rounded to bf16 / fp16 is off by up to 2^-9 / 2^-11
    torch.testing.assert_close(got.double().reshape(()), want, rtol=2e-6, atol=0)
    if backend == "torch":
        torch.testing.assert_close(operand_std(x).double(), want, rtol=2e-6, atol=0)

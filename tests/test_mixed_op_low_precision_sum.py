"""The reference MixedOp sums low-precision (bf16/fp16) op outputs in fp32 and rounds once, as the
fused op does (mixed_op.py: `o = o.float()`).

Without that cast, `w[i] * o` with w[i] a 0-dim fp32 tensor and o a bf16 tensor is computed in
bf16 (0-dim tensors do not promote), so every term and partial sum is rounded to bf16;
tests/test_autocast.py compares with fp32 at tolerances far above a few bf16 ulps.

Here the op outputs are the op's own (pools without BatchNorm and the identity skip, so no
parameter forces a dtype); the reference is the exact (float64) sum of those very outputs,
rounded once to the dtype. fp32 accumulation of 3 terms is exact to ~1e-7: the result is the
correctly rounded sum up to one ulp, everywhere.
"""
import pytest
import torch

from ndarts import FusedMixedOp, MixedOp, NoiseConfig

PRIMS = ["max_pool_3x3", "avg_pool_3x3", "skip_connect"]


@pytest.mark.parametrize("cls,kw", [(MixedOp, {}), (FusedMixedOp, {"backend": "torch"}),
                                    (FusedMixedOp, {"backend": "triton"})])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_outputs_are_summed_in_fp32_and_rounded_once(cls, kw, dtype, fresh_seed):
    op = cls(4, 1, PRIMS, NoiseConfig(kind="none"), pool_norm=False, **kw).train()
    x = (torch.randn(2, 4, 9, 7) * 3 + 5).to(dtype)
    w = torch.tensor([0.37, 0.29, 0.34])
    y = op(x, w)
    assert y.dtype == dtype
    outs = [m(x) for m in op._ops]
    exact = sum(wi.double() * o.double() for wi, o in zip(w, outs))
    want = exact.to(dtype)
    ulp = torch.finfo(dtype).eps * exact.abs().clamp_min(torch.finfo(dtype).tiny)
    # one ulp: the correctly rounded sum or its neighbour
    bad = ((y.double() - want.double()).abs() > ulp * 1.01).sum().item()
    assert bad == 0, f"{bad} of {y.numel()} elements more than one ulp from the correctly rounded sum"

"""The interpreter's three shortcuts (kernels/interpreter.py): no overflow checks computed only to be
dropped, triton.language patched once per launch, not again at each @triton.jit helper call, and
the numpy dtype of each Triton type looked up once. Every value the kernels compute is the same
with them and without. And its one fix: fp32 → bf16 casts round to nearest even, as on a GPU."""
import dataclasses

import pytest
import torch

import ndarts_kernels
from ndarts_kernels.interpreter import fp32_to_bf16_bits, skip_discarded_overflow_checks

interpreter = pytest.importorskip("triton.runtime.interpreter")


@pytest.fixture
def patch_lang():
    """The interpreter's language patch, restored after the test."""
    saved = interpreter._patch_lang
    yield saved
    interpreter._patch_lang = saved


@pytest.fixture
def options():
    """The interpreter's options, restored after the test."""
    saved = interpreter.interpreter_builder.options
    yield saved
    interpreter.interpreter_builder.options = saved


def _kernels_outputs(seed):
    """A noisy mixed sum forward+backward (Philox noise, std reduction) and a depthwise conv with
    stride, padding and dilation: integer index arithmetic of every kind, on odd shapes."""
    g = torch.Generator().manual_seed(seed)
    ops = [torch.randn(3, 5, 7, 6, generator=g) for _ in range(4)]
    w = torch.rand(4, generator=g)
    philox = torch.tensor([seed % 1000], dtype=torch.int64)
    y, std = ndarts_kernels.noisy_mixed_sum_forward(ops, w, philox, 2, 1, False, 0.2, 0.0)
    grads, dw = ndarts_kernels.noisy_mixed_sum_backward(torch.randn(y.shape, generator=g), ops, w, philox, std,
                                                        2, 1, False, 0.2, 0.0)
    x, k = torch.randn(2, 6, 9, 7, generator=g), torch.randn(6, 1, 3, 3, generator=g)
    conv = ndarts_kernels.depthwise_conv_forward(x, k, 2, 2, 2)
    return [y, std, *grads, dw, conv]


def test_values_are_those_of_the_interpreter_with_its_checks(options, fresh_seed):
    assert ndarts_kernels.INTERPRETED
    assert options.sanitize_overflow is False and options.debug is False  # set when the kernels were imported
    fast = _kernels_outputs(fresh_seed)
    interpreter.interpreter_builder.options = dataclasses.replace(options, sanitize_overflow=True)
    checked = _kernels_outputs(fresh_seed)
    assert all(torch.equal(a, b) for a, b in zip(fast, checked))
    assert skip_discarded_overflow_checks() and interpreter.interpreter_builder.options.sanitize_overflow is False


def test_checks_that_would_assert_are_kept(options):
    """With debug on, the interpreter's overflow checks raise: then they are left on."""
    interpreter.interpreter_builder.options = dataclasses.replace(options, sanitize_overflow=True, debug=True)
    assert not skip_discarded_overflow_checks()
    assert interpreter.interpreter_builder.options.sanitize_overflow is True


def _pools_with_moments(seed):
    """A launch whose kernel calls @triton.jit helpers (row_moments, store_moments) per program."""
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(seed))
    return ndarts_kernels.pools_3x3_forward(x, 2, moments=True)


def test_language_is_patched_once_per_launch(patch_lang, monkeypatch, fresh_seed):
    assert getattr(patch_lang, "original", None) is not None  # installed when the kernels were imported
    import triton.language as tl

    builtin_load = tl.load
    walks = []
    real_walk = interpreter._patch_builtin
    monkeypatch.setattr(interpreter, "_patch_builtin", lambda *a: walks.append(a[0]) or real_walk(*a))
    once = _pools_with_moments(fresh_seed)
    once_walks = len(walks)
    assert tl.load is builtin_load  # the launch put the language back
    interpreter._patch_lang = patch_lang.original  # the interpreter's own: a patch per helper call too
    walks.clear()
    each = _pools_with_moments(fresh_seed)
    assert len(walks) > 4 * once_walks  # the helpers ran in every program of the launch
    assert tl.load is builtin_load
    assert all(torch.equal(a, b) for a, b in zip(once, each))


def _mixed_precision_outputs(seed):
    """Kernels over bf16 and fp16 tensors (stored as uint16 / float16 by the interpreter), fp32
    statistics, int64 seeds and pointer arithmetic: every type the dtype lookup answers for."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for dtype in (torch.bfloat16, torch.float16):
        ops = [torch.randn(2, 3, 5, 7, generator=g).to(dtype) for _ in range(3)]
        w = torch.rand(3, generator=g)
        philox = torch.tensor([seed % 1000], dtype=torch.int64)
        y, std = ndarts_kernels.noisy_mixed_sum_forward(ops, w, philox, 1, 1, False, 0.2, 0.0)
        out += [y, std, *ndarts_kernels.pools_3x3_forward(ops[0], 2, moments=True)]
    return out


def test_numpy_dtypes_looked_up_once_give_the_same_values(monkeypatch, fresh_seed):
    memo = interpreter._get_np_dtype
    assert getattr(memo, "original", None) is not None  # installed when the kernels were imported
    fast = _mixed_precision_outputs(fresh_seed) + _kernels_outputs(fresh_seed)
    monkeypatch.setattr(interpreter, "_get_np_dtype", memo.original)
    each = _mixed_precision_outputs(fresh_seed) + _kernels_outputs(fresh_seed)
    assert len(fast) == len(each) and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(fast, each))
    import triton.language as tl

    for ty in (tl.float32, tl.bfloat16, tl.int1, tl.int64, tl.pointer_type(tl.float16),
               tl.block_type(tl.bfloat16, [4, 8]), tl.block_type(tl.pointer_type(tl.int32), [16])):
        assert memo(ty) == memo.original(ty), ty


def _fp32_cases(generator):
    """fp32 values over the whole exponent range, and bit patterns where rounding is decided:
    ties (to even, up and down), a carry out of the mantissa (into the exponent; past the largest
    bf16, to inf), subnormals, ±0, ±inf, NaNs."""
    spread = torch.randn(20_000, generator=generator) * torch.exp(torch.randn(20_000, generator=generator) * 25)
    bits = [0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3FFFFFFF, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0x00000001,
            0x00008000, 0x00018000, 0x807FFFFF, 0x80008001, 0x00000000, 0x80000000, 0x7F800000, 0xFF800000,
            0x7FC00000, 0xFFC00001, 0x7F800001]
    special = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([spread, special, special.neg()])


def _same_bf16(got, want):
    """Bit for bit, NaN for NaN (a NaN's payload is not compared)."""
    nan = want.isnan()
    return torch.equal(got.isnan(), nan) and torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


def test_fp32_to_bf16_bits_rounds_as_torch_does(fresh_seed):
    x = _fp32_cases(torch.Generator().manual_seed(fresh_seed))
    got = torch.from_numpy(fp32_to_bf16_bits(x.numpy()).view("int16")).view(torch.bfloat16)
    assert _same_bf16(got, x.to(torch.bfloat16))
    assert fp32_to_bf16_bits(x[0].numpy()).shape == ()  # a scalar stays a scalar


def _casts(x):
    """A kernel's two kinds of fp32 → bf16 cast: an explicit .to() and a store of fp32 values into a
    bf16 tensor; and an fp32 → fp16 store (the interpreter's own cast, left as it is)."""
    import triton
    import triton.language as tl

    @triton.jit
    def cast_kernel(X, TO, STORED, HALF, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        v = tl.load(X + offs, mask=mask)
        tl.store(TO + offs, v.to(tl.bfloat16), mask=mask)
        tl.store(STORED + offs, v, mask=mask)
        tl.store(HALF + offs, v, mask=mask)

    to, stored = torch.empty(x.shape, dtype=torch.bfloat16), torch.empty(x.shape, dtype=torch.bfloat16)
    half = torch.empty(x.shape, dtype=torch.float16)
    cast_kernel[(triton.cdiv(x.numel(), 8192),)](x, to, stored, half, x.numel(), BLOCK=8192)
    return to, stored, half


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # fp16: past 65504 is inf
def test_a_kernel_rounds_fp32_to_bf16_as_a_gpu_does(monkeypatch, fresh_seed):
    """With the fix, a kernel's bf16 casts are torch's (round to nearest even, what a GPU's fptrunc
    does); the interpreter's own cast, put back, rounds toward zero, so the check can fail."""
    x = _fp32_cases(torch.Generator().manual_seed(fresh_seed))
    cast = interpreter.InterpreterBuilder.cast_impl
    assert getattr(cast, "original", None) is not None  # installed when the kernels were imported
    to, stored, half = _casts(x)
    assert _same_bf16(to, x.to(torch.bfloat16)) and _same_bf16(stored, x.to(torch.bfloat16))
    assert torch.equal(half.isnan(), x.isnan()) and torch.equal(half[~x.isnan()], x.half()[~x.isnan()])
    monkeypatch.setattr(interpreter.InterpreterBuilder, "cast_impl", cast.original)
    to, stored, half_own = _casts(x)
    normal = x.isfinite() & (x.abs() >= torch.finfo(torch.float32).tiny)  # (it mangles subnormals too)
    truncated = (x[normal].view(torch.int32) >> 16).to(torch.int16)
    assert torch.equal(to[normal].view(torch.int16), truncated) and not _same_bf16(to, x.to(torch.bfloat16))
    assert torch.equal(half_own.view(torch.int16), half.view(torch.int16))

"""The fused noisy mixed-op sum: Triton kernels (interpreter on CPU) against the reference.

The reference gets the very ε the kernels drew (written out by a tiny kernel), so forward and
every gradient are compared with per-dtype tolerances, on fresh random inputs and odd shapes.
"""
import pytest
import torch

import ndarts_kernels
from ndarts import NoiseConfig, noisy_mixed_sum
from ndarts.fused_sum import draw_seed, reference_sum_with_eps
from ndarts.noise import KIND_CODE

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (dtype, atol, rtol): the kernel accumulates in fp32; the reference does too, so the error is the
# final rounding to the output dtype plus summation order.
DTYPES = [
    (torch.float32, 2e-5, 2e-5),
    (torch.bfloat16, 1e-3, 2 ** -7),
    (torch.float16, 4e-3, 2e-3),
]
SHAPES = [(2, 3, 5, 7), (3, 16, 8, 8), (1, 1, 1, 123), (4, 5, 13, 11), (77,)]
VARIANTS = {
    "gaussian": NoiseConfig(),
    "uniform": NoiseConfig(kind="uniform", lam=0.1),
    "multiplicative": NoiseConfig(mixture="multiplicative", lam=0.3),
    "mean": NoiseConfig(mean=0.5, lam=0.2),
    "none": NoiseConfig(kind="none"),
}


def _inputs(shape, k, dtype, device, offset=0.0):
    ops = [(torch.randn(shape, device=device) * (1 + i) + offset).to(dtype) for i in range(k)]
    w = torch.softmax(torch.randn(k, device=device), 0)
    return ops, w


def _reference(ops, w, skip, noise, scale, seed, g):
    """Reference y and gradients with the kernels' ε."""
    kind, mult, lam, mean = noise.kernel_params(scale)
    eps = ndarts_kernels.unit_noise(seed, ops[0].numel(), kind) if noise.enabled else None
    if eps is not None:
        # ε is indexed by memory position; map it to the logical layout of the operand
        eps = eps.reshape(ops[skip].permute(*_dim_order(ops[skip])).shape).permute(*_inverse(_dim_order(ops[skip])))
    ops_r = [o.detach().clone().requires_grad_() for o in ops]
    w_r = w.detach().clone().requires_grad_()
    y = reference_sum_with_eps(ops_r, w_r, skip, mult, lam, mean, eps)
    y.backward(g)
    return y.detach(), [o.grad for o in ops_r], w_r.grad


def _dim_order(t):
    """Dimensions from outermost to innermost in memory."""
    return sorted(range(t.dim()), key=lambda d: -t.stride(d))


def _inverse(order):
    inv = [0] * len(order)
    for i, d in enumerate(order):
        inv[d] = i
    return inv


def _fused(ops, w, skip, noise, scale, seed, g):
    ops_f = [o.detach().clone().requires_grad_() for o in ops]
    w_f = w.detach().clone().requires_grad_()
    y = noisy_mixed_sum(ops_f, w_f, skip, noise, scale=scale, backend="triton", seed=seed)
    y.backward(g)
    return y.detach(), [o.grad for o in ops_f], w_f.grad


def _close(a, b, atol, rtol, what):
    assert a.shape == b.shape, what
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_and_gradients_match_reference(device, dtype, atol, rtol, shape, variant):
    noise = VARIANTS[variant]
    k = 7
    ops, w = _inputs(shape, k, dtype, device, offset=1.5)
    skip = int(torch.randint(k, (1,)))
    scale = float(torch.rand(()) * 0.5 + 0.5)
    seed = draw_seed(device)
    g = torch.randn(shape, device=device).to(dtype)
    y_f, d_f, dw_f = _fused(ops, w, skip, noise, scale, seed, g)
    y_r, d_r, dw_r = _reference(ops, w, skip, noise, scale, seed, g)
    _close(y_f, y_r, atol * 4, rtol, "y")
    for i, (a, b) in enumerate(zip(d_f, d_r)):
        _close(a, b, atol, rtol, f"d operand {i}")
    # dW sums g·o over all elements: the tolerance scales with the number of terms
    n = ops[0].numel()
    _close(dw_f, dw_r, atol * n ** 0.5 * 4, rtol * 4, "dW")


@pytest.mark.parametrize("k", [1, 2, 9, 17])
def test_operand_counts_including_chunks(k):
    """Any number of operands: more than the kernel's 8 pointer slots run in accumulating chunks."""
    shape = (3, 4, 6, 5)
    ops, w = _inputs(shape, k, torch.float32, "cpu")
    skip = k - 1 if k > 8 else 0  # a skip in a later chunk
    seed = draw_seed("cpu")
    g = torch.randn(shape)
    y_f, d_f, dw_f = _fused(ops, w, skip, NoiseConfig(), 1.0, seed, g)
    y_r, d_r, dw_r = _reference(ops, w, skip, NoiseConfig(), 1.0, seed, g)
    _close(y_f, y_r, 1e-5, 1e-5, "y")
    for a, b in zip(d_f, d_r):
        _close(a, b, 1e-5, 1e-5, "d operand")
    _close(dw_f, dw_r, 1e-4, 1e-4, "dW")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_low_precision_sum_over_several_chunks_is_rounded_once(dtype, fresh_seed):
    """More operands than one launch takes: large ones in the first chunk, their negatives in the
    second, small ones in the third. The running sums between the launches (≈ 10^3) are far coarser
    in bf16/fp16 than the result (≈ 1); kept in fp32 they are exact here, so the result is the exact
    sum rounded once to the operands' dtype."""
    shape = (2, 3, 5, 7)
    big = [(torch.randn(shape) * 300 + 700).to(dtype) for _ in range(ndarts_kernels.MAX_OPERANDS)]
    ops = big + [-b for b in big] + [torch.randn(shape).to(dtype) for _ in range(2)]
    w = torch.ones(len(ops))
    y, _ = ndarts_kernels.noisy_mixed_sum_forward(ops, w, draw_seed("cpu"), -1, KIND_CODE["none"], False, 0.0, 0.0)
    assert y.dtype == dtype
    want = torch.stack([o.double() for o in ops]).sum(0)
    torch.testing.assert_close(y.double(), want, atol=1e-6, rtol=torch.finfo(dtype).eps / 2)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_channels_last(dtype, atol, rtol):
    shape = (3, 6, 5, 7)
    ops, w = _inputs(shape, 7, dtype, "cpu")
    ops = [o.contiguous(memory_format=torch.channels_last) for o in ops]
    seed = draw_seed("cpu")
    g = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    y_f, d_f, dw_f = _fused(ops, w, 3, NoiseConfig(), 1.0, seed, g)
    assert y_f.is_contiguous(memory_format=torch.channels_last)
    y_r, d_r, dw_r = _reference(ops, w, 3, NoiseConfig(), 1.0, seed, g)
    _close(y_f, y_r, atol * 4, rtol, "y")
    for a, b in zip(d_f, d_r):
        _close(a, b, atol, rtol, "d operand")
    _close(dw_f, dw_r, atol * 200, rtol * 4, "dW")


def test_mixed_layouts_are_made_consistent():
    """One channels_last operand among contiguous ones: the result is still right."""
    shape = (2, 5, 4, 3)
    ops, w = _inputs(shape, 4, torch.float32, "cpu")
    ops_mixed = [ops[0], ops[1].contiguous(memory_format=torch.channels_last), ops[2], ops[3]]
    y = noisy_mixed_sum(ops_mixed, w, None, backend="triton")
    torch.testing.assert_close(y, sum(wi * o for wi, o in zip(w, ops)), atol=1e-5, rtol=1e-5)


def test_std_is_exact_when_the_mean_is_large():
    """Chan merge of (count, mean, M2): naive fp32 Σx, Σx² would lose everything at mean 1e4."""
    x = torch.randn(3, 7, 33, 17, dtype=torch.float64) * 0.7 + 1e4
    std = ndarts_kernels.skip_std(x.float())
    torch.testing.assert_close(std.double().reshape(()), x.std(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("tiles_per_program", [1, 3])
def test_std_many_programs(monkeypatch, tiles_per_program):
    """Many partials, several tiles per program and several merge steps (small blocks here);
    a trend makes the block means differ, so every term of Chan's merge matters."""
    import ndarts_kernels.noisy_mixed_sum as mod

    monkeypatch.setattr(mod, "_elementwise_block", lambda n: (16, 4))
    monkeypatch.setattr(mod, "_stats_tiles_per_program", lambda tiles: tiles_per_program)
    monkeypatch.setattr(mod, "MERGE_BLOCK", 32)
    n = 4_011
    x = torch.randn(n, dtype=torch.float64) * 0.3 + torch.linspace(-20, 60, n, dtype=torch.float64) ** 2 / 100
    std = mod.skip_std(x.float())
    torch.testing.assert_close(std.double().reshape(()), x.std(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("count", [1, 3, 6, 9, 17])  # 9, 17: two and three launches (MAX_STDS = 8)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_several_stds_at_once(monkeypatch, count, dtype, rtol, fresh_seed):
    """skip_stds: each tensor's std (odd shapes, different means and scales, one channels_last,
    several programs each) from one pair of launches per MAX_STDS tensors, as skip_std gives it; more
    tensors than one launch takes: each chunk's stds land in their own slots."""
    import ndarts_kernels.noisy_mixed_sum as mod

    monkeypatch.setattr(mod, "_elementwise_block", lambda n: (64, 4))
    xs = [(torch.randn(3, 5, 7, 4) * (1 + k) + 10 * k).to(dtype) for k in range(count)]
    xs[-1] = xs[-1].contiguous(memory_format=torch.channels_last)
    launches = []

    class Counted:  # the kernel, its launches counted
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    kernel = mod._skip_stats_kernel
    monkeypatch.setattr(mod, "_skip_stats_kernel", Counted())
    got = mod.skip_stds(xs)
    assert got.shape == (count,) and got.dtype == torch.float32
    assert len(launches) == (count + mod.MAX_STDS - 1) // mod.MAX_STDS
    for k, x in enumerate(xs):
        torch.testing.assert_close(got[k].double(), x.double().std(), rtol=rtol, atol=0)
        torch.testing.assert_close(got[k:k + 1], mod.skip_std(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="as many elements"):
        mod.skip_stds([xs[0], torch.randn(2, 2)])


def test_int64_indexing_path(monkeypatch):
    """Tensors of ≥ 2^31 elements switch to int64 indices; forced here on a small tensor."""
    import ndarts_kernels.noisy_mixed_sum as mod

    shape = (2, 3, 9, 7)
    ops, w = _inputs(shape, 7, torch.float32, "cpu")
    seed = draw_seed("cpu")
    g = torch.randn(shape)
    y32, d32, dw32 = _fused(ops, w, 3, NoiseConfig(), 1.0, seed, g)
    monkeypatch.setattr(mod, "INT32_LIMIT", 0)
    y64, d64, dw64 = _fused(ops, w, 3, NoiseConfig(), 1.0, seed, g)
    torch.testing.assert_close(y64, y32)
    torch.testing.assert_close(dw64, dw32)
    for a, b in zip(d64, d32):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_noise_statistics(kind, backend):
    """noise = (y − Σ w·o) / w_skip has mean μ and std λ·std(o_skip)."""
    n = 64 * 1024
    x = torch.randn(n) * 2.5 + 3.0
    other = torch.randn(n)
    w = torch.tensor([0.4, 0.6])
    noise_cfg = NoiseConfig(kind=kind, lam=0.2, mean=0.1)
    y = noisy_mixed_sum([other, x], w, 1, noise_cfg, backend=backend)
    noise = (y - w[0] * other - w[1] * x) / w[1]
    sigma = 0.2 * x.std()
    # mean of n draws: standard error σ/√n; std: relative standard error ≈ 1/√(2n) (gaussian)
    assert abs(noise.mean() - 0.1) < 5 * sigma / n ** 0.5
    assert abs(noise.std() / sigma - 1) < 5 / (2 * n) ** 0.5 * 2
    if kind == "uniform":
        half_width = 3 ** 0.5 * sigma
        assert noise.max() <= 0.1 + half_width * 1.0001 and noise.min() >= 0.1 - half_width * 1.0001
        assert noise.max() > 0.1 + 0.99 * half_width


def test_same_seed_same_noise_new_seed_new_noise():
    ops, w = _inputs((4, 8, 5, 5), 3, torch.float32, "cpu")
    torch.manual_seed(123)
    a = noisy_mixed_sum(ops, w, 1, NoiseConfig(), backend="triton")
    b = noisy_mixed_sum(ops, w, 1, NoiseConfig(), backend="triton")
    torch.manual_seed(123)
    c = noisy_mixed_sum(ops, w, 1, NoiseConfig(), backend="triton")
    assert torch.equal(a, c)
    assert not torch.allclose(a, b)


def test_backward_uses_the_forward_noise():
    """dW_skip = Σ g·(o + x̃) with x̃ read back from the forward output: the same ε, regenerated."""
    shape = (3, 4, 7, 7)
    ops, w = _inputs(shape, 3, torch.float32, "cpu")
    ops = [o.requires_grad_() for o in ops]
    w = w.requires_grad_()
    y = noisy_mixed_sum(ops, w, 2, NoiseConfig(lam=0.5), backend="triton")
    with torch.no_grad():
        noisy_skip = (y - w[0] * ops[0] - w[1] * ops[1]) / w[2]
    g = torch.randn(shape)
    y.backward(g)
    torch.testing.assert_close(w.grad[2], (g * noisy_skip).sum(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(w.grad[0], (g * ops[0].detach()).sum(), rtol=1e-4, atol=1e-3)
    # the noise is a constant: d y / d o_skip = w_skip
    torch.testing.assert_close(ops[2].grad, w[2].detach() * g)


def test_eval_mode_and_no_skip_draw_no_noise():
    ops, w = _inputs((2, 3, 4, 4), 3, torch.float32, "cpu")
    clean = sum(wi * o for wi, o in zip(w, ops))
    for y in (noisy_mixed_sum(ops, w, 1, NoiseConfig(), training=False, backend="triton"),
              noisy_mixed_sum(ops, w, None, NoiseConfig(), backend="triton"),
              noisy_mixed_sum(ops, w, 1, NoiseConfig(kind="none"), backend="triton")):
        torch.testing.assert_close(y, clean, atol=1e-6, rtol=1e-6)


def test_nan_in_skip_operand_is_loud():
    """Documented behaviour: a NaN in the skip operand makes std NaN and the whole output NaN."""
    ops, w = _inputs((2, 3, 4, 4), 3, torch.float32, "cpu")
    ops[1][0, 0, 0, 0] = float("nan")
    for backend in ("triton", "torch"):
        y = noisy_mixed_sum(ops, w, 1, NoiseConfig(), backend=backend)
        assert torch.isnan(y).all()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case,match", [
    ("shape", "operand 1 has shape"),
    ("dtype", "operand 1 has dtype"),
    ("weights_len", "weights must be a 1-D tensor of length 3"),
    ("weights_2d", "weights must be a 1-D tensor"),
    ("int_operands", "must be floating point"),
    ("float64_on_triton", "Triton backend takes float32, float16 or bfloat16"),
    ("skip_range", "skip_index 5 is out of range"),
    ("skip_float", "skip_index must be an int or None, got 1.0"),
    ("skip_bool", "skip_index must be an int or None, got True"),
    ("empty", "non-empty list"),
    ("device", "is on meta"),
    ("noise_string", "noise must be a NoiseConfig, got str 'gaussian'"),
    ("one_element_skip", "the skip operand has 1 element"),
])
def test_bad_input_is_a_clear_error(case, match):
    ops, w = _inputs((2, 3, 4, 4), 3, torch.float32, "cpu")
    skip = 1
    if case == "shape":
        ops[1] = torch.randn(2, 3, 4, 5)
    elif case == "dtype":
        ops[1] = ops[1].double()
    elif case == "weights_len":
        w = torch.ones(4)
    elif case == "weights_2d":
        w = torch.ones(3, 1)
    elif case == "int_operands":
        ops = [torch.ones(2, 3, dtype=torch.int32) for _ in range(3)]
    elif case == "float64_on_triton":
        ops = [o.double() for o in ops]
    elif case == "skip_range":
        skip = 5
    elif case == "skip_float":
        skip = 1.0
    elif case == "skip_bool":
        skip = True
    elif case == "empty":
        ops = []
    elif case == "device":
        ops[1] = torch.empty(2, 3, 4, 4, device="meta")
    noise = NoiseConfig()
    if case == "noise_string":
        noise = "gaussian"
    elif case == "one_element_skip":  # its unbiased std is 0/0
        ops = [torch.randn(1, 1, 1, 1) for _ in range(3)]
    with pytest.raises((ValueError, TypeError), match=match):
        noisy_mixed_sum(ops, w, skip, noise, backend="triton")


@pytest.mark.parametrize("seed,got", [
    (torch.tensor([1.5]), "torch.float32 tensor of 1 elements"),
    (7, "got a int"),
    (torch.tensor([1, 2]), "torch.int64 tensor of 2 elements"),
    (torch.tensor([], dtype=torch.int64), "torch.int64 tensor of 0 elements"),
    (torch.zeros(1, dtype=torch.int64, device="meta"), "on meta"),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_bad_seed_is_a_clear_error(seed, got, backend):
    """seed= is read by the kernels as one int64 on the device: anything else is refused up front
    (an empty one was an out-of-bounds read, a float one an error from inside Triton)."""
    ops, w = _inputs((2, 3, 4, 4), 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="seed must be a one-element int64 tensor on the operands' device") as e:
        noisy_mixed_sum(ops, w, 1, NoiseConfig(), backend=backend, seed=seed)
    assert got in str(e.value)


@pytest.mark.parametrize("shape", [(0,), (0, 3, 2, 2), (1,), (1, 1, 1, 1)])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_std_of_fewer_than_two_elements_is_nan(shape, backend):
    """As torch.std: the unbiased std of one element, or of none, is NaN (the merge kernel gave
    -0.0 for none: sqrt(0 / -1))."""
    import warnings

    from ndarts.fused_sum import skip_operand_std, skip_operand_stds

    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.std warns about its degrees of freedom
        assert torch.isnan(skip_operand_std(x, backend)).all()
        assert all(torch.isnan(s).all() for s in skip_operand_stds([x, torch.randn(shape)], backend))


def test_several_stds_of_different_dtypes():
    """skip_stds launches one kernel over the tensors: it refuses dtypes that differ (a compiled
    kernel cannot take fp32 and fp16 pointers in one argument slot), and skip_operand_stds then
    takes each tensor's std alone."""
    from ndarts.fused_sum import skip_operand_std, skip_operand_stds

    xs = [torch.randn(3, 4, 5) * 2 + 1, (torch.randn(3, 4, 5) * 3 - 1).half()]
    with pytest.raises(ValueError, match="one dtype"):
        ndarts_kernels.skip_stds(xs)
    got = skip_operand_stds(xs, "triton")
    for s, x in zip(got, xs):
        torch.testing.assert_close(s, skip_operand_std(x, "triton"), rtol=0, atol=0)
        torch.testing.assert_close(s.double().reshape(()), x.double().std(), rtol=1e-5, atol=0)


def test_a_one_element_skip_operand_is_fine_without_std():
    """Without std (eval, noise off, multiplicative noise) a one-element skip operand is summed as usual."""
    ops, w = _inputs((1,), 3, torch.float32, "cpu")
    clean = sum(wk * o for wk, o in zip(w, ops))
    for backend in ("triton", "torch"):
        torch.testing.assert_close(noisy_mixed_sum(ops, w, 1, NoiseConfig(), training=False, backend=backend), clean)
        torch.testing.assert_close(noisy_mixed_sum(ops, w, 1, NoiseConfig(kind="none"), backend=backend), clean)
        y = noisy_mixed_sum(ops, w, 1, NoiseConfig(mixture="multiplicative", lam=0.1), backend=backend)
        assert torch.isfinite(y).all() and y.shape == (1,)


def test_kernel_kind_codes_agree():
    assert KIND_CODE == {"none": ndarts_kernels.noisy_mixed_sum.NOISE_NONE,
                         "gaussian": ndarts_kernels.noisy_mixed_sum.NOISE_GAUSSIAN,
                         "uniform": ndarts_kernels.noisy_mixed_sum.NOISE_UNIFORM}


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_given_skip_std_is_the_one_computed(backend, fresh_seed):
    """std= (a skip operand shared by several sums: skip_operand_std once) gives the very output and
    gradients of the sum that computes the std itself; a bad std is a clear error."""
    from ndarts.fused_sum import skip_operand_std

    ops, w = _inputs((3, 4, 5, 6), 5, torch.float32, "cpu", offset=2.0)
    seed = draw_seed("cpu")
    results = []
    for std in (None, skip_operand_std(ops[2], backend)):
        ops_r = [o.clone().requires_grad_() for o in ops]
        w_r = w.clone().requires_grad_()
        y = noisy_mixed_sum(ops_r, w_r, 2, NoiseConfig(lam=1.0), seed=seed, backend=backend, std=std)
        y.backward(torch.ones_like(y))
        results.append((y.detach(), w_r.grad, ops_r[2].grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # and it is the std used: twice the std, twice the noise
    doubled = noisy_mixed_sum(ops, w, 2, NoiseConfig(lam=1.0), seed=seed, backend=backend,
                              std=2 * skip_operand_std(ops[2], backend))
    clean = noisy_mixed_sum(ops, w, 2, NoiseConfig(kind="none"), backend=backend)
    torch.testing.assert_close(doubled - clean, 2 * (results[0][0] - clean), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="std"):
        noisy_mixed_sum(ops, w, 2, NoiseConfig(), backend=backend, std=torch.ones(3))

"""FusedMixedOp and the torch custom op: drop-in compatibility, backend choice, torch.compile,
opcheck, and a short search with the Triton backend (interpreter) against the reference."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ndarts import DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES, FusedMixedOp, MixedOp, NoiseConfig, noisy_mixed_sum
from ndarts.backend import BackendError, resolve_backend
from ndarts.fused_sum import draw_seed
from ndarts.search_model import SearchNetwork

# The keys of the classic DARTS MixedOp (C=4, stride 1): pooling ops wrapped with their BatchNorm.
CLASSIC_DARTS_KEYS_STRIDE1 = {
    "_ops.1.1.running_mean", "_ops.1.1.running_var", "_ops.1.1.num_batches_tracked",
    "_ops.2.1.running_mean", "_ops.2.1.running_var", "_ops.2.1.num_batches_tracked",
    *(f"_ops.{i}.op.{j}.weight" for i in (4, 5) for j in (1, 2, 5, 6)),
    *(f"_ops.{i}.op.{j}.{b}" for i in (4, 5) for j in (3, 7) for b in ("running_mean", "running_var", "num_batches_tracked")),
    *(f"_ops.{i}.op.{j}.weight" for i in (6, 7) for j in (1, 2)),
    *(f"_ops.{i}.op.3.{b}" for i in (6, 7) for b in ("running_mean", "running_var", "num_batches_tracked")),
}


def test_state_dict_layout_is_classic_darts():
    assert set(MixedOp(4, 1).state_dict()) == CLASSIC_DARTS_KEYS_STRIDE1
    assert set(FusedMixedOp(4, 1).state_dict()) == CLASSIC_DARTS_KEYS_STRIDE1
    keys2 = set(FusedMixedOp(4, 2).state_dict())
    assert {"_ops.3.conv_1.weight", "_ops.3.conv_2.weight", "_ops.3.bn.running_mean"} <= keys2


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_state_dict_interchange_and_equal_results(stride, primitives, backend):
    ref = MixedOp(6, stride, primitives)
    # move the BN statistics away from their init so that loading them matters
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fused = FusedMixedOp(6, stride, primitives, backend=backend)
    fused.load_state_dict(ref.state_dict(), strict=True)
    back = MixedOp(6, stride, primitives)
    back.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(3, 6, 9, 7)
    w = torch.softmax(torch.randn(len(primitives)), 0)
    for m in (ref, fused, back):
        m.eval()
    torch.testing.assert_close(fused(x, w), ref(x, w), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back(x, w), ref(x, w))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_gradients_match_reference_without_noise(stride, backend):
    """Training mode (batch statistics), noise off: every gradient equals the reference's."""
    noise = NoiseConfig(kind="none")
    ref = MixedOp(6, stride, DARTS_PRIMITIVES, noise)
    fused = FusedMixedOp(6, stride, DARTS_PRIMITIVES, noise, backend=backend)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 8, 6)
    alpha = torch.randn(8)
    outs = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_()
        a = alpha.clone().requires_grad_()
        y = m(xi, torch.softmax(a, 0))
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        y.backward(g)
        outs.append((y, xi.grad, a.grad, [p.grad for p in m.parameters()]))
    (y0, gx0, ga0, gp0), (y1, gx1, ga1, gp1) = outs
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx1, gx0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga1, ga0, atol=1e-4, rtol=1e-4)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_none_op_is_never_called():
    op = FusedMixedOp(4, 1, DARTS_PRIMITIVES, backend="torch")

    def boom(*_):
        raise AssertionError("the none op was computed")

    op._ops[0].forward = boom
    op(torch.randn(2, 4, 5, 5), torch.softmax(torch.randn(8), 0))
    ref = MixedOp(4, 1, DARTS_PRIMITIVES)
    ref._ops[0].forward = boom
    ref(torch.randn(2, 4, 5, 5), torch.softmax(torch.randn(8), 0))


def test_mixed_operand_dtypes_are_promoted_like_the_reference():
    ref = MixedOp(4, 1, ["skip_connect", "avg_pool_3x3"], NoiseConfig(kind="none")).eval()
    fused = FusedMixedOp(4, 1, ["skip_connect", "avg_pool_3x3"], NoiseConfig(kind="none"), backend="triton").eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 5, 5).to(torch.bfloat16)
    for m in (ref, fused):  # as under autocast: one branch comes out fp32, the skip stays bf16
        pool = m._ops[1]
        m._ops[1] = torch.nn.Sequential()
        m._ops[1].forward = lambda t, pool=pool: pool(t).float()
    w = torch.softmax(torch.randn(2), 0)
    y_ref, y = ref(x, w), fused(x, w)
    assert y.dtype == y_ref.dtype == torch.float32
    exact = w[0] * x.float() + w[1] * fused._ops[1](x)
    torch.testing.assert_close(y, exact, atol=1e-5, rtol=1e-5)  # fp32 accumulation
    torch.testing.assert_close(y_ref, exact, atol=2e-2, rtol=1e-2)  # the reference rounds w·x to bf16


def test_wrong_weights_length_is_clear():
    with pytest.raises(ValueError, match=r"weights must have shape \(8,\)"):
        FusedMixedOp(4, 1)(torch.randn(1, 4, 3, 3), torch.ones(7))


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
@pytest.mark.parametrize("args,kw,error,message", [
    ((0, 1), {}, ValueError, "C (channels) must be an int >= 1, got 0"),
    ((4.0, 1), {}, ValueError, "C (channels) must be an int >= 1, got 4.0"),
    ((4, 3), {}, ValueError, "stride must be 1 (normal edge) or 2 (reduction edge), got 3"),
    ((4, 1), {"noise": "gaussian"}, TypeError, "noise must be a NoiseConfig or None, got str"),
])
def test_bad_construction_is_clear(cls, args, kw, error, message):
    with pytest.raises(error) as exc:
        cls(*args, **kw)
    assert message in str(exc.value)


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
@pytest.mark.parametrize("x,message", [
    (torch.randn(2, 3, 6, 6), "MixedOp(C=4): x must be [N, 4, H, W], got (2, 3, 6, 6)"),  # was a BatchNorm error
    (torch.randn(4, 6, 6), "got (4, 6, 6)"),
])
def test_an_input_of_the_wrong_shape_is_clear(cls, x, message):
    with pytest.raises(ValueError) as exc:
        cls(4, 1)(x, torch.softmax(torch.randn(8), 0))
    assert message in str(exc.value)


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
@pytest.mark.parametrize("case", ["x elsewhere", "weights elsewhere", "int weights"])
def test_an_input_on_another_device_or_int_weights_is_clear(cls, case):
    """x on another device than the op's parameters, or weights on another than x, was a torch
    error ~20 frames deep ('Tensor on device cpu is not on the expected device meta!'); int64
    weights passed MixedOp. The meta device stands in for a GPU."""
    m, x, w = cls(4, 1), torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(8), 0)
    if case == "x elsewhere":
        m = m.to("meta")
        error, message = ValueError, f"{cls.__name__}(C=4): x is on cpu but the op's parameters are on meta"
    elif case == "weights elsewhere":
        w = w.to("meta")
        error, message = ValueError, f"{cls.__name__}: weights are on meta, x on cpu"
    else:
        w = torch.ones(8, dtype=torch.int64)
        error, message = TypeError, f"{cls.__name__}: weights must be floating point"
    with pytest.raises(error) as exc:
        m(x, w)
    assert message in str(exc.value)


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
def test_errors_name_the_class_used(cls, fresh_seed):
    k = int(torch.randint(1, 8, (1,)))  # any wrong number of weights
    with pytest.raises(ValueError) as exc:
        cls(16, 2)(torch.randn(2, 16, 4, 4), torch.ones(k))
    assert str(exc.value).startswith(f"{cls.__name__}: weights must have shape (8,)")
    with pytest.raises(ValueError, match=f"^{cls.__name__}: stride must be"):
        cls(16, 3)


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("x_dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_an_input_of_another_dtype_is_clear(cls, stride, x_dtype):
    """Outside autocast, x's dtype must be the op's parameters' (was a torch error 13 frames deep,
    e.g. 'mixed dtype (CPU): all inputs must share same datatype')."""
    m = cls(4, stride)
    x = torch.randn(2, 4, 6, 6).to(x_dtype)
    w = torch.softmax(torch.randn(8), 0)
    with pytest.raises(TypeError) as exc:
        m(x, w)
    assert f"{cls.__name__}(C=4): x is {x_dtype} but the op's parameters are torch.float32" in str(exc.value)
    m.to(x_dtype if x_dtype.is_floating_point else torch.float64)  # converted: the check follows
    if x_dtype == torch.float64:
        assert m(x, w.double()).dtype == torch.float64
    with pytest.raises(TypeError, match="x is torch.float32 but the op's parameters are"):
        m(torch.randn(2, 4, 6, 6), w)


@pytest.mark.parametrize("cls", [MixedOp, FusedMixedOp])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_autocast_takes_inputs_of_other_dtypes(cls, x_dtype):
    """Under autocast an fp32 op takes fp32, bf16 and fp16 inputs (autocast casts them); fp64 stays an error."""
    m = cls(4, 2).train()
    w = torch.softmax(torch.randn(8), 0)
    with torch.autocast("cpu", torch.bfloat16):
        y = m(torch.randn(2, 4, 6, 6).to(x_dtype), w)
        assert torch.isfinite(y).all()
        with pytest.raises(TypeError, match="x is torch.float64"):
            m(torch.randn(2, 4, 6, 6, dtype=torch.float64), w)


def test_the_dtype_check_follows_replaced_parameters():
    """load_state_dict(assign=True) replaces the parameters: the check reads the op's own."""
    m = MixedOp(4, 1)
    m.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()}, assign=True)
    x, w = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    assert m(x, w).dtype == torch.float64
    with pytest.raises(TypeError, match="parameters are torch.float64"):
        m(x.float(), w)


@pytest.mark.parametrize("backend", ["bogus", "", "cuda-magic"])
def test_an_unknown_backend_is_refused_at_construction(backend):
    with pytest.raises(BackendError, match=f"unknown backend {backend!r} \\(from argument\\)"):
        FusedMixedOp(16, 1, backend=backend)
    for name in ("auto", "torch", "triton", " Torch ", None):
        FusedMixedOp(4, 1, backend=name)


@pytest.mark.parametrize("position", ["output", "input"])
@pytest.mark.parametrize("cls,backend", [(MixedOp, None), (FusedMixedOp, "torch"), (FusedMixedOp, "triton")])
def test_reduction_noise_position(position, cls, backend, fresh_seed):
    """Noise on FactorizedReduce's output (official) or input (paper), told apart by what its last
    BatchNorm (train mode, affine=False) leaves: on the input, the output is that BatchNorm's, each
    channel of mean 0 and variance 1; on the output, the noise (λ = 0.5 of the output's std ≈ 1)
    comes after it, variance ≈ 1 + λ² = 1.25. Noisy in training, deterministic in eval."""
    x = torch.randn(8, 4, 16, 16) * 3 + 1
    w = torch.zeros(7)
    w[2] = 1.0  # only the skip (FactorizedReduce) contributes
    kw = {} if backend is None else {"backend": backend}
    m = cls(4, 2, NOISYDARTS_PRIMITIVES, NoiseConfig(lam=0.5, reduction_position=position), **kw).train()
    a, b = m(x, w), m(x, w)
    assert not torch.allclose(a, b)
    mean, var = a.mean(dim=(0, 2, 3)), a.var(dim=(0, 2, 3), unbiased=False)
    if position == "input":
        torch.testing.assert_close(mean, torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(var, torch.ones(4), atol=1e-3, rtol=0)
    else:  # 2048 elements: the variance's estimate is off by ~3 %
        assert 1.12 < float(var.mean().detach()) < 1.38, var
    m.eval()
    torch.testing.assert_close(m(x, w), m(x, w))


@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cls,backend", [(MixedOp, None), (FusedMixedOp, "torch"), (FusedMixedOp, "triton")])
def test_only_the_skip_connection_is_noisy(primitives, stride, cls, backend, fresh_seed):
    """Each primitive alone (one-hot weights) in training, twice: only skip_connect's output
    changes between the calls, by noise of std λ·std(its output) (λ = 0.3); every other op gives
    the same output both times. With 'none' among the primitives (DARTS's space), the skip's index
    among the live operands differs from its index among the primitives."""
    x = torch.randn(4, 4, 12, 12)
    kw = {} if backend is None else {"backend": backend}
    m = cls(4, stride, primitives, NoiseConfig(lam=0.3), **kw).train()
    quiet = cls(4, stride, primitives, NoiseConfig(kind="none"), **kw).train()  # the same op without noise
    quiet.load_state_dict(m.state_dict())
    skip = primitives.index("skip_connect")
    for k in range(len(primitives)):
        w = torch.zeros(len(primitives))
        w[k] = 1.0
        a, b = m(x, w), m(x, w)
        if k != skip:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{primitives[k]} is noisy")
            continue
        clean = quiet(x, w)  # training mode too: a stride-2 skip's BatchNorm uses the batch's statistics
        for y in (a, b):
            ratio = float(((y - clean).std() / clean.std()).detach())
            assert abs(ratio - 0.3) < 0.3 * 0.15, (primitives[k], ratio)
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_reduction_inputs_skip_stds_are_computed_together(backend, monkeypatch):
    """The noisy skip operands of a reduction input's stride-2 edges (their FactorizedReduces'
    outputs, computed together) get their stds from one skip_operand_stds call per node: the same
    output as each edge computing its own std, and the std is the one used (doubled: different).
    Per-edge sums (group_sums=False): a group sum computes its edges' stds itself."""
    from ndarts.mixed_op import NodeShare

    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=5, layers=3, steps=2, multiplier=2, primitives=DARTS_PRIMITIVES, fused=True,
                        backend=backend, fused_batch_norm=False, noise=NoiseConfig(lam=0.5), group_sums=False)
    x = torch.randn(2, 3, 8, 8)
    together = NodeShare.reduced_std
    calls = []

    def spy(share, op, b):
        calls.append(op)
        return together(share, op, b)

    def run(reduced_std):
        monkeypatch.setattr(NodeShare, "reduced_std", reduced_std)
        torch.manual_seed(1)  # the same noise seeds
        return net(x)

    got = run(spy)
    assert len(calls) == 2 * 2 * 2  # 2 reduction cells, 2 inputs, 2 stride-2 edges each
    from ndarts.fused_sum import skip_operand_std

    alone = run(lambda share, op, b: skip_operand_std(share.reduced(op), b))
    torch.testing.assert_close(got, alone, atol=0, rtol=0)
    doubled = run(lambda share, op, b: 2 * together(share, op, b))
    assert not torch.allclose(got, doubled)


# ----------------------------------------------------------------------------- backend choice
def test_backend_resolution():
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("auto", cpu) == "torch"  # the interpreter is never chosen automatically
    assert resolve_backend("triton", cpu) == "triton"  # tests run under TRITON_INTERPRET=1
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_backend("cuda-magic", cpu)


def test_env_override(monkeypatch):
    monkeypatch.setenv("NDARTS_BACKEND", "triton")
    assert resolve_backend(None, torch.device("cpu")) == "triton"
    monkeypatch.setenv("NDARTS_BACKEND", "bogus")
    with pytest.raises(BackendError, match="NDARTS_BACKEND"):
        resolve_backend(None, torch.device("cpu"))


def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch, ndarts\n"
            "ndarts.noisy_mixed_sum([torch.randn(3)], torch.ones(1), backend='triton')\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "TRITON_INTERPRET=1" in r.stderr and "BackendError" in r.stderr


# ----------------------------------------------------------------------------- the custom op
def _op_args(use_triton, k=3, shape=(2, 3, 4, 5)):
    ops = [torch.randn(shape, requires_grad=True) for _ in range(k)]
    w = torch.softmax(torch.randn(k), 0).requires_grad_()
    return (ops, w, draw_seed("cpu"), 1, 1, False, 0.2, 0.0, use_triton, None)


@pytest.mark.parametrize("use_triton", [False, True])
def test_opcheck(use_triton):
    torch.library.opcheck(torch.ops.ndarts.noisy_mixed_sum.default, _op_args(use_triton))


def _operands_in(layout, k, shape):
    """k fresh operands of `shape` (4-D) in one of the layouts a caller may hand the op."""
    def one(i):
        if layout == "contiguous" or (layout == "mixed" and i % 2 == 0):
            return torch.randn(shape)
        if layout in ("channels_last", "mixed"):
            return torch.randn(shape).contiguous(memory_format=torch.channels_last)
        if layout == "sliced channels_last":  # not dense, but suggests channels_last
            wide = torch.randn(*shape[:3], 2 * shape[3]).contiguous(memory_format=torch.channels_last)
            return wide[..., ::2]
        if layout == "permuted":  # dense, neither contiguous nor channels_last
            return torch.randn(shape[2], shape[3], shape[0], shape[1]).permute(2, 3, 0, 1)
        raise ValueError(layout)
    return [one(i).requires_grad_() for i in range(k)]


LAYOUTS = ["contiguous", "channels_last", "mixed", "sliced channels_last", "permuted"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("use_triton", [False, True])
def test_fake_results_have_the_real_strides(layout, use_triton):
    """The fake implementations of the forward and backward ops give each result the strides the
    real ones give, on both backends: torch.compile's inductor asserts them (a mismatch fails the
    compiled step), and the aot_eager tests above do not check them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    shape = (2, 3, 5, 4)
    ops = [o.detach() for o in _operands_in(layout, 3, shape)]
    w = torch.softmax(torch.randn(3), 0)
    seed = draw_seed("cpu")
    params = (1, 1, False, 0.2, 0.0, use_triton, None)
    y, std = torch.ops.ndarts.noisy_mixed_sum(ops, w, seed, *params)
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)  # not y's layout
    real_grads = torch.ops.ndarts.noisy_mixed_sum_backward(grad, ops, w, seed, std, *params)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(o) for o in ops]
        fw, fseed, fgrad, fstd = (mode.from_tensor(t) for t in (w, seed, grad, std))
        fy, _ = torch.ops.ndarts.noisy_mixed_sum(fake, fw, fseed, *params)
        fake_grads = torch.ops.ndarts.noisy_mixed_sum_backward(fgrad, fake, fw, fseed, fstd, *params)
    assert fy.stride() == y.stride(), (layout, "forward")
    assert [g.stride() for g in fake_grads] == [g.stride() for g in real_grads], (layout, "backward")
    assert [g.dtype for g in fake_grads] == [g.dtype for g in real_grads]
    if layout != "permuted":  # the operands' common dense layout, or the first's if they differ
        assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                               torch.contiguous_format)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("use_triton", [False, True])
def test_opcheck_layouts(layout, use_triton):
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    args = (_operands_in(layout, 3, (2, 3, 4, 5)), w, draw_seed("cpu"), 1, 1, False, 0.2, 0.0, use_triton, None)
    torch.library.opcheck(torch.ops.ndarts.noisy_mixed_sum.default, args)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="inductor on a CPU needs a C++ compiler")
def test_torch_compile_inductor_with_mixed_layouts(tmp_path, monkeypatch):
    """The default torch.compile (inductor, which asserts each custom-op result's strides against
    the fake's) through forward and backward, the operands contiguous and channels_last: the
    gradients equal eager's for the same seed."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # no artifact of an earlier fake
    noise = NoiseConfig(lam=0.3)

    def f(ops, w, seed):
        return noisy_mixed_sum(ops, w, 1, noise, backend="triton", seed=seed)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    ops = _operands_in("mixed", 3, (2, 3, 4, 5))
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    seed, grad = draw_seed("cpu"), torch.randn(2, 3, 4, 5)
    eager = torch.autograd.grad(f(ops, w, seed), [*ops, w], grad)
    got = torch.autograd.grad(compiled(ops, w, seed), [*ops, w], grad)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_fullgraph(backend):
    """torch.compile(fullgraph=True) of a function calling the op: no graph break, same result
    and gradients as eager for the same seed."""
    noise = NoiseConfig(lam=0.3)

    def f(ops, w, seed):
        y = noisy_mixed_sum(ops, w, 2, noise, backend=backend, seed=seed)
        return (y * y).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ops = [torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(4)]
    w = torch.softmax(torch.randn(4), 0).requires_grad_()
    seed = draw_seed("cpu")
    le = f(ops, w, seed)
    ge = torch.autograd.grad(le, [*ops, w])
    lc = compiled(ops, w, seed)
    gc = torch.autograd.grad(lc, [*ops, w])
    torch.testing.assert_close(lc, le)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_torch_compile_mixed_op_module():
    """The whole FusedMixedOp, seed drawn inside, compiles with fullgraph=True."""
    m = FusedMixedOp(4, 1, NOISYDARTS_PRIMITIVES, NoiseConfig(), backend="torch").train()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(7), 0)
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    torch.manual_seed(seed)
    y = compiled(x, w)
    torch.manual_seed(seed)  # the same seed drawn inside: the same noise as eager
    torch.testing.assert_close(y, m(x, w))
    torch.manual_seed(seed + 1)
    assert not torch.allclose(compiled(x, w), y)  # a new seed, new noise


# ----------------------------------------------------------------------------- convergence
def _short_search(backend, steps=2, noise=NoiseConfig(kind="none")):
    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=10, layers=2, primitives=DARTS_PRIMITIVES, noise=noise,
                        fused=True, in_channels=1, backend=backend,
                        fused_batch_norm=False)  # the Triton BatchNorm: tests/test_batch_norm.py
    w_opt = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-3, betas=(0.5, 0.999), weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(6, 1, 8, 8, generator=g), torch.randint(10, (6,), generator=g)
        xv, yv = torch.randn(6, 1, 8, 8, generator=g), torch.randint(10, (6,), generator=g)
        a_opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xv), yv).backward(inputs=net.arch_parameters())
        a_opt.step()
        w_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward(inputs=net.weight_parameters())
        w_opt.step()
        losses.append(float(loss.detach()))
    return losses, [a.detach().clone() for a in net.arch_parameters()]


def test_search_steps_triton_equal_reference():
    """A few search steps: Triton (interpreter) and the reference give the same losses and α."""
    l_ref, a_ref = _short_search("torch")
    l_tri, a_tri = _short_search("triton")
    torch.testing.assert_close(torch.tensor(l_tri), torch.tensor(l_ref), atol=1e-4, rtol=1e-4)
    for a, b in zip(a_tri, a_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

"""FusedMixedOp and the torch custom op: drop-in compatibility, backend choice, torch.compile,
opcheck, and a short search with the Triton backend (interpreter) against the reference."""
import os
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
def test_reduction_noise_position(position):
    """Noise on FactorizedReduce's output (official) or input (paper): both noisy, both differ."""
    torch.manual_seed(0)
    x = torch.randn(4, 4, 8, 8)
    w = torch.zeros(7)
    w[2] = 1.0  # only the skip (FactorizedReduce) contributes
    for cls in (MixedOp, FusedMixedOp):
        m = cls(4, 2, NOISYDARTS_PRIMITIVES, NoiseConfig(lam=0.5, reduction_position=position))
        m.train()
        a, b = m(x, w), m(x, w)
        assert not torch.allclose(a, b)
        m.eval()
        torch.testing.assert_close(m(x, w), m(x, w))


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
    y = compiled(x, w)
    assert y.shape == x.shape and torch.isfinite(y).all()


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

"""GPU checks of the fused op (run by benchmarks/gpu_check.sh on a lent H100/H200; skipped on a CPU).

The compiled Triton kernels on CUDA against the reference with the same ε, CUDA-graph capture
and replay (new noise on every replay, same math), the search network with fused ops,
torch.compile with inductor, and the whole search step as a CUDA graph (ndarts.graph_step). Run with TRITON_INTERPRET unset (gpu_check.sh sets it to 0).
"""
import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _kernels_compiled():
    import ndarts_kernels

    return not ndarts_kernels.INTERPRETED


@pytest.fixture(autouse=True)
def compiled_kernels():
    if not _kernels_compiled():
        pytest.skip("the kernels were defined under TRITON_INTERPRET=1; run the GPU tests without it")


DTYPES = [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2), (torch.float16, 4e-3, 2e-3)]
SHAPES = [(64, 16, 32, 32), (5, 7, 13, 11), (3, 123), (2, 64, 8, 8)]


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_kernels_match_reference(dtype, atol, rtol, shape, channels_last):
    from test_noisy_mixed_sum import _close, _fused, _inputs, _reference

    from ndarts import NoiseConfig
    from ndarts.fused_sum import draw_seed

    if channels_last and len(shape) != 4:
        pytest.skip("channels_last needs 4-D")
    ops, w = _inputs(shape, 7, dtype, "cuda", offset=1.5)
    g = torch.randn(shape, device="cuda").to(dtype)
    if channels_last:
        ops = [o.contiguous(memory_format=torch.channels_last) for o in ops]
        g = g.contiguous(memory_format=torch.channels_last)
    seed = draw_seed("cuda")
    y_f, d_f, dw_f = _fused(ops, w, 3, NoiseConfig(), 1.0, seed, g)
    y_r, d_r, dw_r = _reference(ops, w, 3, NoiseConfig(), 1.0, seed, g)
    _close(y_f, y_r, atol * 4, rtol, "y")
    for a, b in zip(d_f, d_r):
        _close(a, b, atol, rtol, "d operand")
    _close(dw_f, dw_r, atol * ops[0].numel() ** 0.5 * 4, rtol * 4, "dW")


def test_cuda_graph_replay_draws_new_noise():
    from ndarts import NoiseConfig, noisy_mixed_sum

    ops = [torch.randn(8, 16, 16, 16, device="cuda") for _ in range(4)]
    w = torch.softmax(torch.randn(4, device="cuda"), 0)
    clean = sum(wi * o for wi, o in zip(w, ops))
    # warm up on a side stream (Triton compiles; the allocator settles), then capture
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            noisy_mixed_sum(ops, w, 2, NoiseConfig(), backend="triton")
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = noisy_mixed_sum(ops, w, 2, NoiseConfig(), backend="triton")
    outs = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        outs.append(y.clone())
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    for out in outs:
        noise = (out - clean) / w[2]
        sigma = 0.2 * ops[2].std()
        assert abs(float(noise.std() / sigma) - 1) < 0.05
        assert abs(float(noise.mean())) < 5 * float(sigma) / noise.numel() ** 0.5


def test_search_network_fused_equals_reference_without_noise():
    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.search_model import SearchNetwork

    # TF32 convolutions (cuDNN's default) round inputs to 10 mantissa bits: the 1e-7 differences
    # between the Triton and cuDNN BatchNorms then grow to ~1e-3 per layer (α gradients 1.8 % apart
    # on an H200, 2026-11-27). In fp32 both networks compute the same function.
    with _no_tf32():
        torch.manual_seed(0)
        ref = SearchNetwork(C=8, layers=5, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(kind="none")).cuda()
        fused = SearchNetwork(C=8, layers=5, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(kind="none"),
                              fused=True, backend="triton").cuda()
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(16, 3, 32, 32, device="cuda")
        losses, grads = [], []
        for net in (ref, fused):
            loss = net(x).logsumexp(1).mean()
            loss.backward()
            losses.append(loss.detach())
            grads.append([a.grad.clone() for a in net.arch_parameters()])
    torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(grads[1], grads[0]):
        # α gradients are sums over whole feature maps: small entries cancel, so the tolerance is
        # relative to the largest entry (the Triton BatchNorm and cuDNN's round differently)
        assert float((a - b).norm() / b.norm()) < 1e-3
        torch.testing.assert_close(a, b, atol=2e-3 * float(b.abs().max()), rtol=1e-3)


@contextlib.contextmanager
def _tf32(enabled: bool):
    """PyTorch's TF32 setting for cuDNN convolutions and matmuls, restored after; the fused conv
    kernels (kernels/separable_conv.py, pointwise_conv.py) follow the convolutions' (kernels/dot_precision.py)."""
    settings = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [s.fp32_precision for s in settings]
    for s in settings:
        s.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        for s, value in zip(settings, saved):
            s.fp32_precision = value


def _no_tf32():
    return _tf32(False)


# TF32 rounds each product's inputs to 10 mantissa bits (unit roundoff 2^-11 ≈ 4.9e-4, ≤ 1e-3 a
# product): against float64, 1e-2 of the result's scale; the weight gradients, sums over N·H·W
# products, with the bound grown as bf16's (rounded_products)
TF32_TOL = 1e-2


def test_torch_compile_inductor_with_the_triton_op():
    from ndarts import FusedMixedOp, NoiseConfig

    m = FusedMixedOp(16, 1, noise=NoiseConfig(), backend="triton").cuda().train()
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 16, 16, 16, device="cuda", requires_grad=True)
    w = torch.softmax(torch.randn(8, device="cuda"), 0).requires_grad_()
    y = compiled(x, w)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def search_config(tmp_path, name, **kw):
    """The GPU tests' small search (digits, C 8, 5 cells, 2 epochs of 6 steps, fused, CUDA); kw
    overrides any of it (tests/test_gpu_check_script.py builds it on a CPU)."""
    from ndarts.searcher import SearchConfig

    settings = dict(dataset="digits", layers=5, init_channels=8, batch_size=32, epochs=2, max_steps=6,
                    report_freq=0, device="cuda", fused=True, out=str(tmp_path / name))
    settings.update(kw)
    return SearchConfig(**settings)


def _searcher(tmp_path, name, **kw):
    from ndarts.searcher import Searcher

    return Searcher(search_config(tmp_path, name, **kw))


def _step_parts(seed=0, dwconv=False, streams=0, grouped=False, autocast=None, group_sums=None, pwconv=False,
                sepconv=False, order="first", nb201=False):
    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.architect import Architect
    from ndarts.graph_step import prepare_optimizers_for_capture
    from ndarts.search_model import SearchNetwork

    torch.manual_seed(seed)
    if nb201:  # NAS-Bench-201's network (ndarts.nasbench201), 2 cells per stage
        from ndarts.nasbench201 import Nb201SearchNetwork

        model = Nb201SearchNetwork(8, 10, 2, NoiseConfig(kind="none"), fused=True, backend="triton",
                                   autocast=autocast).cuda()
    else:
        model = SearchNetwork(C=8, layers=5, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(kind="none"),
                              fused=True, backend="triton", fused_depthwise_conv=dwconv, edge_streams=streams,
                              batch_edge_convs=grouped, autocast=autocast, group_sums=group_sums,
                              fused_pointwise_conv=pwconv, fused_separable_conv=sepconv).cuda()
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    prepare_optimizers_for_capture(a_opt)  # the same Adam arithmetic on both sides
    criterion = torch.nn.CrossEntropyLoss()
    return model, Architect(model, a_opt, w_opt, criterion, order), w_opt, criterion


@pytest.mark.parametrize("dwconv,streams,grouped,bf16,group_sums,pwconv,sepconv", [
    (False, 0, False, False, None, False, False), (True, 0, False, False, None, False, False),
    (False, 3, False, False, None, False, False), (False, 0, True, False, None, False, False),
    (True, 3, True, False, None, False, False), (False, 0, True, True, None, False, False),
    (False, 0, True, False, False, False, False), (True, 0, True, True, True, False, False),
    ("weight_grad", 0, True, False, None, False, False), (False, 0, True, False, None, True, False),
    (True, 0, True, True, None, True, False), (False, 0, True, False, None, False, True),
    (False, 0, True, True, None, True, True)])
def test_cuda_graph_step_equals_eager_step_by_step(dwconv, streams, grouped, bf16, group_sums, pwconv, sepconv):
    """Warm-up steps, a capture, replays and a new learning rate (read by the captured w update
    from the device): each step's losses and the final α and weights equal those of the eager
    steps (noise off, deterministic cuDNN, the same capturable Adam on both sides)."""
    _assert_graph_step_equals_eager(dwconv=dwconv, streams=streams, grouped=grouped, bf16=bf16,
                                    group_sums=group_sums, pwconv=pwconv, sepconv=sepconv)


def test_second_order_cuda_graph_step_equals_eager_step_by_step():
    """The same for a second-order step, captured once too: its virtual step's ξ is the device rate
    (the eager side is given a tensor too: the same arithmetic; tests/test_architect.py checks the
    tensor against the number)."""
    _assert_graph_step_equals_eager(grouped=True, order="second")


@pytest.mark.parametrize("bf16", [False, True])
def test_nas_bench_201_cuda_graph_step_equals_eager_step_by_step(bf16):
    """The same for NAS-Bench-201's search network (its cells' fused sums take their seeds from one
    block per forward, as SearchNetwork's do)."""
    _assert_graph_step_equals_eager(bf16=bf16, nb201=True)


def test_cuda_graph_search_on_nas_bench_201(tmp_path):
    """The search loop on NAS-Bench-201's space with --cuda-graph and noise, with its protocol's
    Nesterov momentum (ndarts.device_lr_sgd): one capture, its genotype."""
    from ndarts.nasbench201 import load_nb201_genotype

    s = _searcher(tmp_path, "nb201", cuda_graph=True, space="nas-bench-201", cells_per_stage=2, nesterov=True)
    genotype = s.run_search()
    assert s.graph_step.captures == 1
    assert load_nb201_genotype(str(tmp_path / "nb201")) == genotype


def _assert_graph_step_equals_eager(dwconv=False, streams=0, grouped=False, bf16=False, group_sums=None,
                                    pwconv=False, sepconv=False, order="first", nb201=False):
    from ndarts.graph_step import make_graph_step
    from ndarts.search_step import search_step

    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randn(16, 3, 32, 32, device="cuda", generator=gen),
                torch.randint(0, 10, (16,), device="cuda", generator=gen),
                torch.randn(16, 3, 32, 32, device="cuda", generator=gen),
                torch.randint(0, 10, (16,), device="cuda", generator=gen)) for _ in range(7)]
    lrs = [0.025] * 5 + [0.02] * 2
    runs = []
    for graphed in (False, True):
        model, architect, w_opt, criterion = _step_parts(dwconv=dwconv, streams=streams, grouped=grouped,
                                                         autocast=torch.bfloat16 if bf16 else None,
                                                         group_sums=group_sums, pwconv=pwconv, sepconv=sepconv,
                                                         order=order, nb201=nb201)
        weights = model.weight_parameters()
        step = make_graph_step(model, architect, w_opt, criterion, 5.0, batches[0], warmup=2) if graphed else None
        losses = []
        for batch, lr in zip(batches, lrs):
            for group in w_opt.param_groups:  # as the scheduler sets it: the eager steps' rate
                group["lr"] = lr
            if graphed:
                loss, _, arch_loss, _ = step(*batch, lr)
            else:
                xi = torch.tensor(lr, device="cuda") if order == "second" else lr
                loss, _, arch_loss, _ = search_step(architect, model, criterion, w_opt, weights, 5.0, *batch, xi)
            losses.append((float(loss), float(arch_loss)))
        runs.append((losses, [p.detach().clone() for p in model.parameters()], step))
    (l_e, p_e, _), (l_g, p_g, step) = runs
    # one capture: the new rate of the last two steps is read from the device (ndarts.device_lr_sgd)
    assert step.captures == 1 and step.eager_steps == 2 and float(step.device_lr.lr) == pytest.approx(0.02)
    # the same kernels on both sides; bf16: one rounding flip is 0.4 %, so a looser bound
    tol = (2e-2, 2e-2) if bf16 else (1e-5, 1e-4)
    torch.testing.assert_close(torch.tensor(l_g), torch.tensor(l_e), atol=tol[0], rtol=tol[0])
    for a, b in zip(p_g, p_e):
        torch.testing.assert_close(a, b, atol=tol[0], rtol=tol[1])


def test_cuda_graph_search_with_noise_runs_and_draws_noise(tmp_path):
    """The search loop with --cuda-graph: one capture for both epochs (the second epoch's learning
    rate is set on the device), metrics written, the w step at the scheduler's rate."""
    s = _searcher(tmp_path, "noisy", cuda_graph=True)
    s.run_search()
    records = [json.loads(r) for r in (tmp_path / "noisy" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and s.graph_step.captures == 1 and s.graph_step.eager_steps >= 3
    assert records[1]["lr"] < records[0]["lr"] and float(s.graph_step.device_lr.lr) == pytest.approx(records[1]["lr"])


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_deterministic_search_repeats_bitwise(tmp_path, cuda_graph):
    """--deterministic on CUDA: two searches from the same seed end with bitwise the same α and
    weights (cuDNN's and PyTorch's deterministic algorithms, ndarts.determinism), eager and as a
    CUDA graph; no op of the step is refused in deterministic mode."""
    from ndarts.determinism import DeterminismState

    before = DeterminismState.current()
    try:
        runs = []
        for name in ("a", "b"):
            s = _searcher(tmp_path, f"{name}{int(cuda_graph)}", cuda_graph=cuda_graph, deterministic=True, epochs=1)
            s.run_search()
            runs.append([p.detach().clone() for p in (*s.model.arch_parameters(), *s.model.weight_parameters())])
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    finally:
        before.restore()


def test_graphed_evaluation_equals_eager_and_follows_the_model(tmp_path):
    """--cuda-graph's evaluation (captured once, ndarts.graph_step.GraphedEvaluation) gives the eager
    evaluation's loss and accuracy, before and after the steps have changed the weights, α and the
    BatchNorm running statistics in place; it is captured once."""
    s = _searcher(tmp_path, "eval", cuda_graph=True, eval_batch_size=64)  # 6 full batches (max_steps)
    graph_eval = s.graph_eval

    def both():
        s.graph_eval = graph_eval
        graphed = s.evaluate(s.eval_stream, 0)
        s.graph_eval = None
        eager = s.evaluate(s.eval_stream, 0)
        s.graph_eval = graph_eval
        assert graphed[0] == pytest.approx(eager[0], rel=1e-4, abs=1e-5) and graphed[1] == pytest.approx(eager[1])
        return graphed

    before = both()
    assert graph_eval.captures == 1 and graph_eval.eager_steps == 1
    s._train_epoch(0, s.scheduler.get_last_lr()[0], s.cfg.noise_config().scale_at(0, s.cfg.epochs))
    after = both()
    assert after[0] != before[0]  # the replays read the trained model
    assert graph_eval.captures == 1 and graph_eval.eager_steps == 1


def test_triton_convs_auto_times_every_candidate_as_a_graph_step_then_searches(tmp_path):
    """--triton-convs auto with --cuda-graph: each candidate compiles, captures and replays as a
    graph step on this card (none fails), the fastest is chosen, and the search then runs on it with
    the RNG streams as a run without tuning has them."""
    from ndarts.conv_tuning import AUTO_CANDIDATES

    s = _searcher(tmp_path, "auto", cuda_graph=True, triton_convs="auto", epochs=1)
    log = (tmp_path / "auto" / "log.txt").read_text()
    line = next(line for line in log.splitlines() if "--triton-convs auto:" in line)
    assert "failed" not in line, line
    assert s.triton_convs in AUTO_CANDIDATES and all(f"{c} " in line for c in AUTO_CANDIDATES)
    initial = [p.detach().clone() for p in s.model.parameters()]
    s.run_search()
    assert s.graph_step.captures == 1 and len((tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()) == 1
    direct = _searcher(tmp_path, "direct", cuda_graph=True, triton_convs=s.triton_convs, epochs=1)
    for a, b in zip(initial, direct.model.parameters()):
        assert torch.equal(a, b)  # the same initial weights: the tuning drew nothing from the streams


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("shape", [(64, 16, 32, 32), (64, 64, 8, 8), (5, 7, 13, 11), (256, 32, 16, 16)])
def test_cuda_batch_norm_matches_torch(dtype, atol, shape):
    from ndarts.batch_norm import SearchBatchNorm2d

    x = (torch.randn(shape, device="cuda") * 3 + 2).to(dtype).requires_grad_()
    g = torch.randn(shape, device="cuda").to(dtype)
    bn = SearchBatchNorm2d(shape[1], affine=False, backend="triton").cuda().train()
    ref = torch.nn.BatchNorm2d(shape[1], affine=False).cuda().train()
    xr = x.detach().float().requires_grad_()
    y, y_ref = bn(x), ref(xr)
    y.backward(g)
    y_ref.backward(g.float())
    torch.testing.assert_close(y.float(), y_ref, atol=atol, rtol=atol)
    torch.testing.assert_close(x.grad.float(), xr.grad, atol=atol * 4, rtol=atol * 4)
    torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("shape", [(64, 64, 32, 32), (5, 7, 13, 11)])
def test_cuda_several_batch_norms_per_launch_with_fused_relus(dtype, atol, shape):
    """search_batch_norms on CUDA: five BatchNorms (two launches), ReLUs fused on three, against
    torch's BatchNorm2d + ReLU: outputs, input gradients, running statistics."""
    from ndarts.batch_norm import SearchBatchNorm2d, search_batch_norms

    relu = (True, False, True, True, False)
    xs = [(torch.randn(shape, device="cuda") * (t + 1) + t).to(dtype).requires_grad_() for t in range(len(relu))]
    gs = [torch.randn(shape, device="cuda").to(dtype) for _ in relu]
    bns = [SearchBatchNorm2d(shape[1], affine=False, backend="triton").cuda().train() for _ in relu]
    refs = [torch.nn.BatchNorm2d(shape[1], affine=False).cuda().train() for _ in relu]
    torch.autograd.backward(search_batch_norms(xs, bns, relu), gs)
    for x, g, bn, ref, r in zip(xs, gs, bns, refs, relu):
        xr = x.detach().float().requires_grad_()
        y_ref = torch.relu(ref(xr)) if r else ref(xr)
        y_ref.backward(g.float())
        torch.testing.assert_close(x.grad.float(), xr.grad, atol=atol * 4, rtol=atol * 4)
        torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-4, rtol=1e-3)
    with torch.no_grad():
        outs = search_batch_norms([x.detach() for x in xs], bns, relu)
        for x, out, r in zip(xs, outs, relu):  # a second forward: outputs against batch statistics
            ref = torch.nn.functional.batch_norm(x.float(), None, None, training=True)
            torch.testing.assert_close(out.float(), torch.relu(ref) if r else ref, atol=atol, rtol=atol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (5, 1, 4, 2),
                                                       (3, 2, 1, 1), (5, 2, 4, 2)])
@pytest.mark.parametrize("shape", [(64, 16, 32, 32), (64, 64, 8, 8), (3, 5, 13, 11)])
def test_cuda_depthwise_conv_matches_conv2d(dtype, tol, k, stride, padding, dilation, shape):
    from test_depthwise_conv import check_against_conv2d

    check_against_conv2d(shape, dtype, tol, k, stride, padding, dilation, "cuda")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (5, 1, 4, 2), (3, 2, 1, 1)])
@pytest.mark.parametrize("shape", [(64, 128, 32, 32), (3, 5, 13, 11)])
def test_cuda_depthwise_weight_grad_kernel_matches_conv2d(dtype, tol, k, stride, padding, dilation, shape):
    """kernels="weight_grad" (torch's forward and input gradient) at a batched group's width (8 edges × 16)."""
    from test_depthwise_conv import check_against_conv2d

    check_against_conv2d(shape, dtype, tol, k, stride, padding, dilation, "cuda", kernels="weight_grad")


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (5, 2, 4, 2)])
@pytest.mark.parametrize("shape", [(64, 16, 32, 32), (3, 5, 13, 11)])
def test_cuda_depthwise_conv_with_channel_multiplier(k, stride, padding, dilation, shape):
    """4 outputs per channel: the first depthwise conv of 4 batched edges (ndarts.edge_groups)."""
    from test_depthwise_conv import check_against_conv2d

    check_against_conv2d(shape, torch.float32, 1e-4, k, stride, padding, dilation, "cuda", multiplier=4)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape", [(64, 8, 16, 16, 32, 32), (64, 1, 48, 16, 32, 32), (3, 3, 5, 3, 13, 11),
                                   (2, 1, 70, 80, 7, 9)])
def test_cuda_pointwise_conv_matches_conv2d(dtype, tol, shape):
    """(N, groups, CI, CO, H, W): a normal cell's first batched group (8 edges × 16 channels), a
    preprocessing conv (48 → 16), odd channel counts, more channels than one block. fp32 without
    TF32: plain fp32 products."""
    from test_pointwise_conv import check_against_conv2d

    with _no_tf32():
        check_against_conv2d(shape, dtype, tol, "cuda")


@pytest.mark.parametrize("shape", [(64, 8, 16, 16, 32, 32), (2, 1, 70, 80, 7, 9)])
def test_cuda_pointwise_conv_tf32_matches_conv2d(shape):
    """fp32 with PyTorch's default TF32 convolutions: the kernels' products on tensor cores."""
    from test_pointwise_conv import check_against_conv2d

    with _tf32(True):
        check_against_conv2d(shape, torch.float32, TF32_TOL, "cuda", rounded_products=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape,relu", [
    ((64, 8, 16, 16, 32, 32, 3, 1, 1, 1), False), ((64, 8, 16, 16, 32, 32, 5, 1, 4, 2), True),
    ((64, 4, 32, 32, 16, 16, 5, 2, 2, 1), False), ((3, 2, 5, 3, 13, 11, 3, 1, 2, 2), True),
    ((2, 1, 64, 64, 9, 7, 5, 1, 2, 1), False)])
def test_cuda_separable_conv_matches_conv2d(dtype, tol, shape, relu):
    """(N, groups, C, CO, H, W, K, stride, padding, dilation): a normal cell's first batched group
    (8 edges × 16 channels) as sep 3×3 and dil 5×5 (the ReLU read in), a reduction stage, odd
    sizes and channels, 64 channels per group (the kernels' most). fp32 without TF32."""
    from test_separable_conv import check_against_conv2d

    with _no_tf32():
        check_against_conv2d(shape, dtype, tol, relu, "cuda")


@pytest.mark.parametrize("shape,relu", [((64, 8, 16, 16, 32, 32, 3, 1, 1, 1), False),
                                        ((2, 1, 64, 64, 9, 7, 5, 1, 2, 1), True)])
def test_cuda_separable_conv_tf32_matches_conv2d(shape, relu):
    """fp32 with PyTorch's default TF32 convolutions: the 1×1 products on tensor cores."""
    from test_separable_conv import check_against_conv2d

    with _tf32(True):
        check_against_conv2d(shape, torch.float32, TF32_TOL, relu, "cuda", rounded_products=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape,relu", [
    ((64, 8, 16, 16, 32, 32, 3, 1, 1, 1), True), ((64, 4, 32, 32, 16, 16, 5, 2, 2, 1), False),
    ((3, 2, 5, 3, 13, 11, 3, 1, 2, 2), True)])
def test_cuda_folded_batch_norm_matches_float64(dtype, tol, shape, relu):
    """The separable conv's backward with its BatchNorm (+ ReLU) folded in (ndarts.separable_stage)
    at the step's widths and on odd sizes, against float64 convs and F.batch_norm (fp32 without
    TF32; with it, TF32's bound)."""
    from test_separable_stage import check_folded_against_float64

    with _no_tf32():
        check_folded_against_float64(shape, dtype, tol, relu, "cuda")
    if dtype == torch.float32:
        with _tf32(True):
            check_folded_against_float64(shape, dtype, TF32_TOL, relu, "cuda")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("stride,shape", [(1, (64, 5, 16, 16, 32, 32)), (2, (64, 4, 32, 32, 16, 16)),
                                          (1, (3, 2, 5, 3, 13, 11))])
def test_cuda_pairs_in_one_launch_equal_each_pair_alone(dtype, tol, stride, shape):
    """A stage's four pairs (sep/dil 3×3/5×5) in one launch each way (ndarts.separable_stage) at the
    step's widths and on odd sizes: z, moments and input gradients bitwise as each pair alone."""
    from test_separable_pairs import check_pairs_in_one_launch

    check_pairs_in_one_launch(dtype, tol, stride, shape, "cuda")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("counts,shape", [((2, 2), (64, 16, 32, 32)), ((3,), (5, 7, 9, 11))])
def test_cuda_source_gradients_summed_over_edges_and_pairs(dtype, tol, counts, shape):
    from test_separable_pairs import check_source_gradients

    check_source_gradients(dtype, tol, counts, shape, "cuda")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape", [(64, 4, 16, 32, 32), (3, 2, 5, 13, 11)])
def test_cuda_deferred_batch_norm_equals_its_output_read_back(dtype, tol, shape):
    """A sep conv's bn1 deferred (no y written; its consumers and its backward normalise z on
    load) against y written and read back, at a first stage's width and on odd sizes."""
    from test_separable_stage import check_deferred_batch_norm

    check_deferred_batch_norm(dtype, tol, shape, "cuda")


def test_edge_streams_equal_one_stream():
    """Edges on side streams: the same outputs, gradients and BatchNorm statistics as on one
    stream, with noise (same draws in the same order), eagerly, repeated to shake out races."""
    from network_checks import assert_same_forward_backward

    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.search_model import SearchNetwork

    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    nets = []
    for streams in (0, 3):
        torch.manual_seed(0)
        nets.append(SearchNetwork(C=8, layers=5, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(), fused=True,
                                  backend="triton", edge_streams=streams).cuda())
    for _ in range(3):
        assert_same_forward_backward(nets, torch.randn(16, 3, 32, 32, device="cuda"), out_tol=(1e-5, 1e-5),
                                     buffer_tol=(1e-6, 1e-5), seed=7)


def test_cuda_graph_search_with_noise_decay_captures_once(tmp_path):
    """--noise-decay: the noise scale changes per epoch, and the graph captured in the first epoch
    reads each epoch's from the device (MixedOp.noise_scale_device): no new capture; the device
    copies hold the last epoch's scale."""
    from ndarts import MixedOp

    s = _searcher(tmp_path, "decay", cuda_graph=True, noise_decay=True)
    s.run_search()
    assert s.scale_on_device and s.graph_step.captures == 1
    last = s.cfg.noise_config().scale_at(s.cfg.epochs - 1, s.cfg.epochs)
    assert last < 1.0
    copies = [float(m.noise_scale_device) for m in s.model.modules() if isinstance(m, MixedOp)]
    assert copies and all(abs(c - last) < 1e-6 for c in copies)


@pytest.mark.parametrize("primitives", ["darts", "noisydarts"])
def test_grouped_edge_convs_equal_per_edge_ops_on_cuda(primitives):
    """batch_edge_convs on CUDA with the Triton sum and BatchNorm: outputs, every gradient and the
    BatchNorm statistics equal the per-edge network's (fp32, TF32 off: the grouped first pointwise
    conv is one dense cuDNN conv, the per-edge ones C×C convs). Per-edge sums on both sides, so
    that the noise is the same draw (a group sum draws one seed for all its edges)."""
    from test_edge_groups import _assert_same, _pair

    from ndarts import NoiseConfig
    from ndarts.operations import SPACES

    torch.manual_seed(0)
    per_edge, grouped = _pair("cuda", C=8, num_classes=10, layers=5, primitives=SPACES[primitives],
                              noise=NoiseConfig(), fused=True, backend="triton", in_channels=3, group_sums=False)
    with _no_tf32():
        _assert_same(per_edge, grouped, torch.randn(16, 3, 32, 32, device="cuda"), seed=3, tol=1e-4)


def test_group_sums_equal_per_edge_sums_on_cuda():
    """group_sums on CUDA (the Triton group kernels, Triton BatchNorm): outputs, gradients and
    BatchNorm statistics equal the per-edge fused sums' (noise off, fp32, TF32 off)."""
    from network_checks import assert_same_forward_backward
    from test_group_sum import _networks

    from ndarts import DARTS_PRIMITIVES, NoiseConfig

    nets = [n.cuda() for n in _networks(C=8, num_classes=10, layers=5, primitives=DARTS_PRIMITIVES,
                                        noise=NoiseConfig(kind="none"), in_channels=3, backend="triton")]
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    with _no_tf32():
        assert_same_forward_backward(nets, torch.randn(16, 3, 32, 32, device="cuda"), out_tol=(1e-4, 1e-4),
                                     grad_tol=(1e-4, 1e-3), buffer_tol=(1e-5, 1e-4), seed=5)


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2)])
@pytest.mark.parametrize("layout", [((4, 4), 3, 4, (3, 5, 7, 6)), ((2, 1, 3), 2, 2, (2, 3, 5, 7))])
def test_cuda_group_kernels_of_several_sources_match_reference(dtype, atol, rtol, layout):
    """The group sums of a cell's two inputs (one launch per source, the grouped operands read and
    their gradients written in place through views) on the compiled kernels."""
    from test_group_sum import test_group_kernels_of_several_sources_match_reference as check

    check(dtype, atol, rtol, layout, "gaussian", device="cuda")


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2)])
@pytest.mark.parametrize("variant", ["gaussian", "multiplicative"])
@pytest.mark.parametrize("by_target", [False, True])
def test_cuda_own_operands_match_reference(dtype, atol, rtol, variant, by_target):
    """A reduction cell's stride-2 group sums (each edge's own FactorizedReduce skip, noisy with
    its own std) on the compiled kernels."""
    from test_group_sum import test_own_operands_match_reference as check

    check(dtype, atol, rtol, (4, 4), 2, 4, (16, 16, 16, 16), variant, by_target, 0, device="cuda")


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2)])
@pytest.mark.parametrize("alpha_grad", [True, False])
def test_cuda_deferred_batch_norm_operands_are_read_as_their_output(dtype, atol, rtol, alpha_grad):
    """Grouped operands that are deferred BatchNorms' inputs, normalised as the compiled group-sum
    kernels read them (a cell's inputs' group: two sources, each its channels' statistics)."""
    from test_group_sum import test_deferred_batch_norm_operands_are_read_as_their_output as check

    check(dtype, atol, rtol, ((4, 4), 3, 4, (16, 16, 16, 16)), alpha_grad, 0, device="cuda")


@pytest.mark.parametrize("fused_separable", [False, True], ids=["torch_convs", "fused_stages"])
@pytest.mark.parametrize("reader,shape", [("deferred_output", (16, 16, 16, 16)), ("group_sums", (16, 16, 16, 16)),
                                          ("group_sums", (8, 16, 64, 64)), ("group_sums", (4, 16, 9, 7))])
def test_cuda_deferred_last_batch_norms_equal_their_outputs(fused_separable, reader, shape):
    """A conv group's last BatchNorms deferred (their y not written) on CUDA, read back by
    deferred_output or the group sums (whose backward makes the BatchNorms' sums: 16×16 and 64×64
    images, where a plane spans several of the kernel's blocks; 9×7 makes none): the same outputs,
    gradients and running statistics as written ones."""
    from test_edge_groups import test_deferred_last_batch_norms_equal_their_outputs as check

    check(fused_separable, reader, shape, 0, device="cuda")


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2)])
@pytest.mark.parametrize("alpha_grad", [True, False])
def test_cuda_backward_makes_the_deferred_batch_norms_sums(dtype, atol, rtol, alpha_grad):
    """The group-sum backward's BatchNorm sums on the compiled kernels (32×32: one plane per block
    row; 64×64: a plane over four blocks)."""
    from test_group_sum import test_the_backward_makes_the_deferred_batch_norms_sums as check

    check(dtype, atol, rtol, (4, 4), (8, 16, 32, 32), alpha_grad, 0, device="cuda")
    check(dtype, atol, rtol, (3,), (2, 8, 64, 64), alpha_grad, 0, device="cuda")


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
def test_cuda_node_std_taken_as_the_node_is_written(dtype, rtol):
    """A finished node's std from the moments its group-sum kernel took (compiled, 23 programs)."""
    from test_group_sum import test_the_first_targets_std_is_taken_as_it_is_written as check

    check(dtype, rtol, (3, 5, 37, 41), 0, device="cuda")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cuda_pools_match_torch(stride, dtype, tol):
    """A node's max and avg 3×3 pools in one launch each way, compiled: values and gradients
    against torch's pools, with ties (small integers)."""
    from ndarts.pools import pools_3x3

    shape = (16, 8, 33, 32)
    x = torch.where(torch.rand(shape, device="cuda") < 0.5, torch.randint(-2, 3, shape, device="cuda").float(),
                    torch.randn(shape, device="cuda")).to(dtype)
    got_in, want_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = pools_3x3(got_in, stride, "triton")
    want = (F.max_pool2d(want_in, 3, stride, 1), F.avg_pool2d(want_in, 3, stride, 1, count_include_pad=False))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    grads = [torch.randn_like(want[0]) for _ in range(2)]
    torch.autograd.backward(got, grads)
    torch.autograd.backward(want, grads)
    torch.testing.assert_close(got_in.grad, want_in.grad, atol=2 * tol, rtol=tol)


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 3e-2, 2e-2)])
@pytest.mark.parametrize("edges,with_bases", [((4, 4), None), ((3,), (True, True, True)), ((2, 2), (True, False))])
def test_cuda_target_sums_with_bases_match_reference(dtype, atol, rtol, edges, with_bases):
    """A cell's chain of node sums (by target, the partial sums added in the kernels) compiled."""
    from test_group_sum import test_target_sums_with_bases_match_reference as check

    check(dtype, atol, rtol, edges, with_bases, 0, device="cuda")


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-6, 1e-6), (torch.bfloat16, 2e-2, 2e-2)])
def test_cuda_tensor_sum_reads_channel_slices(dtype, atol, rtol):
    """The fan-out's sum with a node's slice of the cell output's gradient read in place, compiled."""
    from test_fan_out import test_tensor_sum_reads_channel_slices_in_place as check

    check(dtype, atol, rtol, 8, 0, device="cuda")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_cuda_tensor_sum_and_fan_out(dtype, tol):
    """The node fan-out's gradient sum on the compiled kernel: 3 and 8 terms (two launches), and a
    fan-out's gradient equal to autograd's."""
    import ndarts_kernels
    from test_fan_out import _consumers

    from ndarts.fan_out import fan_out

    for count in (3, 8):
        xs = [torch.randn(5, 7, 9, 3, device="cuda").to(dtype) for _ in range(count)]
        want = torch.stack([x.double() for x in xs]).sum(0)
        torch.testing.assert_close(ndarts_kernels.tensor_sum(xs).double(), want, atol=tol * count, rtol=tol)
    x = torch.randn(2, 3, 6, 5, device="cuda", requires_grad=True)
    ref = x.detach().clone().requires_grad_()
    _consumers(fan_out(x, 5, "triton")).backward()
    _consumers([ref] * 5).backward()
    torch.testing.assert_close(x.grad, ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("counts,aliases", [((4, 4), 4), ((3,), 1)])
def test_cuda_relu_repeat_equals_relu_then_repeat(counts, aliases):
    """A group's input with the ReLU fused, on the compiled kernels: values and gradients (with
    aliases: the backward kernel sums their gradients)."""
    from ndarts.edge_groups import relu_repeat_sources, repeat_sources

    xs = [torch.randn(16, 8, 32, 32, device="cuda") for _ in counts]
    got_in = [x.clone().requires_grad_() for x in xs]
    want_in = [x.clone().requires_grad_() for x in xs]
    got = relu_repeat_sources(got_in, counts, "triton", aliases=aliases)
    got = [got] if aliases == 1 else list(got)
    want = repeat_sources([torch.relu(x) for x in want_in], counts)
    for alias in got:
        torch.testing.assert_close(alias, want, atol=0, rtol=0)
    gs = [torch.randn_like(want) for _ in got]
    torch.autograd.backward(got, gs)
    want.backward(sum(gs))
    for a, b in zip(got_in, want_in):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_channels_last_equals_nchw_on_cuda():
    """channels_last=True on CUDA (the fused sum on the Triton kernels in NHWC, torch's BatchNorm):
    outputs, gradients and BatchNorm statistics equal the NCHW network's (fp32, TF32 off)."""
    from network_checks import assert_same_forward_backward

    from ndarts import DARTS_PRIMITIVES, NoiseConfig
    from ndarts.search_model import SearchNetwork

    # noise off: the kernels index ε by memory position, so the two layouts draw different ε
    kw = dict(C=8, layers=5, primitives=DARTS_PRIMITIVES, noise=NoiseConfig(kind="none"), fused=True,
              backend="triton")
    nets = [SearchNetwork(**kw, channels_last=False).cuda(), SearchNetwork(**kw, channels_last=True).cuda()]
    nets[1].load_state_dict(nets[0].state_dict())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    with _no_tf32():
        assert_same_forward_backward(nets, torch.randn(16, 3, 32, 32, device="cuda"), out_tol=(1e-4, 1e-4),
                                     grad_tol=(1e-4, 1e-3), buffer_tol=(1e-5, 1e-4), seed=9)

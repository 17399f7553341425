"""GPU checks of the fused op (run by benchmarks/gpu_check.sh on a lent H100/H200; skipped on a CPU).

The compiled Triton kernels on CUDA against the reference with the same ε, CUDA-graph capture
and replay (new noise on every replay, same math), the search network with fused ops,
torch.compile with inductor, and the whole search step as a CUDA graph (ndarts.graph_step). Run with TRITON_INTERPRET unset (gpu_check.sh sets it to 0).
"""
import pytest
import torch

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
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_torch_compile_inductor_with_the_triton_op():
    from ndarts import FusedMixedOp, NoiseConfig

    m = FusedMixedOp(16, 1, noise=NoiseConfig(), backend="triton").cuda().train()
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 16, 16, 16, device="cuda", requires_grad=True)
    w = torch.softmax(torch.randn(8, device="cuda"), 0).requires_grad_()
    y = compiled(x, w)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def _searcher(tmp_path, name, **kw):
    from ndarts.searcher import SearchConfig, Searcher

    cfg = SearchConfig(dataset="digits", layers=5, init_channels=8, batch_size=32, epochs=2, max_steps=6,
                       report_freq=0, device="cuda", fused=True, out=str(tmp_path / name), **kw)
    return Searcher(cfg)


def test_cuda_graph_search_equals_eager_without_noise(tmp_path):
    """Two epochs (warm-up, capture, replays, a re-capture for the new learning rate): the graphed
    search ends with the α of the eager one (noise off, so both are deterministic up to atomics)."""
    torch.manual_seed(0)
    eager = _searcher(tmp_path, "eager", noise="none")
    g_eager = eager.run_search()
    torch.manual_seed(0)
    graphed = _searcher(tmp_path, "graph", noise="none", cuda_graph=True)
    g_graph = graphed.run_search()
    assert graphed.graph_step.captures == 2 and graphed.graph_step.eager_steps >= 3
    for a, b in zip(graphed.model.arch_parameters(), eager.model.arch_parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert g_graph == g_eager


def test_cuda_graph_search_with_noise_runs_and_draws_noise(tmp_path):
    s = _searcher(tmp_path, "noisy", cuda_graph=True)
    s.run_search()
    records = (tmp_path / "noisy" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2 and s.graph_step.captures == 2

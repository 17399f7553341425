"""benchmarks/step_traffic.py: the bytes each kernel of a search step moves, counted on a CPU."""

import pytest
import torch


def test_aten_bytes_count_views_and_conv_parts():
    step_traffic = pytest.importorskip("step_traffic")
    n, c, h, w = (int(v) for v in torch.randint(2, 6, (4,)))
    x = torch.randn(n, c, h, w, requires_grad=True)
    dw = torch.randn(c, 1, 3, 3, requires_grad=True)
    pw = torch.randn(2 * c, c, 1, 1, requires_grad=True)
    tracker = step_traffic.KernelTraffic()
    with tracker:
        y = x[:, : c - 1]  # a view: no kernel
        z = torch.nn.functional.conv2d(x, dw, padding=1, groups=c)
        out = torch.nn.functional.conv2d(z, pw)
        # an α step's kind of pass: the input's gradient, no weight's
        torch.autograd.grad(out.sum(), [x])
    names = [name for _, name, _ in tracker.kernels]
    assert "aten::slice" not in names and y.shape[1] == c - 1
    assert "depthwise conv forward" in names and "pointwise conv forward" in names
    assert "depthwise conv input gradient" in names and "pointwise conv input gradient" in names
    assert not any("weight gradient" in k for k in names)
    act = n * c * h * w * 4
    fwd = dict((name, b) for _, name, b in tracker.kernels if name == "depthwise conv forward")
    assert fwd["depthwise conv forward"] == 2 * act + dw.numel() * 4  # reads x and the weight, writes z


def test_unread_operands_are_not_counted():
    """A group-sum backward without W's gradient (a w step's) reads only the upstream gradients:
    its counted bytes drop by the operands and the partial sums it does not read."""
    step_traffic = pytest.importorskip("step_traffic")
    count_kernels = pytest.importorskip("count_kernels")
    import ndarts_kernels
    from ndarts.fused_sum import draw_seed

    shape, edges = (2, 3, 5, 7), 3
    shared = [torch.randn(shape) for _ in range(2)]
    grouped = [torch.randn(2, edges * 3, 5, 7) for _ in range(2)]
    weights = torch.softmax(torch.randn(edges, 4), 1)
    grads = [torch.randn(shape) for _ in range(edges)]
    seed = draw_seed("cpu")
    counted = {}
    for weight_grad in (True, False):
        tracker = step_traffic.KernelTraffic()
        with count_kernels.TritonLaunches() as launches:
            launches.on_launch = tracker.triton_launch
            ndarts_kernels.noisy_group_sum_backward(grads, shared, grouped, weights, seed, torch.ones(1), -1, 0,
                                                    False, 0.0, 0.0, weight_grad=weight_grad)
        counted[weight_grad] = sum(b for kind, name, b in tracker.kernels if name == "_group_backward_kernel")
    elem = shared[0].numel() * 4
    # upstream gradients in, shared and grouped gradients out, the weights, the seed and the std
    assert counted[False] == edges * elem + 2 * elem + 2 * edges * elem + weights.numel() * 4 + 8 + 4
    assert counted[True] > counted[False] + 2 * elem + 2 * edges * elem  # + the operands and the partials


def test_the_fused_pairs_backward_counts_its_input_only_for_weight_gradients():
    """The fused dw + 1×1 backward without weight gradients (an α step's) reads no input: its
    counted bytes are the output gradient in, d's gradient out, the weights and the one-float
    stand-in for the partial sums it does not write."""
    step_traffic = pytest.importorskip("step_traffic")
    count_kernels = pytest.importorskip("count_kernels")
    import ndarts_kernels

    x, w_dw, w_pw = torch.randn(2, 8, 5, 7), torch.randn(8, 1, 3, 3), torch.randn(8, 4, 1, 1)
    grad = torch.randn(2, 8, 5, 7)
    counted = {}
    for need_weight in (True, False):
        tracker = step_traffic.KernelTraffic()
        with count_kernels.TritonLaunches() as launches:
            launches.on_launch = tracker.triton_launch
            ndarts_kernels.separable_conv_backward(grad, x, w_dw, w_pw, 1, 1, 1, need_weight=need_weight)
        counted[need_weight] = sum(b for kind, name, b in tracker.kernels if name == "_sep_conv_bwd_kernel")
    elem = x.numel() * 4
    assert counted[False] == 2 * elem + (w_dw.numel() + w_pw.numel()) * 4 + 4
    assert counted[True] > counted[False] + elem  # + x and the partial sums


def test_traffic_of_the_default_step_covers_its_census():
    """Every Triton launch of the census is in the traffic, the extrapolated bytes grow with the
    batch, and the model's time is at least the floor of each kernel."""
    step_traffic = pytest.importorskip("step_traffic")
    count_kernels = pytest.importorskip("count_kernels")
    census = count_kernels.census("fused_graph")
    result = step_traffic.traffic("fused_graph")
    triton = sum(c["kernels"] for name, c in result["by_category"].items()
                 if "(Triton)" in name or "(triton)" in name)
    assert triton == census["triton"]
    # the aten side is counted below autograd here, by the profiler's outermost ops there: close
    assert abs(result["kernels"] - census["kernels"]) < 0.05 * census["kernels"]
    assert result["GB"] > 10  # batch 64 at 32×32: tens of GB per step
    assert result["model_ms"] >= result["kernels"] * step_traffic.T_MIN * 1e3 * (1 - 1e-9)
    assert result["model_ms"] >= result["GB"] * 1e9 / step_traffic.BANDWIDTH * 1e3 * (1 - 1e-9)


def test_an_evaluation_batch_is_a_forward_without_gradients():
    """--eval-batch counts one eval-mode forward (GraphedEvaluation's): no gradient kernels, no
    BatchNorm statistics (running ones are read), fewer kernels than the step; its bytes scale with
    the batch it is extrapolated to."""
    step_traffic = pytest.importorskip("step_traffic")
    kernels = step_traffic.step_kernels("fused_graph", 2, 8, evaluation=True)
    names = {name for _, name, _ in kernels}
    assert not any("gradient" in n or "backward" in n or "_grad_" in n for n in names), sorted(names)
    assert not any("stats" in n for n in names), sorted(names)
    assert "_group_forward_kernel" in names and "depthwise conv forward" in names
    assert len(kernels) < len(step_traffic.step_kernels("fused_graph", 2, 8)) / 2
    small, large = (step_traffic.traffic("fused_graph", eval_batch=b) for b in (64, 256))
    assert small["what"] == "evaluation batch" and small["kernels"] == large["kernels"]
    assert large["GB"] == pytest.approx(4 * small["GB"], rel=0.02)  # weights and per-channel vectors: no batch

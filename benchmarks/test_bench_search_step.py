"""One first-order search step: an α step on a validation batch, then a w step (SGD, grad clip).

Variants, all on the same network, data and optimizers (the `impl` field of extra_info):
- plain:       the classic DARTS MixedOp verbatim, `sum(w * op(x) for w, op in zip(weights, ops))`
               (it computes the `none` op too, as DARTS does), noise by ndarts.noise.add_noise.
- reference:   ndarts.MixedOp, what `python -m ndarts.search` uses by default: node sharing, the
               sep/dil convs of all edges leaving a node batched (batch_edge_convs) and, on a CPU,
               channels_last activations (both defaults since 2026-11-28).
- reference_per_edge: reference with every edge's convs run by themselves (batch_edge_convs=False)
               in NCHW, the default before 2026-11-28; fused_graph_per_edge: fused_graph without
               batching (the 106.4 ms step measured on the H200 at a4df10d), for the same-run
               comparison. reference_nchw: reference in NCHW (on a CPU the default is channels_last).
- fused_graph_cl: fused_graph in channels_last (SearchNetwork(channels_last=True); the Triton
               BatchNorm then steps aside for torch's; a candidate lever, not yet timed).
- fused:       ndarts.FusedMixedOp (`--fused`): Triton kernels on CUDA; on a CPU the custom op's
               reference implementation.
- fused_graph: fused + the whole step captured as one CUDA graph (ndarts.graph_step), GPU only;
               inside the graph the search ops' BatchNorm runs on the Triton kernels.
- fused_graph_dwconv: fused_graph with the depthwise convolutions on the Triton kernels too
               (SearchNetwork(fused_depthwise_conv=True); a candidate lever, not yet timed).
- fused_graph_dwwgrad: fused_graph with only the depthwise convolutions' weight gradient on the
               Triton kernel (fused_depthwise_conv="weight_grad"): PyTorch's NCHW weight-gradient
               kernel reads every plane K·K times (16.9 ms of the 106 ms step on the H200); the
               forward and input gradient stay PyTorch's. A candidate lever, not yet timed.
- fused_graph_pwconv: fused_graph with the cells' 1×1 convolutions (the batched stacks' grouped
               ones, the preprocessing ones) on the Triton kernels (SearchNetwork(fused_pointwise_conv=
               True)): cuDNN runs grouped convs of 16 channels per group far from the memory bandwidth
               (benchmarks/step_traffic.py). A candidate lever, not yet timed.
- fused_graph_sepconv: fused_graph with each depthwise → 1×1 conv pair of the batched stacks on one
               fused Triton kernel each way (SearchNetwork(fused_separable_conv=True), `--triton-convs
               separable`): the depthwise output is never written, read back or kept (by
               benchmarks/step_traffic.py ≈ 40 % less conv traffic). A candidate lever, not yet timed.
- fused_graph_cudnnbench: fused_graph with torch.backends.cudnn.benchmark on (`--cudnn-benchmark`,
               as DARTS's search script sets it): cuDNN times its algorithms per conv shape in the
               eager warm-up steps instead of choosing by heuristics. A candidate lever, not yet timed
               (its algorithms may take more workspace: see its peak).
- fused_graph_convs: fused_graph_dwconv and fused_graph_pwconv together: every conv of the cells but
               a FactorizedReduce's on the Triton kernels (`--triton-convs all`). Not yet timed.
- fused_graph_keep_relu: fused_graph with SearchNetwork(recompute_relu=False), the default before
               2026-11-30: the batched sep convs' second depthwise conv keeps its input, bn1's ReLU
               output, instead of making it again from bn1's output for its weight gradient (more
               peak memory, one element-wise pass less per sep conv in the w step;
               benchmarks/step_memory.py: 4.02 vs 3.51 GiB estimated).
- fused_graph_streams: fused_graph with the edges into a node on 4 side CUDA streams
               (SearchNetwork(edge_streams=4); a candidate lever, not yet timed).
- fused_graph_no_groupsum: fused_graph with a fused sum per edge (SearchNetwork(group_sums=False));
               since 2026-11-29 the default sums all stride-1 edges of a conv group in one op
               (group_sums auto). By benchmarks/count_kernels.py fused_graph launches 4.8k kernels
               per step, this one 6.0k, fused_graph_dwconv 5.4k: the Triton depthwise conv launches
               more, smaller kernels than PyTorch's, whose weight gradient took 25 µs per call on the
               H200; only a GPU can tell the time.
- fused_graph_deterministic: fused_graph in deterministic mode (`--deterministic`, ndarts.determinism:
               cuDNN's deterministic algorithms, torch.use_deterministic_algorithms): what a
               bitwise-repeatable search costs. Not yet timed.
- fused_graph_bf16: fused_graph under bf16 autocast (SearchNetwork(autocast=torch.bfloat16),
               `--autocast bf16`; α, sums and logits fp32; a candidate lever, not yet timed).

test_nas_bench_201_search_step: the same step on NAS-Bench-201's search network (--space
nas-bench-201; plain, reference, fused, fused_graph, fused_graph_bf16), GPU: batch 64, C 16, 5 cells
per stage, 32×32×3 (the benchmark's search); CPU: batch 8, C 8, 1 cell per stage, 16×16×3.

GPU: batch 64, C 16, 8 cells, 32×32×3 inputs, the DARTS space (8 ops, with `none`), Gaussian
noise: SPEC §6's supernet. Target (recorded, not asserted): ≤ 40 ms per step with peak memory
≤ 60 % of 7.57 GiB. CPU: batch 8, C 8, 5 cells, 16×16×3: the same code paths in seconds.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib.util

import pytest
import torch
import torch.nn as nn

from bench_common import CUDA, needs_cuda, run_benchmark
from ndarts.architect import Architect
from ndarts.determinism import DeterminismState, deterministic_mode
from ndarts.losses import CrossEntropy
from ndarts.search_step import search_step as run_search_step
from ndarts.mixed_op import MixedOp
from ndarts.nasbench201 import Nb201SearchNetwork
from ndarts.noise import NoiseConfig, add_noise
from ndarts.operations import NAS_BENCH_201, SPACES
from ndarts.search_model import SearchNetwork
from ndarts.searcher import SearchConfig

GIB = 2**30
PEAK_TARGET_BYTES = 0.6 * 7.57 * GIB
STEP_TARGET_MS = 40.0


@dataclasses.dataclass(frozen=True)
class StepConfig:
    batch: int
    channels: int
    layers: int
    image: int
    in_channels: int = 3
    num_classes: int = 10
    space: str = "darts"
    noise: str = "gaussian"

    @property
    def name(self) -> str:
        return (f"b{self.batch}-C{self.channels}-L{self.layers}-{self.image}x{self.image}x{self.in_channels}"
                f"-{self.space}-{self.noise}")


GPU_CONFIG = StepConfig(batch=64, channels=16, layers=8, image=32)
CPU_CONFIG = StepConfig(batch=8, channels=8, layers=5, image=16)
CONFIG = GPU_CONFIG if CUDA else CPU_CONFIG
# GPU: eager steps take ~1 s (SPEC §6: 2 × 480 ms), so few rounds; each step syncs the host
# (the finite checks), so the wall clock per step is the figure, no back-to-back event timing.
ROUNDS, WARMUP = (5, 2) if CUDA else (3, 1)


class PlainMixedOp(MixedOp):
    """DARTS's MixedOp forward, verbatim, on ndarts' ops; noise on the skip op's output."""

    def forward(self, x, weights):
        return sum(w * (add_noise(op(x), self.noise, self.noise_scale) if i == self._skip and self.noisy else op(x))
                   for i, (w, op) in enumerate(zip(weights, self._ops)))


@dataclasses.dataclass
class StepParts:
    model: SearchNetwork
    architect: Architect
    w_opt: torch.optim.Optimizer
    criterion: nn.Module
    weights: list
    grad_clip: float


def _channels_last(impl: str):
    """plain and the per-edge variants as they were (NCHW); `_nchw` / `_cl` force a layout; the rest
    take SearchNetwork's default (channels_last on a CPU with the torch ops, NCHW on a GPU)."""
    if impl == "plain" or "per_edge" in impl or "nchw" in impl:
        return False
    return True if "_cl" in impl else None


def _depthwise_kernels(impl: str):
    """SearchNetwork's fused_depthwise_conv for a variant: the whole conv, its weight gradient, or off."""
    return True if "dwconv" in impl or impl.endswith("_convs") else "weight_grad" if "dwwgrad" in impl else False


def build_parts(cfg: StepConfig, impl: str, device: torch.device, seed: int = 0, backend: str | None = None) -> StepParts:
    """The network and optimizers as ndarts.searcher.Searcher._build makes them (backend: the fused
    ops' and search kernels' backend, None = NDARTS_BACKEND / auto)."""
    defaults = SearchConfig()
    torch.manual_seed(seed)
    if cfg.space == NAS_BENCH_201:  # layers: cells per stage; the DARTS-space levers do not apply
        model = Nb201SearchNetwork(cfg.channels, cfg.num_classes, cfg.layers, NoiseConfig(kind=cfg.noise),
                                   fused=impl.startswith("fused"), in_channels=cfg.in_channels, backend=backend,
                                   channels_last=_channels_last(impl), autocast=torch.bfloat16 if "bf16" in impl else None,
                                   share_node_ops=impl != "plain" and "per_edge" not in impl,
                                   batch_node_convs="per_edge" not in impl)
    else:
        model = SearchNetwork(cfg.channels, cfg.num_classes, cfg.layers, SPACES[cfg.space], NoiseConfig(kind=cfg.noise),
                              fused=impl.startswith("fused"), in_channels=cfg.in_channels,
                              share_node_ops=impl != "plain",  # plain: DARTS as it was, a ReLU in every op
                              fused_depthwise_conv=_depthwise_kernels(impl), edge_streams=EDGE_STREAMS if "streams" in impl else 0,
                              batch_edge_convs=False if "per_edge" in impl else None,
                              autocast=torch.bfloat16 if "bf16" in impl else None,
                              group_sums=False if "no_groupsum" in impl else None, channels_last=_channels_last(impl), backend=backend,
                              fused_pointwise_conv="pwconv" in impl or impl.endswith("_convs"), recompute_relu="keep_relu" not in impl,
                              fused_separable_conv="sepconv" in impl)
    if impl == "plain":
        # same modules, same parameters: only the forward of every mixed op changes
        for m in model.modules():
            if type(m) is MixedOp:
                m.__class__ = PlainMixedOp
    model = model.to(device).train()
    w_opt = torch.optim.SGD(model.weight_parameters(), defaults.learning_rate, momentum=defaults.momentum,
                            weight_decay=defaults.weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=defaults.arch_learning_rate, betas=(0.5, 0.999),
                             weight_decay=defaults.arch_weight_decay)
    criterion = CrossEntropy()  # nn.CrossEntropyLoss, or deterministic mode's (ndarts.losses)
    architect = Architect(model, a_opt, w_opt, criterion, "first", defaults.momentum, defaults.weight_decay)
    return StepParts(model, architect, w_opt, criterion, model.weight_parameters(), defaults.grad_clip)


def _check_finite(loss, arch_loss, grad_norm):
    if not (torch.isfinite(loss) and torch.isfinite(arch_loss) and torch.isfinite(grad_norm)):  # as Searcher
        raise FloatingPointError("non-finite loss or gradient in the benchmarked search step")


def search_step(p: StepParts, x, y, xv, yv, lr: float):
    """The search loop's own step (ndarts.search_step), with the loop's finiteness check."""
    loss, *_ = run_search_step(p.architect, p.model, p.criterion, p.w_opt, p.weights, p.grad_clip,
                               x, y, xv, yv, lr, check=_check_finite)
    return loss


def make_batches(cfg: StepConfig, device: torch.device):
    gen = torch.Generator().manual_seed(1)
    shape = (cfg.batch, cfg.in_channels, cfg.image, cfg.image)
    x, xv = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    y, yv = (torch.randint(0, cfg.num_classes, (cfg.batch,), generator=gen) for _ in range(2))
    return [t.to(device) for t in (x, y, xv, yv)]


def graph_step_fn(parts: StepParts, batches, lr: float):
    """The CUDA-graph step, when ndarts provides it; None (with a reason) when it does not.

    Expected API (for the lead): ndarts.graph_step.make_graph_step(model, architect, w_opt, criterion,
    grad_clip, example_batches) -> step(x, y, xv, yv, lr), which copies the batches into its static
    inputs and replays the captured α step + w step.
    """
    if importlib.util.find_spec("ndarts.graph_step") is None:
        return None, "CUDA-graph step not implemented (no ndarts.graph_step module)"
    import ndarts.graph_step as gs

    if not hasattr(gs, "make_graph_step"):
        return None, "CUDA-graph step: ndarts.graph_step has no make_graph_step(...) (see this benchmark's docstring)"
    step = gs.make_graph_step(parts.model, parts.architect, parts.w_opt, parts.criterion, parts.grad_clip, batches,
                              warmup=GRAPH_WARMUP)
    return (lambda: step(*batches, lr)), None


# run order: the baseline and the target's variant first, then the untimed levers whose results decide
# a default (the conv kernels, cuDNN's autotuning, the kept ReLU), then the earlier defaults and the
# rest, the eager steps last, so that a GPU run cut off by its time limit (benchmarks/gpu_check.sh)
# still has the numbers that decide
IMPLS = ["plain", "fused_graph", "fused_graph_sepconv", "fused_graph_dwwgrad", "fused_graph_pwconv", "fused_graph_cudnnbench",
         "fused_graph_dwconv", "fused_graph_convs", "fused_graph_keep_relu", "fused_graph_no_groupsum", "fused_graph_per_edge",
         "fused_graph_bf16", "fused_graph_cl", "fused_graph_streams", "fused_graph_deterministic", "fused", "reference",
         "reference_per_edge", "reference_nchw"]
EDGE_STREAMS = 4  # side streams of the fused_graph_streams variant
# NAS-Bench-201's network (layers: cells per stage): GPU, the benchmark's search (C 16, N 5, CIFAR
# 32×32, batch 64 as its DARTS baseline); CPU: its code paths in seconds
NB201_CONFIG = (StepConfig(batch=64, channels=16, layers=5, image=32, space=NAS_BENCH_201) if CUDA
                else StepConfig(batch=8, channels=8, layers=1, image=16, space=NAS_BENCH_201))
NB201_IMPLS = ["plain", "fused_graph", "fused_graph_bf16", "fused", "reference"]
GRAPH_WARMUP = 3  # eager steps before the graph step captures


@pytest.fixture
def cudnn_benchmark(request):
    """torch.backends.cudnn.benchmark on for the `cudnnbench` variants only, and deterministic mode
    (`--deterministic`, ndarts.determinism) for the `deterministic` ones; both restored after."""
    impl = request.node.callspec.params["impl"]
    saved = DeterminismState.current()
    if "deterministic" in impl:
        deterministic_mode()
    torch.backends.cudnn.benchmark = "cudnnbench" in impl
    yield torch.backends.cudnn.benchmark
    saved.restore()


@pytest.mark.parametrize("impl", IMPLS)
def test_search_step(benchmark, device, impl, cudnn_benchmark):
    _bench_step(benchmark, device, impl, CONFIG, cudnn_benchmark)


@pytest.mark.parametrize("impl", NB201_IMPLS)
def test_nas_bench_201_search_step(benchmark, device, impl, cudnn_benchmark):
    """The step on NAS-Bench-201's search network (--space nas-bench-201): plain DARTS sums against
    ndarts' reference and fused ops, eager and as one CUDA graph."""
    _bench_step(benchmark, device, impl, NB201_CONFIG, cudnn_benchmark)


def _bench_step(benchmark, device, impl, cfg, cudnn_benchmark):
    graphed = impl.startswith("fused_graph")
    if graphed and device.type != "cuda":
        pytest.skip(needs_cuda("a CUDA-graph step needs CUDA graphs"))
    benchmark.group = f"search_step {cfg.name}"
    parts = build_parts(cfg, impl, device)
    batches = make_batches(cfg, device)
    lr = SearchConfig().learning_rate
    if graphed:
        fn, reason = graph_step_fn(parts, batches, lr)
        if fn is None:
            pytest.skip(reason)
    else:
        def fn():
            return search_step(parts, *batches, lr)

    peak = None
    if device.type == "cuda":
        # allocator warm, cuDNN algorithms chosen; the graph step: its eager warm-up steps, so that
        # the measured call is the capture (its allocations are the graph's memory pool)
        for _ in range(GRAPH_WARMUP if graphed else 1):
            fn()
        torch.cuda.synchronize(device)
        # an earlier case's model held by a reference cycle would count in this one's peak
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        reserved_before = torch.cuda.memory_reserved(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        # the graph step: the capture's pool stays reserved for the replays, which may use more of
        # it than the capture's allocated peak shows
        reserved_growth = torch.cuda.max_memory_reserved(device) - reserved_before
    info = run_benchmark(benchmark, fn, device, rounds=ROUNDS, warmup=WARMUP, event_reps=0)
    if info["time_ms"] is None:
        return
    info.update({"kind": "search_step", "impl": impl, "config": dataclasses.asdict(cfg), "config_name": cfg.name,
                 "cudnn_benchmark": cudnn_benchmark, "deterministic": torch.are_deterministic_algorithms_enabled(),
                 "device": str(device), "torch_threads": torch.get_num_threads() if device.type == "cpu" else None})
    if peak is not None:
        info.update({"peak_bytes": peak, "peak_GiB": peak / GIB, "resident_before_step_GiB": base / GIB,
                     "reserved_growth_GiB": reserved_growth / GIB})
    else:
        info["peak_note"] = "peak memory not measured on CPU (no allocator statistics)"
    if device.type == "cuda" and impl.startswith("fused") and cfg == GPU_CONFIG:
        info["targets"] = [f"<= {STEP_TARGET_MS:.0f} ms per step", f"peak <= {PEAK_TARGET_BYTES / GIB:.2f} GiB"]
        info["target_step_met"] = info["time_ms"] <= STEP_TARGET_MS
        info["target_peak_met"] = peak <= PEAK_TARGET_BYTES
    benchmark.extra_info.update(info)

"""Mixed ops: the weighted sum of all candidate operations on one edge of a DARTS cell.

``MixedOp`` is the reference, in plain PyTorch autograd. ``FusedMixedOp`` computes the same sum
with the fused op (Triton kernels on CUDA, the reference elsewhere). Both keep the classic DARTS
MixedOp's constructor, ``forward(x, weights)`` and state_dict layout (``_ops.<i>`` in primitive
order, pooling ops wrapped with their BatchNorm), so one replaces the other in a DARTS code base
and checkpoints load both ways.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch_norm import deferred_output, search_batch_norms
from .backend import graph_kernels_enabled, requested_backend
from .determinism import gather_inverse, unique_gather
from .edge_groups import EdgeGroupSlot, groupable, split_edges
from .fan_out import fan_out
from .fused_sum import noisy_mixed_sum, promote_operands, skip_operand_std, skip_operand_stds
from .noise import NoiseConfig, add_noise
from .pools import darts_pools_stride, pools_3x3
from .operations import (
    DARTS_PRIMITIVES,
    FactorizedReduce,
    check_primitives,
    factorized_convs,
    make_search_op,
    relu_tail,
)

SKIP = "skip_connect"


class GroupRun:
    """One EdgeGroup's work in one forward pass: the sep/dil convs of all its edges, computed on
    first use from relu(h) of each of its source nodes (the NodeShares that joined it, in the
    group's source order: a cell's two inputs share one group)."""

    def __init__(self, group, defer: bool = False):
        self.group = group
        self.shares: list = []  # one NodeShare per source, joined in order
        self._outputs = None  # {primitive index: [N, E·C, H, W]}
        self._split: dict = {}  # {primitive index: E per-edge tensors}
        # defer: the stacks' last BatchNorms are applied by the consumers as they read the outputs
        # (their readers are group sums, which normalise on load: SearchCell sets it where a
        # NodeSumPlan sums the group); where the kernels run, raw() is then the BatchNorm's input z
        # and norm() its statistics (EdgeGroup.run(defer_last=True))
        self.defer = defer
        self._norms: dict = {}  # {primitive index: DeferredNorm} of the deferred BatchNorms

    def raw(self, index: int) -> torch.Tensor:
        """Primitive `index` for all the group's edges, [N, E·C, H, W] (with norm(index), a
        deferred BatchNorm's input z standing for its output)."""
        if self._outputs is None:
            self.compute()
        return self._outputs[index]

    def norm(self, index: int):
        """The DeferredNorm (mean, rstd fp32 [E·C], GradSums) of primitive `index`'s deferred last
        BatchNorm (raw(index) is its input z, read as (z − mean)·rstd), or None where its output
        was written."""
        if self._outputs is None:
            self.compute()
        return self._norms.get(index)

    def compute(self, pools=()) -> None:
        """Runs the group's convs now (once per pass). pools: (mixed op, NodeShare) pairs whose
        pools (each op's of its share's node, into share.pooled as pool_all puts them) are
        computed here too, their BatchNorms in the convs' first BatchNorm launch (the node's pools
        and its group's first stage depend on the node alone)."""
        if self._outputs is not None:
            if pools:
                raise RuntimeError("this EdgeGroup's convs have run already; its pools can no longer join them")
            return
        if len(self.shares) != len(self.group.sources):
            raise RuntimeError(f"this EdgeGroup takes {len(self.group.sources)} source nodes; "
                               f"{len(self.shares)} have joined it so far")
        # the pools with their outputs' statistics from the pools kernel (where it runs): their
        # BatchNorms, in the group's first BatchNorm launch, then read no pool output for statistics
        work = [(op, share, i, y, m) for op, share in pools
                for i, (y, m) in sorted(_pool(op, share).items())]
        extra = [(y, op._ops[i][-1]) for op, _, i, y, _ in work]
        extra_moments = [m for *_, m in work]
        backend = self.shares[0].backend
        if self._fuse_relu():
            # relu(h) read by the fused stages' kernels straight from h, or made straight into the
            # edge slots by relu_repeat_sources (one alias per primitive: its backward kernel sums
            # their gradients itself): no separate relu tensor (EdgeGroup.run)
            xs = [share.input("relu") for share in self.shares]
            self._outputs, pooled = self.group.run(xs, backend=backend, extra=extra, relu_fused=True,
                                                   defer_last=self.defer, norms_out=self._norms,
                                                   extra_moments=extra_moments)
        else:
            self._outputs, pooled = self.group.run([share.relu for share in self.shares], backend=backend,
                                                   extra=extra, defer_last=self.defer, norms_out=self._norms,
                                                   extra_moments=extra_moments)
        for (op, share, i, _, _), out in zip(work, pooled):
            share.pooled[(op.primitives[i], op.stride)] = (out, op._ops[i][-1])

    def _fuse_relu(self) -> bool:
        """Whether the group reads its sources before their ReLU (EdgeGroup.run(relu_fused=True)):
        where the search-op kernels run, and no other op reads the nodes' relu (a reduction input's
        FactorizedReduces do)."""
        first = self.shares[0]
        return (all(share._relu is None and not share.reductions for share in self.shares)
                and graph_kernels_enabled(first.backend, first.x))

    def edge(self, index: int, slot: int) -> torch.Tensor:
        """Primitive `index` of the edge in `slot` of the group, [N, C, H, W]."""
        if index not in self._split:
            y, norm = self.raw(index), self.norm(index)
            # a deferred BatchNorm's output made here (a group summed edge by edge reads y itself)
            self._split[index] = split_edges(deferred_output(y, *norm) if norm is not None else y, self.group.edges)
        return self._split[index][slot]

    def tensors(self) -> list:
        out = list(self._outputs.values()) if self._outputs is not None else []
        out += [t for norm in self._norms.values() for t in norm[:2]]
        return out + [t for outs in self._split.values() for t in outs]


class NodeShare:
    """What every edge leaving one node of a cell computes alike, computed once for all of them.

    - ``relu``: relu(h), the first step of the sep/dil convs and of FactorizedReduce (made on
      first use).
    - the pooling ops with their BatchNorm: an affine-free BatchNorm gives the same output for
      the same input, so the edges after the first reuse the first edge's result. Their own
      BatchNorms then skip the update of the running statistics; ``syncs`` collects (this BN,
      the computing BN) pairs, and ``copy_running_stats`` copies the statistics over, so every
      BN's state is what per-edge computation gives while those BNs hold equal statistics, as a
      search keeps them from its start (a state whose BNs differ does not load into a sharing
      network: SearchCell._unshareable_pool_stats).
    - with an EdgeGroup (``SearchNetwork(batch_edge_convs=True)``): the sep/dil convs of all
      edges leaving the node (and, for a cell input, the other input's), computed together on
      first use (``run``, a GroupRun this share joins).
    - ``reductions``: the FactorizedReduce skip ops of the node's stride-2 edges (a reduction
      cell's inputs), run together on first use (``reduced``): their convs as two convs with the
      edges' weights stacked, their BatchNorms in one launch where the Triton kernels run.
    - ``seeds``: the forward pass's SeedBlock (fused sums take their Philox seeds from it), or None.
    - ``input(consumer)``: x for one of its consumers (its relu, each pool, the identity skip, its
      slice of the cell's output): aliases from one fan-out (ndarts.fan_out), so that their
      gradients of x are summed in one launch where the search-op kernels run (``backend``: the
      fused ops').
    One NodeShare per node; ``syncs`` is one list for the whole cell (SearchCell).
    """

    CONSUMERS = ("relu", "max_pool_3x3", "avg_pool_3x3", SKIP, "concat")

    def __init__(self, x: torch.Tensor, syncs: list, run: GroupRun | None = None, seeds=None, reductions=(),
                 backend=None):
        self.x = x
        self.backend = backend
        self._inputs = None  # {consumer: alias of x}, made on first use
        self.reductions = list(reductions)
        self._reduced = None  # {id(FactorizedReduce): its output}
        self._reduced_std = None  # {id(FactorizedReduce): std of its output}, for their additive noise
        self.seeds = seeds
        self._relu = None
        self.pooled: dict = {}
        self.batched: dict = {}  # {id(op): its output}, computed with the node's other edges' (NAS-Bench-201's cells)
        self.syncs = syncs
        # weakly: the run holds its shares, and a cycle (share ↔ run) would keep the pass's
        # activations (the shares' inputs and pools, the run's conv outputs) alive after the
        # backward until Python's cyclic gc ran, into the next pass (the α step's into the w
        # step's: +1.6 GiB of peak by benchmarks/step_memory.py). The cell holds the runs for the pass.
        self._run = None if run is None else weakref.ref(run)
        if run is not None:
            run.shares.append(self)
        self._skip_std = None  # std(x), the identity skip's noise scale on every stride-1 edge
        self.prepared = False  # prepare_share ran (SearchCell's multi-stream path)

    @property
    def run(self) -> GroupRun | None:
        """The GroupRun of the node's edges in this pass, or None."""
        if self._run is None:
            return None
        run = self._run()
        if run is None:
            raise RuntimeError("this NodeShare's GroupRun is gone: a NodeShare lives for one pass of its cell")
        return run

    @property
    def group(self):
        """The EdgeGroup of the node's edges, or None."""
        return self.run.group if self.run is not None else None

    def output(self) -> torch.Tensor:
        """x for the cell's output (its concat of the last nodes): the fan-out's alias when the
        node's edges have made the fan-out, x itself otherwise (a node without outgoing edges)."""
        return self.input("concat") if self._inputs is not None else self.x

    def input(self, consumer: str) -> torch.Tensor:
        """x, as consumer's alias (one of CONSUMERS; x itself for any other)."""
        if consumer not in self.CONSUMERS:
            return self.x
        if self._inputs is None:
            self._inputs = dict(zip(self.CONSUMERS, fan_out(self.x, len(self.CONSUMERS), self.backend)))
        return self._inputs[consumer]

    @property
    def relu(self) -> torch.Tensor:
        if self._relu is None:
            self._relu = F.relu(self.input("relu"))
        return self._relu

    def grouped_raw(self, index: int) -> torch.Tensor:
        """Primitive `index` of the node's EdgeGroup for all its edges, [N, E·C, H, W]."""
        if self.run is None:
            raise RuntimeError("this edge's convs are grouped, but its node has no EdgeGroup")
        return self.run.raw(index)

    def grouped_norm(self, index: int):
        """The deferred BatchNorm statistics of grouped_raw(index), or None (GroupRun.norm)."""
        return self.run.norm(index) if self.run is not None else None

    def grouped(self, index: int, slot: int) -> torch.Tensor:
        """Primitive `index` of the edge in `slot` of the node's EdgeGroup, [N, C, H, W]."""
        if self.run is None:
            raise RuntimeError("this edge's convs are grouped, but its node has no EdgeGroup")
        return self.run.edge(index, slot)

    def reduced(self, op) -> torch.Tensor:
        """op (a FactorizedReduce of one of the node's stride-2 edges) applied to x: all the
        node's reductions computed together on first use (one in ``reductions``), else by itself."""
        if not any(m is op for m in self.reductions):
            return op.forward_from_relu(self.relu)
        if self._reduced is None:
            outs = factorized_reduce_all(self.relu, self.reductions)
            self._reduced = {id(m): y for m, y in zip(self.reductions, outs)}
        return self._reduced[id(op)]

    def reduced_std(self, op, backend) -> torch.Tensor:
        """std of op's output (one of ``reductions``: a noisy skip operand of a stride-2 edge), as
        its sum would compute it: the stds of all the node's reductions in one pair of launches
        (skip_operand_stds), on first use."""
        if self._reduced_std is None:
            outs = [self.reduced(m) for m in self.reductions]
            self._reduced_std = {id(m): std for m, std in zip(self.reductions, skip_operand_stds(outs, backend))}
        return self._reduced_std[id(op)]

    def skip_std(self, backend) -> torch.Tensor:
        """std(x) for the noise of the identity skip operand, computed once for all the node's
        stride-1 edges (as each edge's sum would compute it: skip_operand_std)."""
        if self._skip_std is None:
            self._skip_std = skip_operand_std(self.x, backend)
        return self._skip_std

    @property
    def known_std(self) -> torch.Tensor | None:
        """std(x) when it is known already (set by the kernel that wrote x, or computed), else None."""
        return self._skip_std

    def set_std(self, std: torch.Tensor) -> None:
        """std(x) as skip_operand_std would give it, from whoever computed it (the group-sum kernel
        that wrote x took its moments in the same pass)."""
        self._skip_std = std

    def tensors(self) -> list:
        """The node's output and what has been computed from it so far (relu, pool outputs,
        grouped conv outputs)."""
        out = [self.x] + ([self._relu] if self._relu is not None else [])
        out += [self.seeds.seeds] if self.seeds is not None else []
        out += [self._skip_std] if self._skip_std is not None else []
        out += self.run.tensors() if self.run is not None else []
        out += list(self._reduced.values()) if self._reduced is not None else []
        out += list(self._reduced_std.values()) if self._reduced_std is not None else []
        return out + [t for t, _ in self.pooled.values()] + list(self.batched.values())


def factorized_reduce_all(r: torch.Tensor, ops) -> list:
    """[op.forward_from_relu(r) for op in ops] (FactorizedReduce ops of the same shape, r = relu(h)
    of their common input), computed together: both paths of every op in one convolution
    (operations.factorized_convs: edge-major, each op's two paths side by side), made E contiguous
    tensors in one copy (split_edges), the E BatchNorms in one launch each way where the Triton
    kernels run."""
    return search_batch_norms(list(split_edges(factorized_convs(r, ops), len(ops))), [op.bn for op in ops])


def pool_all(pairs) -> None:
    """For each (mixed op, NodeShare): every pooling op of that edge with its BatchNorm on the
    share's node, into share.pooled for the node's other edges; all the BatchNorms (a cell's two
    inputs' pools: four) in one launch each way where the Triton kernels run (search_batch_norms),
    their statistics from the pools kernel."""
    work = [(op, share, i) for op, share in pairs for i in sorted(op._pools)]
    pooled = {}
    for op, share in pairs:  # with their statistics from the pools kernel, where it runs
        pooled.update({(id(share), i): ym for i, ym in _pool(op, share).items()})
    outs = search_batch_norms([pooled[(id(share), i)][0] for op, share, i in work], [op._ops[i][-1] for op, _, i in work],
                              moments=[pooled[(id(share), i)][1] for op, share, i in work])
    for (op, share, i), out in zip(work, outs):
        share.pooled[(op.primitives[i], op.stride)] = (out, op._ops[i][-1])


def _pool(op, share) -> dict:
    """{primitive index: (op's pool of share's node (its BatchNorm's input), its per-channel partial
    moments or None)}: DARTS's max and avg 3×3 pools as one op (ndarts.pools: one launch each way
    where the search-op kernels run, which also makes their statistics), any other pool by its own
    module (no moments)."""
    index = {op.primitives[i]: i for i in op._pools}
    if set(index) == {"max_pool_3x3", "avg_pool_3x3"}:
        i_max, i_avg = index["max_pool_3x3"], index["avg_pool_3x3"]
        stride = darts_pools_stride(op._ops[i_max][0], op._ops[i_avg][0])
        if stride is not None:
            y_max, y_avg, m_max, m_avg = pools_3x3(share.input("max_pool_3x3"), stride, share.backend, moments=True)
            return {i_max: (y_max, m_max), i_avg: (y_avg, m_avg)}
    return {i: (op._ops[i][0](share.input(op.primitives[i])), None) for i in op._pools}


def copy_running_stats(syncs) -> None:
    """Copies the running statistics of each (src) BatchNorm to its (dst) in one foreach call."""
    dst, src = [], []
    for d, s in syncs:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            a, b = getattr(d, name), getattr(s, name)
            if a is not None and b is not None:
                dst.append(a)
                src.append(b)
    if dst:
        with torch.no_grad():
            torch._foreach_copy_(dst, src)


class MixedOp(nn.Module):
    """Reference noisy mixed op.

    Args:
        C: channels. stride: 1 (normal edge) or 2 (reduction edge).
        primitives: operation names, in order (default: DARTS's 8, for drop-in use).
        noise: NoiseConfig for the skip connection (default: Gaussian, λ = 0.2). Noise is drawn
            only in training mode.
        pool_norm: each pooling op followed by BatchNorm(affine=False), as DARTS's search has it
            (False: the bare pool, as NAS-Bench-201's search cells have it).
    ``noise_scale`` (attribute) multiplies the noise: the search sets it for cosine decay. With
    decay on (``noise.decay``) the op keeps it on the device too (``noise_scale_device``, a
    non-persistent buffer that setting ``noise_scale`` fills), and its noise reads it there when it
    runs: a CUDA graph captured once follows each epoch's scale.
    """

    def __init__(self, C: int, stride: int, primitives=DARTS_PRIMITIVES, noise: NoiseConfig | None = None, *,
                 pool_norm: bool = True):
        super().__init__()
        cls = type(self).__name__
        if isinstance(C, bool) or not isinstance(C, int) or C < 1:
            raise ValueError(f"{cls}: C (channels) must be an int >= 1, got {C!r}")
        if stride not in (1, 2) or isinstance(stride, bool):
            raise ValueError(f"{cls}: stride must be 1 (normal edge) or 2 (reduction edge), got {stride!r}")
        if noise is not None and not isinstance(noise, NoiseConfig):
            raise TypeError(f"{cls}: noise must be a NoiseConfig or None, got {type(noise).__name__} {noise!r}")
        self.primitives = check_primitives(primitives)
        self.C = C
        self.stride = stride
        self.noise = NoiseConfig() if noise is None else noise
        if self.noise.decay and self.noise.enabled:
            self.register_buffer("noise_scale_device", torch.ones(()), persistent=False)
        self.noise_scale = 1.0
        self._ops = nn.ModuleList(make_search_op(p, C, stride, pool_norm) for p in self.primitives)
        # `none` contributes nothing: never computed, but its weight stays in the softmax.
        self._live = [i for i, p in enumerate(self.primitives) if p != "none"]
        self._skip = self.primitives.index(SKIP) if SKIP in self.primitives else None
        # ops that begin with ReLU can take a shared relu(x) (SearchCell computes it once per node)
        self._tails = tuple(relu_tail(op) for op in self._ops)
        # pooling + BatchNorm(affine=False): identical on every edge leaving a node
        self._pools = frozenset(i for i, p in enumerate(self.primitives) if pool_norm and "pool" in p)
        # a bare pool (pool_norm=False) has no state at all: identical on every edge leaving a node too
        self._bare_pools = frozenset(i for i, p in enumerate(self.primitives) if not pool_norm and "pool" in p)
        self._find_dtype_probe()

    def _find_dtype_probe(self) -> None:
        """Keeps where one floating-point parameter lives, (its module, its name), for forward's
        cheap input check (_probe_param); None where the op has none (pools, skip). By name, so a
        parameter replaced (load_state_dict(assign=True)) or converted (.to) is read as it is now."""
        self._dtype_probe = next(((m, name) for m in self.modules() for name, p in m._parameters.items()
                                  if p is not None and p.is_floating_point()), None)

    def _probe_param(self) -> torch.Tensor | None:
        """The op's first floating-point parameter, whose dtype and device stand for all of them
        (None where it has none)."""
        if self._dtype_probe is None:
            return None
        module, name = self._dtype_probe
        return module._parameters[name]

    def prepare_share(self, share: NodeShare) -> None:
        """Computes now what the edges leaving share's node reuse (relu(h) and the pools with their
        BatchNorm), so that edges running on other CUDA streams only read them (SearchCell)."""
        if any(t is not None for t in self._tails) or share.group is not None:
            share.relu  # noqa: B018 (materialises the lazy relu)
        if share.reductions and self._skip is not None and not self._noise_on_input():
            share.reduced(self._ops[self._skip])  # all the node's reductions, before any side stream reads one
        for i, op in enumerate(self._ops):
            if isinstance(op, EdgeGroupSlot):
                share.grouped(i, op.slot)  # every grouped output split here, before any side stream reads one
        for i in sorted(self._pools):
            self._run(i, share.x, share)
        share.prepared = True

    def use_edge_group(self, slot: int) -> None:
        """Hands this edge's sep/dil convs to its cell's EdgeGroup (this edge is number `slot` of
        the group): their modules become parameter-free EdgeGroupSlots."""
        moved = [i for i, p in enumerate(self.primitives) if groupable(p)]
        for i in moved:
            self._ops[i] = EdgeGroupSlot(self.primitives[i], slot)
        self._tails = tuple(None if i in moved else t for i, t in enumerate(self._tails))
        self._find_dtype_probe()

    @property
    def noise_scale(self) -> float:
        return self._noise_scale

    @noise_scale.setter
    def noise_scale(self, value: float) -> None:
        self._noise_scale = float(value)
        on_device = self._buffers.get("noise_scale_device")
        if on_device is not None:
            on_device.fill_(self._noise_scale)  # a fill, no host sync

    @property
    def kernel_noise_scale(self) -> float | torch.Tensor:
        """The scale the noise ops take: the device copy where decay is on (read when they run),
        the number otherwise."""
        on_device = self._buffers.get("noise_scale_device")
        if on_device is None:
            return self._noise_scale
        return on_device if on_device.dtype == torch.float32 else on_device.float()

    @property
    def noisy(self) -> bool:
        return self.training and self.noise.enabled and self._skip is not None

    def _noise_on_input(self) -> bool:
        return self.stride != 1 and self.noise.reduction_position == "input"

    def _check_input(self, x, weights):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.C:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}(C={self.C}): x must be [N, {self.C}, H, W], got {shape}")
        if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or weights.shape[0] != len(self.primitives):
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise ValueError(f"{type(self).__name__}: weights must have shape ({len(self.primitives)},), one per "
                             f"primitive {list(self.primitives)}; got {got}")
        if not weights.is_floating_point():
            raise TypeError(f"{type(self).__name__}: weights must be floating point (softmax(α)), got {weights.dtype}")
        if weights.device != x.device:
            raise ValueError(f"{type(self).__name__}: weights are on {weights.device}, x on {x.device}")
        param = self._probe_param()
        if param is not None:
            if param.device != x.device:
                raise ValueError(f"{type(self).__name__}(C={self.C}): x is on {x.device} but the op's parameters are "
                                 f"on {param.device}: move one to the other (x.to({str(param.device)!r}) or "
                                 f"op.to({str(x.device)!r}))")
            if x.dtype != param.dtype:
                self._check_dtype(x, param.dtype)

    def _check_dtype(self, x, dtype) -> None:
        """x's dtype is not the op's `dtype`: fine under autocast for a float32, float16 or bfloat16
        x (autocast casts the convs' operands; BatchNorm takes them all), else a TypeError naming both
        (was a torch error from deep inside an op). Metadata only, no sync."""
        if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
            return
        raise TypeError(f"{type(self).__name__}(C={self.C}): x is {x.dtype} but the op's parameters are {dtype}: "
                        f"convert one to the other (x.to({dtype}) or op.to({x.dtype})), or run it under torch.autocast")

    def _run(self, i: int, x, share: NodeShare | None):
        if share is None:
            return self._ops[i](x)
        op = self._ops[i]
        if isinstance(op, EdgeGroupSlot):
            return share.grouped(i, op.slot)
        if i in self._pools:
            key = (self.primitives[i], self.stride)
            hit = share.pooled.get(key)
            if hit is not None:
                out, bn = hit
                if self.training and bn is not self._ops[i][-1]:  # another edge's BatchNorm computed it
                    share.syncs.append((self._ops[i][-1], bn))
                return out
            self._pool_all(x, share)
            return share.pooled[key][0]
        if i in self._bare_pools:
            key = (self.primitives[i], self.stride)
            if key not in share.pooled:
                share.pooled[key] = (op(share.input(self.primitives[i])), None)
            return share.pooled[key][0]
        if isinstance(op, FactorizedReduce):
            return share.reduced(op)
        if id(op) in share.batched:
            return share.batched[id(op)]
        tail = self._tails[i]
        if tail is not None:
            return tail(share.relu)
        return self._ops[i](share.input(self.primitives[i]))  # the identity skip: x's skip alias

    def _pool_all(self, x, share: NodeShare) -> None:
        """Every pooling op of this edge with its BatchNorm, into share.pooled for the node's other
        edges (pool_all)."""
        pool_all([(self, share)])

    def forward(self, x: torch.Tensor, weights: torch.Tensor, share: NodeShare | None = None) -> torch.Tensor:
        """share: what the edges leaving x's node compute alike (SearchCell passes it); None runs
        every op of this edge by itself, as the classic DARTS MixedOp."""
        self._check_input(x, weights)
        if not self._live:
            return self._ops[0](x)
        out = dtype = None
        w = weights.unbind(0)  # one stack in backward instead of a zero-filled gradient per op
        for i in self._live:
            op = self._ops[i]
            if i == self._skip and self.noisy:
                if self._noise_on_input():
                    o = op(add_noise(x, self.noise, self.kernel_noise_scale))
                else:
                    o = add_noise(self._run(i, x, share), self.noise, self.kernel_noise_scale)
            else:
                o = self._run(i, x, share)
            dtype = o.dtype if out is None else torch.promote_types(dtype, o.dtype)
            if o.dtype in (torch.bfloat16, torch.float16):
                o = o.float()  # under autocast: accumulate in fp32, as the fused op does
            term = w[i] * o
            out = term if out is None else out + term
        # the dtype the `w * o` sum of DARTS gives (the operands' promoted dtype)
        return out if out.dtype == dtype else out.to(dtype)


class FusedMixedOp(MixedOp):
    """The same mixed op, its weighted sum + skip noise fused into one op (forward and backward).

    backend: 'auto' (Triton on CUDA, reference elsewhere), 'triton' or 'torch'; None reads the
    NDARTS_BACKEND environment variable (default auto).
    """

    def __init__(self, C: int, stride: int, primitives=DARTS_PRIMITIVES, noise: NoiseConfig | None = None,
                 backend: str | None = None, *, pool_norm: bool = True):
        super().__init__(C, stride, primitives, noise, pool_norm=pool_norm)
        if backend is not None:
            requested_backend(str(backend))  # an unknown name: BackendError now, not at the first forward
        self.backend = backend
        self.register_buffer("_live_index", torch.tensor(self._live, dtype=torch.long), persistent=False)
        self.register_buffer("_live_inverse", gather_inverse(self._live, len(self.primitives)), persistent=False)
        self._all_live = len(self._live) == len(self.primitives)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, share: NodeShare | None = None,
                seeds=None, live_weights: torch.Tensor | None = None) -> torch.Tensor:
        """seeds: a SeedBlock to take the Philox seeds from (share's, when a share is given); None
        draws one per call. live_weights: weights[i] for the live primitives (all but `none`), when
        the caller has selected them already (SearchCell does it for all its edges at once: one
        gather per cell instead of one per edge); None selects them here."""
        self._check_input(x, weights)
        if live_weights is not None and live_weights.shape != (len(self._live),):
            raise ValueError(f"{type(self).__name__}: live_weights must have shape ({len(self._live)},), one per "
                             f"primitive other than 'none'; got {tuple(live_weights.shape)}")
        if not self._live:
            return self._ops[0](x)
        noisy = self.noisy
        seeds = share.seeds if share is not None else seeds
        operands = []
        skip_position = None
        for pos, i in enumerate(self._live):
            op = self._ops[i]
            if i == self._skip:
                skip_position = pos
                if noisy and self._noise_on_input():
                    # the paper's variant: noise on FactorizedReduce's input, via the same op (one operand, weight 1)
                    x_noisy = noisy_mixed_sum([x], x.new_ones((1,), dtype=torch.float32), 0, self.noise,
                                              scale=self.kernel_noise_scale, backend=self.backend,
                                              seed=seeds.take() if seeds is not None else None)
                    operands.append(op(x_noisy))
                    skip_position = None
                    continue
            operands.append(self._run(i, x, share))
        if live_weights is None:
            live_weights = weights if self._all_live else unique_gather(weights, 0, self._live_index, self._live_inverse)
        # a stride-1 edge's skip operand is the node itself: its std is shared by the node's edges;
        # a stride-2 edge's (its FactorizedReduce's output) computed with its node's other reductions'
        std = None
        if share is not None and noisy and skip_position is not None and self.noise.mixture == "additive":
            if self.stride == 1:
                std = share.skip_std(self.backend)
            elif any(m is self._ops[self._skip] for m in share.reductions):
                std = share.reduced_std(self._ops[self._skip], self.backend)
        return noisy_mixed_sum(promote_operands(operands), live_weights, skip_position, self.noise,
                               scale=self.kernel_noise_scale, training=noisy, backend=self.backend, seed=seeds.take() if seeds is not None else None,
                               std=std)

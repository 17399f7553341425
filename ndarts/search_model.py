"""The DARTS search network (supernet): stem, normal and reduction cells of mixed ops, classifier.

The architecture weights α are ``nn.Parameter``s of the module (``alphas_normal``,
``alphas_reduce``), so its state_dict carries the search result. ``weight_parameters()`` and
``arch_parameters()`` separate them for the two optimizers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch_network import ArchNetwork
from .cell_layout import reduction_cells
from .genotype import derive_genotype
from .backend import TRITON_DTYPES, graph_kernels_enabled, kernels_import_error, resolve_backend
from .batch_norm import search_batch_norms, use_search_batch_norm
from .determinism import GlobalAvgPool, gather_inverse, unique_gather
from .depthwise_conv import KERNEL_PARTS as DEPTHWISE_KERNEL_PARTS, use_search_depthwise_conv
from .pointwise_conv import use_search_pointwise_conv
from .edge_groups import EdgeGroup, GroupedConvStack, relu_repeat_sources
from .grouped_state import convert_cell_state
from .group_sum import node_sums, plan_node_sums
from .fused_sum import SeedBlock
from .mixed_op import FusedMixedOp, GroupRun, MixedOp, NodeShare, copy_running_stats, pool_all
from .noise import NoiseConfig
from .operations import NOISYDARTS_PRIMITIVES, FactorizedReduce, ReLUConvBN, check_primitives


class EdgeStreams:
    """Side CUDA streams on which a cell runs the edges into a node concurrently (opt-in lever:
    the search step's kernels are small and latency-bound, ~5 µs each on an H200, so independent
    edges can overlap). Created lazily per device; never pickled."""

    def __init__(self, count: int):
        self.count = count
        self._streams: dict = {}

    def get(self, device: torch.device) -> list:
        if device not in self._streams:
            self._streams[device] = [torch.cuda.Stream(device) for _ in range(self.count)]
        return self._streams[device]

    def __getstate__(self):
        return {"count": self.count, "_streams": {}}


def _run_edge(op, h, w, share, seeds, live_weights):
    """One edge's mixed op. A fused op takes the pass's seed block and its gathered live weights;
    without sharing, a reference op gets the classic call (any DARTS-style mixed op fits)."""
    if isinstance(op, FusedMixedOp):
        return op(h, w, share, seeds=seeds, live_weights=live_weights)
    return op(h, w, share) if share is not None else op(h, w)


class SearchCell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, make_mixed_op,
                 share_node_ops=True, edge_streams: EdgeStreams | None = None, batch_edge_convs=False,
                 group_sums: bool | None = False):
        super().__init__()
        self.reduction = reduction
        self.share_node_ops = share_node_ops
        self.edge_streams = edge_streams
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(make_mixed_op(C, stride))
        self.edge_groups = self._make_edge_groups(C, reduction) if batch_edge_convs else None
        # the FactorizedReduce skip ops of each input's stride-2 edges, run together (NodeShare.reduced)
        self._sources = [j for i in range(steps) for j in range(2 + i)]  # each edge's source state, in edge order
        self._reduction_edges = {j: [k for k, (src, op) in enumerate(zip(self._sources, self._ops)) if src == j
                                     and op._skip is not None and isinstance(op._ops[op._skip], FactorizedReduce)]
                                 for j in (0, 1)}
        self._groups = [group for group, _ in self.edge_slots()]  # each edge's EdgeGroup (its source's)
        self._slots = [slot for _, slot in self.edge_slots()]
        # group_sums None (auto): the node sums run where the Triton kernels do (elsewhere the group
        # op's reference is E per-edge sums and a stack: no gain); True: everywhere
        self._sum_plans = self._make_sum_plans() if group_sums is not False and batch_edge_convs else {}
        self._sums_everywhere = group_sums is True
        # fused ops on a space with `none`: their live weights gathered once per cell, not once per
        # edge (every edge has the same primitives, so the first edge's index serves the cell)
        op = self._ops[0]
        self._gather_live = isinstance(op, FusedMixedOp) and 0 < len(op._live) < len(op.primitives)
        self._backend = op.backend if isinstance(op, FusedMixedOp) else None  # of the node fan-outs

    def edge_slots(self) -> list[tuple[int, int]]:
        """(group, slot) of each edge, in edge order. States 0, 1 are the cell inputs, 2 + k node k;
        state j feeds nodes max(0, j-1) … steps-1. The two inputs share group 0 (input 0's edge
        into node i in slot i, input 1's in slot steps + i); node k's edges are group k + 1, its
        edge into node i in slot i - k - 1."""
        return [(self.group_of(j), i - max(0, j - 1) + (self._steps if j == 1 else 0))
                for i in range(self._steps) for j in range(2 + i)]

    @staticmethod
    def group_of(state: int) -> int:
        """The EdgeGroup of the edges leaving state `state` (0, 1: the inputs; 2 + k: node k)."""
        return max(0, state - 1)

    def _make_edge_groups(self, C, reduction):
        """One EdgeGroup for the two inputs' edges and one per node with outgoing edges; each edge's
        sep/dil convs move into its source's group."""
        steps, primitives = self._steps, self._ops[0].primitives
        groups = [EdgeGroup(C, (steps, steps), 2 if reduction else 1, primitives)]
        groups += [EdgeGroup(C, steps - k - 1, 1, primitives) for k in range(steps - 1)]
        for op, (_, slot) in zip(self._ops, self.edge_slots()):
            op.use_edge_group(slot)
        return nn.ModuleList(groups)

    def _make_sum_plans(self) -> dict:
        plans, index = plan_node_sums(self._ops, self.edge_slots(), self.edge_groups)
        self.register_buffer("_sum_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.register_buffer("_sum_inverse", gather_inverse(index, len(self._ops) * len(self._ops[0].primitives)),
                             persistent=False)
        return plans

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # checkpoints load across the layouts: per-edge sep/dil conv entries into EdgeGroups and
        # back, and the earlier grouped layouts (ndarts.grouped_state)
        convert_cell_state(self, state_dict, prefix)
        if self.share_node_ops:
            error_msgs.extend(self._unshareable_pool_stats(state_dict, prefix))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _unshareable_pool_stats(self, state_dict, prefix) -> list[str]:
        """A message for each pool whose BatchNorms on the edges leaving one node hold different
        running statistics in `state_dict`. Node sharing computes such a pool + BatchNorm once for
        all those edges and gives every BN the computing one's statistics (NodeShare): exact while
        they are equal, as a search keeps them from its start (every edge's BN sees the same input),
        but a state whose BNs differ would lose all but one edge's statistics."""
        op = self._ops[0]
        if not isinstance(op, MixedOp) or not op._pools:
            return []
        problems = []
        for j in sorted(set(self._sources)):
            edges = [e for e, src in enumerate(self._sources) if src == j]
            for i in sorted(op._pools):
                for name in ("running_mean", "running_var"):
                    keys = [f"{prefix}_ops.{e}._ops.{i}.1.{name}" for e in edges]
                    held = [state_dict[k] for k in keys if k in state_dict]
                    if len(held) < 2 or any(t.shape != held[0].shape for t in held):
                        continue  # missing or misshapen entries: load_state_dict names those
                    if not all(torch.allclose(t, held[0], rtol=1e-5, atol=1e-6) for t in held[1:]):
                        where = f"{prefix}_ops.{{{','.join(map(str, edges))}}}._ops.{i}.1.{name}"
                        problems.append(f"the {op.primitives[i]} BatchNorms of the edges leaving state {j} hold "
                                        f"different statistics ({where}), which node sharing would make one: load "
                                        "this state into a network with share_node_ops=False")
        return problems

    def forward(self, s0, s1, weights, seeds=None, relus=None):
        """seeds: the forward pass's SeedBlock for the fused sums (SearchNetwork draws it), or None.
        relus: (relu(s0), relu(s1)) when the caller has them (a cell output is read by the next two
        cells, both preprocessings begin with its relu: SearchNetwork makes it once), else None."""
        # the two preprocessing BatchNorms in one launch each way where the Triton kernels run
        pre = (self.preprocess0, self.preprocess1)
        inputs = ([p.pre_norm(s) for p, s in zip(pre, (s0, s1))] if relus is None
                  else [p.pre_norm_from_relu(r) for p, r in zip(pre, relus)])
        states = search_batch_norms(inputs, [p.norm for p in pre])
        # one row of α weights per edge: unbind's backward is one stack for the whole cell, where
        # indexing weights[k] per edge costs a zero-filled [edges, ops] gradient and an add per edge
        weight_matrix, weights = weights, weights.unbind(0)
        sums: dict = {}  # EdgeGroup → its edges' mixed sums (group_sums)
        plans = self._sum_plans if self._sums_everywhere or self._sums_on(states[0]) else {}
        # the group sums' weights in one gather for the cell (split's backward is one cat); the live
        # weights of the edges that sum by themselves in another, when there are any
        # (unique_gather: a backward without atomics or a sort, which a CUDA graph captures in any mode)
        group_weights = dict(zip(plans, unique_gather(weight_matrix.reshape(-1), 0, self._sum_index,
                                                      self._sum_inverse).split([p.stop - p.start for p in plans.values()]))
                             ) if plans else {}
        first = self._ops[0]
        live = (unique_gather(weight_matrix, 1, first._live_index, first._live_inverse).unbind(0)
                if self._gather_live and any(g not in plans for g in self._groups) else None)
        # what all edges leaving a node compute alike, once per node (NodeShare): relu(h), with
        # which sep/dil convs and FactorizedReduce begin (4 ReLUs per edge become 1 per node), and
        # the two pools with their BatchNorm (once per node instead of once per edge); the sep/dil
        # convs of each EdgeGroup's edges at once (GroupRun; the two inputs share one)
        syncs: list = []
        # a group whose edges are summed by its NodeSumPlan: its stacks' last BatchNorms deferred into
        # the group sums, which normalise as they read (one write and one read of each output less)
        streams = (self.edge_streams.get(states[0].device)
                   if self.edge_streams is not None and self.share_node_ops and states[0].is_cuda else None)
        runs = ([GroupRun(group, defer=g in plans and not streams) for g, group in enumerate(self.edge_groups)]
                if self.edge_groups is not None else [])

        def share(j, h):
            g = self.group_of(j)
            return NodeShare(h, syncs, runs[g] if g < len(runs) else None, seeds, self._reductions(j), self._backend)

        shares = [share(j, h) for j, h in enumerate(states)] if self.share_node_ops else None
        if shares is not None and isinstance(self._ops[0], MixedOp) and self._ops[0]._pools and 0 not in plans:
            # the two inputs' pools with their BatchNorms at once, by each input's edge into node 0
            # (where the inputs' edges are summed as a group, their group runs them with its convs)
            pool_all([(self._ops[0], shares[0]), (self._ops[1], shares[1])])
        # each node's sum so far: a group summed by target (plan.by_target) adds its edges' sums to
        # the partial sums of its target nodes in its own kernels (a chain, no adds)
        partial: list = [None] * self._steps
        # node stds taken by the group-sum kernel that finishes a node (its first target), for the
        # additive noise of that node's skip edges: no separate pass over the node
        node_stds = {} if plans and self._ops[0].noisy and self._ops[0].noise.mixture == "additive" else None
        offset = 0
        for i in range(self._steps):
            if streams:
                s = self._node_on_streams(states, shares, weights, offset, streams, live)
            else:
                s = partial[i]
                for j, h in enumerate(states):
                    g = self.group_of(j)
                    plan = plans.get(g)
                    if plan is not None and plan.by_target:
                        if g not in sums:  # group g's first target is node g (the inputs' group: node 0)
                            partial[i] = s
                            targets = range(g, g + plan.counts[0])
                            after = plans.get(g + 1)  # node g's edges: summed next, their skip noisy
                            out = [] if node_stds is not None and after is not None and after.skip is not None else None
                            sums[g] = node_sums(self._ops, plan, runs[g].shares, group_weights[g],
                                                bases=[partial[t] for t in targets], target_std_out=out)
                            if out:
                                node_stds[g] = out[0]
                            partial[g:g + len(targets)] = sums[g]
                            s = partial[i]
                        continue  # this edge's sum is in partial[i] (and so in s)
                    if plan is not None:
                        if g not in sums:
                            sums[g] = node_sums(self._ops, plan, runs[g].shares, group_weights[g])
                        o = sums[g][self._slots[offset + j]]
                    else:
                        o = _run_edge(self._ops[offset + j], h, weights[offset + j],
                                      shares[j] if shares is not None else None, seeds,
                                      live[offset + j] if live is not None else None)
                    s = o if s is None else s + o
            offset += len(states)
            states.append(s)
            if shares is not None:
                shares.append(share(len(shares), s))
                if node_stds is not None and i in node_stds:
                    shares[-1].set_std(node_stds[i])
        if syncs:
            copy_running_stats(syncs)
        if shares is not None:
            # a node's slice of the output as one more consumer of its fan-out: the slice's gradient
            # joins its edges' in the fan-out's one sum (no autograd add per node)
            return torch.cat([share.output() for share in shares[-self._multiplier:]], dim=1)
        return torch.cat(states[-self._multiplier:], dim=1)

    def _reductions(self, state: int) -> list:
        """The FactorizedReduce ops of state's stride-2 edges that this pass runs from the node's
        relu (all but those that take the paper's noise on their input), when two or more."""
        ops = [self._ops[k] for k in self._reduction_edges.get(state, [])]
        ops = [op._ops[op._skip] for op in ops if not (op.noisy and op._noise_on_input())]
        return ops if len(ops) > 1 else []

    def _sums_on(self, x: torch.Tensor) -> bool:
        """Whether the node sums of group_sums=None (auto) run for x: on the Triton kernels."""
        if not self._sum_plans:
            return False
        op = self._ops[0]
        return resolve_backend(op.backend, x.device) == "triton" and x.dtype in TRITON_DTYPES

    def _node_on_streams(self, states, shares, weights, offset, streams, live):
        """One node: its incoming edges on side streams (edge j on stream j mod count), summed on
        the current stream once they are done. What the edges share is computed first, on the
        current stream; record_stream keeps the allocator from reusing a block while another
        stream still reads it. Autograd runs each op's backward on the stream of its forward."""
        cur = torch.cuda.current_stream()
        for j in range(len(states)):
            if not shares[j].prepared:
                self._ops[offset + j].prepare_share(shares[j])
        outs = []
        for j, h in enumerate(states):
            stream = streams[j % len(streams)]
            stream.wait_stream(cur)
            w = weights[offset + j]
            live_w = live[offset + j] if live is not None else None
            for t in (w, *shares[j].tensors(), *([live_w] if live_w is not None else [])):  # shares[j].x is h
                t.record_stream(stream)
            with torch.cuda.stream(stream):
                outs.append((_run_edge(self._ops[offset + j], h, w, shares[j], None, live_w), stream))
        s = None
        for o, stream in outs:
            cur.wait_stream(stream)
            o.record_stream(cur)
            s = o if s is None else s + o
        return s


class SearchNetwork(ArchNetwork):
    """DARTS's search network for CIFAR-sized inputs (any H×W ≥ 4, any channel count).

    Args: C initial channels, num_classes, layers (cells; reductions at layers//3 and
    2·layers//3), primitives, noise (NoiseConfig), fused (FusedMixedOp on every edge),
    steps/multiplier/stem_multiplier as DARTS, in_channels of the images,
    arch_activation 'softmax' (DARTS) or 'sigmoid' (FairDARTS), backend for the fused op,
    share_node_ops: compute once per node what all edges leaving it compute alike: relu(h) and the
    pools with their BatchNorm (same outputs, gradients and BatchNorm state; fewer kernels); and
    once per cell output its relu, with which both cells that read it begin their preprocessing.
    fused_batch_norm (default: as fused): the affine-free BatchNorms of the cells run on the Triton
    kernels wherever the fused op does (SearchBatchNorm2d, ndarts.batch_norm).
    fused_depthwise_conv (default off: not yet timed on a GPU): the depthwise convolutions of the
    sep/dil convs on the Triton kernels, under the same rule (ndarts.depthwise_conv); "weight_grad":
    only their weight gradient (PyTorch's forward and input gradient; True is "all").
    fused_pointwise_conv (default off: not yet timed on a GPU): the cells' 1×1 stride-1 convolutions
    (the batched stacks' grouped ones, the preprocessing ones) on the Triton kernels, under the same
    rule (ndarts.pointwise_conv).
    fused_separable_conv (default off: not yet timed on a GPU): each depthwise → 1×1 conv pair of
    the batched sep/dil conv stacks on one fused Triton kernel each way, under the same rule
    (ndarts.separable_conv): the depthwise output is never written or kept; where the BatchNorm
    kernels run too, each stage of a stack (its pairs and BatchNorms) is one autograd Function whose
    pair kernels make the BatchNorms' statistics and apply their backward as they read the gradient,
    the sep convs' ReLU after bn1 is applied by the second pair on load, and the first stage reads
    relu(h) of its source nodes without a repeated copy (ndarts.separable_stage).
    recompute_relu (default on): where the BatchNorm kernels run, the batched sep convs' second
    depthwise conv keeps the BatchNorm output before its ReLU (which the BatchNorm keeps anyway)
    instead of the ReLU's output, and makes the ReLU again for its weight gradient: one activation
    less per sep conv at the peak (the graph step's estimated peak 4.02 → 3.51 GiB,
    benchmarks/step_memory.py), one more element-wise pass per sep conv in the w step. (With the
    fused stages of fused_separable_conv the second pair always keeps bn1's output: no ReLU is written.)
    edge_streams (default 0; opt-in, not yet timed on a GPU): on CUDA, with share_node_ops, run the
    edges into a node concurrently on this many side streams (EdgeStreams); same math.
    batch_edge_convs (default: as share_node_ops): the sep/dil convs of all edges leaving a node run
    as one batched conv stack per primitive (EdgeGroup, ndarts.edge_groups): ~3× fewer conv
    launches, same math. The conv weights then live in ``cells.<i>.edge_groups``; state_dicts load
    across the two layouts (per-edge ↔ grouped).
    group_sums (default None = auto: on with fused and batch_edge_convs, without edge_streams, where
    the fused ops run on the Triton kernels): the mixed sums of all edges leaving a node as one op
    (ndarts.group_sum: one Triton kernel each way for the E edges, shared operands read once; the
    stride-2 edges of a reduction cell too, each with its own FactorizedReduce skip, unless the
    noise goes on FactorizedReduce's input; benchmarks/count_kernels.py counts the kernels saved);
    each edge draws its own noise. True: wherever those conditions hold, on the torch backend too (its reference: E
    per-edge sums); False: per-edge fused sums.
    channels_last (default None = auto: on CPU tensors with the torch backend): the images, and so
    every activation after them, in channels_last memory layout; the same math (the search step on a
    2-core CPU: 0.72× the time, benchmarks/RESULTS.md). True/False force it.
    autocast (default None): torch.bfloat16 runs the stem, cells and classifier under bf16
    autocast; α, its softmax, the mixed sums' accumulation and the logits stay fp32.
    """

    def __init__(self, C=16, num_classes=10, layers=8, primitives=NOISYDARTS_PRIMITIVES,
                 noise: NoiseConfig | None = None, fused=False, steps=4, multiplier=4, stem_multiplier=3,
                 in_channels=3, arch_activation="softmax", backend=None, share_node_ops=True,
                 fused_batch_norm: bool | None = None, fused_depthwise_conv: bool | str = False, edge_streams: int = 0,
                 batch_edge_convs: bool | None = None, autocast: torch.dtype | None = None,
                 group_sums: bool | None = None,
                 channels_last: bool | None = None, fused_pointwise_conv: bool = False, recompute_relu: bool = True,
                 fused_separable_conv: bool = False):
        super().__init__()
        self._set_options(arch_activation, backend, channels_last, autocast)
        if layers < 1 or C < 1 or steps < 1 or not 1 <= multiplier <= steps:
            raise ValueError(f"bad network size: layers={layers} C={C} steps={steps} multiplier={multiplier}")
        self.primitives = check_primitives(primitives)
        self.noise = NoiseConfig() if noise is None else noise
        self.fused = fused
        self._steps = steps
        self._multiplier = multiplier
        self.num_classes = num_classes

        def make_mixed_op(c, stride):
            if fused:
                return FusedMixedOp(c, stride, self.primitives, self.noise, backend=backend)
            return MixedOp(c, stride, self.primitives, self.noise)

        if edge_streams < 0:
            raise ValueError(f"edge_streams must be ≥ 0, got {edge_streams}")
        self._share_relus = share_node_ops
        if batch_edge_convs is None:
            batch_edge_convs = share_node_ops
        if batch_edge_convs and not share_node_ops:
            raise ValueError("batch_edge_convs needs share_node_ops=True (the groups are per node)")
        if fused_separable_conv and not batch_edge_convs:
            raise ValueError("fused_separable_conv needs batch_edge_convs (it fuses the batched conv stacks' "
                             "depthwise → 1×1 pairs)")
        sums_possible = fused and batch_edge_convs and not edge_streams
        if group_sums and not sums_possible:
            raise ValueError("group_sums needs fused=True and batch_edge_convs, without edge_streams")
        if group_sums is None and (not sums_possible or kernels_import_error() is not None):
            group_sums = False  # auto, and the node sums could never run here
        streams = EdgeStreams(edge_streams) if edge_streams else None
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reduction_cells(layers)
            if reduction:
                C_curr *= 2
            cell = SearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, make_mixed_op,
                              share_node_ops, streams, batch_edge_convs, group_sums)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = GlobalAvgPool()
        self.classifier = nn.Linear(C_prev, num_classes)
        if fused if fused_batch_norm is None else fused_batch_norm:
            use_search_batch_norm(self.cells, backend)
        if fused_depthwise_conv not in (False, True, *DEPTHWISE_KERNEL_PARTS):
            raise ValueError(f"SearchNetwork: fused_depthwise_conv must be False, True or one of "
                             f"{DEPTHWISE_KERNEL_PARTS}, got {fused_depthwise_conv!r}")
        if fused_depthwise_conv:
            use_search_depthwise_conv(self.cells, backend, "all" if fused_depthwise_conv is True else fused_depthwise_conv)
        if fused_pointwise_conv:
            use_search_pointwise_conv(self.cells, backend)
        for m in self.cells.modules():
            if isinstance(m, EdgeGroup):
                m.recompute_relu = recompute_relu
            if isinstance(m, GroupedConvStack):
                m.fused_separable, m.backend = bool(fused_separable_conv), backend

        num_edges = sum(2 + i for i in range(steps))
        # at most two fused sums per edge (the paper's noise on a reduction edge's input is a second)
        self._seed_block_size = 2 * num_edges * layers
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))

    # -- parameters (the rest: ArchNetwork)
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def arch_record(self) -> dict:
        """α's weights per cell type, for the search's metrics (lists of [edges][ops])."""
        return {"alphas_normal": self.arch_weights(self.alphas_normal).tolist(),
                "alphas_reduce": self.arch_weights(self.alphas_reduce).tolist()}

    # -- forward
    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"SearchNetwork expects images [N, C, H, W], got shape {tuple(x.shape)}")
        channels_last = self._use_channels_last(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # α and its softmax stay fp32 under autocast too (computed outside it)
        w_normal = self.arch_weights(self.alphas_normal)
        w_reduce = self.arch_weights(self.alphas_reduce)
        with self._autocast(x):
            s0 = s1 = self.stem(x)
            if channels_last:
                # from here the layout follows the activations through every op; set it on the stem's
                # output too, for a 1-channel image is NCHW and NHWC at once (the stem keeps NCHW)
                s0 = s1 = s0.contiguous(memory_format=torch.channels_last)
            # the Philox seeds of every fused sum of this pass, in one draw (graph-safe: drawn on the device)
            seeds = SeedBlock(x.device, self._seed_block_size) if self.fused and self.training else None
            # with node sharing, each cell output's relu once for the two cells that read it (both
            # preprocessings begin with it); the stem's output is both inputs of the first cell and
            # the first input of the second. Each use takes one alias of it (_cell_relus).
            if self._share_relus:
                a0 = a1 = iter(self._cell_relus(s1, 2 + (len(self.cells) > 1)))
            for k, cell in enumerate(self.cells):
                out = cell(s0, s1, w_reduce if cell.reduction else w_normal, seeds,
                           relus=(next(a0), next(a1)) if self._share_relus else None)
                s0, s1 = s1, out
                if self._share_relus and k + 1 < len(self.cells):
                    a0, a1 = a1, iter(self._cell_relus(out, 1 + (k + 2 < len(self.cells))))
            out = self.global_pooling(s1)
            logits = self.classifier(out.flatten(1))
        return logits.float() if self.autocast is not None else logits

    def _cell_relus(self, x, uses: int) -> list:
        """relu(x) for each of its `uses` readers (the preprocessings of the cells that read cell output
        x). Where the fused network's search-op kernels run, one alias each from one relu_repeat launch
        (ndarts.edge_groups.relu_repeat_sources), whose backward kernel sums their gradients and applies
        the ReLU's mask in one pass (no autograd add of the readers' gradients, no separate ReLU
        backward); elsewhere one F.relu shared by all."""
        if uses > 1 and self.fused and graph_kernels_enabled(self.backend, x):
            # the preprocessing convs keep relu(x) for their backward: the ReLU's mask is read from it
            return list(relu_repeat_sources([x], [1], self.backend, aliases=uses, keep_output=True))
        return [F.relu(x)] * uses

    def genotype(self):
        return derive_genotype(self.arch_weights(self.alphas_normal), self.arch_weights(self.alphas_reduce),
                               self.primitives, self._steps, self._multiplier)

"""The convolutions of all edges leaving one node, batched: one launch per layer for E edges.

Every edge leaving a node of a DARTS cell starts its sep/dil convs from the same relu(h), each
with its own weights. ``EdgeGroup`` stores the weights of those E edges stacked, and runs each
conv primitive for all E edges at once (``SearchNetwork(batch_edge_convs=True)``), every layer
with edge-major channels (channel e·C + c = edge e's channel c):

- relu(h) repeated E times along the channels, once per node for all its primitives;
- first depthwise conv: groups = E·C, so exactly E per-edge depthwise convs;
- first pointwise conv: groups = E (edge e's C×C weight);
- BatchNorm over E·C channels: per channel, so exactly E BatchNorms of C channels;
- second depthwise conv (groups = E·C) and pointwise conv (groups = E), the same way;
- the E outputs are made contiguous in one copy ([N, E, C, H, W] → [E, N, C, H, W]), each then
  an operand of its edge's mixed sum (``_EdgeSplit``; its backward is one stack).

With ``SearchNetwork(fused_separable_conv=True)``, where the search kernels run, each depthwise →
pointwise pair is one fused Triton kernel each way (ndarts.separable_conv): the depthwise output
never reaches memory; where the BatchNorm kernels run too, each stage (pairs and BatchNorms) is one
autograd Function whose pair kernels make the BatchNorms' statistics and apply their backward as
they read the gradient, the sep convs' ReLU after bn1 is applied by the second pair as it reads
bn1's output, and the first stage reads relu(h) of its sources straight from h (no repeated input
made; ndarts.separable_stage).

The edges leaving a cell's two input nodes form one group (8 edges in a 4-node cell): their
first stage reads both inputs (``repeat_sources``), so each layer of the inputs' convs is one
launch instead of two.

Where the group's edges are summed by its group sums (ndarts.group_sum), each stack's last BatchNorm
is deferred (``run(defer_last=True)``): it writes statistics only, and the group sums normalise its
input as they read it.

Per edge, the math is the DARTS op's (same parameters, same BatchNorm statistics): the tests
load a per-edge network's state_dict (SearchNetwork converts the layout on load, both ways, and
from the earlier grouped layouts: ndarts.grouped_state) and compare outputs and gradients.
A sep conv of 4 edges is ~10 launches instead of ~28.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.autograd.function import once_differentiable

from .backend import cpu_conv_forms, graph_kernels_enabled
from .batch_norm import search_batch_norms
from .conv_geometry import output_positions, stored_channels_last
from .conv_taps import conv2d_live_taps, depthwise_live_taps, live_kernel, reads_one_phase
from .depthwise_conv import _square, depthwise_conv_of_relu
from .fan_out import fan_out
from .separable_conv import separable_conv, use_separable
from .separable_stage import conv_stages, stage_fits

GROUPED_KINDS = ("sep_conv", "dil_conv")


def groupable(primitive: str) -> bool:
    """The primitives an EdgeGroup computes: the sep and dil convs."""
    return primitive.startswith(GROUPED_KINDS)


def _geometry(primitive: str) -> tuple[int, int, int]:
    """(kernel size, padding, dilation) of a sep/dil conv primitive, as DARTS's OPS define them."""
    k = int(primitive.rsplit("_", 1)[1].split("x")[0])
    if primitive.startswith("dil_conv"):
        return k, k - 1, 2
    return k, k // 2, 1


# the multiplier formulation only on maps of more positions (GroupedConvStack.uses_multiplier)
MULTIPLIER_MIN_POSITIONS = 256


def multiplier_path(r: torch.Tensor) -> bool:
    """Whether the first stage of the grouped stacks may run in the channel-multiplier formulation:
    for channels_last CPU tensors (oneDNN). Everywhere else (GPU, Triton) the edge-major one, which
    launches fewer kernels (no per-call weight ops). Which stacks use it: GroupedConvStack.uses_multiplier."""
    return cpu_conv_forms(r) and stored_channels_last(r)


def repeat_channels(r: torch.Tensor, times: int) -> torch.Tensor:
    """[N, C, H, W] → [N, times·C, H, W], channel t·C + c = r's channel c, in r's memory format
    (``Tensor.repeat`` returns NCHW, which would take a channels_last network off oneDNN's fast
    NHWC convolutions). One copy; its backward is one sum."""
    if times == 1:
        return r
    n, c, h, w = r.shape
    if stored_channels_last(r):
        nhwc = r.permute(0, 2, 3, 1).unsqueeze(3).expand(n, h, w, times, c).reshape(n, h, w, times * c)
        return nhwc.permute(0, 3, 1, 2)
    return r.repeat(1, times, 1, 1)


def repeat_sources(rs, counts) -> torch.Tensor:
    """The first stage's edge-major input of a group: source s's relu rs[s] repeated counts[s]
    times along the channels, the sources one after another ([N, E·C, H, W], E = Σ counts). One
    copy for all sources (a cat of expanded views); its backward is one sum per source."""
    if len(rs) == 1:
        return repeat_channels(rs[0], counts[0])
    r = rs[0]
    if stored_channels_last(r):
        return torch.cat([repeat_channels(x, k) for x, k in zip(rs, counts)], dim=1)  # keeps channels_last
    n, c, h, w = r.shape
    parts = [x.unsqueeze(1).expand(n, k, c, h, w) for x, k in zip(rs, counts)]
    return torch.cat(parts, dim=1).view(n, sum(counts) * c, h, w)


class _ReluRepeat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, counts, aliases, keep_output, *xs):
        import ndarts_kernels

        ctx.counts = counts
        ctx.set_materialize_grads(False)  # an unused alias gives None, not a zero-filled tensor
        y = ndarts_kernels.relu_repeat_forward(list(xs), counts)
        # the mask is x <= 0, or relu(x) <= 0 alike (NaN passes both): x, kept anyway by a group's nodes, or
        # (keep_output, one source repeated once) relu(x), kept anyway by its readers
        ctx.save_for_backward(*((y,) if keep_output else xs))
        return tuple(y.view_as(y) for _ in range(aliases))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        import ndarts_kernels

        grads = [g for g in grads if g is not None]
        if not grads:
            return (None, None, None, *(None for _ in ctx.saved_tensors))
        return (None, None, None, *ndarts_kernels.relu_repeat_backward(grads, list(ctx.saved_tensors), ctx.counts))


def relu_repeat_sources(xs, counts, backend=None, aliases: int = 1, keep_output: bool = False):
    """repeat_sources([relu(x) for x in xs], counts): one Triton launch per source each way
    (ndarts_kernels.relu_repeat_*) where the search-op kernels run (graph_kernels_enabled); the
    torch ops elsewhere. The same values and gradients.

    aliases > 1: a tuple of that many aliases of the result, one per consumer (a group's
    primitives), whose gradients the Triton backward sums in its own pass (no autograd adds);
    on the torch path a fan-out (ndarts.fan_out) of the result.

    keep_output (one source, counts [1]): the Triton backward's ReLU mask is read from relu(x), which
    the readers keep for their backward anyway (a cell output's preprocessing convs), instead of
    keeping x alive for it."""
    if keep_output and (len(xs) != 1 or list(counts) != [1]):
        raise ValueError(f"relu_repeat_sources: keep_output takes one source repeated once, got counts {list(counts)}")
    from ndarts_kernels.relu_repeat import MAX_GRADS, MAX_REPEATS

    first = xs[0]
    if (graph_kernels_enabled(backend, first) and max(counts) <= MAX_REPEATS and aliases <= MAX_GRADS
            and all(x.shape == first.shape and x.dtype == first.dtype and x.is_contiguous() for x in xs)):
        out = _ReluRepeat.apply(tuple(counts), aliases, keep_output, *xs)
        return out[0] if aliases == 1 else out
    y = repeat_sources([F.relu(x) for x in xs], counts)
    return y if aliases == 1 else fan_out(y, aliases, backend)


def split_edges(y: torch.Tensor, edges: int) -> tuple[torch.Tensor, ...]:
    """[N, E·C, H, W] (edge-major channels) → E contiguous [N, C, H, W] tensors (one copy)."""
    return _EdgeSplit.apply(y, edges)


class _EdgeSplit(torch.autograd.Function):
    """[N, E·C, H, W] (edge-major channels) → E dense [N, C, H, W] tensors, in one copy, in the
    input's memory format (contiguous or channels_last); the backward stacks the E gradients
    straight into the input's layout (one kernel)."""

    @staticmethod
    def forward(ctx, y, edges: int):
        n, ec, h, w = y.shape
        c = ec // edges
        ctx.shape = y.shape
        ctx.channels_last = stored_channels_last(y)
        if ctx.channels_last:
            # memory [N, H, W, E, C] → [E, N, H, W, C]: each edge a channels_last [N, C, H, W]
            parts = y.permute(0, 2, 3, 1).reshape(n, h, w, edges, c).permute(3, 0, 1, 2, 4).contiguous()
            return parts.permute(0, 1, 4, 2, 3).unbind(0)
        return y.contiguous().view(n, edges, c, h, w).transpose(0, 1).contiguous().unbind(0)

    @staticmethod
    def backward(ctx, *grads):
        some = next(g for g in grads if g is not None)
        grads = [g if g is not None else torch.zeros_like(some) for g in grads]
        n, ec, h, w = ctx.shape
        if ctx.channels_last:
            stacked = torch.stack([g.permute(0, 2, 3, 1) for g in grads], dim=3)  # [N, H, W, E, C]
            return stacked.reshape(n, h, w, ec).permute(0, 3, 1, 2), None
        return torch.stack(grads, dim=1).view(ctx.shape), None


class GroupedConvStack(nn.Module):
    """One sep conv (``repeats=2``) or dil conv (``repeats=1``) primitive for `edges` edges.

    Layer names: ``dw1``, ``pw1``, ``bn1`` and, for the sep conv, ``dw2``, ``pw2``, ``bn2``; every
    layer edge-major. ``ndarts.grouped_state.edge_views`` maps their state to edge e's DARTS state names
    (``op.1.weight`` …).
    Input: relu(h) [N, C, H, W] of each source node (a cell's two inputs share one group); the
    first stage reads them repeated along the channels (``repeat_sources``: EdgeGroup makes that
    once for all its primitives), or, on oneDNN's NHWC path, through the channel-multiplier
    formulation, source by source (``multiplier_path``).
    """

    def __init__(self, C: int, edges: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 repeats: int):
        super().__init__()
        EC = edges * C
        self.C, self.edges, self.repeats = C, edges, repeats
        self.dw1 = nn.Conv2d(EC, EC, kernel_size, stride, padding, dilation=dilation, groups=EC, bias=False)
        self.pw1 = nn.Conv2d(EC, EC, 1, groups=edges, bias=False)
        self.bn1 = nn.BatchNorm2d(EC, affine=False)
        if repeats == 2:
            self.dw2 = nn.Conv2d(EC, EC, kernel_size, 1, padding, groups=EC, bias=False)
            self.pw2 = nn.Conv2d(EC, EC, 1, groups=edges, bias=False)
            self.bn2 = nn.BatchNorm2d(EC, affine=False)
        # mask[e, 0, 0, f] = (e == f): edge e's C×C block of the dense 1×1 conv of multiplier_path
        self.register_buffer("_mask", torch.eye(edges).view(edges, 1, 1, edges), persistent=False)
        # each dw → pw pair on one fused kernel each way where the search kernels run
        # (ndarts.separable_conv); SearchNetwork(fused_separable_conv=True) sets both
        self.fused_separable, self.backend = False, None

    def uses_multiplier(self, r: torch.Tensor, counts) -> bool:
        """Whether stage1 runs in the channel-multiplier formulation on r (a source's relu) for a
        group of `counts` edges per source: on oneDNN's NHWC path (multiplier_path), for a dilated
        depthwise conv that keeps more than one tap on r's map (ndarts.conv_taps), a source of
        several edges, and an output map of more than MULTIPLIER_MIN_POSITIONS = 256 positions
        (32×32: the multiplier one 0.58–0.84× the edge-major time). Elsewhere the edge-major
        formulation is the faster: for an undilated conv (the sep convs, or a dilated kernel cut
        to its centre tap) and a lone edge (no repeated copy) always, up to 2.5×; and on maps up to
        16×16, since the depthwise convs' gradients are computed as forward convs
        (ndarts.depthwise_cpu_grads), by up to 1.5× at 8×8 (stage1 fwd+bwd, 1 thread, batch 64,
        benchmarks/RESULTS.md 2026-12-05, first and fourth entries). A reduction cell's dil conv
        (stride 2) runs undilated on one phase of r (conv_taps.reads_one_phase): edge-major too,
        1.3–1.6 against 2.1 ms at 3×3, alike at 5×5 (RESULTS.md, 2026-12-05, second entry)."""
        if not multiplier_path(r) or max(counts) < 2 or _square(self.dw1.dilation) == 1:
            return False
        weight, padding = live_kernel(self.dw1.weight, r.shape[-2:], self.dw1.stride, self.dw1.padding,
                                      self.dw1.dilation)
        if reads_one_phase(self.dw1.stride, padding, self.dw1.dilation):
            return False
        if weight.shape[-2:] == (1, 1):
            return False
        positions = output_positions(r.shape[-2:], weight.shape[-2:], self.dw1.stride, padding, self.dw1.dilation)
        return positions > MULTIPLIER_MIN_POSITIONS

    def _conv_pair(self, r: torch.Tensor, dw: nn.Conv2d, pw: nn.Conv2d, relu_of: torch.Tensor | None = None):
        """pw(dw(r)); relu_of: y with r = relu(y), kept by the BatchNorm before anyway, which the
        backward then keeps instead of r."""
        if self.fused_separable and use_separable(r, dw, pw, self.backend):
            return separable_conv(r, dw, pw, relu_of)
        if relu_of is not None:
            return pw(depthwise_conv_of_relu(r, relu_of, dw))
        return pw(depthwise_live_taps(dw, r))  # dw(r) without the taps that meet only padding (small maps)

    def forward(self, r, counts=None) -> torch.Tensor:
        """r = relu(h) [N, C, H, W] (or one per source, with counts: the edges of each) → the E
        outputs as [N, E·C, H', W'] (edge-major channels; ``split_edges`` makes them E contiguous
        tensors)."""
        y = self.bn1(self.stage1(r, counts=counts))
        if self.repeats == 2:
            y = self.bn2(self.stage2(F.relu(y)))
        return y

    def stage1(self, r, repeated: torch.Tensor | None = None, counts=None) -> torch.Tensor:
        """dw1 and pw1 (bn1's input) from r = relu(h), or a list of them, one per source with
        counts[s] edges (default: one source, all edges); repeated: their repeat_sources, when the
        caller has made it (EdgeGroup, once for all its primitives)."""
        rs = list(r) if isinstance(r, (list, tuple)) else [r]
        counts = [self.edges] if counts is None else list(counts)
        if sum(counts) != self.edges or len(counts) != len(rs):
            raise ValueError(f"GroupedConvStack of {self.edges} edges: got edge counts {counts} for {len(rs)} inputs")
        if repeated is None and self.uses_multiplier(rs[0], counts):
            outs, first = [], 0
            for x, count in zip(rs, counts):
                outs.append(self._multiplier_stage1(x, first, count))
                first += count
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return self._conv_pair(repeated if repeated is not None else repeat_sources(rs, counts), self.dw1, self.pw1)

    def _multiplier_stage1(self, r: torch.Tensor, first: int, count: int) -> torch.Tensor:
        """Edges first … first + count - 1 (one source's) of stage1 in the channel-multiplier
        formulation: the same parameters and products, laid out for oneDNN: dw1 as a conv with a
        channel multiplier on r itself (channel-major outputs c·E + e), then pw1 as one dense 1×1
        conv whose block-diagonal weight also reorders the channels to edge-major."""
        C, w = self.C, self.dw1.weight[first * self.C:(first + count) * self.C]
        dw = w.view(count, C, *w.shape[1:]).transpose(0, 1).reshape(w.shape)
        y = conv2d_live_taps(r, dw, self.dw1.stride, self.dw1.padding, self.dw1.dilation, groups=C)
        mask = self._mask[:count, :, :, :count].to(w.dtype)  # eye(count)
        pw1 = self.pw1.weight[first * C:(first + count) * C]
        return F.conv2d(y, (pw1.view(count, C, C, 1) * mask).reshape(count * C, C * count, 1, 1))

    def stage2(self, y: torch.Tensor, pre_relu: torch.Tensor | None = None) -> torch.Tensor:
        """dw2 and pw2 of a sep conv (bn2's input) from y = relu(bn1(stage1)); pre_relu: bn1(stage1)
        itself, kept by bn1 anyway, when dw2 should keep it for its backward instead of y
        (EdgeGroup.recompute_relu)."""
        return self._conv_pair(y, self.dw2, self.pw2, pre_relu)


def make_grouped_op(primitive: str, C: int, edges: int, stride: int) -> GroupedConvStack:
    k, padding, dilation = _geometry(primitive)
    return GroupedConvStack(C, edges, k, stride, padding, dilation, repeats=2 if primitive.startswith("sep") else 1)


class EdgeGroup(nn.Module):
    """The grouped conv primitives of the edges leaving one node, or several nodes alike (stride:
    theirs): a cell's two input nodes share one group, whose edges are those of input 0, then
    those of input 1 (``sources``: the edge count of each).

    ``ops[str(i)]`` computes primitive i (index into `primitives`) for all edges; forward(relus)
    returns {i: [N, E·C, H', W']} (edge e's output in channels e·C … e·C + C - 1).
    """

    def __init__(self, C: int, edges, stride: int, primitives):
        super().__init__()
        # where the BatchNorm kernels run: the sep convs' dw2 keeps bn1's output, not its ReLU, for
        # the backward (one activation less per sep conv; the ReLU made again for the weight
        # gradient). SearchNetwork sets it (recompute_relu, on by default).
        self.recompute_relu = False
        self.sources = (edges,) if isinstance(edges, int) else tuple(edges)
        self.edges, self.stride = sum(self.sources), stride
        self.ops = nn.ModuleDict({str(i): make_grouped_op(p, C, self.edges, stride)
                                  for i, p in enumerate(primitives) if groupable(p)})

    def forward(self, r, repeated=None, backend=None) -> dict:
        """{primitive index: [N, E·C, H', W']} (see run)."""
        return self.run(r, repeated, backend)[0]

    def run(self, r, repeated=None, backend=None, extra=(), relu_fused: bool = False, defer_last: bool = False,
            norms_out: dict | None = None, extra_moments=None) -> tuple[dict, list]:
        """r = relu(h) [N, C, H, W] of each source (a list; a tensor for a one-source group);
        repeated: their repeat_sources when the caller made it, one tensor, or one alias per
        primitive (in ``self.ops`` order: their gradients reach relu_repeat's backward kernel
        unsummed). relu_fused: r are the sources h before their ReLU (GroupRun, where the search
        kernels run), which the fused stages' kernels read as relu(h) repeated (ndarts.separable_stage),
        or else relu_repeat_sources makes the repeated input (one launch each way; r then not read).
        Stage by stage across the primitives, so that each stage's BatchNorms (and the sep convs'
        ReLU after bn1) run as one launch each way where the Triton kernels run
        (search_batch_norms); elsewhere the same math as calling each stack. backend: the search
        ops' (where the primitives' gradients of a repeat made here are summed in one launch:
        ndarts.fan_out). extra: (x, BatchNorm) pairs normalised in the first stage's launch (a
        node's pools: GroupRun.compute), returned second, in order; extra_moments: per extra None or
        its per-channel partial moments (the pools kernel's), which the first stage's BatchNorm launch
        takes instead of reading the extra for its statistics (where the kernels run; elsewhere
        the BatchNorms compute them).
        defer_last (needs norms_out): each stack's last BatchNorm (a sep conv's bn2, a dil conv's bn)
        deferred where the kernels run: its output is that BatchNorm's input z, standing for y (its
        gradient is y's), and norms_out[i] its (mean, rstd) for a consumer that normalises on load
        (the group sums: noisy_group_sums(grouped_norm=…)); primitives whose y was written get no
        entry."""
        if defer_last and norms_out is None:
            raise ValueError("EdgeGroup.run: defer_last hands out the BatchNorms' statistics in norms_out; got none")
        rs = list(r) if isinstance(r, (list, tuple)) else [r]
        if len(rs) != len(self.sources):
            raise ValueError(f"this EdgeGroup has {len(self.sources)} source nodes, got {len(rs)} inputs")
        ops = [(int(i), op) for i, op in self.ops.items()]
        stacks = [op for _, op in ops]
        if relu_fused:
            if repeated is not None:
                raise ValueError("EdgeGroup.run: relu_fused makes the repeated input itself; got one")
            if stage_fits(rs, stacks, extra, counts=self.sources):
                outs, pooled, norms = conv_stages(rs, stacks, extra, counts=self.sources, defer_last=defer_last,
                                                        extra_moments=extra_moments)
                return self._outputs(ops, outs, norms, norms_out), pooled
            repeated = relu_repeat_sources(rs, self.sources, backend, aliases=len(ops))
        if repeated is None:
            # edge-major: channel e·C + c = its source's channel c; made once for all the primitives that
            # read it (on oneDNN's NHWC path the dilated ones may take the channel-multiplier formulation)
            readers = [k for k, op in enumerate(stacks) if not op.uses_multiplier(rs[0], self.sources)]
            repeated = [None] * len(ops)
            if readers:
                made = repeat_sources(rs, self.sources)
                made = fan_out(made, len(readers), backend) if len(readers) > 1 else [made]
                for k, alias in zip(readers, made):
                    repeated[k] = alias
        elif isinstance(repeated, (list, tuple)):
            if len(repeated) != len(ops):
                raise ValueError(f"this EdgeGroup has {len(ops)} primitives, got {len(repeated)} repeated inputs")
        else:
            repeated = [repeated] * len(ops)
        if all(rep is not None for rep in repeated) and stage_fits(repeated, stacks, extra):
            # each stage one Function: the pairs' backward applies their BatchNorms' (ndarts.separable_stage)
            outs, pooled, norms = conv_stages(repeated, stacks, extra, defer_last=defer_last,
                                                    extra_moments=extra_moments)
            return self._outputs(ops, outs, norms, norms_out), pooled
        pre = [] if self.recompute_relu else None
        norms1, norms2 = [], []
        y1 = search_batch_norms([op.stage1(rs, rep, self.sources) for (_, op), rep in zip(ops, repeated)]
                                + [x for x, _ in extra], [op.bn1 for _, op in ops] + [bn for _, bn in extra],
                                relu=[op.repeats == 2 for _, op in ops] + [False] * len(extra), pre_relu_out=pre,
                                defer=[defer_last and op.repeats == 1 for _, op in ops] + [False] * len(extra),
                                norms_out=norms1,
                                moments=[None] * len(ops) + list(extra_moments or [None] * len(extra)))
        out = dict(zip((i for i, _ in ops), y1))
        norms = dict(zip((i for i, _ in ops), norms1))
        pre_relu = dict(zip((i for i, _ in ops), pre)) if pre is not None else {}
        seps = [(i, op) for i, op in ops if op.repeats == 2]
        if seps:
            y2 = search_batch_norms([op.stage2(out[i], pre_relu.get(i)) for i, op in seps], [op.bn2 for _, op in seps],
                                    defer=[defer_last] * len(seps), norms_out=norms2)
            out.update(zip((i for i, _ in seps), y2))
            norms.update(zip((i for i, _ in seps), norms2))
        return self._outputs(ops, [out[i] for i, _ in ops], [norms[i] for i, _ in ops], norms_out), y1[len(ops):]

    @staticmethod
    def _outputs(ops, outs, norms, norms_out) -> dict:
        """{primitive index: output}; the deferred BatchNorms' (mean, rstd) into norms_out."""
        if norms_out is not None:
            norms_out.update((i, n) for (i, _), n in zip(ops, norms) if n is not None)
        return dict(zip((i for i, _ in ops), outs))


class EdgeGroupSlot(nn.Module):
    """Stands in a MixedOp for a primitive its cell's EdgeGroup computes (no parameters)."""

    def __init__(self, primitive: str, slot: int):
        super().__init__()
        self.primitive, self.slot = primitive, slot

    def forward(self, x):
        raise RuntimeError(f"{self.primitive} of this edge is computed by its cell's EdgeGroup "
                           "(SearchNetwork(batch_edge_convs=True)); call the mixed op with the cell's NodeShare")

    def extra_repr(self) -> str:
        return f"{self.primitive}, slot={self.slot}"

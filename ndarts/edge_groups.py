"""The convolutions of all edges leaving one node, batched: one launch per layer for E edges.

Every edge leaving a node of a DARTS cell starts its sep/dil convs from the same relu(h), each
with its own weights. ``EdgeGroup`` stores the weights of those E edges stacked, and runs each
conv primitive for all E edges at once (``SearchNetwork(batch_edge_convs=True)``):

- first depthwise conv: one conv with a channel multiplier (groups = C, C·E outputs), channel
  c·E + e = edge e's channel c (channel-major);
- first pointwise conv: one dense 1×1 conv of C·E → E·C channels whose weight is block-diagonal
  per edge (the E per-edge C×C weights scattered by a constant 0/1 mask): it also reorders the
  channels to edge-major, e·C + c;
- BatchNorm over E·C channels: per channel, so exactly E BatchNorms of C channels;
- second depthwise conv (groups = E·C) and pointwise conv (groups = E): edge-major, exact;
- the E outputs are made contiguous in one copy ([N, E, C, H, W] → [E, N, C, H, W]), each then
  an operand of its edge's mixed sum (``_EdgeSplit``; its backward is one stack).

Per edge, the math is the DARTS op's (same parameters, same BatchNorm statistics): the tests
load a per-edge network's state_dict (SearchNetwork converts the layout on load, both ways:
``cell_state_to_groups`` / ``cell_state_to_edges``) and compare outputs and gradients.
A sep conv of 4 edges is ~10 launches instead of ~28; the price is E× the FLOPs of the first
pointwise conv (tiny next to the launches on a GPU; on a 2-core CPU the dense conv timed the same
as a channel permutation + grouped conv at the search shapes, 0.5–1.5 ms fwd+bwd each).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch_norm import search_batch_norms

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
        ctx.channels_last = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
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

    Layer names: ``dw1``, ``pw1`` (a [E, C, C] parameter), ``bn1`` and, for the sep conv, ``dw2``,
    ``pw2``, ``bn2``. ``edge_views`` maps their state to edge e's DARTS state names (``op.1.weight`` …).
    """

    def __init__(self, C: int, edges: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 repeats: int):
        super().__init__()
        self.C, self.edges, self.repeats = C, edges, repeats
        self.dw1 = nn.Conv2d(C, C * edges, kernel_size, stride, padding, dilation=dilation, groups=C, bias=False)
        self.pw1 = nn.Parameter(torch.empty(edges, C, C))
        bound = 1.0 / math.sqrt(C)  # nn.Conv2d's default init for a C → C 1×1 conv
        nn.init.uniform_(self.pw1, -bound, bound)
        self.bn1 = nn.BatchNorm2d(edges * C, affine=False)
        if repeats == 2:
            self.dw2 = nn.Conv2d(edges * C, edges * C, kernel_size, 1, padding, groups=edges * C, bias=False)
            self.pw2 = nn.Conv2d(edges * C, edges * C, 1, groups=edges, bias=False)
            self.bn2 = nn.BatchNorm2d(edges * C, affine=False)
        # mask[e, 0, 0, f] = (e == f): scatters edge e's C×C weight into the dense 1×1 conv
        self.register_buffer("_mask", torch.eye(edges).view(edges, 1, 1, edges), persistent=False)

    def _dense_pw1(self) -> torch.Tensor:
        E, C = self.edges, self.C
        # [e, o, c, f] = pw1[e, o, c]·(e == f) → rows e·C + o (edge-major), columns c·E + f (dw1's order)
        return (self.pw1.unsqueeze(-1) * self._mask.to(self.pw1.dtype)).reshape(E * C, C * E, 1, 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r = relu(h) [N, C, H, W] → the E outputs as [N, E·C, H', W'] (edge-major channels;
        ``split_edges`` makes them E contiguous tensors)."""
        y = self.bn1(self.stage1(r))
        if self.repeats == 2:
            y = self.bn2(self.stage2(F.relu(y)))
        return y

    def stage1(self, r: torch.Tensor) -> torch.Tensor:
        """dw1 and pw1 (bn1's input)."""
        return F.conv2d(self.dw1(r), self._dense_pw1())

    def stage2(self, y: torch.Tensor) -> torch.Tensor:
        """dw2 and pw2 of a sep conv (bn2's input) from relu(bn1(stage1))."""
        return self.pw2(self.dw2(y))


def edge_views(t: dict, e: int) -> dict:
    """Edge e's share of a GroupedConvStack's tensors t (its state names: ``dw1.weight``, ``pw1``,
    ``bn1.running_mean`` …) as views under the DARTS SepConv/DilConv state names (``op.1.weight`` …).
    Only the names present in t are mapped (t may hold just the parameters)."""
    E, C = t["pw1"].shape[:2]
    k = t["dw1.weight"].shape[-2:]
    out = {"op.1.weight": t["dw1.weight"].view(C, E, 1, *k)[:, e], "op.2.weight": t["pw1"][e].view(C, C, 1, 1)}
    bns = [("bn1", 3)]
    if "dw2.weight" in t:  # a sep conv
        out["op.5.weight"] = t["dw2.weight"].view(E, C, 1, *k)[e]
        out["op.6.weight"] = t["pw2.weight"].view(E, C, C, 1, 1)[e]
        bns.append(("bn2", 7))
    for bn, index in bns:
        for name in ("running_mean", "running_var"):
            if f"{bn}.{name}" in t:
                out[f"op.{index}.{name}"] = t[f"{bn}.{name}"].view(E, C)[e]
        if f"{bn}.num_batches_tracked" in t:
            out[f"op.{index}.num_batches_tracked"] = t[f"{bn}.num_batches_tracked"]  # one counter for the group
    return out


def make_grouped_op(primitive: str, C: int, edges: int, stride: int) -> GroupedConvStack:
    k, padding, dilation = _geometry(primitive)
    return GroupedConvStack(C, edges, k, stride, padding, dilation, repeats=2 if primitive.startswith("sep") else 1)


class EdgeGroup(nn.Module):
    """The grouped conv primitives of the `edges` edges leaving one node (stride: theirs).

    ``ops[str(i)]`` computes primitive i (index into `primitives`) for all edges; forward(relu(h))
    returns {i: [N, E·C, H', W']} (edge e's output in channels e·C … e·C + C - 1).
    """

    def __init__(self, C: int, edges: int, stride: int, primitives):
        super().__init__()
        self.edges, self.stride = edges, stride
        self.ops = nn.ModuleDict({str(i): make_grouped_op(p, C, edges, stride)
                                  for i, p in enumerate(primitives) if groupable(p)})

    def forward(self, r: torch.Tensor) -> dict:
        """Stage by stage across the primitives, so that each stage's BatchNorms (and the sep
        convs' ReLU after bn1) run as one launch each way where the Triton kernels run
        (search_batch_norms); elsewhere the same math as calling each stack."""
        ops = [(int(i), op) for i, op in self.ops.items()]
        y1 = search_batch_norms([op.stage1(r) for _, op in ops], [op.bn1 for _, op in ops],
                                relu=[op.repeats == 2 for _, op in ops])
        out = dict(zip((i for i, _ in ops), y1))
        seps = [(i, op) for i, op in ops if op.repeats == 2]
        if seps:
            y2 = search_batch_norms([op.stage2(out[i]) for i, op in seps], [op.bn2 for _, op in seps])
            out.update(zip((i for i, _ in seps), y2))
        return out


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


def _grouped_ops(cell):
    """(edge index, source state, slot, primitive index) for every groupable op of the cell's edges."""
    primitives = cell._ops[0].primitives
    for edge, (source, slot) in enumerate(cell.edge_slots()):
        for i, p in enumerate(primitives):
            if groupable(p):
                yield edge, source, slot, i


def cell_state_to_groups(cell, state: dict, prefix: str) -> None:
    """Rewrites, in place, a cell's per-edge sep/dil conv entries of a state_dict (``_ops.<edge>._ops.
    <i>.op.…``) as its EdgeGroups' entries (``edge_groups.<source>.ops.<i>.…``): loads a per-edge
    checkpoint into a network with batch_edge_convs. Groups whose entries are absent are left alone."""
    groups, filled = {}, {}
    for edge, source, slot, i in _grouped_ops(cell):
        target = cell.edge_groups[source].ops[str(i)]
        key = f"{prefix}_ops.{edge}._ops.{i}."
        if f"{key}op.1.weight" not in state:
            continue
        if (source, i) not in groups:
            like = state[f"{key}op.1.weight"]
            groups[source, i] = {n: torch.empty(v.shape, dtype=v.dtype if n.endswith("num_batches_tracked") else
                                                 like.dtype, device=like.device)
                                 for n, v in target.state_dict().items()}
        for name, view in edge_views(groups[source, i], slot).items():
            if f"{key}{name}" in state:
                view.copy_(state.pop(f"{key}{name}"))
                filled[source, i] = filled.get((source, i), 0) + 1
    for (source, i), tensors in groups.items():
        group = cell.edge_groups[source]
        if filled[source, i] != group.edges * len(edge_views(tensors, 0)):
            continue  # an incomplete checkpoint: leave the group's entries missing, load_state_dict names them
        for n, v in tensors.items():
            state[f"{prefix}edge_groups.{source}.ops.{i}.{n}"] = v


def cell_state_to_edges(cell, state: dict, prefix: str) -> None:
    """The reverse of cell_state_to_groups: EdgeGroup entries of a state_dict become the per-edge
    entries (loads a batch_edge_convs checkpoint into a per-edge network, or maps gradients)."""
    taken = {}
    for edge, source, slot, i in _grouped_ops(cell):
        group = f"{prefix}edge_groups.{source}.ops.{i}."
        if (source, i) not in taken:
            taken[source, i] = {k[len(group):]: state.pop(k) for k in [k for k in state if k.startswith(group)]}
        if "pw1" in taken[source, i]:
            for name, view in edge_views(taken[source, i], slot).items():
                state[f"{prefix}_ops.{edge}._ops.{i}.{name}"] = view.clone()


def per_edge_state(net, tensors: dict) -> dict:
    """A copy of `tensors` (a state_dict of `net`, or any {name: tensor} in its naming, such as its
    gradients) in the per-edge layout, whether net batches its edge convs or not."""
    out = dict(tensors)
    for c, cell in enumerate(net.cells):
        if cell.edge_groups is not None:
            cell_state_to_edges(cell, out, f"cells.{c}.")
    return out

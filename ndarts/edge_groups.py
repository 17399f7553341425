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

Per edge, the math is the DARTS op's (same parameters, same BatchNorm statistics): the tests
load a per-edge network's state_dict (SearchNetwork converts the layout on load, both ways:
``cell_state_to_groups`` / ``cell_state_to_edges``) and compare outputs and gradients.
A sep conv of 4 edges is ~10 launches instead of ~28.

Layout history: until 2026-11-29 the first depthwise conv had a channel multiplier (groups = C,
channel-major outputs c·E + e) and the first pointwise conv was a dense C·E → E·C conv whose
weight was built from the per-edge weights ``pw1`` [E, C, C] and a 0/1 mask at every call (three
kernels per stack and pass, 640 per search step of SPEC §6's supernet, benchmarks/count_kernels.py);
the repeat of relu(h) costs one kernel per node each way instead. Checkpoints in that layout are
converted on load (``upgrade_grouped_state``).
"""
from __future__ import annotations

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


def multiplier_path(r: torch.Tensor) -> bool:
    """Whether the first stage of the grouped stacks runs in the channel-multiplier formulation:
    for channels_last CPU tensors (oneDNN), where the E·C-group depthwise conv of the edge-major
    formulation is up to 2.3× slower than the channel-multiplier one (64×8×8×8, E = 4, 1 thread,
    fwd+bwd: dilated 5×5 6.90 vs 2.99 ms, dilated 3×3 1.67 vs 1.02 ms; 2026-11-29) and a few
    small weight ops cost nothing. Everywhere else (GPU, Triton) the edge-major one, which
    launches fewer kernels (no per-call weight ops)."""
    return r.device.type == "cpu" and not r.is_contiguous() and r.is_contiguous(memory_format=torch.channels_last)


def repeat_channels(r: torch.Tensor, times: int) -> torch.Tensor:
    """[N, C, H, W] → [N, times·C, H, W], channel t·C + c = r's channel c, in r's memory format
    (``Tensor.repeat`` returns NCHW, which would take a channels_last network off oneDNN's fast
    NHWC convolutions). One copy; its backward is one sum."""
    if times == 1:
        return r
    n, c, h, w = r.shape
    if not r.is_contiguous() and r.is_contiguous(memory_format=torch.channels_last):
        nhwc = r.permute(0, 2, 3, 1).unsqueeze(3).expand(n, h, w, times, c).reshape(n, h, w, times * c)
        return nhwc.permute(0, 3, 1, 2)
    return r.repeat(1, times, 1, 1)


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

    Layer names: ``dw1``, ``pw1``, ``bn1`` and, for the sep conv, ``dw2``, ``pw2``, ``bn2``; every
    layer edge-major. ``edge_views`` maps their state to edge e's DARTS state names (``op.1.weight`` …).
    Input: relu(h) [N, C, H, W]; the first stage reads it repeated E times along the channels
    (EdgeGroup makes that once for all its primitives), or, on oneDNN's NHWC path, through the
    channel-multiplier formulation (``multiplier_path``).
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

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r = relu(h) [N, C, H, W] → the E outputs as [N, E·C, H', W'] (edge-major channels;
        ``split_edges`` makes them E contiguous tensors)."""
        y = self.bn1(self.stage1(r))
        if self.repeats == 2:
            y = self.bn2(self.stage2(F.relu(y)))
        return y

    def stage1(self, r: torch.Tensor, repeated: torch.Tensor | None = None) -> torch.Tensor:
        """dw1 and pw1 (bn1's input) from r = relu(h); repeated: r repeated E times along the
        channels, when the caller has made it (EdgeGroup, once for all its primitives)."""
        if repeated is None and multiplier_path(r):
            # the same parameters and products, laid out for oneDNN: dw1 as a conv with a channel
            # multiplier on r itself (channel-major outputs c·E + e), then pw1 as one dense 1×1 conv
            # whose block-diagonal weight also reorders the channels to edge-major
            E, C, w = self.edges, self.C, self.dw1.weight
            dw = w.view(E, C, *w.shape[1:]).transpose(0, 1).reshape(w.shape)
            y = F.conv2d(r, dw, None, self.dw1.stride, self.dw1.padding, self.dw1.dilation, groups=C)
            pw = (self.pw1.weight.view(E, C, C, 1) * self._mask.to(w.dtype)).reshape(E * C, C * E, 1, 1)
            return F.conv2d(y, pw)
        return self.pw1(self.dw1(repeated if repeated is not None else repeat_channels(r, self.edges)))

    def stage2(self, y: torch.Tensor) -> torch.Tensor:
        """dw2 and pw2 of a sep conv (bn2's input) from relu(bn1(stage1))."""
        return self.pw2(self.dw2(y))


def edge_views(t: dict, e: int) -> dict:
    """Edge e's share of a GroupedConvStack's tensors t (its state names: ``dw1.weight``, ``pw1.weight``,
    ``bn1.running_mean`` …) as views under the DARTS SepConv/DilConv state names (``op.1.weight`` …).
    Only the names present in t are mapped (t may hold just the parameters)."""
    EC, C = t["pw1.weight"].shape[:2]
    E = EC // C
    k = t["dw1.weight"].shape[-2:]
    out = {"op.1.weight": t["dw1.weight"].view(E, C, 1, *k)[e], "op.2.weight": t["pw1.weight"].view(E, C, C, 1, 1)[e]}
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


def _upgraded_pw1(pw1: torch.Tensor) -> torch.Tensor:
    """The earlier layout's ``pw1`` [E, C, C] (or its optimizer state) as today's pw1.weight."""
    E, C = pw1.shape[:2]
    return pw1.reshape(E * C, C, 1, 1)


def _upgraded_dw1(dw1: torch.Tensor, E: int, C: int) -> torch.Tensor:
    """The earlier layout's channel-major dw1.weight (or its optimizer state): channel c·E + e → e·C + c."""
    return dw1.reshape(C, E, *dw1.shape[1:]).transpose(0, 1).reshape(dw1.shape)


def upgrade_grouped_state(state: dict, prefix: str) -> None:
    """Rewrites, in place, EdgeGroup entries of the layout before 2026-11-29 (a channel-major first
    depthwise conv, ``pw1`` as an [E, C, C] tensor; see the module docstring) in today's layout."""
    for key in [k for k in state if k.startswith(prefix) and k.endswith(".pw1")]:
        stack = key[:-len("pw1")]
        pw1 = state.pop(key)
        E, C = pw1.shape[:2]
        state[f"{stack}pw1.weight"] = _upgraded_pw1(pw1)
        if f"{stack}dw1.weight" in state:
            state[f"{stack}dw1.weight"] = _upgraded_dw1(state[f"{stack}dw1.weight"], E, C)


def upgrade_grouped_optimizer_state(model_state: dict, optimizer_state: dict) -> None:
    """The per-parameter state of an optimizer over a search network's weights (SGD's momentum
    buffers) saved with a model state of the earlier grouped layout, rewritten in place for today's
    layout as upgrade_grouped_state rewrites the weights; a no-op for any other checkpoint. The
    optimizer's parameter i is the model's i-th parameter other than α (weight_parameters)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    names = [k for k in model_state if not k.endswith(buffers) and not k.startswith("alphas_")]
    if not any(n.endswith(".pw1") for n in names):
        return
    index = {n: i for i, n in enumerate(names)}
    params = [p for group in optimizer_state["param_groups"] for p in group["params"]]
    for name in names:
        if not name.endswith(".pw1"):
            continue
        E, C = model_state[name].shape[:2]
        stack = name[:-len("pw1")]
        for key, upgrade in ((name, _upgraded_pw1), (f"{stack}dw1.weight", lambda t: _upgraded_dw1(t, E, C))):
            i = index.get(key)
            state = optimizer_state["state"].get(params[i]) if i is not None and i < len(params) else None
            for k, v in (state or {}).items():
                if isinstance(v, torch.Tensor) and v.numel() == model_state[key].numel():
                    state[k] = upgrade(v)


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
        """r = relu(h) [N, C, H, W]. Stage by stage across the primitives, so that each stage's
        BatchNorms (and the sep convs' ReLU after bn1) run as one launch each way where the Triton
        kernels run (search_batch_norms); elsewhere the same math as calling each stack."""
        ops = [(int(i), op) for i, op in self.ops.items()]
        # edge-major: channel e·C + c = r's channel c; made once for all the primitives
        repeated = None if multiplier_path(r) else repeat_channels(r, self.edges)
        y1 = search_batch_norms([op.stage1(r, repeated) for _, op in ops], [op.bn1 for _, op in ops],
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
    upgrade_grouped_state(state, f"{prefix}edge_groups.")
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
    upgrade_grouped_state(state, f"{prefix}edge_groups.")
    taken = {}
    for edge, source, slot, i in _grouped_ops(cell):
        group = f"{prefix}edge_groups.{source}.ops.{i}."
        if (source, i) not in taken:
            taken[source, i] = {k[len(group):]: state.pop(k) for k in [k for k in state if k.startswith(group)]}
        if "pw1.weight" in taken[source, i]:
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

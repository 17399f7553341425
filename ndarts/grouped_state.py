"""State-dict layouts of the search network's sep/dil convs, and the conversions between them.

A cell stores the sep/dil convs of its edges either per edge, as DARTS does
(``_ops.<edge>._ops.<i>.op.…``), or batched in EdgeGroups (``edge_groups.<group>.ops.<i>.…``,
``SearchNetwork(batch_edge_convs=True)``, ndarts.edge_groups). Checkpoints load across the two
(SearchCell converts on load), and from the earlier grouped layouts:

- until 2026-11-29 (first change): the first depthwise conv had a channel multiplier (channel-major
  outputs c·E + e) and the first pointwise weight was stored as ``pw1`` [E, C, C], turned into a
  masked dense conv at every call (three kernels per stack and pass). ``upgrade_grouped_state``.
- until 2026-11-29 (second change): one group per node with outgoing edges, the cell's two inputs
  in groups 0 and 1; now the two inputs share group 0 (its edges: input 0's, then input 1's) and
  node k's group is k + 1. Recognised by a group numbered `steps` (``split_input_slots``).

The optimizer's per-parameter state (SGD's momentum) follows the weights through the same
conversions (``convert_optimizer_state``), so a run checkpointed in any of these layouts resumes.
"""
from __future__ import annotations

import torch

from .edge_groups import groupable

# DARTS's SepConv / DilConv state names → a GroupedConvStack's (op.0 and op.4 are ReLUs)
_DW, _PW = {"op.1": "dw1", "op.5": "dw2"}, {"op.2": "pw1", "op.6": "pw2"}
_BN = {"op.3": "bn1", "op.7": "bn2"}
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def edge_views(t: dict, e: int) -> dict:
    """Edge e's share of a GroupedConvStack's tensors t (its state names: ``dw1.weight``, ``pw1.weight``,
    ``bn1.running_mean`` …) as {DARTS state name (``op.1.weight`` …): (t's name, view)}. Only the
    names present in t are mapped (t may hold just the parameters)."""
    EC, C = t["pw1.weight"].shape[:2]
    E = EC // C
    out = {}
    for edge_name, name in _DW.items():
        if f"{name}.weight" in t:
            w = t[f"{name}.weight"]
            out[f"{edge_name}.weight"] = (f"{name}.weight", w.view(E, C, 1, *w.shape[-2:])[e])
    for edge_name, name in _PW.items():
        if f"{name}.weight" in t:
            out[f"{edge_name}.weight"] = (f"{name}.weight", t[f"{name}.weight"].view(E, C, C, 1, 1)[e])
    for edge_name, name in _BN.items():
        for b in ("running_mean", "running_var"):
            if f"{name}.{b}" in t:
                out[f"{edge_name}.{b}"] = (f"{name}.{b}", t[f"{name}.{b}"].view(E, C)[e])
        if f"{name}.num_batches_tracked" in t:  # one counter for the group
            out[f"{edge_name}.num_batches_tracked"] = (f"{name}.num_batches_tracked", t[f"{name}.num_batches_tracked"])
    return out


def _upgraded_pw1(pw1: torch.Tensor) -> torch.Tensor:
    """The first earlier layout's ``pw1`` [E, C, C] (or its optimizer state) as pw1.weight."""
    E, C = pw1.shape[:2]
    return pw1.reshape(E * C, C, 1, 1)


def _upgraded_dw1(dw1: torch.Tensor, E: int, C: int) -> torch.Tensor:
    """The first earlier layout's channel-major dw1.weight (or its optimizer state): channel c·E + e → e·C + c."""
    return dw1.reshape(C, E, *dw1.shape[1:]).transpose(0, 1).reshape(dw1.shape)


def upgrade_grouped_state(state: dict, prefix: str) -> None:
    """Rewrites, in place, EdgeGroup entries of the first earlier layout (a channel-major first
    depthwise conv, ``pw1`` as an [E, C, C] tensor) in the edge-major one; works on any
    {name: tensor} in the model's naming (weights, gradients, momentum buffers)."""
    for key in [k for k in state if k.startswith(prefix) and k.endswith(".pw1")]:
        stack = key[:-len("pw1")]
        pw1 = state.pop(key)
        E, C = pw1.shape[:2]
        state[f"{stack}pw1.weight"] = _upgraded_pw1(pw1)
        if f"{stack}dw1.weight" in state:
            state[f"{stack}dw1.weight"] = _upgraded_dw1(state[f"{stack}dw1.weight"], E, C)


def split_input_slots(cell) -> list[tuple[int, int]]:
    """(group, slot) of each edge in the second earlier layout: one group per source state j, slot
    i - max(0, j - 1) for the edge into node i."""
    return [(j, i - max(0, j - 1)) for i in range(cell._steps) for j in range(2 + i)]


def _stored_slots(cell, state: dict, prefix: str) -> list[tuple[int, int]]:
    """The (group, slot) layout the EdgeGroup entries of `state` were written in."""
    old = f"{prefix}edge_groups.{cell._steps}."  # the split-input layout has one group more
    return split_input_slots(cell) if any(k.startswith(old) for k in state) else cell.edge_slots()


def _grouped_ops(cell, slots):
    """(edge index, group, slot, primitive index) for every groupable op of the cell's edges."""
    primitives = cell._ops[0].primitives
    for edge, (group, slot) in enumerate(slots):
        for i, p in enumerate(primitives):
            if groupable(p):
                yield edge, group, slot, i


def cell_state_to_groups(cell, state: dict, prefix: str) -> None:
    """Rewrites, in place, a cell's per-edge sep/dil conv entries of a state_dict (or of any
    {name: tensor} in its naming, such as momentum buffers) as its EdgeGroups' entries, after
    bringing grouped entries of an earlier layout to per-edge ones. A group's tensor is written
    only when every edge's share of it was there (an incomplete checkpoint's group stays missing,
    and load_state_dict names it)."""
    upgrade_grouped_state(state, f"{prefix}edge_groups.")
    if _stored_slots(cell, state, prefix) != cell.edge_slots():
        cell_state_to_edges(cell, state, prefix)
    groups, filled = {}, {}
    for edge, group, slot, i in _grouped_ops(cell, cell.edge_slots()):
        key = f"{prefix}_ops.{edge}._ops.{i}."
        if f"{key}op.1.weight" not in state:
            continue
        if (group, i) not in groups:
            like = state[f"{key}op.1.weight"]
            target = cell.edge_groups[group].ops[str(i)]
            groups[group, i] = {n: torch.empty(v.shape, dtype=v.dtype if n.endswith("num_batches_tracked") else
                                               like.dtype, device=like.device)
                                for n, v in target.state_dict().items()}
        for name, (group_name, view) in edge_views(groups[group, i], slot).items():
            if f"{key}{name}" in state:
                view.copy_(state.pop(f"{key}{name}"))
                filled[group, i, group_name] = filled.get((group, i, group_name), 0) + 1
    for (group, i), tensors in groups.items():
        edges = cell.edge_groups[group].edges
        for n, v in tensors.items():
            if filled.get((group, i, n), 0) == edges:
                state[f"{prefix}edge_groups.{group}.ops.{i}.{n}"] = v


def cell_state_to_edges(cell, state: dict, prefix: str) -> None:
    """The reverse of cell_state_to_groups: EdgeGroup entries of a state_dict (in whichever grouped
    layout they were written) become the per-edge entries (loads a batch_edge_convs checkpoint into
    a per-edge network, or maps gradients)."""
    upgrade_grouped_state(state, f"{prefix}edge_groups.")
    taken = {}
    for edge, group, slot, i in _grouped_ops(cell, _stored_slots(cell, state, prefix)):
        stack = f"{prefix}edge_groups.{group}.ops.{i}."
        if (group, i) not in taken:
            taken[group, i] = {k[len(stack):]: state.pop(k) for k in [k for k in state if k.startswith(stack)]}
        if "pw1.weight" in taken[group, i]:
            for name, (_, view) in edge_views(taken[group, i], slot).items():
                state[f"{prefix}_ops.{edge}._ops.{i}.{name}"] = view.clone()


def convert_cell_state(cell, state: dict, prefix: str) -> None:
    """A cell's entries of `state` in the cell's own layout (grouped or per edge), in place."""
    if cell.edge_groups is not None:
        cell_state_to_groups(cell, state, prefix)
    else:
        cell_state_to_edges(cell, state, prefix)


def per_edge_state(net, tensors: dict) -> dict:
    """A copy of `tensors` (a state_dict of `net`, or any {name: tensor} in its naming, such as its
    gradients) in the per-edge layout, whether net batches its edge convs or not."""
    out = dict(tensors)
    for c, cell in enumerate(net.cells):
        if cell.edge_groups is not None:
            cell_state_to_edges(cell, out, f"cells.{c}.")
    return out


def convert_optimizer_state(net, model_state: dict, optimizer_state: dict) -> None:
    """Rewrites, in place, the state of an optimizer over net's weights (the search's SGD: one
    parameter group, parameter i = the checkpoint's i-th weight) saved with `model_state`, for
    net's layout: each per-parameter tensor (SGD's momentum) goes through the conversions its
    weight goes through on load; other per-parameter entries are taken from the first weight that
    has them. A no-op when the layouts agree or the optimizer does not look like that one (its
    load_state_dict then says what is wrong)."""
    saved = [k for k in model_state if not k.endswith(_BUFFERS) and not k.startswith("alphas_")]
    current = [n for n, _ in net.named_weight_parameters()]
    groups = optimizer_state.get("param_groups", [])
    if len(groups) != 1 or len(groups[0]["params"]) != len(saved):
        return
    states = optimizer_state["state"]
    per_param = {name: states.get(i) for name, i in zip(saved, groups[0]["params"]) if states.get(i)}
    if saved == current and all(model_state[n].shape == p.shape for n, p in net.named_weight_parameters()):
        return
    fields, others = {}, {}
    for name, st in per_param.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == model_state[name].shape:
                fields.setdefault(k, {})[name] = v
            else:
                others.setdefault(k, v)
    for tensors in fields.values():
        for c, cell in enumerate(net.cells):
            convert_cell_state(cell, tensors, f"cells.{c}.")
    new_states = {}
    for index, name in enumerate(current):
        st = {k: tensors[name] for k, tensors in fields.items() if name in tensors}
        if st:
            new_states[index] = {**others, **st}
    optimizer_state["state"] = new_states
    groups[0]["params"] = list(range(len(current)))

"""Checkpoints as earlier versions of ndarts wrote them, for the tests that load them.

Written from today's grouped state by slicing and renaming (not with ndarts.grouped_state, whose
conversions the tests check): optimizer_state (over the weights, as the search's SGD) is
rewritten alike, in place, its momentum buffers following their weights.
"""
import re

import torch

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_GROUP = re.compile(r"^(cells\.\d+\.edge_groups\.)(\d+)(\..*)$")


def _weight_names(state: dict) -> list:
    return [k for k in state if not k.endswith(_BUFFERS) and not k.startswith("alphas_")]


def _rewrite(model_state: dict, optimizer_state, entries) -> dict:
    """entries: (new name, old name, f) in the new state's order, f(tensor) → the new tensor."""
    out = {new: f(model_state[old]) for new, old, f in entries}
    if optimizer_state is not None:
        index = {n: i for i, n in enumerate(_weight_names(model_state))}
        states = optimizer_state["state"]
        source = {new: (old, f) for new, old, f in entries}
        new_states = {}
        for i, name in enumerate(_weight_names(out)):
            old, f = source[name]
            st = states.get(index[old])
            if st:
                new_states[i] = {k: f(v) if isinstance(v, torch.Tensor) and v.shape == model_state[old].shape else v
                                 for k, v in st.items()}
        optimizer_state["state"] = new_states
        optimizer_state["param_groups"][0]["params"] = list(range(len(_weight_names(out))))
    return out


def split_input_layout(model_state: dict, optimizer_state: dict | None = None) -> dict:
    """A grouped search-network state_dict as written before a cell's two inputs shared one
    EdgeGroup (2026-11-29): group 0 (input 0's edges, then input 1's) as groups 0 and 1 of half
    its channels each, node k's group k + 1 as group k + 2. Returns the state."""
    entries, pending = [], {}  # pending: a cell's input-1 entries, written after its input-0 ones

    def flush(cell):
        entries.extend(pending.pop(cell, []))

    for key in model_state:
        m = _GROUP.match(key)
        if not m:
            for cell in list(pending):
                flush(cell)
            entries.append((key, key, lambda t: t))
            continue
        head, group, tail = m.group(1), int(m.group(2)), m.group(3)
        if group > 0:
            flush(head)
            entries.append((f"{head}{group + 1}{tail}", key, lambda t: t))
            continue
        if key.endswith("num_batches_tracked"):
            halves = (lambda t: t, lambda t: t.clone())
        else:
            halves = (lambda t: t[:t.shape[0] // 2].clone(), lambda t: t[t.shape[0] // 2:].clone())
        entries.append((f"{head}0{tail}", key, halves[0]))
        pending.setdefault(head, []).append((f"{head}1{tail}", key, halves[1]))
    for cell in list(pending):
        flush(cell)
    return _rewrite(model_state, optimizer_state, entries)


def old_grouped_layout(model_state: dict, optimizer_state: dict | None = None) -> dict:
    """A grouped search-network state_dict as the layout before the edge-major one (2026-11-29)
    wrote it: split inputs (split_input_layout), the first depthwise conv's channels c·E + e,
    ``pw1`` an [E, C, C] tensor. Returns the state."""
    model_state = split_input_layout(model_state, optimizer_state)
    entries = []
    for key, t in model_state.items():
        if key.endswith(".pw1.weight"):
            EC, C = t.shape[:2]
            entries.append((key[:-len(".weight")], key, lambda v, E=EC // C, C=C: v.reshape(E, C, C)))
        elif key.endswith(".dw1.weight"):
            C = model_state[key.replace("dw1", "pw1")].shape[1]
            E = t.shape[0] // C
            entries.append((key, key, lambda v, E=E, C=C: v.reshape(E, C, *v.shape[1:]).transpose(0, 1).reshape(v.shape)))
        else:
            entries.append((key, key, lambda v: v))
    return _rewrite(model_state, optimizer_state, entries)

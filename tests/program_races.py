"""Races between the programs of a Triton launch, found in Triton's CPU interpreter.

On a GPU the programs of one launch run in any order and at once; the interpreter runs them one
after another, in grid order. A kernel in which one program reads what another writes, or two
programs write the same bytes, computes what the tests expect in the interpreter and something
that depends on scheduling on a GPU; no CPU test of values can see it. ndarts' kernels use no
atomics and no cross-program ordering: each program writes bytes no other program of its launch
touches (partial sums go to rows of their own, reduced by a later launch). ``ProgramAccesses``
checks exactly that. While active it records, per launch, the bytes each program loads and stores
(the masked-on lanes of every load and store the interpreter executes), and at the end of the
launch it reports every byte that two programs store, or that one program stores and another
loads, and every byte loaded or stored outside the storages of the launch's tensor arguments (on a
GPU an illegal address, or another tensor's data; the interpreter reads whatever is there).

    with ProgramAccesses() as accesses:
        ...  # launches in the interpreter (TRITON_INTERPRET=1)
    assert accesses.races == [], accesses.races

``nan_loads`` counts, per kernel, the loads that read a NaN on a lane that is on. With
``nan_filled_memory()`` every ``torch.empty`` is NaN: on finite inputs a NaN load is a read of
memory nothing wrote (a CPU's fresh pages are often zeros, which such a read may get away with;
the GPU's caching allocator hands back whatever was there).

``gpu_sized()`` makes the launchers size blocks and grids as for a GPU (kernels/grid.py), with a
few multiprocessors assumed: blocks as small as on the GPU, several programs per tile.
"""
from __future__ import annotations

import collections
import contextlib

import numpy as np


def _bytes(addresses: np.ndarray, size: int) -> np.ndarray:
    """Every byte address of elements of `size` bytes starting at `addresses`."""
    return (addresses.astype(np.uint64)[:, None] + np.arange(size, dtype=np.uint64)[None, :]).ravel()


def _itemsize(ptrs) -> int:
    ty = ptrs.get_element_ty()
    bits = getattr(ty, "primitive_bitwidth", None) or getattr(getattr(ty, "scalar", None), "primitive_bitwidth", 8)
    return max(int(bits) // 8, 1)


class ProgramAccesses:
    """Records each program's loads and stores per launch while active; ``races`` lists the
    conflicts found, one line per launch that has any; ``launches`` counts the launches checked
    by kernel name, and ``multi_program`` those with more than one program."""

    def __init__(self, limit: int = 5):
        self.limit = limit  # byte addresses shown per conflicting launch
        self.races: list[str] = []
        self.launches: collections.Counter = collections.Counter()
        self.multi_program = 0
        self.nan_loads: collections.Counter = collections.Counter()  # kernel name: loads that read a NaN
        self._loads: list = []
        self._stores: list = []
        self._kernel = ""

    # ------------------------------------------------------------------ recording
    def _program(self, builder) -> int:
        x, y, z = builder.grid_idx
        gx, gy, _ = builder.grid_dim
        return (z * gy + y) * gx + x

    def _record(self, into: list, builder, ptrs, mask) -> None:
        on = np.broadcast_to(np.asarray(mask.data, dtype=bool), ptrs.data.shape)
        addresses = np.asarray(ptrs.data)[on]
        if addresses.size:
            into.append((self._program(builder), _bytes(addresses.ravel(), _itemsize(ptrs))))

    # ------------------------------------------------------------------ checking
    def _check(self, name: str, programs: int, extents) -> None:
        loads, stores = self._loads, self._stores
        self._loads, self._stores = [], []
        self.launches[name] += 1
        self.multi_program += programs > 1
        outside = self._outside(loads + stores, extents)
        if outside.size:
            self.races.append(f"{name} ({programs} programs): {outside.size} bytes loaded or stored outside "
                              f"every tensor argument's storage (e.g. {', '.join(hex(int(a)) for a in outside[:self.limit])})")
        if not stores or programs < 2:
            return
        s_prog = np.concatenate([np.full(b.size, p, dtype=np.int64) for p, b in stores])
        s_addr = np.concatenate([b for _, b in stores])
        pairs = np.unique(np.stack([s_addr, s_prog.astype(np.uint64)]), axis=1)
        addr, first = np.unique(pairs[0], return_index=True)
        counts = np.diff(np.append(first, pairs.shape[1]))
        problems = []
        double = addr[counts > 1]
        if double.size:
            problems.append(f"{double.size} bytes stored by two or more programs (e.g. "
                            f"{', '.join(hex(int(a)) for a in double[:self.limit])})")
        writer = pairs[1][first]  # for the bytes one program stores: that program
        if loads:
            l_prog = np.concatenate([np.full(b.size, p, dtype=np.int64) for p, b in loads])
            l_addr = np.concatenate([b for _, b in loads])
            at = np.searchsorted(addr, l_addr)
            hit = at < addr.size
            hit[hit] = addr[at[hit]] == l_addr[hit]
            other = hit.copy()
            other[hit] = writer[at[hit]] != l_prog[hit].astype(np.uint64)
            other[hit] |= counts[at[hit]] > 1
            if other.any():
                bad = np.unique(l_addr[other])
                problems.append(f"{bad.size} bytes loaded by a program that another program stores (e.g. "
                                f"{', '.join(hex(int(a)) for a in bad[:self.limit])})")
        if problems:
            self.races.append(f"{name} ({programs} programs): " + "; ".join(problems))

    @staticmethod
    def _outside(accesses: list, extents) -> np.ndarray:
        """The bytes of `accesses` outside every (start, stop) of `extents`: on a GPU, an illegal
        address or another tensor's data; in the interpreter, whatever the process has there."""
        if not accesses:
            return np.empty(0, dtype=np.uint64)
        addr = np.unique(np.concatenate([b for _, b in accesses]))
        starts = np.array(sorted(extents), dtype=np.uint64).reshape(-1, 2)
        if not starts.size:
            return addr
        at = np.searchsorted(starts[:, 0], addr, side="right") - 1
        inside = (at >= 0) & (addr < starts[np.maximum(at, 0), 1])  # storages do not overlap
        return addr[~inside]

    @staticmethod
    def _extents(args, kwargs) -> set:
        """(first byte, end) of each tensor argument's whole storage (a kernel may reach any of it)."""
        found = set()

        def visit(a):
            if isinstance(a, (tuple, list)):
                for b in a:
                    visit(b)
            elif hasattr(a, "untyped_storage"):
                storage = a.untyped_storage()
                found.add((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))

        visit(args)
        visit(list(kwargs.values()))
        return found

    # ------------------------------------------------------------------ patching
    def __enter__(self):
        from triton.runtime import interpreter

        builder_cls = type(interpreter.interpreter_builder)
        self._saved = (builder_cls.create_masked_load, builder_cls.create_masked_store,
                       interpreter.GridExecutor.__call__)
        load, store, call = self._saved
        me = self

        def masked_load(builder, ptrs, mask, *args, **kwargs):
            me._record(me._loads, builder, ptrs, mask)
            out = load(builder, ptrs, mask, *args, **kwargs)
            values = np.asarray(out.data)
            if np.issubdtype(values.dtype, np.floating):
                on = np.broadcast_to(np.asarray(mask.data, dtype=bool), values.shape)
                if np.isnan(values[on]).any():
                    me.nan_loads[me._kernel] += 1
            return out

        def masked_store(builder, ptrs, value, mask, *args, **kwargs):
            me._record(me._stores, builder, ptrs, mask)
            return store(builder, ptrs, value, mask, *args, **kwargs)

        def launch(executor, *args, **kwargs):
            me._loads, me._stores = [], []
            me._kernel = getattr(executor.fn, "__name__", "kernel")
            out = call(executor, *args, **kwargs)
            gx, gy, gz = interpreter.interpreter_builder.grid_dim
            me._check(getattr(executor.fn, "__name__", "kernel"), gx * gy * gz, me._extents(args, kwargs))
            return out

        builder_cls.create_masked_load, builder_cls.create_masked_store = masked_load, masked_store
        interpreter.GridExecutor.__call__ = launch
        return self

    def __exit__(self, *exc):
        from triton.runtime import interpreter

        builder_cls = type(interpreter.interpreter_builder)
        builder_cls.create_masked_load, builder_cls.create_masked_store, interpreter.GridExecutor.__call__ = self._saved
        return False


@contextlib.contextmanager
def gpu_sized(multiprocessors: int = 4):
    """The launchers size blocks and grids as for a GPU of `multiprocessors` SMs (kernels/grid.py),
    while the kernels still run in the interpreter."""
    import ndarts_kernels
    from ndarts import backend
    from ndarts_kernels import grid

    saved = ndarts_kernels.INTERPRETED, grid.ASSUMED_MULTIPROCESSORS, backend.triton_unavailable_reason
    ndarts_kernels.INTERPRETED, grid.ASSUMED_MULTIPROCESSORS = False, multiprocessors
    backend.triton_unavailable_reason = lambda device: None  # the interpreter runs them all the same
    try:
        yield
    finally:
        ndarts_kernels.INTERPRETED, grid.ASSUMED_MULTIPROCESSORS, backend.triton_unavailable_reason = saved


@contextlib.contextmanager
def nan_filled_memory():
    """Every uninitialised float tensor (torch.empty, empty_like, …) filled with NaN (PyTorch's
    fill_uninitialized_memory, which acts in deterministic mode only), restored after."""
    import torch

    from ndarts.determinism import DeterminismState

    saved = DeterminismState.current()
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        saved.restore()

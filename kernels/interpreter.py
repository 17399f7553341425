"""Three shortcuts and one fix for Triton's CPU interpreter, which runs the kernels in the CPU tests.
No shortcut changes a value a kernel computes (tests/test_interpreter_options.py); none of the four
touches compiled kernels.

- ``skip_discarded_overflow_checks``: for every int32 add, sub and mul the interpreter (triton 3.8)
  also evaluates an int64 overflow check (two casts, the op again, two compares, an and) and hands
  it to ``device_assert``, which does nothing unless the options have ``debug=True``; the
  interpreter's options never do. Those numpy ops were ~40 % of an interpreted search step
  (2026-12-01: one step of a 1-cell search with every Triton lever, 36.8 s → 21.7 s).
- ``patch_language_once_per_launch``: the interpreter walks triton.language's members again at
  every call of a @triton.jit helper inside a kernel (see its docstring).
- ``memoize_numpy_dtypes``: the interpreter maps a Triton type to its numpy dtype by building a
  table of 20 numpy dtypes at every call (see its docstring).
- ``round_bf16_to_nearest_even`` (the fix): the interpreter casts fp32 to bf16 by dropping the low
  16 bits, where a GPU rounds to nearest even (see its docstring).
"""
from __future__ import annotations

import dataclasses


def skip_discarded_overflow_checks() -> bool:
    """Sets the interpreter's sanitize_overflow off where its checks are discarded (debug off).
    Returns whether it did; a Triton without these options is left as it is."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if not dataclasses.is_dataclass(options) or getattr(options, "debug", True) \
            or not getattr(options, "sanitize_overflow", False):
        return False
    builder.options = dataclasses.replace(options, sanitize_overflow=False)
    return True


def _interpreter_function(name: str):
    """(triton.language, Triton's interpreter module, its function `name`); None for what this
    Triton lacks."""
    try:
        from triton import language as tl
        from triton.runtime import interpreter
    except ImportError:
        return None, None, None
    return tl, interpreter, getattr(interpreter, name, None)


class _Unpatched:
    """The scope of a language patch that was already in place: nothing to restore."""

    def restore(self) -> None:
        pass


def patch_language_once_per_launch() -> bool:
    """Makes the interpreter patch triton.language once per kernel launch, not again at each call of
    a @triton.jit helper inside it.

    The interpreter replaces triton.language's builtins by interpreted ones when a launch starts
    (and puts them back when it ends), and again at every call of a device function: each such call
    walks the members of tl, tl.tensor and tl.math with ``inspect.getmembers``, though the launch
    has patched them already and nothing in them changes (the helpers' ``tl`` is the same module).
    With the helpers of these kernels (moments, index and noise helpers) skipping that walk made the
    interpreted step above 1.5× faster again (33-36 s → 22 s, measured alternately on a busy 2-core
    machine, 2026-12-01). A call whose modules the running launch has patched now
    skips it; any other patch (the launch's own, a helper seeing a module the launch did not) runs
    as before. Returns whether it was installed (not for a Triton without these internals)."""
    import inspect

    tl, interpreter, patch = _interpreter_function("_patch_lang")
    if patch is None or getattr(patch, "_ndarts_once", False):
        return patch is not None
    patched: set = set()  # ids of the language modules the running launch has patched
    seen: dict = {}  # fn -> (size of its globals, the ids of the language modules among them)

    def languages(fn) -> set:
        """The language modules a function sees: looked up once per function (its module's globals,
        ~100 names, walked at each helper call cost ~10 % of an interpreted network pass), again
        only where its globals gained or lost a name."""
        size = len(fn.__globals__)
        known = seen.get(fn)
        if known is None or known[0] != size:
            known = seen[fn] = (size, frozenset(id(v) for v in fn.__globals__.values()
                                                if inspect.ismodule(v) and v in (tl, tl.core)))
        return known[1]

    def patch_once(fn):
        mods = languages(fn)
        if mods and mods <= patched:
            return _Unpatched()
        before = set(patched)
        scope = patch(fn)
        patched.update(mods)
        restore = scope.restore

        def restore_and_forget():
            restore()
            patched.clear()
            patched.update(before)

        scope.restore = restore_and_forget
        return scope

    patch_once._ndarts_once, patch_once.original = True, patch
    interpreter._patch_lang = patch_once
    return True


def memoize_numpy_dtypes() -> bool:
    """Makes the interpreter's Triton-type → numpy-dtype lookup a dictionary read.

    ``_get_np_dtype`` builds its table (20 ``np.dtype`` entries) anew at every call, and the
    interpreter calls it at every op that makes a value (constants, casts, splats, loads, binary
    ops): ~10 % of an interpreted network pass (2026-12-07: 238k calls, 7.9 s of an 84 s profiled
    forward+backward of a 3-cell search network on the kernels). The answer depends only on the
    type, or on a block's element type (a pointer: uint64), so it is kept per such type after the
    first call. Returns whether it was installed (not for a Triton without this function)."""
    tl, interpreter, lookup = _interpreter_function("_get_np_dtype")
    if lookup is None or getattr(lookup, "_ndarts_memo", False):
        return lookup is not None
    memo: dict = {}

    def np_dtype(tt_dtype):
        element = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        if isinstance(element, tl.pointer_type):  # not hashable; an address, whatever it points to
            return lookup(element)
        try:
            return memo[element]
        except KeyError:
            found = memo[element] = lookup(element)
            return found

    np_dtype._ndarts_memo, np_dtype.original = True, lookup
    interpreter._get_np_dtype = np_dtype
    return True


def fp32_to_bf16_bits(values):
    """The bf16 bit patterns (uint16, same shape) of fp32 `values` rounded to nearest, ties to even,
    as a GPU's cvt.rn.bf16.f32 and torch's .to(torch.bfloat16) round: a carry out of the mantissa
    moves into the exponent (up to inf), subnormals round alike, a NaN stays a (quiet) NaN."""
    import numpy as np

    f32 = np.asarray(values, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)  # 64-bit: the rounding bias never wraps
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = np.where(np.isnan(f32), (bits >> 16) | 0x0040, rounded)
    return (rounded & 0xFFFF).astype(np.uint16).reshape(f32.shape)


def round_bf16_to_nearest_even() -> bool:
    """Makes the interpreter's fp32 → bf16 casts round to nearest even, as compiled kernels do.

    ``x.to(tl.bfloat16)`` and a store of fp32 values into a bf16 tensor compile to LLVM's fptrunc,
    which a GPU rounds to nearest, ties to even. The interpreter (triton 3.8) instead keeps the top 16
    bits: it rounds toward zero, with up to 2^-7 relative error instead of 2^-8, so every bf16 result
    a CPU test checked was rounded unlike the same kernel's on a GPU. (Its own
    round-to-nearest path, for an explicit rounding mode, drops the carry into the exponent.) This
    replaces that one cast (fp32 → bf16) with fp32_to_bf16_bits; every other cast is the
    interpreter's (fp16 goes through numpy, which rounds to nearest even already). Returns whether
    it was installed (not for a Triton without this method)."""
    _, interpreter, builder = _interpreter_function("InterpreterBuilder")
    cast = getattr(builder, "cast_impl", None)
    if cast is None or getattr(cast, "_ndarts_rtne", False):
        return cast is not None
    from triton import language as tl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return interpreter.TensorHandle(fp32_to_bf16_bits(src.data), dst_type.scalar)
        return cast(self, src, dst_type)

    cast_impl._ndarts_rtne, cast_impl.original = True, cast
    builder.cast_impl = cast_impl
    return True

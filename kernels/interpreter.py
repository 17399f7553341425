"""Triton's CPU interpreter, without the overflow checks it computes and then discards.

For every int32 add, sub and mul the interpreter (triton 3.8) also evaluates an int64 overflow
check (two casts, the op again, two compares, an and) and hands it to ``device_assert``, which does
nothing unless the options have ``debug=True``; the interpreter's options never do. Those numpy ops
were ~40 % of an interpreted search step on a CPU (2026-12-01: one step of a 1-cell search with every
Triton lever, 36.8 s → 21.7 s, α bitwise equal). Turning ``sanitize_overflow`` off skips computing
them; every value a kernel computes is the same (tests/test_interpreter_options.py). Compiled kernels
are not affected: their options are their own.
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

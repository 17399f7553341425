"""DARTS's printed genotypes, read as data: the ``Genotype(normal=[('sep_conv_3x3', 1), ...],
normal_concat=range(2, 6), reduce=[...], reduce_concat=[2, 3, 4, 5])`` that DARTS-family code logs
(``genotype = Genotype(...)``) and keeps in its genotypes.py.

The text is parsed with :mod:`ast` and only literals are accepted: the keyword arguments of one
``Genotype(...)`` call, lists or tuples of ``(op name, input index)`` pairs, and lists of ints or
``range(a, b)`` for the concats. Nothing is evaluated or imported, so such a string is as safe to
pass to ``--genotype`` as JSON. A whole genotypes.py is read the same way: its top-level
``NAME = Genotype(...)`` assignments (and ``NAME = OTHER_NAME`` aliases of them) are found in its
syntax tree, the rest of the file (imports, the namedtuple, PRIMITIVES) is ignored.
"""
from __future__ import annotations

import ast
import re

FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
# "genotype = Genotype(...)" as DARTS's train_search.py logs it, or the bare call
_LEADING = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\s*=\s*)?(?=Genotype\s*\()")


class DartsTextError(ValueError):
    """The text is not a DARTS genotype made of literals only."""


def looks_like_darts_text(text: str) -> bool:
    return _LEADING.match(text) is not None


def named_darts_genotypes(text: str) -> dict[str, str]:
    """{NAME: the text of its ``Genotype(...)`` call} for the top-level ``NAME = Genotype(...)``
    assignments of a DARTS-style genotypes.py, in file order, ``NAME = OTHER`` aliases of them
    included; {} for a text that is no Python source (JSON, a syntax error)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        return {}
    found: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "Genotype":
            found[node.targets[0].id] = ast.get_source_segment(text, value)
        elif isinstance(value, ast.Name) and value.id in found:
            found[node.targets[0].id] = found[value.id]
    return found


def parse_darts_genotype(text: str) -> dict:
    """The genotype dict (Genotype.from_dict's input) of DARTS's ``Genotype(...)`` text."""
    match = _LEADING.match(text)
    if match is None:
        raise DartsTextError("expected DARTS's Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)")
    try:
        tree = ast.parse(text[match.end():].strip(), mode="eval")
    except SyntaxError as e:
        raise DartsTextError(f"not a Python-literal Genotype(...): {e.msg} at column {e.offset}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise DartsTextError("expected one Genotype(...) call")
    if call.args:
        if len(call.args) + len(call.keywords) > len(FIELDS):
            raise DartsTextError(f"Genotype(...) takes {len(FIELDS)} fields: {', '.join(FIELDS)}")
        named = dict(zip(FIELDS, call.args))
    else:
        named = {}
    for kw in call.keywords:
        if kw.arg not in FIELDS or kw.arg in named:
            raise DartsTextError(f"Genotype(...) field {kw.arg!r}: expected each of {', '.join(FIELDS)} once")
        named[kw.arg] = kw.value
    missing = [f for f in FIELDS if f not in named]
    if missing:
        raise DartsTextError(f"Genotype(...) lacks {', '.join(missing)}")
    return {f: (_concat(f, named[f]) if f.endswith("_concat") else _edges(f, named[f])) for f in FIELDS}


def _edges(field: str, node) -> list:
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise DartsTextError(f"{field} must be a list of (op, input) pairs")
    edges = []
    for item in node.elts:
        if not (isinstance(item, (ast.Tuple, ast.List)) and len(item.elts) == 2):
            raise DartsTextError(f"{field}: each edge must be an (op, input) pair, got {ast.unparse(item)}")
        op, index = (_literal(field, e) for e in item.elts)
        edges.append([op, index])
    return edges


MAX_CONCAT = 64  # nodes a concat may name: far beyond any DARTS-family cell (4 or 5), far below a memory hog


def _concat(field: str, node) -> list:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords and 1 <= len(node.args) <= 2:
        bounds = [_literal(field, a) for a in node.args]
        if not all(type(b) is int for b in bounds):
            raise DartsTextError(f"{field}: range() takes ints, got {ast.unparse(node)}")
        span = range(*bounds)
        if len(span) > MAX_CONCAT:  # checked before the list is made: range(2, 10**12) would fill the memory
            raise DartsTextError(f"{field}: {ast.unparse(node)} names {len(span)} nodes; a cell has at most "
                                 f"{MAX_CONCAT}")
        return list(span)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(field, e) for e in node.elts]
    raise DartsTextError(f"{field} must be a list of node indices or range(a, b), got {ast.unparse(node)}")


def _literal(field: str, node):
    if isinstance(node, ast.Constant) and type(node.value) in (str, int):
        return node.value
    raise DartsTextError(f"{field}: expected a string or an int literal, got {ast.unparse(node)}")

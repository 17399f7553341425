"""NAS-Bench-201's cell space (Dong & Yang, ICLR 2020): its edges, its architecture strings and
the cell a search derives.

A cell has 4 nodes; node 0 is the cell's input and node j (1..3) sums one op on each earlier
node; node 3 is the cell's output. The 6 edges, in the benchmark's order, are
1←0, 2←0, 2←1, 3←0, 3←1, 3←2, and an architecture is written as the benchmark writes it:
``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|``
(one ``+``-separated group per node, ``op~input`` per edge). There are 5⁶ = 15 625 cells.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..genotype import GenotypeError
from ..operations import NAS_BENCH_201, NAS_BENCH_201_PRIMITIVES

NODES = 4
# (to, from) per edge, in the benchmark's order (its α rows, its architecture strings)
EDGES = tuple((j, i) for j in range(1, NODES) for i in range(j))


@dataclass(frozen=True)
class Nb201Genotype:
    """A NAS-Bench-201 cell: one op name per edge of EDGES."""

    ops: tuple

    def __post_init__(self):
        ops = tuple(self.ops)
        if len(ops) != len(EDGES):
            raise GenotypeError(f"a NAS-Bench-201 cell has {len(EDGES)} edges, got {len(ops)} ops")
        unknown = sorted({op for op in ops if op not in NAS_BENCH_201_PRIMITIVES})
        if unknown:
            raise GenotypeError(f"unknown NAS-Bench-201 op(s) {unknown}; its ops are {list(NAS_BENCH_201_PRIMITIVES)}")
        object.__setattr__(self, "ops", ops)

    def arch_string(self) -> str:
        """The benchmark's architecture string (what its API's query_index_by_arch takes)."""
        nodes = []
        for j in range(1, NODES):
            nodes.append("|" + "|".join(f"{op}~{i}" for op, (to, i) in zip(self.ops, EDGES) if to == j) + "|")
        return "+".join(nodes)

    @classmethod
    def from_arch_string(cls, text: str) -> "Nb201Genotype":
        """Parses an architecture string, checking each node's inputs are 0..j-1 in order."""
        if not isinstance(text, str):
            raise GenotypeError(f"a NAS-Bench-201 architecture string must be a str, got {type(text).__name__}")
        groups = text.strip().split("+")
        if len(groups) != NODES - 1:
            raise GenotypeError(f"{text!r} is not a NAS-Bench-201 architecture string: it needs {NODES - 1} "
                                "'+'-separated node groups like |nor_conv_3x3~0|+|...~0|...~1|+|...~0|...~1|...~2|")
        ops = []
        for j, group in enumerate(groups, start=1):
            if not (group.startswith("|") and group.endswith("|")):
                raise GenotypeError(f"node {j} of {text!r} must be written |op~input|...|, got {group!r}")
            edges = group[1:-1].split("|")
            if len(edges) != j:
                raise GenotypeError(f"node {j} of {text!r} must have {j} edge(s) (from nodes 0..{j - 1}), "
                                    f"got {len(edges)}")
            for i, edge in enumerate(edges):
                op, sep, src = edge.partition("~")
                if not sep or src != str(i):
                    raise GenotypeError(f"edge {i + 1} of node {j} in {text!r} must be 'op~{i}', got {edge!r}")
                ops.append(op)
        return cls(tuple(ops))

    def to_dict(self) -> dict:
        return {"space": NAS_BENCH_201, "arch": self.arch_string()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d) -> "Nb201Genotype":
        if not isinstance(d, dict) or d.get("space") != NAS_BENCH_201 or "arch" not in d:
            raise GenotypeError(f'a NAS-Bench-201 genotype is {{"space": "{NAS_BENCH_201}", "arch": "|op~0|+..."}}, '
                                f"got {str(d)[:200]}")
        return cls.from_arch_string(d["arch"])

    def skip_counts(self) -> tuple[int, None]:
        """Skip connections in the cell, and None: the space has no reduction cell (its reductions
        are fixed residual blocks)."""
        return sum(op == "skip_connect" for op in self.ops), None


def is_nb201_dict(d) -> bool:
    return isinstance(d, dict) and d.get("space") == NAS_BENCH_201


def derive_nb201_genotype(weights: torch.Tensor, primitives=NAS_BENCH_201_PRIMITIVES) -> Nb201Genotype:
    """The benchmark's DARTS derivation: on every edge the op of the largest weight, `none` included
    (a NAS-Bench-201 cell keeps all 6 edges; `none` is how it drops one). weights: [6, ops]."""
    if weights.dim() != 2 or weights.shape != (len(EDGES), len(primitives)):
        raise ValueError(f"NAS-Bench-201 α must be [{len(EDGES)}, {len(primitives)}], got {tuple(weights.shape)}")
    best = weights.detach().float().cpu().argmax(dim=1)
    return Nb201Genotype(tuple(primitives[int(k)] for k in best))

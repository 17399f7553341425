"""Genotypes: the discrete cells a search derives, stored and exchanged as JSON (never Python).

A genotype holds a normal and a reduction cell. Each cell is a list of 2·steps edges
``[op, input]``: edges 2i and 2i+1 feed intermediate node i+2; inputs 0 and 1 are the two cell
inputs, k ≥ 2 an earlier intermediate node. ``*_concat`` lists the nodes concatenated into the
cell's output (2..steps+1 in DARTS).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..operations import NAS_BENCH_201, OPS
from .darts_text import DartsTextError, looks_like_darts_text, named_darts_genotypes, parse_darts_genotype


class GenotypeError(ValueError):
    """A genotype that cannot be used: unknown name, bad JSON, bad structure."""


@dataclass(frozen=True)
class Genotype:
    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict:
        return {
            "normal": [[op, int(j)] for op, j in self.normal],
            "normal_concat": [int(i) for i in self.normal_concat],
            "reduce": [[op, int(j)] for op, j in self.reduce],
            "reduce_concat": [int(i) for i in self.reduce_concat],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def skip_counts(self) -> tuple[int, int]:
        """Number of skip connections in the (normal, reduce) cells."""
        return (sum(op == "skip_connect" for op, _ in self.normal),
                sum(op == "skip_connect" for op, _ in self.reduce))

    @classmethod
    def from_dict(cls, d, steps: int | None = None, primitives=None) -> "Genotype":
        """Builds and validates a genotype (operation names, input indices, edge counts)."""
        if not isinstance(d, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
        if d.get("space") == NAS_BENCH_201:
            raise GenotypeError(f"{d.get('arch', 'this')} is a NAS-Bench-201 cell, not a DARTS-space genotype: the "
                                "benchmark holds its trained accuracies (python -m ndarts.nasbench201 CELL "
                                "--benchmark FILE)")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
        if missing:
            raise GenotypeError(f"genotype is missing the key(s) {missing}")
        cells = {}
        for name in ("normal", "reduce"):
            cells[name] = _parse_cell(name, d[name], steps, primitives)
            cells[name + "_concat"] = _parse_concat(name + "_concat", d[name + "_concat"], len(cells[name]) // 2)
        if len(cells["normal"]) != len(cells["reduce"]):
            raise GenotypeError(f"normal cell has {len(cells['normal'])} edges, reduction cell "
                                f"{len(cells['reduce'])}: both cells must have the same number of nodes")
        return cls(**cells)


def _parse_cell(name, edges, steps, primitives):
    if not isinstance(edges, (list, tuple)) or not edges or len(edges) % 2:
        raise GenotypeError(f"'{name}' must be a non-empty list with an even number of edges "
                            f"(two per node), got {edges!r:.80}")
    n_nodes = len(edges) // 2
    if steps is not None and n_nodes != steps:
        raise GenotypeError(f"'{name}' has {n_nodes} intermediate nodes; this network is built for {steps} "
                            f"(ndarts.train: --steps {n_nodes} builds it for {n_nodes})")
    known = set(primitives) if primitives is not None else set(OPS) - {"none"}
    out = []
    for e, edge in enumerate(edges):
        if not (isinstance(edge, (list, tuple)) and len(edge) == 2):
            raise GenotypeError(f"'{name}' edge {e} must be [op, input], got {edge!r}")
        op, j = edge
        if not isinstance(op, str) or op not in known:
            raise GenotypeError(f"'{name}' edge {e}: unknown operation {op!r}; known: {sorted(known)}")
        if isinstance(j, bool) or not isinstance(j, int):
            raise GenotypeError(f"'{name}' edge {e}: input index must be an integer, got {j!r}")
        node = e // 2 + 2
        if not 0 <= j < node:
            raise GenotypeError(f"'{name}' edge {e} feeds node {node} from input {j}; "
                                f"valid inputs are 0..{node - 1}")
        out.append((op, j))
    return tuple(out)


def _parse_concat(name, concat, n_nodes):
    if not isinstance(concat, (list, tuple)) or not concat:
        raise GenotypeError(f"'{name}' must be a non-empty list of node indices")
    first = 2 if name == "reduce_concat" else 0
    for i in concat:
        if isinstance(i, bool) or not isinstance(i, int) or not first <= i < n_nodes + 2:
            raise GenotypeError(f"'{name}' holds {i!r}; valid nodes are {first}..{n_nodes + 1}"
                                + ("" if first == 0 else " (a reduction cell's inputs 0 and 1 are at twice the "
                                   "resolution of its output)"))
    return tuple(concat)


# ----------------------------------------------------------------------------- the model zoo
def zoo() -> dict[str, Genotype]:
    """The published cells (DARTS_V1/V2, NoisyDARTS-a..j), by name."""
    text = resources.files(__package__).joinpath("zoo.json").read_text()
    return {name: Genotype.from_dict(d) for name, d in json.loads(text).items()}


def read_genotype_file(path: Path, not_a_file: str) -> str:
    """The text of a genotype file; GenotypeError(not_a_file) when `path` names no file (a name too
    long for the file system included), GenotypeError naming the file when it cannot be read."""
    if not path_is(path, Path.is_file):
        raise GenotypeError(not_a_file)
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GenotypeError(f"cannot read genotype file {path}: {getattr(e, 'strerror', None) or e}") from None


def load_genotype(spec: str, steps: int | None = None) -> Genotype:
    """A genotype from a zoo name, a JSON string, DARTS's printed ``Genotype(...)`` text (read as
    literals, never evaluated: genotype/darts_text.py), a file holding either, a search run's
    directory (its genotype.json) or ``FILE:NAME``, one of a DARTS-style genotypes.py's
    ``NAME = Genotype(...)``."""
    spec = spec.strip()
    if not spec:
        raise GenotypeError("the genotype is empty: give a zoo name, a JSON or Genotype(...) string, or a file")
    models = zoo()
    if spec in models:
        g = models[spec]
        if steps is not None and g.steps != steps:
            raise GenotypeError(f"genotype {spec} has {g.steps} nodes; this network is built for {steps}")
        return g
    if _inline(spec):
        text, source, from_file = spec, "the genotype given", False
    else:
        path, name = _file_and_name(spec)
        path = _run_genotype(path, name)
        if name is not None or _looks_like_a_path(spec):
            _require_file(path)
        text = read_genotype_file(path, f"{spec[:200]!r} is neither a zoo genotype ({', '.join(models)}), "
                                        "a JSON or Genotype(...) string, nor a file or search run directory "
                                        "holding one")
        text, source, from_file = _pick_darts_genotype(text, path, name), str(path), True
    if looks_like_darts_text(text):
        try:
            data = parse_darts_genotype(text)
        except DartsTextError as e:
            raise GenotypeError(f"{source} is not a usable DARTS genotype: {e}") from None
        return Genotype.from_dict(data, steps=steps)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if from_file and not text.lstrip().startswith(("{", "[")):
            raise GenotypeError(f"{source} holds neither a genotype JSON, DARTS's Genotype(...) text, nor "
                                "NAME = Genotype(...) assignments (a genotypes.py, read with FILE:NAME)") from None
        raise GenotypeError(f"{source} is not valid JSON: {e}") from None
    if isinstance(data, dict) and "genotype" in data and "normal" not in data:
        data = data["genotype"]
    return Genotype.from_dict(data, steps=steps)


def genotype_name(spec: str) -> str | None:
    """The name a load_genotype spec gives its genotype: a zoo name, or FILE:NAME's NAME; else None."""
    spec = spec.strip()
    if spec in zoo():
        return spec
    if _inline(spec):
        return None
    return _file_and_name(spec)[1]


def _inline(spec: str) -> bool:
    """Whether a (stripped) load_genotype spec is the genotype itself, JSON or DARTS's Genotype(...)
    text, rather than a zoo name or a file."""
    return spec.startswith(("{", "[")) or looks_like_darts_text(spec)


_FILE_SUFFIXES = (".json", ".py", ".txt")


def _looks_like_a_path(spec: str) -> bool:
    """Whether spec can only mean a file: it holds a path separator or ends as genotype files do."""
    return any(sep and sep in spec for sep in (os.sep, os.altsep)) or spec.lower().endswith(_FILE_SUFFIXES)


def path_is(path: Path, test=Path.exists) -> bool:
    """test(path) (exists, is_dir, is_file), False where the file system refuses the name (one too
    long, say)."""
    try:
        return test(path)
    except OSError:  # e.g. a name too long for the file system
        return False


def _file_and_name(spec: str) -> tuple[Path, str | None]:
    """FILE:NAME (NAME an identifier, spec itself no file) → (FILE, NAME); any other spec → (spec, None)."""
    file, colon, name = spec.rpartition(":")
    if colon and file and name.isidentifier() and not path_is(Path(spec)):
        return Path(file), name
    return Path(spec), None


def _run_genotype(path: Path, name: str | None) -> Path:
    """path, or the genotype.json of the search run directory it names."""
    if not path_is(path, Path.is_dir):
        return path
    if name is not None:
        raise GenotypeError(f"{path} is a directory: FILE:NAME picks a genotype from a file such as DARTS's "
                            "genotypes.py")
    if not path_is(path / "genotype.json", Path.is_file):
        raise GenotypeError(f"{path} is a directory without a genotype.json: not a search run directory, or its "
                            f"search has not finished (each epoch's genotype: {path / 'genotypes'}/epoch_NNN.json)")
    return path / "genotype.json"


def _require_file(path: Path) -> None:
    """GenotypeError 'no such file' where a spec that can only mean a file names none."""
    if not path_is(path):
        raise GenotypeError(f"no such file: {path}")


def _pick_darts_genotype(text: str, path: Path, name: str | None) -> str:
    """The ``Genotype(...)`` text of genotype `name` of a genotypes.py (the only one when name is
    None), or `text` itself when it holds no ``NAME = Genotype(...)`` and no name is asked for."""
    if name is None and text.lstrip().startswith("{"):
        return text
    found = named_darts_genotypes(text)
    if name is not None:
        if name not in found:
            held = f"it holds {', '.join(found)}" if found else "it holds no NAME = Genotype(...) assignment"
            raise GenotypeError(f"{path} has no genotype {name}: {held}")
        return found[name]
    if len(found) > 1:
        raise GenotypeError(f"{path} holds {len(found)} genotypes ({', '.join(found)}): pick one with "
                            f"{path}:NAME, e.g. {path}:{next(iter(found))}")
    return next(iter(found.values())) if found else text


def save_genotype(genotype: Genotype, path) -> None:
    from ..checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(genotype.to_dict(), indent=1) + "\n")


# ----------------------------------------------------------------------------- derivation
def derive_cell(weights: torch.Tensor, primitives, steps: int) -> tuple:
    """DARTS's parse: for each node keep the 2 incoming edges whose strongest non-`none` op is
    largest, and on each kept edge its argmax non-`none` op. `weights`: [edges, ops], already
    normalised (softmax or sigmoid of α). Compared in their own precision (float64 weights one ulp
    apart are not a tie), half precision in float32."""
    weights = weights.detach().cpu()
    if weights.dtype not in (torch.float32, torch.float64):
        weights = weights.float()
    primitives = list(primitives)
    none = primitives.index("none") if "none" in primitives else None
    if none is not None:
        weights = weights.clone()
        weights[:, none] = -float("inf")
    gene, start, n = [], 0, 2
    for _ in range(steps):
        w = weights[start:start + n]
        strength = w.max(dim=1).values
        # stable sort on -strength: ties keep the lower input index first, as DARTS's sorted() does
        order = sorted(range(n), key=lambda j: -float(strength[j]))[:2]
        for j in order:
            gene.append((primitives[int(w[j].argmax())], j))
        start += n
        n += 1
    return tuple(gene)


def derive_genotype(weights_normal, weights_reduce, primitives, steps: int = 4, multiplier: int = 4) -> Genotype:
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(
        normal=derive_cell(weights_normal, primitives, steps),
        normal_concat=concat,
        reduce=derive_cell(weights_reduce, primitives, steps),
        reduce_concat=concat,
    )

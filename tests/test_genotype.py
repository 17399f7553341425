"""Genotype derivation, JSON round trips, validation and the model zoo."""
import json
import re

import pytest
import torch

from ndarts.genotype import Genotype, GenotypeError, derive_cell, derive_genotype, load_genotype, zoo
from ndarts.operations import DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES


def _weights(rows, primitives):
    """Edge weights from {edge: {op: weight}}, a small random floor elsewhere."""
    w = torch.rand(14, len(primitives)) * 0.01
    for e, ops in rows.items():
        for op, v in ops.items():
            w[e, primitives.index(op)] = v
    return w


def test_derive_on_hand_built_weights():
    p = NOISYDARTS_PRIMITIVES
    # node 2: edges 0,1; node 3: edges 2,3,4; node 4: 5..8; node 5: 9..13
    w = _weights({
        0: {"sep_conv_3x3": 0.9}, 1: {"skip_connect": 0.8},
        2: {"max_pool_3x3": 0.3}, 3: {"dil_conv_5x5": 0.7}, 4: {"sep_conv_5x5": 0.6},
        5: {"avg_pool_3x3": 0.95}, 6: {"dil_conv_3x3": 0.2}, 7: {"skip_connect": 0.5}, 8: {"sep_conv_3x3": 0.1},
        9: {"sep_conv_3x3": 0.4}, 10: {"sep_conv_3x3": 0.41}, 11: {"max_pool_3x3": 0.39}, 12: {"dil_conv_3x3": 0.9},
        13: {"skip_connect": 0.05},
    }, p)
    cell = derive_cell(w, p, 4)
    assert cell == (
        ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("dil_conv_5x5", 1), ("sep_conv_5x5", 2),
        ("avg_pool_3x3", 0), ("skip_connect", 2),
        ("dil_conv_3x3", 3), ("sep_conv_3x3", 1),
    )


def test_float64_weights_are_compared_in_their_own_precision():
    """Two float64 weights one ulp apart are no tie (a float32 cast made them one, and the earlier
    edge or op won instead of the larger)."""
    p = NOISYDARTS_PRIMITIVES
    w = torch.full((14, len(p)), 0.1, dtype=torch.float64)
    w[0, p.index("sep_conv_3x3")] = 0.5
    w[0, p.index("dil_conv_3x3")] = torch.nextafter(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0,
                                                    dtype=torch.float64))
    w[2, p.index("skip_connect")] = 0.5  # node 3: edge 2 (input 0) against edge 3 (input 1), one ulp more
    w[3, p.index("max_pool_3x3")] = float(w[0, p.index("dil_conv_3x3")])
    w[4, p.index("avg_pool_3x3")] = 0.3
    cell = derive_cell(w, p, 4)
    assert cell[0] == ("dil_conv_3x3", 0)
    assert cell[2:4] == (("max_pool_3x3", 1), ("skip_connect", 0))


def test_none_is_excluded_in_darts_space():
    p = DARTS_PRIMITIVES
    # `none` is the heaviest op on every edge; it must neither pick the edge nor be the op
    w = _weights({e: {"none": 0.99} for e in range(14)}, p)
    w[0, p.index("max_pool_3x3")] = 0.5
    w[1, p.index("skip_connect")] = 0.4
    w[2, p.index("sep_conv_3x3")] = 0.3
    w[4, p.index("dil_conv_3x3")] = 0.35
    cell = derive_cell(w, p, 4)
    assert all(op != "none" for op, _ in cell)
    assert cell[:4] == (("max_pool_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("sep_conv_3x3", 0))


def test_network_genotype_uses_softmax_of_alpha():
    from ndarts.search_model import SearchNetwork

    net = SearchNetwork(C=4, layers=3, in_channels=1)
    with torch.no_grad():
        net.alphas_normal.normal_()
        net.alphas_reduce.normal_()
    g = net.genotype()
    expect = derive_genotype(torch.softmax(net.alphas_normal, -1), torch.softmax(net.alphas_reduce, -1),
                             NOISYDARTS_PRIMITIVES)
    assert g == expect
    assert g.normal_concat == (2, 3, 4, 5)


def test_json_round_trip(tmp_path):
    g = zoo()["NoisyDARTS-a"]
    again = Genotype.from_dict(json.loads(g.to_json()))
    assert again == g
    path = tmp_path / "g.json"
    path.write_text(g.to_json())
    assert load_genotype(str(path)) == g
    assert load_genotype(g.to_json()) == g


def test_zoo_has_the_published_cells():
    models = zoo()
    assert {"DARTS_V1", "DARTS_V2", *(f"NoisyDARTS-{c}" for c in "abcdefghij")} <= set(models)
    assert models["DARTS_V2"].normal[0] == ("sep_conv_3x3", 0)
    assert models["NoisyDARTS-a"].skip_counts() == (1, 4)


@pytest.mark.parametrize("bad,match", [
    ('{"normal": [], "normal_concat": [2], "reduce": [], "reduce_concat": [2]}', "non-empty"),
    ('{"normal": [["conv_9x9", 0], ["skip_connect", 1]], "normal_concat": [2], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}', "unknown operation"),
    ('{"normal": [["skip_connect", 2], ["skip_connect", 1]], "normal_concat": [2], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}', "valid inputs are 0..1"),
    ('{"normal": [["skip_connect", 0]], "normal_concat": [2], "reduce": [["skip_connect", 0]], "reduce_concat": [2]}',
     "even number"),
    ('{"normal": [["skip_connect", 0], ["skip_connect", 1]], "normal_concat": [2]}', "missing the key"),
    ('{"normal": [["skip_connect", 0], ["skip_connect", "1"]], "normal_concat": [2], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}', "must be an integer"),
    ("__import__('os').system('true')", "neither a zoo genotype"),
    ("{not json", "not valid JSON"),
    ("NoisyDARTS-z", "neither a zoo genotype"),
    # a reduction cell's inputs are at twice its nodes' resolution: concatenated, a size mismatch at the first forward
    ('{"normal": [["skip_connect", 0], ["skip_connect", 1]], "normal_concat": [0, 2], '
     '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [1, 2]}', r"valid nodes are 2..2 \(a reduc"),
    ('[{"normal": [["skip_connect", 0], ["skip_connect", 1]]}]', "must be a JSON object"),
    ("", "the genotype is empty"),
    ("   ", "the genotype is empty"),
])
def test_bad_genotypes_are_refused(bad, match):
    with pytest.raises(GenotypeError, match=match):
        load_genotype(bad)


def test_wrong_node_count_is_refused():
    with pytest.raises(GenotypeError, match="built for 5"):
        load_genotype("DARTS_V2", steps=5)


# ----------------------------------------------------------------------------- DARTS's printed genotypes
def _darts_text(g: Genotype, prefix="", concat_as_range=True) -> str:
    """g as DARTS prints it: Genotype(normal=[('op', i), ...], normal_concat=range(2, 6), ...)."""
    d = g.to_dict()

    def edges(cell):
        return "[" + ", ".join(f"({op!r}, {i})" for op, i in cell) + "]"

    def concat(c):
        return f"range({c[0]}, {c[-1] + 1})" if concat_as_range and c == list(range(c[0], c[-1] + 1)) else str(c)

    return (f"{prefix}Genotype(normal={edges(d['normal'])}, normal_concat={concat(d['normal_concat'])}, "
            f"reduce={edges(d['reduce'])}, reduce_concat={concat(d['reduce_concat'])})")


@pytest.mark.parametrize("name", sorted(zoo()))
def test_dartss_printed_genotypes_are_read(name, tmp_path):
    g = zoo()[name]
    for text in (_darts_text(g), _darts_text(g, prefix="genotype = "), _darts_text(g, concat_as_range=False)):
        assert load_genotype(text) == g
    file = tmp_path / "genotype.txt"
    file.write_text(_darts_text(g, prefix="DARTS_V2 = ") + "\n")
    assert load_genotype(str(file)) == g
    d = g.to_dict()
    positional = (f"Genotype({[tuple(e) for e in d['normal']]}, {d['normal_concat']}, "
                  f"{[tuple(e) for e in d['reduce']]}, {d['reduce_concat']})")
    assert load_genotype(positional) == g


EDGES = "[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]"


@pytest.mark.parametrize("text,match", [
    (f"Genotype(normal={EDGES}, normal_concat=[2])", "lacks reduce, reduce_concat"),
    (f"Genotype(normal={EDGES}, normal_concat=[2], reduce={EDGES}, reduce_concat=[2], extra=1)", "field 'extra'"),
    (f"Genotype(normal={EDGES}, normal_concat=[2], reduce={EDGES}, reduce_concat=[2], normal={EDGES})",
     "field 'normal'"),
    (f"Genotype(normal=[('sep_conv_3x3', 0)] * 2, normal_concat=[2], reduce={EDGES}, reduce_concat=[2])",
     "normal must be a list of"),
    (f"Genotype(normal=[('sep_conv_3x3', -1), ('sep_conv_3x3', 1)], normal_concat=[2], reduce={EDGES}, "
     "reduce_concat=[2])", "expected a string or an int literal, got -1"),
    (f"Genotype(normal={EDGES}, normal_concat=range(2, n), reduce={EDGES}, reduce_concat=[2])",
     "expected a string or an int literal, got n"),
    (f"Genotype(normal={EDGES}, normal_concat=[2], reduce={EDGES}, reduce_concat=[2]", "not a Python-literal"),
    (f"Genotype(normal={EDGES}, normal_concat=[2], reduce={EDGES}, reduce_concat=[2]) + 1", "one Genotype(...) call"),
    (f"Genotype(normal=[('conv_9x9', 0), ('sep_conv_3x3', 1)], normal_concat=[2], reduce={EDGES}, "
     "reduce_concat=[2])", "unknown operation"),
    # a range too long to be a cell's, refused before its list is made (was 795 MB for 2 × 10**7, 40 GB for 10**9)
    (f"Genotype(normal={EDGES}, normal_concat=range(2, 1000000000000), reduce={EDGES}, reduce_concat=[2])",
     "normal_concat: range(2, 1000000000000) names 999999999998 nodes; a cell has at most 64"),
    (f"Genotype(normal={EDGES}, normal_concat=[2], reduce={EDGES}, reduce_concat=range(10**9))",
     "expected a string or an int literal, got 10 ** 9"),
])
def test_bad_darts_genotypes_are_refused(text, match):
    with pytest.raises(GenotypeError, match=re.escape(match)):
        load_genotype(text)


def test_a_darts_genotype_is_never_evaluated(tmp_path):
    marker = tmp_path / "ran"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    for text in (f"Genotype(normal={payload}, normal_concat=[2], reduce={EDGES}, reduce_concat=[2])",
                 f"Genotype(normal={EDGES}, normal_concat=range({payload}), reduce={EDGES}, reduce_concat=[2])",
                 f"genotype = Genotype(normal=[({payload}, 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
                 f"reduce={EDGES}, reduce_concat=[2])"):
        with pytest.raises(GenotypeError):
            load_genotype(text)
    assert not marker.exists()


def test_a_long_string_that_is_no_file_is_a_clear_error():
    """Longer than a file name may be (was an OSError 'File name too long' from Path.is_file)."""
    with pytest.raises(GenotypeError, match="neither a zoo genotype"):
        load_genotype("sep_conv_3x3 " * 40)


# ----------------------------------------------------------------------------- run directories, missing files
def test_a_search_run_directory_gives_its_genotype(tmp_path, fresh_seed):
    from ndarts.genotype import save_genotype

    name = sorted(zoo())[fresh_seed % len(zoo())]
    save_genotype(zoo()[name], tmp_path / "run" / "genotype.json")
    assert load_genotype(str(tmp_path / "run")) == zoo()[name]
    assert load_genotype(str(tmp_path / "run") + "/") == zoo()[name]
    (tmp_path / "unfinished" / "genotypes").mkdir(parents=True)
    with pytest.raises(GenotypeError, match="without a genotype.json"):
        load_genotype(str(tmp_path / "unfinished"))


@pytest.mark.parametrize("spec", ["missing.json", "genotypes.py", "cell.txt", "runs/search-1", "runs/g.py:DARTS_V2"])
def test_a_missing_file_is_named(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GenotypeError) as exc:
        load_genotype(spec)
    assert str(exc.value) == f"no such file: {spec.split(':')[0]}"


# ----------------------------------------------------------------------------- DARTS's genotypes.py
def _genotypes_py(names: dict) -> str:
    """A genotypes.py as DARTS keeps it: imports, the namedtuple, PRIMITIVES, NAME = Genotype(...), an alias."""
    lines = ["from collections import namedtuple", "",
             "Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')", "",
             f"PRIMITIVES = {list(DARTS_PRIMITIVES)!r}", ""]
    lines += [_darts_text(g, prefix=f"{name} = ") for name, g in names.items()]
    return "\n".join(lines + [f"DARTS = {next(iter(names))}", ""])


def test_one_genotype_of_a_genotypes_py_is_picked_by_name(tmp_path, fresh_seed):
    models = zoo()
    picked = [sorted(models)[i] for i in torch.randperm(len(models))[:3].tolist()]
    names = {f"{n.replace('-', '_')}_X": models[n] for n in picked}
    file = tmp_path / "genotypes.py"
    file.write_text(_genotypes_py(names))
    for name, g in names.items():
        assert load_genotype(f"{file}:{name}") == g
    assert load_genotype(f"{file}:DARTS") == next(iter(names.values()))  # an alias
    with pytest.raises(GenotypeError) as exc:
        load_genotype(str(file))
    assert f"holds {len(names) + 1} genotypes ({', '.join([*names, 'DARTS'])}): pick one with {file}:NAME" \
        in str(exc.value)
    with pytest.raises(GenotypeError, match=f"has no genotype NOPE: it holds {', '.join(names)}"):
        load_genotype(f"{file}:NOPE")
    one = tmp_path / "one.py"
    one.write_text(_genotypes_py(dict([next(iter(names.items()))])).replace("DARTS = ", "# "))
    assert load_genotype(str(one)) == next(iter(names.values()))  # the only one: no name needed


def test_a_python_file_without_genotypes_is_a_clear_error(tmp_path):
    file = tmp_path / "model.py"
    file.write_text("import torch\n\nx = 1\n")
    with pytest.raises(GenotypeError, match="holds neither a genotype JSON, DARTS's Genotype"):
        load_genotype(str(file))


def test_a_genotypes_py_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    file = tmp_path / "genotypes.py"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    file.write_text(_genotypes_py({"A": zoo()["DARTS_V2"]}) + f"{payload}\n"
                    f"B = Genotype(normal={payload}, normal_concat=[2], reduce={EDGES}, reduce_concat=[2])\n")
    assert load_genotype(f"{file}:A") == zoo()["DARTS_V2"]
    with pytest.raises(GenotypeError, match="not a usable DARTS genotype"):
        load_genotype(f"{file}:B")
    assert not marker.exists()

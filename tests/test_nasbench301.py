"""NAS-Bench-301's prediction of a DARTS-space cell, against a stand-in for its package (the real
one and its models are an opt-in download)."""
import json
import random
import sys
import types

import pytest

from ndarts.errors import NdartsError
from ndarts.genotype import Genotype, GenotypeError, zoo
from ndarts.genotype import nasbench301 as nb301
from ndarts.genotype.__main__ import main as genotype_main
from ndarts.operations import NOISYDARTS_PRIMITIVES


class FakeEnsemble:
    """load_ensemble's object: predict(config=, representation=, with_noise=) as the package has it."""

    def __init__(self, path):
        self.path = path
        self.calls = []

    def predict(self, config, representation, with_noise):
        self.calls.append((config, representation, with_noise))
        return 90.0 + sum(op == "sep_conv_3x3" for op, _ in config.normal) + (0.5 if with_noise else 0.0)


@pytest.fixture
def fake_nb301(monkeypatch, tmp_path):
    """The package's stand-in; tmp_path made a surrogate's directory (one ensemble member)."""
    (tmp_path / "member_0").mkdir()
    (tmp_path / "member_0" / "surrogate_model.model").write_bytes(b"")
    loaded = []

    def load_ensemble(path):
        loaded.append(FakeEnsemble(path))
        return loaded[-1]

    monkeypatch.setitem(sys.modules, "nasbench301", types.SimpleNamespace(load_ensemble=load_ensemble))
    nb301._ensemble.cache_clear()
    yield loaded
    nb301._ensemble.cache_clear()


def random_genotype(rng) -> Genotype:
    def cell():  # each node's two edges from two different earlier nodes, as in NAS-Bench-301's space
        return [[rng.choice(NOISYDARTS_PRIMITIVES), j] for i in range(4) for j in rng.sample(range(2 + i), 2)]
    return Genotype.from_dict({"normal": cell(), "normal_concat": [2, 3, 4, 5],
                               "reduce": cell(), "reduce_concat": [2, 3, 4, 5]})


def test_the_surrogate_gets_darts_genotype_tuples(tmp_path, fake_nb301, fresh_seed):
    g = random_genotype(random.Random(fresh_seed))
    accuracy = nb301.predict_accuracy(g, tmp_path)
    assert accuracy == 90.0 + sum(op == "sep_conv_3x3" for op, _ in g.normal)
    config, representation, with_noise = fake_nb301[0].calls[0]
    assert representation == "genotype" and with_noise is False
    assert type(config).__name__ == "Genotype" and config._fields == ("normal", "normal_concat", "reduce",
                                                                       "reduce_concat")
    assert config.normal == [tuple(e) for e in g.normal] and config.reduce == [tuple(e) for e in g.reduce]
    assert config.normal_concat == config.reduce_concat == [2, 3, 4, 5]
    assert nb301.predict_accuracy(g, tmp_path, with_noise=True) == accuracy + 0.5
    assert len(fake_nb301) == 1  # the ensemble is loaded once per directory


def test_cells_outside_its_space_are_named(tmp_path, fake_nb301):
    d = zoo()["DARTS_V2"].to_dict()
    other_op = json.loads(json.dumps(d))
    other_op["reduce"][3][0] = "sep_conv_7x7"  # an op ndarts knows, outside DARTS's space
    with pytest.raises(GenotypeError, match=r"reduce cell uses \['sep_conv_7x7'\]"):
        nb301.predict_accuracy(Genotype.from_dict(other_op), tmp_path)
    same_input = json.loads(json.dumps(d))
    same_input["normal"][7][1] = same_input["normal"][6][1]  # node 5's two edges from one node: not in its space
    with pytest.raises(GenotypeError, match="node 5 of the normal cell takes both its edges from node 0"):
        nb301.predict_accuracy(Genotype.from_dict(same_input), tmp_path)
    three_nodes = {k: (v[:6] if k in ("normal", "reduce") else [2, 3, 4]) for k, v in d.items()}
    with pytest.raises(GenotypeError, match="cells of 4 nodes"):
        nb301.predict_accuracy(Genotype.from_dict(three_nodes), tmp_path)
    with pytest.raises(NdartsError, match="does not exist"):
        nb301.predict_accuracy(zoo()["DARTS_V2"], tmp_path / "xgb_v1.0")
    assert fake_nb301 == []


def test_a_directory_without_a_surrogate_is_named(tmp_path, fake_nb301):
    """The package itself fails on an IndexError inside load_ensemble there; the parent of several
    surrogates (nb_models_1.0) is named with the ones under it; the loader's own errors are one line."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NdartsError, match=r"holds no NAS-Bench-301 surrogate .*e\.g\. nb_models_1\.0/xgb_v1\.0"):
        nb301.predict_accuracy(zoo()["DARTS_V2"], empty)
    parent = tmp_path / "nb_models_1.0"
    for name in ("xgb_v1.0", "gnn_gin_v1.0"):
        (parent / name / "member_0").mkdir(parents=True)
        (parent / name / "member_0" / "surrogate_model.model").write_bytes(b"")
    with pytest.raises(NdartsError, match=r"the surrogates under it are .*gnn_gin_v1\.0, .*xgb_v1\.0: give one"):
        nb301.predict_accuracy(zoo()["DARTS_V2"], parent)
    assert fake_nb301 == []

    def broken(path):
        raise FileNotFoundError(2, "No such file or directory", f"{path}/member_0/data_config.json")

    sys.modules["nasbench301"].load_ensemble = broken
    nb301._ensemble.cache_clear()
    with pytest.raises(NdartsError, match="could not load the surrogate in .*FileNotFoundError.*data_config.json"):
        nb301.predict_accuracy(zoo()["DARTS_V2"], parent / "xgb_v1.0")


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nasbench301", None)
    nb301._ensemble.cache_clear()
    with pytest.raises(NdartsError, match="needs its package"):
        nb301.predict_accuracy(zoo()["NoisyDARTS-a"], tmp_path)


def test_cli_predict(tmp_path, fake_nb301, capsys):
    genotype_main(["predict", "NoisyDARTS-a", "--nb301-model", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    g = zoo()["NoisyDARTS-a"]
    assert out == {"genotype": g.to_dict(), "nb301_accuracy": 90.0 + sum(op == "sep_conv_3x3" for op, _ in g.normal)}
    with pytest.raises(SystemExit) as exit_:
        genotype_main(["predict", "NoisyDARTS-a", "--nb301-model", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "does not exist" in capsys.readouterr().err

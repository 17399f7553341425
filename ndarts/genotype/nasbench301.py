"""A DARTS-space cell's CIFAR-10 accuracy as NAS-Bench-301 predicts it (Siems et al., 2020): a
surrogate model fitted to ~60 k trained DARTS-space architectures, in place of a 600-epoch training.

The surrogate and its package are the user's to install (opt-in): the ``nasbench301`` package
(github.com/automl/nasbench301) and its models (``nb_models_1.0``, e.g. ``nb_models_1.0/xgb_v1.0``).
Its space is NoisyDARTS's: the 7 DARTS ops without ``none``, 4 nodes of 2 inputs, concat of nodes 2–5.
"""
from __future__ import annotations

import functools
from collections import namedtuple
from pathlib import Path

from ..checkpoint import first_sentence
from ..errors import NdartsError
from ..operations import NOISYDARTS_PRIMITIVES
from . import Genotype, GenotypeError

# the form the surrogate's genotype representation reads (DARTS's genotypes.py namedtuple)
DartsGenotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
CONCAT = (2, 3, 4, 5)


def to_nb301(genotype: Genotype) -> DartsGenotype:
    """The genotype as the surrogate takes it; a cell outside its space is a GenotypeError naming why."""
    if genotype.steps != 4:
        raise GenotypeError(f"NAS-Bench-301 predicts cells of 4 nodes; this genotype has {genotype.steps}")
    for name, edges, concat in (("normal", genotype.normal, genotype.normal_concat),
                                ("reduce", genotype.reduce, genotype.reduce_concat)):
        outside = sorted({op for op, _ in edges if op not in NOISYDARTS_PRIMITIVES})
        if outside:
            raise GenotypeError(f"the {name} cell uses {outside}, outside NAS-Bench-301's ops "
                                f"{list(NOISYDARTS_PRIMITIVES)}")
        for node in range(len(edges) // 2):  # its space's node picks two of the earlier nodes
            (_, a), (_, b) = edges[2 * node:2 * node + 2]
            if a == b:
                raise GenotypeError(f"NAS-Bench-301's nodes take two different inputs; node {node + 2} of the {name} "
                                    f"cell takes both its edges from node {a}")
        if tuple(concat) != CONCAT:
            raise GenotypeError(f"NAS-Bench-301 concatenates nodes {list(CONCAT)}; the {name} cell concatenates "
                                f"{list(concat)}")
    return DartsGenotype(normal=[(op, int(j)) for op, j in genotype.normal], normal_concat=list(CONCAT),
                         reduce=[(op, int(j)) for op, j in genotype.reduce], reduce_concat=list(CONCAT))


@functools.lru_cache(maxsize=2)
def _ensemble(model_dir: str):
    try:
        import nasbench301
    except ImportError:
        raise NdartsError("NAS-Bench-301's prediction needs its package: pip install "
                          "git+https://github.com/automl/nasbench301 (and its models, nb_models_1.0)") from None
    # a surrogate's directory holds its ensemble's members, DIR/<member>/surrogate_model.model; without
    # them the package fails on an IndexError deep inside load_ensemble
    if not any(Path(model_dir).glob("*/surrogate_model.model")):
        deeper = sorted({str(m.parent.parent) for m in Path(model_dir).rglob("surrogate_model.model")})
        hint = (f"; the surrogates under it are {', '.join(deeper[:3])}: give one of those" if deeper else
                ": give one surrogate's directory of nb_models_1.0, e.g. nb_models_1.0/xgb_v1.0")
        raise NdartsError(f"{model_dir} holds no NAS-Bench-301 surrogate (no DIR/*/surrogate_model.model){hint}")
    try:
        return nasbench301.load_ensemble(model_dir)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, EOFError) as e:
        raise NdartsError(f"NAS-Bench-301 could not load the surrogate in {model_dir} "
                          f"({type(e).__name__}: {first_sentence(e)})") from None


def predict_accuracy(genotype: Genotype, model_dir, with_noise: bool = False) -> float:
    """The surrogate's CIFAR-10 validation accuracy (%) of the genotype's network trained as DARTS's
    evaluation protocol does. model_dir: a surrogate's directory (e.g. nb_models_1.0/xgb_v1.0);
    with_noise: a draw from the surrogate's noise model (the spread of one training run) instead of
    its mean."""
    config = to_nb301(genotype)
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise NdartsError(f"NAS-Bench-301 model directory {path} does not exist (e.g. nb_models_1.0/xgb_v1.0)")
    value = _ensemble(str(path)).predict(config=config, representation="genotype", with_noise=with_noise)
    return float(value)

"""Looking a NAS-Bench-201 cell up in the benchmark: its trained accuracies, without training it.

The benchmark's data and API are the user's to install (opt-in, several GB): NATS-Bench's
topology set (``pip install nats_bench``, the ``NATS-tss-v1_0-3ffb9-simple`` directory) or the
original NAS-Bench-201 file (``pip install nas-bench-201``, ``NAS-Bench-201-v1_1-096897.pth``).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import NdartsError
from ..genotype import GenotypeError, path_is, read_genotype_file
from .space import Nb201Genotype, is_nb201_dict

# the benchmark's datasets (its names): CIFAR-10 trained on the train half, validated on the other
# ("cifar10-valid"), CIFAR-10 on train+val, tested on its test set ("cifar10"), CIFAR-100 and ImageNet16-120
DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
# the 200-epoch schedule of the benchmark (the accuracies papers report)
EPOCHS = "200"


def load_nb201_genotype(spec: str) -> Nb201Genotype:
    """A NAS-Bench-201 cell from an architecture string, a genotype JSON text ({"space":
    "nas-bench-201", "arch": ...}), a file holding either, or a search run's directory (its
    genotype.json)."""
    text = spec.strip()
    if text.startswith("|"):
        return Nb201Genotype.from_arch_string(text)
    if not text.startswith("{"):
        path = Path(text)
        if path_is(path, Path.is_dir):
            path = path / "genotype.json"
        text = read_genotype_file(path, f"{spec[:200]!r} is neither a NAS-Bench-201 architecture string "
                                        "(|op~0|+...), a genotype JSON, nor a file or search run directory "
                                        "holding one").strip()
        if text.startswith("|"):
            return Nb201Genotype.from_arch_string(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenotypeError(f"{spec[:200]!r} is not valid JSON: {e}") from None
    if not is_nb201_dict(data):
        raise GenotypeError(f"{spec[:200]!r} is not a NAS-Bench-201 genotype (a DARTS-space cell is looked up in "
                            "no benchmark: train it with python -m ndarts.train)")
    return Nb201Genotype.from_dict(data)


def open_benchmark(path):
    """The benchmark's API object over `path` (NATS-Bench's topology set, else NAS-Bench-201's)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise NdartsError(f"benchmark file {path} does not exist (download NATS-Bench's NATS-tss-v1_0-3ffb9-simple "
                          "or NAS-Bench-201-v1_1-096897.pth; see the README)")
    try:
        from nats_bench import create
    except ImportError:
        create = None
    if create is not None:
        return create(str(path), "tss", fast_mode=True, verbose=False)
    try:
        from nas_201_api import NASBench201API
    except ImportError:
        raise NdartsError("looking a cell up needs the benchmark's API: pip install nats_bench "
                          "(or nas-bench-201)") from None
    return NASBench201API(str(path), verbose=False)


def lookup(genotype: Nb201Genotype, api, dataset: str = "cifar10") -> dict:
    """The benchmark's record of the cell on `dataset` after its 200-epoch training: a dict with
    "index" (the benchmark's), "arch" and its losses and accuracies (in %, as the API gives them:
    e.g. "test-accuracy"; "valid-accuracy" on cifar10-valid)."""
    if dataset not in DATASETS:
        raise NdartsError(f"unknown benchmark dataset {dataset!r}; choose one of {list(DATASETS)}")
    arch = genotype.arch_string()
    index = api.query_index_by_arch(arch)
    if index is None or int(index) < 0:
        raise NdartsError(f"the benchmark has no record of {arch}")
    try:
        info = api.get_more_info(int(index), dataset, hp=EPOCHS, is_random=False)
    except TypeError:  # NAS-Bench-201's API before v2.0 names the schedule differently
        info = api.get_more_info(int(index), dataset, None, use_12epochs_result=False, is_random=False)
    return {"index": int(index), "arch": arch, "dataset": dataset, **info}


def format_record(record: dict) -> str:
    """The record's accuracies and losses, one per line (the API's keys)."""
    lines = [f"{record['arch']}  (benchmark index {record['index']}, {record['dataset']}, {EPOCHS} epochs)"]
    for key, value in record.items():
        if key.endswith(("accuracy", "loss")) and isinstance(value, (int, float)):
            lines.append(f"  {key}: {value:.2f}" if key.endswith("accuracy") else f"  {key}: {value:.4f}")
    return "\n".join(lines)

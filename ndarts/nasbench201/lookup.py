"""Looking a NAS-Bench-201 cell up in the benchmark: its trained accuracies, without training it.

The benchmark's data and API are the user's to install (opt-in, several GB): NATS-Bench's
topology set (``pip install nats_bench``, the ``NATS-tss-v1_0-3ffb9-simple`` directory) or the
original NAS-Bench-201 file (``pip install nas-bench-201``, ``NAS-Bench-201-v1_1-096897.pth``).
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import first_sentence
from ..errors import NdartsError
from ..genotype import GenotypeError, path_is, read_genotype_file
from .space import Nb201Genotype, is_nb201_dict

# the benchmark's datasets (its names): CIFAR-10 trained on the train half, validated on the other
# ("cifar10-valid"), CIFAR-10 on train+val, tested on its test set ("cifar10"), CIFAR-100 and ImageNet16-120
DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
# the 200-epoch schedule of the benchmark (the accuracies papers report)
EPOCHS = "200"
# the benchmark's spelling of each dataset, by its lower-case name: `--dataset imagenet16-120` (the
# search's spelling) is the benchmark's ImageNet16-120
SPELLINGS = {name.lower(): name for name in DATASETS}
# the benchmark dataset whose records match a search run's dataset (config.json); the others (digits,
# imagefolder, a caller's data) have none
RUN_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16-120": "ImageNet16-120"}
# what the benchmark's APIs raise on a file they cannot read (a wrong kind, a cut download, a corrupt
# pickle): caught, they become one line naming the file instead of a traceback from inside the API
API_ERRORS = (ValueError, AssertionError, OSError, EOFError, pickle.UnpicklingError, RuntimeError)


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


def benchmark_dataset(name: str) -> str:
    """The benchmark's own name of a dataset given in any case (imagenet16-120 → ImageNet16-120)."""
    known = SPELLINGS.get(name.lower())
    if known is None:
        raise NdartsError(f"unknown benchmark dataset {name!r}; choose one of {list(DATASETS)}")
    return known


@dataclass(frozen=True)
class BenchmarkFormat:
    """One kind of benchmark path: what it is (named in the messages) and the pip name of its API."""

    what: str
    package: str


NATS_DIRECTORY = BenchmarkFormat("NATS-Bench's topology directory (NATS-tss-v1_0-3ffb9-simple)", "nats_bench")
NATS_PICKLE = BenchmarkFormat("NATS-Bench's topology file (NATS-tss-v1_0-3ffb9.pickle.pbz2)", "nats_bench")
NB201_PTH = BenchmarkFormat("NAS-Bench-201's file (NAS-Bench-201-v1_1-096897.pth)", "nas-bench-201")


def benchmark_format(path: Path) -> BenchmarkFormat:
    """The kind of benchmark `path` is, from its name: each API reads only its own (NATS-Bench's fast
    mode only a directory, its full mode only a .pickle.pbz2 file, NAS-Bench-201's API only its .pth)."""
    if path_is(path, Path.is_dir):
        return NATS_DIRECTORY
    if path.name.lower().endswith(".pickle.pbz2"):
        return NATS_PICKLE
    if path.name.lower().endswith(".pth"):
        return NB201_PTH
    raise NdartsError(f"benchmark {path} is neither NATS-Bench's topology directory or .pickle.pbz2 file nor "
                      "NAS-Bench-201's .pth file (see the README)")


def _api_constructor(fmt: BenchmarkFormat):
    """A function opening a path of format `fmt` with its API; NdartsError naming the package to
    install where the API is missing."""
    try:
        if fmt is NB201_PTH:
            from nas_201_api import NASBench201API

            return lambda path: NASBench201API(path, verbose=False)
        from nats_bench import create
    except ImportError:
        other = "" if fmt is not NB201_PTH else " (or NATS-Bench's topology files with pip install nats_bench)"
        raise NdartsError(f"opening {fmt.what} needs its API: pip install {fmt.package}{other}") from None
    return lambda path: create(path, "tss", fast_mode=fmt is NATS_DIRECTORY, verbose=False)


def api_error(error: BaseException, path: Path, fmt: BenchmarkFormat) -> NdartsError:
    """The one-line error of an API failing on `path`: the file, the kind it should be, the API's reason.
    NAS-Bench-201's API calls torch.load without weights_only, which torch >= 2.6 takes as True: its
    valid .pth may then be refused too, and the message says how to go on."""
    if isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower():
        return NdartsError(f"NAS-Bench-201's API could not load {path} ({_weights_only_reason(error)}): it calls "
                           "torch.load without weights_only, which torch >= 2.6 reads as weights_only=True, and that "
                           "may refuse even the benchmark's valid file; use NATS-Bench's topology files instead "
                           "(pip install nats_bench, NATS-tss-v1_0-3ffb9-simple), or, for a file from a trusted "
                           "source only, set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")
    return NdartsError(f"cannot read the benchmark {path} (expected {fmt.what}): "
                       f"{type(error).__name__}: {first_sentence(error)}")


def _weights_only_reason(error: BaseException) -> str:
    """What torch's weights-only unpickler refused (an object's class, an opcode), from its long message."""
    text = " ".join(str(error).split())
    reason = text.partition("WeightsUnpickler error:")[2].split("Check the documentation")[0].strip()
    return first_sentence(ValueError(reason), 120) if reason else "refused by torch's weights-only unpickler"


class Benchmark:
    """An opened benchmark: the API's two queries that lookup makes, its errors on the file as one
    NdartsError naming it (NATS-Bench's directory reads each cell's record only when it is asked).
    A TypeError goes through: lookup takes it for an older API's signature. `api`: the API itself."""

    def __init__(self, api, path: Path, fmt: BenchmarkFormat):
        self.api, self.path, self.format = api, path, fmt

    def query_index_by_arch(self, arch):
        try:
            return self.api.query_index_by_arch(arch)
        except API_ERRORS as e:
            raise api_error(e, self.path, self.format) from None

    def get_more_info(self, *args, **kwargs):
        try:
            return self.api.get_more_info(*args, **kwargs)
        except API_ERRORS as e:
            raise api_error(e, self.path, self.format) from None


def open_benchmark(path) -> Benchmark:
    """The benchmark at `path` with the API of its kind (benchmark_format): a directory with
    NATS-Bench's fast mode, a .pickle.pbz2 file with its full mode, a .pth with NAS-Bench-201's API."""
    path = Path(path).expanduser()
    if not path_is(path):
        raise NdartsError(f"benchmark file {path} does not exist (download NATS-Bench's NATS-tss-v1_0-3ffb9-simple "
                          "or NAS-Bench-201-v1_1-096897.pth; see the README)")
    fmt = benchmark_format(path)
    construct = _api_constructor(fmt)
    try:
        return Benchmark(construct(str(path)), path, fmt)
    except API_ERRORS as e:
        raise api_error(e, path, fmt) from None


def lookup(genotype: Nb201Genotype, api, dataset: str = "cifar10") -> dict:
    """The benchmark's record of the cell on `dataset` after its 200-epoch training: a dict with
    "index" (the benchmark's), "arch" and its losses and accuracies (in %, as the API gives them:
    e.g. "test-accuracy"; "valid-accuracy" on cifar10-valid). `dataset` in any case (benchmark_dataset)."""
    dataset = benchmark_dataset(dataset)
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

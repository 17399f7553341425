"""``python -m ndarts.nasbench201``: a NAS-Bench-201 cell, and its accuracies in the benchmark.

    python -m ndarts.nasbench201 runs/nb201                     # the cell a search found (its genotype.json)
    python -m ndarts.nasbench201 runs/nb201 --draw figs/nb201   # and its diagram, figs/nb201.{png,svg}
    python -m ndarts.nasbench201 '|nor_conv_3x3~0|+|...' --benchmark ~/NATS-tss-v1_0-3ffb9-simple --dataset cifar100

CELL is an architecture string, a genotype JSON (text or file) or a search run's directory.
Without --benchmark it prints the cell; with it, the benchmark's 200-epoch record of the cell
(needs ``pip install nats_bench`` or ``nas-bench-201`` and the benchmark's file) on --dataset,
by default the dataset a search run directory was searched on (its config.json), else cifar10.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import NdartsError, cli_errors
from ..genotype import path_is
from ..rundir import saved_config
from .lookup import (DATASETS, RUN_DATASETS, SPELLINGS, format_record, load_nb201_genotype, lookup,
                     open_benchmark)
from .space import EDGES


def describe(genotype) -> str:
    lines = [genotype.arch_string()]
    for j in range(1, max(to for to, _ in EDGES) + 1):
        ins = " + ".join(f"{op}(node {i})" for op, (to, i) in zip(genotype.ops, EDGES) if to == j)
        lines.append(f"  node {j} = {ins}")
    lines.append(f"  ({genotype.skip_counts()[0]} skip connections; the cell's output is node 3)")
    return "\n".join(lines)


def _benchmark_spelling(name: str) -> str:
    """--dataset in any case as the benchmark spells it (the search's imagenet16-120 is its
    ImageNet16-120); an unknown name unchanged, for argparse's choices to name the known ones."""
    return SPELLINGS.get(name.lower(), name)


def run_dataset(cell: str) -> str:
    """The benchmark dataset to look a cell up on without --dataset: where CELL is a search run's
    directory, the dataset the run searched on (its config.json), so that a CIFAR-100 run is not
    compared with CIFAR-10's records; cifar10 otherwise. A run on data the benchmark has no
    records of (digits, imagefolder, a caller's) is refused rather than looked up on another's."""
    path = Path(cell).expanduser()
    config = saved_config(path) if path_is(path, Path.is_dir) else None
    if not config or not isinstance(config.get("dataset"), str):
        return "cifar10"
    searched = config["dataset"]
    if searched.lower() not in RUN_DATASETS:
        raise NdartsError(f"{path} was searched on {searched!r}, which the benchmark has no records of: pass "
                          f"--dataset {'|'.join(DATASETS)} to look its cell up on one of the benchmark's")
    return RUN_DATASETS[searched.lower()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ndarts.nasbench201", description=__doc__.split("\n\n")[0])
    p.add_argument("cell", help="architecture string, genotype JSON (text or file) or search run directory")
    p.add_argument("--benchmark", default=None, help="the benchmark's file or directory (NATS-Bench tss or NAS-Bench-201)")
    p.add_argument("--dataset", default=None, choices=DATASETS, type=_benchmark_spelling,
                   help="with --benchmark: the dataset whose record is printed, in any case (default: a search "
                        "run directory's own dataset, else cifar10)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--draw", default=None, metavar="PREFIX", help="also write the cell's diagram to PREFIX.{png,svg}")
    return p


@cli_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.dataset is not None and args.benchmark is None:
        raise NdartsError("--dataset picks the benchmark's record of the cell: it needs --benchmark FILE "
                          "(without it the cell alone is printed)")
    genotype = load_nb201_genotype(args.cell)
    if args.draw is not None:
        from ..plots import draw_nb201_genotype

        drawn = draw_nb201_genotype(genotype, args.draw)
        if not args.json:
            print("\n".join(str(p) for p in drawn))
    if args.benchmark is None:
        print(json.dumps(genotype.to_dict()) if args.json else describe(genotype))
        return 0
    dataset = args.dataset or run_dataset(args.cell)
    record = lookup(genotype, open_benchmark(args.benchmark), dataset)
    print(json.dumps(record) if args.json else format_record(record))
    return 0


if __name__ == "__main__":
    main()

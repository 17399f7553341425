"""``python -m ndarts.genotype``: inspect, list, draw genotypes and predict their accuracy (NAS-Bench-301).

    python -m ndarts.genotype list
    python -m ndarts.genotype info NAME_OR_JSON [--json] [--init-channels 36 --layers 20 ...]
    python -m ndarts.genotype draw NAME_OR_JSON --out PREFIX   # PREFIX-normal.png/.svg, PREFIX-reduce.png/.svg
    python -m ndarts.genotype draw NAME_OR_JSON --out DIR/     # DIR/NAME-normal.png/.svg, ... (NAME: "cell"
                                                               # unless the genotype is a zoo name or FILE:NAME)
    python -m ndarts.genotype predict NAME_OR_JSON --nb301-model nb_models_1.0/xgb_v1.0   # NAS-Bench-301

NAME_OR_JSON is a zoo name, a JSON file (e.g. a search's genotype.json), a search run directory,
a JSON string, DARTS's Genotype(...) text or a file holding it, or FILE:NAME, one genotype of a
DARTS-style genotypes.py (read as literals, never run).
``info`` reports the evaluation network's size: by default DARTS's CIFAR-10 network (C 36, 20
cells, 10 classes, 32×32 input); parameters exclude the auxiliary tower, multiply-adds are
counted for one image.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config_checks import require_ints
from ..errors import cli_errors
from . import Genotype, genotype_name, load_genotype, path_is, zoo

GENOTYPE_HELP = "zoo name, JSON file or string, search run directory, or FILE:NAME of a DARTS genotypes.py"


def format_cell(edges, concat) -> list[str]:
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(len(edges) // 2)]
    lines = []
    for i in range(len(edges) // 2):
        ins = ", ".join(f"{op}({names[j]})" for op, j in edges[2 * i:2 * i + 2])
        lines.append(f"  node {i} = {ins}")
    lines.append(f"  output c_{{k}} = concat({', '.join(names[n] for n in concat)})")
    return lines


def describe(genotype: Genotype) -> str:
    skips = genotype.skip_counts()
    out = [f"normal cell ({skips[0]} skip connections):"] + format_cell(genotype.normal, genotype.normal_concat)
    out += [f"reduction cell ({skips[1]} skip connections):"] + format_cell(genotype.reduce, genotype.reduce_concat)
    return "\n".join(out)


def figure_prefix(out: str, spec: str) -> Path:
    """draw's file prefix: --out itself, or DIR/NAME where --out names a directory (an existing one,
    or one ending in a path separator); NAME: the genotype's name (zoo, FILE:NAME), else "cell"."""
    is_dir = out.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)) or path_is(Path(out), Path.is_dir)
    return Path(out) / (genotype_name(spec) or "cell") if is_dir else Path(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ndarts.genotype", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the published genotypes (model zoo)")
    info = sub.add_parser("info", help="the cells and the evaluation network's params and multiply-adds")
    info.add_argument("genotype", help=GENOTYPE_HELP)
    info.add_argument("--json", action="store_true", help="print exactly one JSON object")
    info.add_argument("--network", default="cifar", choices=["cifar", "imagenet"])
    info.add_argument("--init-channels", type=int, default=None, help="default 36 (48 imagenet)")
    info.add_argument("--layers", type=int, default=None, help="default 20 (14 imagenet)")
    info.add_argument("--num-classes", type=int, default=None, help="default 10 (1000 imagenet)")
    info.add_argument("--image-size", type=int, default=None, help="default 32 (224 imagenet)")
    draw = sub.add_parser("draw", help="PNG and SVG diagrams of the normal and reduction cells")
    draw.add_argument("genotype", help=GENOTYPE_HELP)
    draw.add_argument("--out", required=True,
                      help="prefix: writes PREFIX-normal.{png,svg} and PREFIX-reduce.{png,svg}; a directory "
                           "(existing, or ending in /) gets DIR/NAME-normal.{png,svg} and DIR/NAME-reduce.{png,svg}, "
                           "NAME the zoo name or the NAME of FILE:NAME, else 'cell'")
    predict = sub.add_parser("predict", help="CIFAR-10 accuracy as NAS-Bench-301's surrogate predicts it "
                                             "(needs the nasbench301 package and its models)")
    predict.add_argument("genotype", help=GENOTYPE_HELP)
    predict.add_argument("--nb301-model", required=True, help="a surrogate's directory, e.g. nb_models_1.0/xgb_v1.0")
    predict.add_argument("--with-noise", action="store_true",
                         help="a draw from the surrogate's noise model (one training run) instead of its mean")
    predict.add_argument("--json", action="store_true", help="print exactly one JSON object")
    return p


@cli_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, g in zoo().items():
            n, r = g.skip_counts()
            print(f"{name:14s} skips: normal {n} reduce {r}")
        return
    if args.command == "info":
        require_ints(args, 1, "init_channels", "layers", "num_classes", "image_size")
    genotype = load_genotype(args.genotype)
    if args.command == "predict":
        from .nasbench301 import predict_accuracy

        accuracy = predict_accuracy(genotype, args.nb301_model, with_noise=args.with_noise)
        print(json.dumps({"genotype": genotype.to_dict(), "nb301_accuracy": accuracy}) if args.json else
              f"NAS-Bench-301 ({args.nb301_model}): predicted CIFAR-10 accuracy {accuracy:.2f} %")
        return
    if args.command == "draw":
        from ..plots import draw_genotype

        for path in draw_genotype(genotype, figure_prefix(args.out, args.genotype)):
            print(path)
        return
    from .stats import network_stats

    imagenet = args.network == "imagenet"
    pick = lambda given, cifar, inet: given if given is not None else (inet if imagenet else cifar)  # noqa: E731
    sizes = {"C": pick(args.init_channels, 36, 48), "layers": pick(args.layers, 20, 14),
             "num_classes": pick(args.num_classes, 10, 1000), "image_size": pick(args.image_size, 32, 224)}
    stats = network_stats(genotype, args.network, **sizes)
    if args.json:
        print(json.dumps({"genotype": genotype.to_dict(), "skip_normal": genotype.skip_counts()[0],
                          "skip_reduce": genotype.skip_counts()[1], **stats}))
        return
    print(describe(genotype))
    print(f"{args.network} evaluation network (C {sizes['C']}, {sizes['layers']} cells, {sizes['num_classes']} classes, "
          f"{sizes['image_size']}x{sizes['image_size']} input): {stats['params_m']:.3f} M params "
          f"(auxiliary tower excluded; {stats['params_with_auxiliary_m']:.3f} M with it), "
          f"{stats['madds_m']:.1f} M multiply-adds")


if __name__ == "__main__":
    main(sys.argv[1:])

"""``python -m ndarts.train --genotype NAME_OR_JSON``: train a cell's evaluation network from scratch.

Defaults are DARTS's CIFAR evaluation protocol (600 epochs, batch 96, C 36, 20 cells, SGD 0.025
cosine, momentum 0.9, wd 3e-4, auxiliary tower 0.4, cutout 16, drop-path 0.2, grad clip 5).
``--network imagenet`` selects DARTS's ImageNet (mobile) network and protocol: C 48, 14 cells,
250 epochs, batch 128, SGD 0.1 decayed ×0.97 per epoch, wd 3e-5, label smoothing 0.1, no
drop-path, no cutout, 224×224 images as DARTS's train_imagenet.py makes them (an image folder: random
resized crops, flip, colour jitter; test: resize to 256, centre crop). The closing line gives the last
epoch's test accuracy (DARTS's reported figure), then the best epoch's, which the test split itself
chose. On the embedded default dataset (``--dataset digits``) the network
and schedule are scaled down so the bare command finishes in a few minutes on a laptop CPU.
Every flag given explicitly overrides a preset. Multi-GPU: ``torchrun --nproc-per-node N -m
ndarts.train ...``.
"""
from __future__ import annotations

import argparse

from .cli_options import HelpFormatter, require_dataset_flags
from .config_checks import require_ints, require_train_flags
from .data import DATASETS
from .errors import cli_errors
from .eval_model import NETWORKS
from .rundir import config_values, explicit_flags, given_flags, saved_config
from .trainer import AMP_MODES, LR_SCHEDULES, TrainConfig, Trainer

# 1,437 8×8 training images: a small network, few epochs, no cutout (nothing to cut out of 8×8).
DIGITS_PRESET = {"epochs": 10, "batch_size": 96, "init_channels": 16, "layers": 8, "cutout": 0, "report_freq": 0}
# DARTS's ImageNet (mobile setting) training; the digits preset wins where both set a value.
IMAGENET_PRESET = {"epochs": 250, "batch_size": 128, "init_channels": 48, "layers": 14, "learning_rate": 0.1,
                   "lr_schedule": "step", "weight_decay": 3e-5, "drop_path_prob": 0.0, "label_smoothing": 0.1,
                   "image_size": 224, "cutout": 0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ndarts.train", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    d = TrainConfig()
    g = p.add_argument_group("architecture")
    g.add_argument("--genotype", default=d.genotype,
                   help="a zoo name (python -m ndarts.genotype list), a search's run directory or its genotype.json, "
                        "a JSON string, DARTS's printed Genotype(...) text (as a string or in a file), or "
                        "FILE:NAME of a DARTS genotypes.py")
    g.add_argument("--steps", type=int, default=d.steps, help="intermediate nodes per cell the genotype must have")
    g.add_argument("--network", default=d.network, choices=NETWORKS,
                   help="cifar: DARTS's CIFAR network; imagenet: DARTS's ImageNet mobile network and protocol")
    g.add_argument("--init-channels", type=int, default=None, help=f"default {d.init_channels} (16 on digits, 48 imagenet)")
    g.add_argument("--layers", type=int, default=None, help=f"cells; default {d.layers} (8 on digits, 14 imagenet)")
    g.add_argument("--no-auxiliary", dest="auxiliary", action="store_false",
                   help="leave out the auxiliary tower (default: with it, weight --auxiliary-weight)")
    g.add_argument("--auxiliary-weight", type=float, default=d.auxiliary_weight)
    g.add_argument("--drop-path-prob", type=float, default=None,
                   help=f"final drop-path probability (ramped linearly from 0); default {d.drop_path_prob}")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=DATASETS,
                   help="digits is embedded (no network, no files)")
    g.add_argument("--data", default=None, help="dataset directory (cifar10/cifar100/imagenet16-120/imagefolder)")
    g.add_argument("--download", action="store_true", help="download CIFAR into --data (opt-in)")
    g.add_argument("--image-size", type=int, default=None,
                   help="imagefolder: resize to this size (default 32); imagenet: crop to it (default 224)")
    g.add_argument("--cutout", type=int, default=None,
                   help=f"cutout length, 0 = off; default {d.cutout} (0 on digits and imagenet)")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random crop / flip (default: both, except on digits)")
    g.add_argument("--workers", type=int, default=d.workers,
                   help="data loader processes (imagefolder; CIFAR and digits batches are made on the device)")

    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=None, help=f"default {d.epochs} (10 on digits, 250 imagenet)")
    g.add_argument("--batch-size", type=int, default=None, help=f"per process; default {d.batch_size} (128 imagenet)")
    g.add_argument("--learning-rate", type=float, default=None, help=f"default {d.learning_rate} (0.1 imagenet)")
    g.add_argument("--learning-rate-min", type=float, default=d.learning_rate_min, help="cosine schedule floor")
    g.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES, help="default cosine (step imagenet)")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="step schedule: decay per epoch")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=None, help=f"default {d.weight_decay} (3e-5 imagenet)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip)
    g.add_argument("--label-smoothing", type=float, default=None, help="default 0 (0.1 imagenet)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="quick runs: at most N steps per epoch, and each epoch's test on at most N batches "
                        "(its test accuracy, and so best.pt's choice, then cover only those)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--deterministic", action="store_true",
                   help="bitwise-repeatable weights and accuracies from the same seed on CUDA too: cuDNN's and "
                        "PyTorch's deterministic algorithms only (process-wide; may be slower); a CPU run is "
                        "repeatable without it")
    g.add_argument("--out", default=None, help="run directory (default runs/train-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", default=d.amp, choices=AMP_MODES, help="mixed precision (fp16 uses a GradScaler; CUDA only)")
    g.add_argument("--report-freq", type=int, default=None, help="log a progress line every N steps (0: off)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest for the tiny digits network "
                        "on a busy machine)")
    g.add_argument("--tensorboard", action="store_true", help="write TensorBoard scalars into DIR/tensorboard")
    return p


def config_from_args(args, given=None) -> TrainConfig:
    presets = ([DIGITS_PRESET] if args.dataset == "digits" else []) + \
        ([IMAGENET_PRESET] if args.network == "imagenet" else [])
    values = config_values(args, presets, "train", drop=("threads",), given=given)
    if args.resume and given is not None and "genotype" not in given:
        values["genotype_dict"] = recorded_cell(args.out)
    cfg = TrainConfig(**values)
    cfg.validate()
    require_train_flags(cfg, given_flags(build_parser(), args, given))
    require_dataset_flags(cfg.dataset, args.data, args.image_size, args.download)
    return cfg


def recorded_cell(out) -> dict | None:
    """The cell a run in `out` trains (its config.json, else its checkpoint), for a --resume that does
    not give --genotype again: the run goes on with it, not with what its --genotype file holds now
    (it may have moved, been deleted or rewritten since)."""
    return (saved_config(out) or {}).get("genotype_dict")


@cli_errors
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, explicit_flags(parser, argv))
    if args.threads is not None:
        require_ints(args, 1, "threads")
        import torch

        torch.set_num_threads(args.threads)
    from .distributed import distributed_context

    with distributed_context(cfg.device) as dist:
        trainer = Trainer(cfg, dist=dist)
        trainer.fit()
        if trainer.rank0:
            print(closing_line(trainer))


def closing_line(trainer) -> str:
    """The run's result: the last epoch's test accuracy first, the figure DARTS reports; the best
    epoch's second, marked so, since the test split itself chose it (an optimistic figure)."""
    final = "n/a" if trainer.final_acc is None else f"{trainer.final_acc:.4f}"
    if trainer.best_acc is None:
        best = "no test split"
    else:
        at = "" if trainer.best_epoch is None else f" at epoch {trainer.best_epoch}"
        best = f"best {trainer.best_acc:.4f}{at}"
    return f"final test accuracy {final} ({best}); run directory: {trainer.cfg.out}"


if __name__ == "__main__":
    main()

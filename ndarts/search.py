"""``python -m ndarts.search``: the NoisyDARTS architecture search.

Defaults are the official NoisyDARTS search (7 ops without `none`, Gaussian noise λ = 0.2 on the
skip connection, 50 epochs, batch 128, SGD 0.05 → 0.001, Adam 3e-4 for α, first order).
Original DARTS: ``--space darts --noise none --batch-size 64 --learning-rate 0.025 --order second``.
On the embedded default dataset (``--dataset digits``, no network, no files) the network and the
schedule are scaled down so the bare command finishes in minutes on a laptop CPU; ``--space
nas-bench-201`` takes NAS-Bench-201's own DARTS search protocol for w's optimizer (NB201_PRESET).
Every flag given explicitly overrides a preset; with both, digits' scale-down comes first.
"""
from __future__ import annotations

import argparse

from .cli_options import HelpFormatter, require_dataset_flags
from .config_checks import require_noise_flags, require_space_flags
from .data import DATASETS
from .errors import cli_errors
from .noise import MIXTURES, NOISE_KINDS, POSITIONS
from .operations import NAS_BENCH_201, SPACES
from .rundir import config_values, explicit_flags, given_flags, saved_config
from .searcher import TRITON_CONVS, SearchConfig, Searcher

# The embedded dataset is 1,437 8×8 training images: a small network and few epochs suffice.
DIGITS_PRESET = {"epochs": 10, "batch_size": 64, "init_channels": 8, "layers": 5, "report_freq": 5}
# NAS-Bench-201's DARTS search protocol (configs/nas-benchmark/algos/DARTS.config in D-X-Y/AutoDL-Projects):
# SGD 0.025 → 0.001 cosine, momentum 0.9, Nesterov, wd 5e-4, batch 64, 50 epochs, clip 5; α: Adam 3e-4,
# betas (0.5, 0.999), wd 1e-3. What differs from the NoisyDARTS defaults (SearchConfig) is here.
NB201_PRESET = {"learning_rate": 0.025, "weight_decay": 5e-4, "nesterov": True, "batch_size": 64}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ndarts.search", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    d = SearchConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=DATASETS,
                   help="digits is embedded (no network, no files)")
    g.add_argument("--data", default=None, help="dataset directory (cifar10/cifar100/imagenet16-120/imagefolder)")
    g.add_argument("--download", action="store_true", help="download CIFAR into --data (opt-in)")
    g.add_argument("--image-size", type=int, default=None,
                   help=f"imagefolder: resize to this size (default {d.image_size}; the other datasets' sizes are fixed)")
    g.add_argument("--workers", type=int, default=d.workers,
                   help="data loader processes (imagefolder; CIFAR and digits batches are made on the device)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                   help="batch of the α half's evaluation each epoch (eval-mode BatchNorm: the same math at any size)")
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="evaluate the α half every N epochs and after the last (1: each epoch, as DARTS; "
                        "the evaluation only logs, it steers nothing)")
    g.add_argument("--train-portion", type=float, default=d.train_portion, help="share of the training set for w")

    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=None, help=f"default {d.epochs} ({DIGITS_PRESET['epochs']} on digits)")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"default {d.batch_size} ({DIGITS_PRESET['batch_size']} on digits, "
                        f"{NB201_PRESET['batch_size']} on nas-bench-201)")
    g.add_argument("--learning-rate", type=float, default=None,
                   help=f"SGD learning rate of the weights w (default: {d.learning_rate}; "
                        f"{NB201_PRESET['learning_rate']} on nas-bench-201)")
    g.add_argument("--learning-rate-min", type=float, default=d.learning_rate_min,
                   help="floor of w's cosine learning-rate schedule")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum of w")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum in w's SGD (default: off; on with --space nas-bench-201, as in its "
                        "protocol)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help=f"SGD weight decay of w (default: {d.weight_decay}; "
                        f"{NB201_PRESET['weight_decay']} on nas-bench-201)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip w's gradient norm to this")
    g.add_argument("--arch-learning-rate", type=float, default=d.arch_learning_rate, help="Adam learning rate of α")
    g.add_argument("--arch-weight-decay", type=float, default=d.arch_weight_decay, help="Adam weight decay of α")
    g.add_argument("--order", default=d.order, choices=["first", "second"],
                   help="α's gradient: first order, or DARTS's second-order approximation")
    g.add_argument("--max-steps", type=int, default=None,
                   help="quick runs: at most N steps per epoch, and the α half's evaluation on at most N "
                        "batches (its val loss and accuracy then cover only those)")

    g = p.add_argument_group("search space")
    g.add_argument("--space", default=d.space, choices=sorted(SPACES),
                   help="noisydarts: 7 ops; darts: 8 with none; nas-bench-201: NAS-Bench-201's cell (5 ops, 6 "
                        "edges) in its network (--init-channels C, --cells-per-stage N; no --layers), with the "
                        "benchmark's DARTS protocol as its preset: SGD 0.025 -> 0.001, momentum 0.9, Nesterov, "
                        "weight decay 5e-4, batch 64, 50 epochs (on digits: the digits preset's epochs and "
                        "network); explicit flags win")
    g.add_argument("--cells-per-stage", type=int, default=None,
                   help=f"nas-bench-201: cells per stage of its 3 (default {d.cells_per_stage}, the benchmark's)")
    g.add_argument("--init-channels", type=int, default=None, help=f"default {d.init_channels} ({DIGITS_PRESET['init_channels']} on digits)")
    g.add_argument("--layers", type=int, default=None, help=f"default {d.layers} ({DIGITS_PRESET['layers']} on digits)")
    g.add_argument("--arch-activation", default=d.arch_activation, choices=["softmax", "sigmoid"],
                   help="f(α): softmax (DARTS) or sigmoid (FairDARTS)")

    g = p.add_argument_group("noise (NoisyDARTS)")
    g.add_argument("--noise", default=d.noise, choices=NOISE_KINDS, help="none = plain DARTS")
    g.add_argument("--noise-lambda", type=float, default=d.noise_lambda, help="λ: σ = λ·std(x)")
    g.add_argument("--noise-mean", type=float, default=None, help="μ (default 0 additive, 1 multiplicative)")
    g.add_argument("--noise-mixture", default=d.noise_mixture, choices=MIXTURES,
                   help="added to the skip's output, or multiplying it")
    g.add_argument("--noise-decay", action="store_true", help="cosine decay of the noise over the search")
    g.add_argument("--noise-position", default=d.noise_position, choices=POSITIONS,
                   help="reduction edges: noise on FactorizedReduce's output (official) or input (paper)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds the weights, α, the noise and the batches (the w/α split of the data is "
                        "fixed, as DARTS's: every seed searches on the same halves)")
    g.add_argument("--deterministic", action="store_true",
                   help="bitwise-repeatable α and genotype from the same seed on CUDA too: cuDNN's and "
                        "PyTorch's deterministic algorithms only (process-wide; may be slower); a CPU run is "
                        "repeatable without it")
    g.add_argument("--out", default=None, help="run directory (default runs/search-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--fused", action="store_true", help="fused mixed ops (Triton kernels on CUDA)")
    g.add_argument("--cuda-graph", action="store_true",
                   help="replay the whole search step (α + w) as one CUDA graph, and the evaluation's batches as another (CUDA only, no DDP)")
    g.add_argument("--batch-edge-convs", action=argparse.BooleanOptionalAction, default=None,
                   help="run the sep/dil convs of all edges leaving a node as one batched conv stack "
                        "(default on: same math, ~3x fewer conv launches; --no-batch-edge-convs: per edge)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="activations in channels_last (NHWC) layout; default: on a CPU (1.3-3x faster "
                        "convolutions there), NCHW where the Triton kernels run")
    g.add_argument("--amp", default=None, choices=["none", "bf16"],
                   help="bf16: run the network under bf16 autocast (α, its softmax, the mixed sums' "
                        "accumulation and the logits stay fp32); default none")
    g.add_argument("--triton-convs", default=None, choices=[*TRITON_CONVS, "auto"],
                   help="the cells' depthwise and/or 1x1 convolutions on ndarts' Triton kernels where the "
                        "search kernels run (inside a --cuda-graph capture, or with --backend triton); "
                        "depthwise-wgrad: only the depthwise weight gradient; separable: each depthwise + 1x1 "
                        "pair of the batched conv stacks on one fused kernel; auto: time none, depthwise-wgrad "
                        "and separable as this run's step on this device first and keep the fastest (logged); "
                        "opt-in, not yet timed on a GPU")
    g.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                   help="let cuDNN time its algorithms for each conv shape on CUDA, as DARTS's code does "
                        "(may speed the convolutions up; results not bitwise repeatable run to run); default: torch's (off)")
    g.add_argument("--backend", default=None, choices=["auto", "triton", "torch"],
                   help="fused op backend (default: NDARTS_BACKEND or auto)")
    g.add_argument("--report-freq", type=int, default=None, help="log a progress line every N steps")
    g.add_argument("--tensorboard", action="store_true", help="TensorBoard scalars per epoch in OUT/tensorboard")
    g.add_argument("--hessian-every", type=int, default=0,
                   help="log the dominant Hessian eigenvalue of L_val w.r.t. α every N epochs, on the epoch's "
                        "line and in metrics.jsonl (its time counts in the epoch's; 0: off)")
    return p


def config_from_args(args, given=None) -> SearchConfig:
    """The run's settings from the parsed flags; given: the flags given explicitly (explicit_flags),
    for --resume (rundir.config_values)."""
    values = config_values(args, [], "search", given=given)
    if not _continues_recorded_run(args, given):
        for preset in search_presets(values["dataset"], values["space"]):
            for k, v in preset.items():
                values.setdefault(k, v)
    cfg = SearchConfig(**values)
    cfg.validate()
    given = given_flags(build_parser(), args, given)
    require_space_flags(cfg.space, given)
    require_noise_flags(cfg.noise, given)
    require_dataset_flags(cfg.dataset, args.data, args.image_size, args.download)
    return cfg


def search_presets(dataset: str, space: str) -> list[dict]:
    """The presets of a run on `dataset` and `space`, the first winning where both set a value:
    digits' scale-down (its epochs, batch, network) before the nas-bench-201 space's protocol, whose
    optimizer settings it leaves alone, so that the bare digits command stays a minutes-long run."""
    return ([DIGITS_PRESET] if dataset == "digits" else []) + ([NB201_PRESET] if space == NAS_BENCH_201 else [])


def _continues_recorded_run(args, given) -> bool:
    """A --resume that takes the run's settings from its config.json (or checkpoint): no preset
    then, as rundir.config_values gives every setting not given now from the run; one the run has
    no record of (--nesterov, newer than it) keeps SearchConfig's default, what the run ran with."""
    return bool(args.resume and given is not None and args.out is not None and saved_config(args.out))


@cli_errors
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, explicit_flags(parser, argv))
    from .distributed import distributed_context

    with distributed_context(cfg.device) as dist:
        searcher = Searcher(cfg, dist=dist)
        searcher.run_search()
        if searcher.rank0:
            print(f"run directory: {cfg.out}")


if __name__ == "__main__":
    main()

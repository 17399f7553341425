"""``python -m ndarts.evaluate --checkpoint PATH``: test loss and top-1/top-5 accuracy of a trained network.

The network is rebuilt from what the checkpoint of ``ndarts.train`` stores (its configuration
as a JSON string and the genotype as a dict, so loading needs no code execution); the dataset
is the one it was trained on, read from ``--data`` if given (else the stored path), with the test
transform of its protocol (an ImageNet-network run's image folder: resize and centre crop).
"""
from __future__ import annotations

import argparse
import json

from .checkpoint import CheckpointError, first_sentence, load_checkpoint, require_keys
from .cli_options import HelpFormatter, require_dataset_flags
from .config_checks import require_amp_device, require_ints
from .data import BatchStream, load_dataset
from .errors import NdartsError, cli_errors
from .eval_model import build_network
from .genotype import Genotype, GenotypeError
from .rundir import own_data_problem
from .searcher import resolve_device
from .trainer import AMP_MODES, CHECKPOINT_KIND, evaluate_model, image_transforms_for


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ndarts.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a training run")
    p.add_argument("--data", default=None, help="dataset directory (overrides the one stored in the checkpoint)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=AMP_MODES, help="mixed precision (fp16: CUDA only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def load_trained_network(path, device="cpu"):
    """(model in eval mode, config dict, state) from a checkpoint of ndarts.train."""
    state = load_checkpoint(path, map_location=device)
    if state.get("kind") == "ndarts-search":
        raise CheckpointError(f"{path} is a search checkpoint; evaluate takes a checkpoint of ndarts.train "
                              "(train the searched genotype first: python -m ndarts.train --genotype RUN/genotype.json)")
    require_keys(state, ("kind", "epoch", "config", "genotype", "model", "num_classes", "in_channels"), path)
    if state["kind"] != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is a {state['kind']!r} checkpoint, not a training checkpoint")
    try:
        cfg = json.loads(state["config"])
        if not isinstance(cfg, dict) or not isinstance(cfg["dataset"], str):
            raise TypeError(f"the configuration is a {type(cfg).__name__} without a dataset name")
        genotype = Genotype.from_dict(state["genotype"])
        model = build_network(cfg["network"], genotype, cfg["init_channels"], int(state["num_classes"]),
                              cfg["layers"], cfg["auxiliary"], in_channels=int(state["in_channels"]))
    except (TypeError, KeyError, ValueError, json.JSONDecodeError, GenotypeError) as e:
        raise CheckpointError(f"{path} holds an unusable configuration or genotype: {type(e).__name__}: {e}") from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the network it describes: "
                              f"{first_sentence(e, 300)}") from None
    return model.to(device).eval(), cfg, state


@cli_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    require_ints(args, 1, "batch_size")
    require_ints(args, 0, "workers")
    device = resolve_device(args.device)
    require_amp_device(args.amp, device)
    model, cfg, state = load_trained_network(args.checkpoint, device)
    if cfg.get("own_data"):  # its images are not ones ndarts loads: the digits default would stand in for them
        raise NdartsError(f"{own_data_problem(cfg, args.checkpoint)}: evaluate it in Python on its test split "
                          "(ndarts.evaluate.load_trained_network, ndarts.trainer.evaluate_model)")
    require_dataset_flags(cfg["dataset"], data=args.data, dataset_flag=False)
    spec = load_dataset(cfg["dataset"], args.data if args.data is not None else cfg.get("data"),
                        download=False, image_size=cfg.get("image_size", 32), augment=False,
                        image_transforms=image_transforms_for(cfg["network"]))
    if spec.test is None:
        raise NdartsError(f"the {cfg['dataset']} dataset at {args.data or cfg.get('data')} has no test split "
                          "(imagefolder: add DIR/val or DIR/test)")
    if (spec.num_classes, spec.in_channels) != (int(state["num_classes"]), int(state["in_channels"])):
        raise NdartsError(f"the dataset has {spec.num_classes} classes and {spec.in_channels} channels; the "
                          f"network was trained for {state['num_classes']} and {state['in_channels']}")
    stream = BatchStream(spec.test, range(len(spec.test)), args.batch_size, seed=0, stream=2,
                         workers=args.workers, shuffle=False, device=device)
    loss, acc, top5 = evaluate_model(model, stream, device, args.amp)
    result = {"checkpoint": str(args.checkpoint), "epoch": int(state["epoch"]), "dataset": cfg["dataset"],
              "test_images": len(spec.test), "test_loss": loss, "test_acc": acc, "test_acc_top5": top5}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.checkpoint} (epoch {result['epoch']}, {cfg['genotype']}): {cfg['dataset']} test loss "
              f"{loss:.4f} accuracy {acc:.4f} ({acc * 100:.2f} %, error {100 - acc * 100:.2f} %), top-5 "
              f"{top5:.4f} ({top5 * 100:.2f} %, error {100 - top5 * 100:.2f} %) on {len(spec.test)} images")
    return result


if __name__ == "__main__":
    main()

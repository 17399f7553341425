"""What the command-line tools share about their options: the help layout, and the refusal of
data flags their dataset would ignore."""
from __future__ import annotations

import argparse
import copy

from .errors import NdartsError

# the datasets read from --data DIR (digits is embedded), and those --download can fetch
DIRECTORY_DATASETS = ("cifar10", "cifar100", "imagenet16-120", "imagefolder")
DOWNLOADABLE_DATASETS = ("cifar10", "cifar100")
FIXED_IMAGE_SIZES = {"digits": 8, "cifar10": 32, "cifar100": 32, "imagenet16-120": 16}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after an option's help, but not where it would mislead or repeat:
    flags that take no value (``--no-augment``'s default True is the augmentation's, not the
    flag's), options whose default is None (set by a preset or derived), and help texts that
    state their default themselves. An option without help text still shows its default: argparse
    expands (and so adds the default to) only a non-empty help."""

    def _format_action(self, action):
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if not _shows_default(action) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _shows_default(action) -> bool:
    """A default worth showing: the option takes a value and its default is the run's (not None)."""
    return action.nargs != 0 and action.default is not None and action.default is not argparse.SUPPRESS


def require_dataset_flags(dataset: str, data=None, image_size=None, download: bool = False,
                          dataset_flag: bool = True) -> None:
    """Refuses the data flags given (not None / True) that `dataset` would silently ignore: --data
    with the embedded digits (a forgotten --dataset cifar10 would otherwise run on digits),
    --image-size where the images are not resized (all but imagefolder), --download where there
    is nothing to download (all but CIFAR). dataset_flag: the command has --dataset (search,
    train); False where the dataset is the checkpoint's (evaluate), and the advice says so."""
    if data is not None and dataset not in DIRECTORY_DATASETS:
        if not dataset_flag:
            raise NdartsError(f"--data is for a network trained on {'/'.join(DIRECTORY_DATASETS)}; this one was "
                              f"trained on {dataset}, which is embedded (no files): leave --data out")
        raise NdartsError(f"--data is for --dataset {'/'.join(DIRECTORY_DATASETS)}; {dataset} is embedded "
                          "(no files): pass --dataset NAME with --data, or leave --data out")
    if image_size is not None and dataset != "imagefolder":
        size = FIXED_IMAGE_SIZES[dataset]
        raise NdartsError(f"--image-size is for --dataset imagefolder (resized as read); {dataset}'s images are "
                          f"{size}x{size}: leave --image-size out")
    if download and dataset not in DOWNLOADABLE_DATASETS:
        raise NdartsError(f"--download fetches --dataset {'/'.join(DOWNLOADABLE_DATASETS)} only; {dataset} "
                          + ("is embedded: leave --download out" if dataset == "digits"
                             else "must already be in --data: leave --download out"))

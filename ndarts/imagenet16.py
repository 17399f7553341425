"""ImageNet16-120: NAS-Bench-201's third dataset (``--dataset imagenet16-120 --data DIR``).

The downsampled ImageNet of Chrabaszcz, Loshchilov & Hutter (2017) at 16×16 pixels, as NAS-Bench-201
uses it: DIR holds the pickled batches ``train_data_batch_1`` … ``train_data_batch_10`` and ``val_data``
(each a dict with ``data``, uint8 rows of 3·16·16 values, R plane then G then B, and ``labels``,
1 … 1000), and only the images of classes 1 … 120 are kept, labelled 0 … 119. Augmentation as
NAS-Bench-201 trains it: a zero-padded random 16×16 crop (padding 2) and a horizontal flip.
The files are the user's download (opt-in); nothing here fetches them.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import NdartsError
from .image_tensors import Augmentation, ImageTensors

NAME = "imagenet16-120"
SIZE = 16
CLASSES = 120
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILE = "val_data"
# NAS-Bench-201's normalisation of ImageNet16 (per channel, of the 0..1 pixel values)
MEAN = tuple(v / 255 for v in (122.68, 116.66, 104.01))
STD = tuple(v / 255 for v in (63.22, 61.26, 65.09))


def _read_batches(root: Path, names) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 16, 16] and 0-based labels [N] of the files `names`, classes 1..120 only."""
    images, labels = [], []
    for name in names:
        path = root / name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8)
            target = np.asarray(entry["labels"], dtype=np.int64)
        except OSError as e:
            raise NdartsError(f"cannot read {path}: {e.strerror or e}") from None
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise NdartsError(f"{path} is not an ImageNet16 batch ({type(e).__name__}: {e}); download it again") from None
        if data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE or target.shape != (data.shape[0],):
            raise NdartsError(f"{path} is not an ImageNet16 batch: data {data.shape}, labels {target.shape} "
                              f"(want [N, {3 * SIZE * SIZE}] and [N])")
        keep = (target >= 1) & (target <= CLASSES)
        images.append(torch.from_numpy(data[keep]).view(-1, 3, SIZE, SIZE))
        labels.append(torch.from_numpy(target[keep] - 1))
    return torch.cat(images), torch.cat(labels)


def load_imagenet16(root, augment: bool = True, cutout: int = 0):
    """The DataSpec of ImageNet16-120 under `root` (train: the 10 training batches; test: val_data)."""
    from .data import DataSpec

    if root is None:
        raise NdartsError(f"{NAME} needs --data DIR holding ImageNet16's {TRAIN_FILES[0]} … {TRAIN_FILES[-1]} "
                          f"and {VAL_FILE} (a download of its own; see the README)")
    root = Path(root).expanduser()
    missing = [n for n in (*TRAIN_FILES, VAL_FILE) if not (root / n).is_file()]
    if missing:
        raise NdartsError(f"{root} lacks ImageNet16's {', '.join(missing[:4])}"
                          + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                          + f": {NAME} needs {TRAIN_FILES[0]} … {TRAIN_FILES[-1]} and {VAL_FILE}")
    train_aug = Augmentation(padding=2, flip=True, cutout=cutout) if augment else Augmentation(cutout=cutout)
    splits = []
    for names, aug in ((TRAIN_FILES, train_aug), ((VAL_FILE,), Augmentation())):
        images, labels = _read_batches(root, names)
        if len(labels) == 0:
            raise NdartsError(f"{root}/{names[0]}…: no image of classes 1..{CLASSES}")
        splits.append(ImageTensors(images, labels, MEAN, STD, aug))
    return DataSpec(NAME, splits[0], splits[1], CLASSES, 3, SIZE)

"""Datasets and deterministic, resumable batch streams.

Datasets: ``digits`` (the embedded default: scikit-learn's 1,797 real 8×8 handwritten digits,
shipped inside the installed package, no network, no files), ``cifar10`` / ``cifar100``
(torchvision; ``--download`` is opt-in) and ``imagefolder`` (``DIR/train/<class>/…`` and an
optional ``DIR/val`` or ``DIR/test``, resized to ``--image-size``).

Batch order never comes from a global RNG: pass p of stream s draws its permutation from a
generator seeded with (seed, s, p). So a stream's position is two integers (pass, step), saved in
checkpoints, and a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import NdartsError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class InMemoryDataset(Dataset):
    """Images [N, C, H, W] float and labels [N] long, already normalised."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@dataclass
class DataSpec:
    name: str
    train: Dataset
    test: Dataset | None
    num_classes: int
    in_channels: int
    image_size: int


# ----------------------------------------------------------------------------- datasets
def _digits(test_fraction=0.2) -> DataSpec:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise NdartsError("the embedded 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    x = (x - x.mean()) / x.std()
    # a fixed split (seed 0) so that every run and every seed sees the same test set
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return DataSpec("digits", InMemoryDataset(x[train], y[train]), InMemoryDataset(x[test], y[test]), 10, 1, 8)


def _cifar(name, root, download, augment, cutout=0) -> DataSpec:
    import torchvision
    import torchvision.transforms as T

    if root is None:
        raise NdartsError(f"{name} needs --data DIR (add --download to fetch it there)")
    root = Path(root)
    if not download and not root.is_dir():
        raise NdartsError(f"dataset directory {root} does not exist; pass the folder that holds {name} "
                          "to --data, or add --download to fetch it")
    norm = T.Normalize(CIFAR_MEAN[name], CIFAR_STD[name])
    train_tf = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    train_tf = T.Compose(train_tf + [T.ToTensor(), norm] + ([Cutout(cutout)] if cutout else []))
    test_tf = T.Compose([T.ToTensor(), norm])
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=download, transform=train_tf)
        test = cls(str(root), train=False, download=download, transform=test_tf)
    except RuntimeError as e:
        raise NdartsError(f"{name} not found or corrupt under {root} ({e}); add --download to fetch it") from None
    except OSError as e:
        raise NdartsError(f"cannot read {name} under {root}: {e}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        # files that pass the checksum but do not parse (or were swapped after it)
        raise NdartsError(f"{name} under {root} is corrupt ({type(e).__name__}: {e}); delete it and "
                          "add --download to fetch it again") from None
    return DataSpec(name, train, test, 100 if name == "cifar100" else 10, 3, 32)


def _imagefolder(root, image_size, augment, cutout=0) -> DataSpec:
    import torchvision
    import torchvision.transforms as T

    if root is None:
        raise NdartsError("imagefolder needs --data DIR holding DIR/train/<class>/*.png (and optionally DIR/val)")
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise NdartsError(f"{train_dir} does not exist: an imagefolder dataset needs DIR/train/<class>/<images>")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    aug = [T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()] if augment else []
    train_tf = T.Compose([T.Resize((image_size, image_size))] + aug + [T.ToTensor(), norm]
                         + ([Cutout(cutout)] if cutout else []))
    test_tf = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), norm])
    try:
        train = torchvision.datasets.ImageFolder(str(train_dir), transform=train_tf)
        test = None
        for split in ("val", "test"):
            if (root / split).is_dir():
                test = torchvision.datasets.ImageFolder(str(root / split), transform=test_tf)
                break
    except (FileNotFoundError, OSError) as e:
        raise NdartsError(f"cannot read the image folder {root}: {e}") from None
    return DataSpec("imagefolder", train, test, len(train.classes), 3, image_size)


def load_dataset(name: str, root=None, download=False, image_size=32, augment=True, cutout=0) -> DataSpec:
    if name == "digits":
        return _digits()
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, download, augment, cutout)
    if name == "imagefolder":
        return _imagefolder(root, image_size, augment, cutout)
    raise NdartsError(f"unknown dataset {name!r}; choose one of {DATASETS}")


class Cutout:
    """Zeroes one random length×length square of a [C, H, W] image (DARTS's cutout)."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, img):
        h, w = img.shape[-2:]
        cy = int(torch.randint(h, (1,)))
        cx = int(torch.randint(w, (1,)))
        y0, y1 = max(0, cy - self.length // 2), min(h, cy + self.length // 2)
        x0, x1 = max(0, cx - self.length // 2), min(w, cx + self.length // 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0.0
        return img


def split_halves(n: int, seed: int, portion: float = 0.5) -> tuple[list[int], list[int]]:
    """The training set split into the w half and the α half (a seeded permutation)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(n * portion)
    if cut < 1 or cut >= n:
        raise NdartsError(f"cannot split {n} training images into two non-empty halves")
    return sorted(perm[:cut]), sorted(perm[cut:])


# ----------------------------------------------------------------------------- batch streams
class _ListSampler:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class BatchStream:
    """Batches over a subset of a dataset; pass p's order is a pure function of (seed, stream, p)."""

    def __init__(self, dataset: Dataset, indices, batch_size: int, seed: int, stream: int,
                 workers: int = 0, shuffle: bool = True, drop_last: bool = False):
        if batch_size < 1:
            raise NdartsError(f"batch size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        if len(self.indices) == 0:
            raise NdartsError("a data stream got no samples")
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        self.workers, self.shuffle, self.drop_last = workers, shuffle, drop_last

    def __len__(self):
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, pass_idx: int) -> list[list[int]]:
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream * 10_007 + pass_idx)
            idx = idx[torch.randperm(len(idx), generator=g)]
        out = [idx[i:i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        if not out:
            raise NdartsError(f"batch size {self.batch_size} is larger than the {len(idx)} samples of a stream "
                              "(with drop_last): lower --batch-size")
        return out

    def iterate(self, pass_idx: int, start: int = 0):
        """Yields (x, y) for pass `pass_idx` from batch `start` on."""
        batches = self.batches(pass_idx)[start:]
        if isinstance(self.dataset, InMemoryDataset):
            for b in batches:
                b = torch.as_tensor(b)
                yield self.dataset.x[b], self.dataset.y[b]
            return
        loader = DataLoader(self.dataset, batch_sampler=_ListSampler(batches), num_workers=self.workers,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False)
        yield from loader


class EndlessStream:
    """An endless iterator over a BatchStream (the α half): one shared iterator across epochs, never a
    fresh one per step; its position (pass, step) is checkpointed."""

    def __init__(self, stream: BatchStream):
        self.stream = stream
        self.pass_idx, self.step = 0, 0
        self._it = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._it is None:
                self._it = self.stream.iterate(self.pass_idx, self.step)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.pass_idx, self.step = self.pass_idx + 1, 0
                continue
            self.step += 1
            return batch

    def state_dict(self) -> dict:
        return {"pass": self.pass_idx, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.pass_idx, self.step = int(state["pass"]), int(state["step"])
        self._it = None

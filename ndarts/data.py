"""Datasets and deterministic, resumable batch streams.

Datasets: ``digits`` (the embedded default: scikit-learn's 1,797 real 8×8 handwritten digits,
shipped inside the installed package, no network, no files), ``cifar10`` / ``cifar100``
(torchvision; ``--download`` is opt-in), ``imagenet16-120`` (NAS-Bench-201's ImageNet16-120, from
its pickled batches: ndarts.imagenet16) and ``imagefolder`` (``DIR/train/<class>/…`` and an
optional ``DIR/val`` or ``DIR/test``, resized to ``--image-size``, or with the ImageNet network cropped as
DARTS's train_imagenet.py crops them: folder_transforms; the test folder's images take the training
folder's label of their class, even where the test folder lacks some classes).

Batch order never comes from a global RNG: pass p of stream s draws its permutation from a
generator seeded with (seed, s, p). So a stream's position is two integers (pass, step), saved in
checkpoints, and a resumed run sees exactly the batches an uninterrupted one would. CIFAR and
digits live in memory and their batches are made on the device the stream is given (CIFAR's
augmentation too, drawn per pass the same way: ndarts.image_tensors); an image folder is read by
a DataLoader with torchvision's transforms, each image's with torch's RNG seeded by a seed drawn for
it the same way (_SeededItems): the same augmented images for any --workers and after a resume.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import NdartsError
from .image_tensors import Augmentation, ImageTensors, canonical_device

DATASETS = ("digits", "cifar10", "cifar100", "imagenet16-120", "imagefolder")
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# an image folder's transforms: "resize" squashes every image to size×size (small folders, the CIFAR
# network); "imagenet" crops as DARTS's train_imagenet.py does (the ImageNet protocol)
IMAGE_TRANSFORMS = ("resize", "imagenet")


class InMemoryDataset(Dataset):
    """Images [N, C, H, W] float and labels [N] long, already normalised; batches made on the
    device as ImageTensors' are (BatchStream), without augmentation."""

    augmentation = Augmentation()

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"InMemoryDataset takes two tensors (images, labels), got {type(x).__name__} and "
                            f"{type(y).__name__}")
        if x.dim() != 4:
            raise ValueError(f"InMemoryDataset images must be [N, C, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"InMemoryDataset images must be floating point (normalised), got {x.dtype}")
        if y.dim() != 1:
            raise ValueError(f"InMemoryDataset labels must be [N] class indices, got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"InMemoryDataset labels must be integer class indices, got {y.dtype}")
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"InMemoryDataset needs one label per image and at least one image, got {len(x)} "
                             f"images and {len(y)} labels")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("InMemoryDataset images hold NaN or Inf values")
        self.x, self.y = x, y.long()
        self._copies = {}  # device → (x, y) there

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def on(self, device) -> tuple:
        """(x, y) on `device`, copied there once and kept."""
        device = canonical_device(device)
        if device not in self._copies:
            self._copies[device] = (self.x.to(device), self.y.to(device))
        return self._copies[device]

    def batch(self, indices: torch.Tensor, params=None):
        """(x, y) of images `indices`, on the indices' device (params: unused, nothing is random)."""
        x, y = self.on(indices.device)
        return x[indices], y[indices]


@dataclass
class DataSpec:
    name: str
    train: Dataset
    test: Dataset | None
    num_classes: int
    in_channels: int
    image_size: int

    def __post_init__(self):
        for name in ("num_classes", "in_channels", "image_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DataSpec {name} must be an int >= 1, got {v!r}")
        for part in ("train", "test"):
            data = getattr(self, part)
            if isinstance(data, InMemoryDataset):
                self._check_tensors(part, data)

    def _check_tensors(self, part: str, data: InMemoryDataset) -> None:
        """The images and labels of an in-memory dataset agree with what the spec says of them."""
        _, channels, height, width = data.x.shape
        if channels != self.in_channels:
            raise ValueError(f"DataSpec says in_channels={self.in_channels}, but its {part} images have "
                             f"{channels} channels (shape {tuple(data.x.shape)})")
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"DataSpec says image_size={self.image_size} (square images), but its {part} images "
                             f"are {height}×{width}")
        low, high = int(data.y.min()), int(data.y.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"DataSpec says num_classes={self.num_classes}, but its {part} labels run from "
                             f"{low} to {high}; labels must be class indices in [0, {self.num_classes})")


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

    if root is None:
        raise NdartsError(f"{name} needs --data DIR (add --download to fetch it there)")
    root = Path(root)
    if not download and not root.is_dir():
        raise NdartsError(f"dataset directory {root} does not exist; pass the folder that holds {name} "
                          "to --data, or add --download to fetch it")
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as e:
        raise NdartsError(f"{name} not found or corrupt under {root} ({e}); add --download to fetch it") from None
    except OSError as e:  # urllib's URLError too: a download that could not reach the server
        what = f"downloading {name} into {root} failed" if download else f"cannot read {name} under {root}"
        raise NdartsError(f"{what}: {e}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        # files that pass the checksum but do not parse (or were swapped after it)
        raise NdartsError(f"{name} under {root} is corrupt ({type(e).__name__}: {e}); delete it and "
                          "add --download to fetch it again") from None
    # DARTS's transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize, Cutout)
    # made by the batch from one uint8 tensor, where the batch is used (ndarts.image_tensors)
    train_aug = Augmentation(padding=4, flip=True, cutout=cutout) if augment else Augmentation(cutout=cutout)
    train, test = (ImageTensors(torch.from_numpy(s.data).permute(0, 3, 1, 2), s.targets, CIFAR_MEAN[name],
                                CIFAR_STD[name], aug) for s, aug in zip(splits, (train_aug, Augmentation())))
    return DataSpec(name, train, test, 100 if name == "cifar100" else 10, 3, 32)


def folder_transforms(image_size: int, augment: bool, cutout: int = 0, style: str = "resize") -> tuple:
    """(train, test) transforms of an image folder's PIL images. "resize": each image squashed to
    size×size, then CIFAR's padded random crop and flip, for small folders trained like CIFAR.
    "imagenet": DARTS's train_imagenet.py, whose crops its published ImageNet numbers are of: a random
    resized crop, flip and colour jitter; the test image resized to 256/224 of the size (shorter side,
    aspect kept) and centre-cropped. Cutout, where asked for, comes last (DARTS's ImageNet has none)."""
    import torchvision.transforms as T

    _require_transforms(style)
    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if style == "imagenet":
        test = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
        aug = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
               T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)]
        train = aug if augment else test
    else:
        test = [T.Resize((image_size, image_size))]
        train = test + ([T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()]
                        if augment else [])
    cut = [Cutout(cutout)] if cutout else []
    return T.Compose(train + tail + cut), T.Compose(test + tail)


def _require_transforms(style: str) -> None:
    """A misspelt style is an error, not silently the other transforms."""
    if style not in IMAGE_TRANSFORMS:
        raise NdartsError(f"unknown image transforms {style!r}; choose one of {IMAGE_TRANSFORMS}")


def _imagefolder(root, image_size, augment, cutout=0, transforms="resize") -> DataSpec:
    import torchvision

    if root is None:
        raise NdartsError("imagefolder needs --data DIR holding DIR/train/<class>/*.png (and optionally DIR/val)")
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise NdartsError(f"{train_dir} does not exist: an imagefolder dataset needs DIR/train/<class>/<images>")
    train_tf, test_tf = folder_transforms(image_size, augment, cutout, transforms)
    try:
        train = torchvision.datasets.ImageFolder(str(train_dir), transform=train_tf, loader=read_image)
        test = None
        for split in ("val", "test"):
            if (root / split).is_dir():
                test = torchvision.datasets.ImageFolder(str(root / split), transform=test_tf, loader=read_image)
                _label_as_train(test, train, root / split)
                break
    except (FileNotFoundError, OSError) as e:
        raise NdartsError(f"cannot read the image folder {root}: {e}") from None
    return DataSpec("imagefolder", train, test, len(train.classes), 3, image_size)


def read_image(path: str):
    """An image folder's file as an RGB PIL image (torchvision's default loader), or one NdartsError
    naming the file: an image that does not decode is found only when its batch is read, mid-run."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise NdartsError(f"cannot read the image {path}: not an image file (no format PIL knows); "
                          "remove it or replace it with a valid image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # truncated or broken files are OSErrors; SyntaxError: some broken headers
        raise NdartsError(f"cannot read the image {path}: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _label_as_train(test, train, test_dir) -> None:
    """Gives the test folder's images the training folder's label of their class. ImageFolder numbers
    the classes of each folder by their sorted names, so a test folder lacking a class would label its
    images with other classes' indices; a class the training folder lacks cannot be labelled at all."""
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise NdartsError(f"{test_dir} has classes the training folder lacks: {unknown[:5]}"
                          + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    if test.class_to_idx == train.class_to_idx:
        return
    to_train = {i: train.class_to_idx[c] for c, i in test.class_to_idx.items()}
    test.samples = [(path, to_train[i]) for path, i in test.samples]
    test.imgs = test.samples
    test.targets = [i for _, i in test.samples]
    test.classes, test.class_to_idx = list(train.classes), dict(train.class_to_idx)


def _require_not_a_file(root: str, name: str) -> None:
    """--data names the folder a dataset is in: a path that exists but is no directory (a file, say
    the archive or one batch of the dataset) is refused as such, not as a directory that "does not
    exist" (or, with --download, an error from making it)."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        what = "is a file, not a directory" if path.is_file() else "is not a directory"
        raise NdartsError(f"--data {root} {what}: pass the folder of the {name} dataset")


def load_dataset(name: str, root=None, download=False, image_size=32, augment=True, cutout=0,
                 image_transforms="resize") -> DataSpec:
    """root: the --data directory; a leading ~ is the home directory for every dataset, as the shell
    would have made it of ``--data ~/x`` but not of ``--data=~/x``. image_transforms: an image
    folder's (IMAGE_TRANSFORMS, folder_transforms; the other datasets have their own): "imagenet"
    under the ImageNet protocol, "resize" (the default, the search's) otherwise."""
    _require_transforms(image_transforms)
    root = None if root is None else str(Path(root).expanduser())
    if name == "digits":
        return _digits()
    if root is not None:
        _require_not_a_file(root, name)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, download, augment, cutout)
    if name == "imagenet16-120":
        from .imagenet16 import load_imagenet16

        return load_imagenet16(root, augment, cutout)
    if name == "imagefolder":
        return _imagefolder(root, image_size, augment, cutout, image_transforms)
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


class _SeededItems(Dataset):
    """dataset[index] with torch's RNG seeded by the item's own seed while it is read: the random
    transforms of an image folder (torchvision's draw from torch's RNG) are then a function of the
    item's place in its pass, whichever worker reads it and wherever a resumed pass starts, and they
    leave the process's RNG as they found it (the noise and the dropouts draw from it)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


ITEM_SEED_SALT = 700_001  # the generator of a pass's item seeds (its order: salt 0; device augmentation: 500_009)


class BatchStream:
    """Batches over a subset of a dataset; pass p's order (and augmentation) is a pure function of
    (seed, stream, p). Batches of the in-memory datasets (ImageTensors, InMemoryDataset) are made on
    `device` from a copy of the dataset kept there; the others come from a DataLoader on the host."""

    def __init__(self, dataset: Dataset, indices, batch_size: int, seed: int, stream: int,
                 workers: int = 0, shuffle: bool = True, drop_last: bool = False, device=None):
        if batch_size < 1:
            raise NdartsError(f"batch size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        if len(self.indices) == 0:
            raise NdartsError("a data stream got no samples")
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        self.workers, self.shuffle, self.drop_last = workers, shuffle, drop_last
        self.device = torch.device("cpu") if device is None else torch.device(device)

    def __len__(self):
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, pass_idx: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream * 10_007 + pass_idx + salt)

    def order(self, pass_idx: int) -> torch.Tensor:
        """The dataset indices of pass `pass_idx`, in batch order (without the dropped last batch)."""
        idx = self.indices
        if self.shuffle:
            idx = idx[torch.randperm(len(idx), generator=self._generator(pass_idx))]
        if self.drop_last:
            idx = idx[:len(idx) - len(idx) % self.batch_size]
            if len(idx) == 0:
                raise NdartsError(f"batch size {self.batch_size} is larger than the {len(self.indices)} samples "
                                  "of a stream (with drop_last): lower --batch-size")
        return idx

    def batches(self, pass_idx: int) -> list[list[int]]:
        idx = self.order(pass_idx)
        return [idx[i:i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]

    def iterate(self, pass_idx: int, start: int = 0):
        """Yields (x, y) for pass `pass_idx` from batch `start` on."""
        if isinstance(self.dataset, (ImageTensors, InMemoryDataset)):
            yield from self._device_batches(pass_idx, start)
            return
        # each item with its seed, drawn for the whole pass (ITEM_SEED_SALT); the loader's own seeds
        # from a generator of the pass, not from torch's RNG, which a resumed run would find elsewhere
        order = self.order(pass_idx).tolist()
        seeds = torch.randint(2**62, (len(order),), generator=self._generator(pass_idx, ITEM_SEED_SALT)).tolist()
        items = list(zip(order, seeds))
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        loader = DataLoader(_SeededItems(self.dataset), batch_sampler=_ListSampler(batches[start:]),
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, generator=self._generator(pass_idx, ITEM_SEED_SALT + 1))
        try:
            for x, y in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except NdartsError as e:
            raise NdartsError(_worker_message(e)) from None

    def _device_batches(self, pass_idx: int, start: int):
        """The pass's order and augmentation drawn at once, copied to the device once: a batch is then
        made there with no host work but its launches."""
        order = self.order(pass_idx)
        params = None
        if self.dataset.augmentation.random:
            # its own generator (salt): the order stays that of a stream without augmentation
            params = self.dataset.draw(len(order), self._generator(pass_idx, salt=500_009)).to(self.device)
        order = order.to(self.device)
        for i in range(start * self.batch_size, len(order), self.batch_size):
            sl = slice(i, i + self.batch_size)
            yield self.dataset.batch(order[sl], None if params is None else params[sl])


def _worker_message(e: NdartsError) -> str:
    """The message of an NdartsError (an unreadable image) raised in a DataLoader worker process: the
    loader re-raises it with the worker's whole traceback in the text, whose last line is the message."""
    text = str(e)
    if "DataLoader worker" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split("NdartsError: ", 1)[-1]


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

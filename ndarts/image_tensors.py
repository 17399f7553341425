"""An image dataset held as one uint8 tensor, its batches augmented where the tensor lives.

DARTS's CIFAR pipeline is torchvision's per-image transforms in a DataLoader: RandomCrop(32,
padding=4) (zero fill), RandomHorizontalFlip, ToTensor, Normalize, then Cutout for the evaluation
network. Run in PIL on the host, a search step's 128 images cost milliseconds of host time that
the GPU waits for: a search step that replays as one CUDA graph in tens of milliseconds would spend
a good share of the step on its data. Here the whole split is one uint8 tensor [N, C, H, W]
(CIFAR-10's training set: 150 MB) copied once to the device, and a batch is made there by a few
tensor ops: one gather (the crop, the flip and the zero padding as source indices), the scaling
and normalisation, and a mask for the cutout. The values are torchvision's for the same crop
offsets, flips and cutout centres (tests/test_image_tensors.py compares them).

The random parameters (crop offsets, flip, cutout centre) are drawn for a whole pass at once by
the caller (ndarts.data.BatchStream) from a generator seeded with (seed, stream, pass): a batch's
augmentation is a pure function of its position, so a resumed run sees the images an
uninterrupted one would (torchvision's transforms draw from each worker's global RNG).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from .errors import NdartsError


def canonical_device(device) -> torch.device:
    """'cuda' and 'cuda:0' (the current device) as one key: a tensor reports the index."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Augmentation(NamedTuple):
    """DARTS's training augmentation: zero-padded random crop, horizontal flip, cutout (0: off)."""

    padding: int = 0  # RandomCrop(size, padding=padding): offsets 0..2·padding in the padded image
    flip: bool = False  # RandomHorizontalFlip(p=0.5), after the crop
    cutout: int = 0  # DARTS's Cutout(length), after the normalisation

    @property
    def random(self) -> bool:
        return bool(self.padding or self.flip or self.cutout)


# columns of a pass's parameters (ImageTensors.draw): crop row and column offsets, flip, cutout centre
_DY, _DX, _FLIP, _CY, _CX = range(5)


class ImageTensors(Dataset):
    """Images uint8 [N, C, H, W] and labels [N], normalised per channel as ToTensor + Normalize do.

    ``ds[i]`` is image i without augmentation (the test transform); ``ds.batch(indices, params)``
    is a training batch with the augmentation of ``params`` (``ds.draw``)."""

    def __init__(self, images: torch.Tensor, labels, mean, std, augmentation: Augmentation = Augmentation()):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise NdartsError(f"images must be a uint8 tensor [N, C, H, W], got "
                              f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != images.shape[:1]:
            raise NdartsError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise NdartsError(f"normalisation needs one mean and one positive std per channel ({channels}), "
                              f"got mean {tuple(mean)}, std {tuple(std)}")
        if augmentation.padding < 0 or augmentation.cutout < 0:
            raise NdartsError(f"crop padding and cutout length must be >= 0, got {augmentation}")
        self.images, self.labels = images.contiguous(), labels
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.augmentation = augmentation
        self._copies = {}  # device → (images, labels, mean [C,1,1], std [C,1,1]) there

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        x, y = self.batch(torch.tensor([i]), None)
        return x[0], int(y[0])

    def on(self, device) -> tuple:
        """(images, labels, mean, std) on `device`, copied there once and kept."""
        device = canonical_device(device)
        if device not in self._copies:
            self._copies[device] = (self.images.to(device), self.labels.to(device),
                                    torch.tensor(self.mean, device=device).view(-1, 1, 1),
                                    torch.tensor(self.std, device=device).view(-1, 1, 1))
        return self._copies[device]

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The augmentation of n images, int64 [n, 5]: crop offsets (row, column), flip, cutout centre
        (row, column); drawn from `generator` in a fixed order (all zeros without augmentation)."""
        params = torch.zeros((n, 5), dtype=torch.long)
        a = self.augmentation
        _, _, h, w = self.images.shape
        if a.padding:
            params[:, _DY:_DX + 1] = torch.randint(0, 2 * a.padding + 1, (n, 2), generator=generator)
        if a.flip:
            params[:, _FLIP] = torch.randint(0, 2, (n,), generator=generator)
        if a.cutout:
            params[:, _CY] = torch.randint(0, h, (n,), generator=generator)
            params[:, _CX] = torch.randint(0, w, (n,), generator=generator)
        return params

    def batch(self, indices: torch.Tensor, params: torch.Tensor | None, device=None):
        """(x float32 [B, C, H, W], y [B]) of images `indices`, augmented by `params` ([B, 5] from draw;
        None: not augmented), on `device` (default: where `indices` are)."""
        device = indices.device if device is None else torch.device(device)
        images, labels, mean, std = self.on(device)
        indices = indices.to(device)
        if params is None or not self.augmentation.random:
            x = images[indices]
        else:
            x = self._crop_and_flip(images, indices, params.to(device))
        # ToTensor's scaling, then Normalize, in their order (the same fp32 values)
        x = x.to(torch.float32).div(255).sub(mean).div(std)
        if params is not None and self.augmentation.cutout:
            x = x.masked_fill(self._cutout_mask(params.to(device), x.shape[-2:]), 0.0)
        return x, labels[indices]

    def _crop_and_flip(self, images, indices, params):
        """Each output pixel's source in the unpadded image, one gather; the zero padding is a mask."""
        p = self.augmentation.padding
        _, c, h, w = images.shape
        r = torch.arange(h, device=images.device)
        k = torch.arange(w, device=images.device)
        rows = params[:, _DY, None] + r - p  # [B, H]
        # the flip mirrors the cropped image: output column k reads crop column W−1−k
        cols = params[:, _DX, None] + torch.where(params[:, _FLIP, None] != 0, w - 1 - k, k) - p  # [B, W]
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # [B, H, W]
        x = images[indices[:, None, None, None], torch.arange(c, device=images.device)[None, :, None, None],
                   rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
        return x * inside[:, None].to(x.dtype)

    def _cutout_mask(self, params, size):
        """DARTS's Cutout: the square [cy − L/2, cy + L/2) × [cx − L/2, cx + L/2), clipped to the image."""
        half = self.augmentation.cutout // 2
        h, w = size
        r = torch.arange(h, device=params.device)
        k = torch.arange(w, device=params.device)
        cy, cx = params[:, _CY, None], params[:, _CX, None]
        in_rows = (r >= (cy - half).clamp(0, h)) & (r < (cy + half).clamp(0, h))  # [B, H]
        in_cols = (k >= (cx - half).clamp(0, w)) & (k < (cx + half).clamp(0, w))  # [B, W]
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]

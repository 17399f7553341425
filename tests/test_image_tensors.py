"""ndarts.image_tensors: DARTS's CIFAR transforms made by the batch from one uint8 tensor, checked
against torchvision's transforms on the same images with the same crop offsets, flips and cutout
centres; and the batch streams over it (order, augmentation and resume are functions of the position)."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ndarts.data import BatchStream, CIFAR_MEAN, CIFAR_STD, Cutout, EndlessStream
from ndarts.errors import NdartsError
from ndarts.image_tensors import Augmentation, ImageTensors


def _images(n, h, w, c=3, seed=None):
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, (1,))) if seed is None else seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def _torchvision(img_u8, mean, std, padding, dy, dx, flip, cutout=0, cy=0, cx=0):
    """DARTS's train transform of one image, in torchvision, with given random parameters."""
    pil = Image.fromarray(img_u8.permute(1, 2, 0).numpy())
    h, w = pil.height, pil.width
    if padding:
        pil = TF.crop(TF.pad(pil, padding, fill=0), dy, dx, h, w)  # RandomCrop(size, padding) at (dy, dx)
    if flip:
        pil = TF.hflip(pil)
    x = TF.normalize(TF.to_tensor(pil), mean, std)
    if cutout:  # ndarts.data.Cutout with its centre given
        y0, y1 = np.clip(cy - cutout // 2, 0, h), np.clip(cy + cutout // 2, 0, h)
        x0, x1 = np.clip(cx - cutout // 2, 0, w), np.clip(cx + cutout // 2, 0, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = 0.0
    return x


@pytest.mark.parametrize("h,w,padding,cutout", [(32, 32, 4, 0), (13, 9, 3, 5), (7, 11, 0, 16), (8, 8, 4, 3)])
def test_batch_equals_torchvisions_transforms(h, w, padding, cutout):
    images, mean, std = _images(23, h, w), CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"]
    ds = ImageTensors(images, torch.randint(10, (23,)), mean, std, Augmentation(padding, True, cutout))
    params = ds.draw(23, torch.Generator().manual_seed(int(torch.randint(1 << 30, (1,)))))
    idx = torch.randperm(23)[:17]
    x, y = ds.batch(idx, params[idx])
    assert x.dtype == torch.float32 and x.shape == (17, 3, h, w)
    assert torch.equal(y, ds.labels[idx])
    for k, i in enumerate(idx.tolist()):
        dy, dx, flip, cy, cx = params[i].tolist()
        want = _torchvision(images[i], mean, std, padding, dy, dx, flip, cutout, cy, cx)
        torch.testing.assert_close(x[k], want, rtol=0, atol=0)  # the same fp32 operations


def test_draw_covers_torchvisions_ranges():
    ds = ImageTensors(_images(4, 10, 12), torch.zeros(4), (0.5,) * 3, (0.25,) * 3, Augmentation(4, True, 6))
    p = ds.draw(4000, torch.Generator().manual_seed(3))
    # RandomCrop: offsets 0..2·padding inclusive; flip 0/1; Cutout centre anywhere in the image
    assert p[:, 0].unique().tolist() == list(range(9)) and p[:, 1].unique().tolist() == list(range(9))
    assert p[:, 2].unique().tolist() == [0, 1] and abs(p[:, 2].float().mean().item() - 0.5) < 0.05
    assert p[:, 3].unique().tolist() == list(range(10)) and p[:, 4].unique().tolist() == list(range(12))


def test_unaugmented_item_is_the_test_transform():
    images = _images(5, 6, 7)
    ds = ImageTensors(images, torch.arange(5), CIFAR_MEAN["cifar100"], CIFAR_STD["cifar100"], Augmentation(4, True))
    x, y = ds[3]
    want = TF.normalize(TF.to_tensor(Image.fromarray(images[3].permute(1, 2, 0).numpy())),
                        CIFAR_MEAN["cifar100"], CIFAR_STD["cifar100"])
    assert y == 3 and torch.equal(x, want)


def test_cutout_class_matches_the_batch_cutout(monkeypatch):
    """The host Cutout (imagefolder) and the batch's cutout zero the same square for the same centre."""
    ds = ImageTensors(_images(1, 9, 9), [0], (0.0,) * 3, (1.0,) * 3, Augmentation(cutout=4))
    img = torch.randn(3, 9, 9)
    centres = iter([torch.tensor([7]), torch.tensor([1])])
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(centres))
    want = Cutout(4)(img)
    mask = ds._cutout_mask(torch.tensor([[0, 0, 0, 7, 1]]), (9, 9))[0]
    assert torch.equal(img.masked_fill(mask, 0.0), want)


@pytest.mark.parametrize("bad,match", [
    (dict(images=torch.zeros(2, 3, 4, 4)), "uint8"),
    (dict(labels=torch.zeros(3)), "labels of shape"),
    (dict(mean=(0.5, 0.5)), "one mean and one positive std per channel"),
    (dict(std=(1.0, 0.0, 1.0)), "positive std"),
])
def test_bad_input_is_named(bad, match):
    args = dict(images=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), labels=torch.zeros(2), mean=(0.0,) * 3,
                std=(1.0,) * 3)
    args.update(bad)
    with pytest.raises(NdartsError, match=match):
        ImageTensors(**args)


def _stream(ds, **kw):
    return BatchStream(ds, range(3, len(ds)), batch_size=6, seed=11, stream=1, **kw)


def test_stream_batches_are_functions_of_their_position():
    ds = ImageTensors(_images(40, 8, 8), torch.randint(10, (40,)), (0.4,) * 3, (0.2,) * 3, Augmentation(2, True, 3))
    a, b = _stream(ds), _stream(ds)
    first = list(a.iterate(pass_idx=2))
    assert len(first) == len(a) == 7 and first[-1][0].shape[0] == 37 % 6
    resumed = list(b.iterate(pass_idx=2, start=4))  # a resumed run: the same images, augmented alike
    for (x0, y0), (x1, y1) in zip(first[4:], resumed):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    other = torch.cat([x for x, _ in a.iterate(pass_idx=3)])
    assert not torch.equal(torch.cat([x for x, _ in first]), other)  # a new pass: a new order and augmentation
    # every sample of the subset once per pass, labels with their images
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == sorted(ds.labels[3:].tolist())
    # the order is that of the stream without augmentation (its own generator)
    plain = ImageTensors(ds.images, ds.labels, ds.mean, ds.std)
    assert torch.equal(torch.cat([y for _, y in _stream(plain).iterate(pass_idx=2)]), labels)


def test_endless_stream_resumes_mid_pass():
    ds = ImageTensors(_images(20, 5, 5), torch.arange(20), (0.5,) * 3, (0.5,) * 3, Augmentation(1, True))
    it = EndlessStream(BatchStream(ds, range(20), 6, seed=4, stream=1))
    seen = [next(it) for _ in range(5)]  # 4 batches a pass: the fifth is the next pass's first
    again = EndlessStream(BatchStream(ds, range(20), 6, seed=4, stream=1))
    again.load_state_dict({"pass": 0, "step": 2})
    for want in seen[2:]:
        x, y = next(again)
        assert torch.equal(x, want[0]) and torch.equal(y, want[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_batches_made_on_the_gpu_equal_the_cpus():
    ds = ImageTensors(_images(50, 32, 32), torch.randint(10, (50,)), CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"],
                      Augmentation(4, True, 16))
    for (xc, yc), (xg, yg) in zip(_stream(ds).iterate(1), _stream(ds, device="cuda").iterate(1)):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_one_device_copy_however_the_device_is_spelled():
    ds = ImageTensors(_images(4, 8, 8), torch.arange(4), (0.5,) * 3, (0.5,) * 3)
    assert ds.on("cuda")[0] is ds.on(torch.device("cuda", torch.cuda.current_device()))[0]

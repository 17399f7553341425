"""``--network imagenet`` follows DARTS's train_imagenet.py: no cutout, its crops and colour jitter for
training, resize-and-centre-crop for the test (ndarts.train and ndarts.evaluate alike)."""
import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F

from ndarts import evaluate, train
from ndarts.data import IMAGENET_MEAN, IMAGENET_STD, Cutout, folder_transforms, load_dataset
from ndarts.errors import NdartsError


def _parse(*args):
    return train.config_from_args(train.build_parser().parse_args([*args, "--out", "x"]))


def test_the_imagenet_preset_has_no_cutout_unless_asked():
    """The ImageNet preset had no cutout key, so it trained with CIFAR's cutout 16."""
    assert _parse("--dataset", "imagefolder", "--network", "imagenet").cutout == 0
    assert _parse("--dataset", "imagefolder", "--network", "imagenet", "--cutout", "8").cutout == 8
    assert _parse("--dataset", "cifar10").cutout == 16
    assert "0 on digits and imagenet" in " ".join(train.build_parser().format_help().split())


def _types(compose):
    return [type(t) for t in compose.transforms]


@pytest.mark.parametrize("size, resize", [(224, 256), (64, 73)])
def test_imagenet_transforms_are_dartss(size, resize):
    train_tf, test_tf = folder_transforms(size, augment=True, style="imagenet")
    assert _types(train_tf) == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter, T.ToTensor, T.Normalize]
    crop, _, jitter, _, norm = train_tf.transforms
    assert tuple(crop.size) == (size, size) and crop.scale == (0.08, 1.0)
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.6, 1.4),) * 3
    assert jitter.hue == (-0.2, 0.2)
    assert (tuple(norm.mean), tuple(norm.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    assert _types(test_tf) == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert test_tf.transforms[0].size == resize and tuple(test_tf.transforms[1].size) == (size, size)
    # without augmentation the training images are the test's; an explicit cutout comes last
    assert _types(folder_transforms(size, augment=False, style="imagenet")[0]) == _types(test_tf)
    assert isinstance(folder_transforms(size, True, cutout=16, style="imagenet")[0].transforms[-1], Cutout)


def test_the_default_transforms_are_the_searchs_as_before():
    """Small folders with the CIFAR network (and the search, which passes no style) keep the squashing resize."""
    train_tf, test_tf = folder_transforms(16, augment=True)
    assert _types(train_tf) == [T.Resize, T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert train_tf.transforms[0].size == (16, 16) and train_tf.transforms[1].padding == 2
    assert _types(test_tf) == [T.Resize, T.ToTensor, T.Normalize]
    with pytest.raises(NdartsError, match="unknown image transforms 'imagenett'"):
        load_dataset("digits", image_transforms="imagenett")


def _folder(root, width=300, height=260, per_class=3):
    """root/{train,val}/<class>/<i>.png: random pixels, not square."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def _centre_crop(path, size):
    """DARTS's test image, computed here with torchvision's functional ops."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img = F.center_crop(F.resize(img, round(size * 256 / 224)), size)
    return F.normalize(F.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("size", [224, 64])
def test_imagenet_folder_test_images_are_centre_crops(tmp_path, size):
    root = _folder(tmp_path / "imgs")
    spec = load_dataset("imagefolder", root, image_size=size, augment=True, image_transforms="imagenet")
    for i, (path, label) in enumerate(spec.test.samples):
        x, y = spec.test[i]
        assert torch.equal(x, _centre_crop(path, size)) and y == label
    for i in range(len(spec.train)):
        assert spec.train[i][0].shape == (3, size, size)
    # the squashing resize is another image (the aspect ratio changed)
    squashed = load_dataset("imagefolder", root, image_size=size, augment=False).test[0][0]
    assert squashed.shape == (3, size, size) and not torch.allclose(squashed, spec.test[0][0])


def test_train_and_evaluate_use_the_imagenet_transforms(tmp_path, monkeypatch, capsys):
    """The train config's network picks the transforms: ndarts.train's ImageNet protocol trains on
    DARTS's crops without cutout, and ndarts.evaluate tests its checkpoint on the centre crops."""
    import ndarts.trainer

    root = _folder(tmp_path / "imgs", per_class=2)
    seen = {}

    def recording(*args, **kwargs):
        seen["spec"] = spec = load_dataset(*args, **kwargs)
        return spec

    monkeypatch.setattr(ndarts.trainer, "load_dataset", recording)
    out = tmp_path / "run"
    train.main(["--dataset", "imagefolder", "--data", str(root), "--network", "imagenet", "--image-size", "64",
                "--init-channels", "4", "--layers", "3", "--no-auxiliary", "--batch-size", "4", "--epochs", "1",
                "--max-steps", "1", "--report-freq", "0", "--out", str(out)])
    assert json.loads((out / "config.json").read_text())["cutout"] == 0
    assert _types(seen["spec"].train.transform)[:3] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter]
    assert Cutout not in _types(seen["spec"].train.transform)
    assert _types(seen["spec"].test.transform)[:2] == [T.Resize, T.CenterCrop]

    monkeypatch.setattr(evaluate, "load_dataset", recording)
    capsys.readouterr()
    result = evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--json", "--device", "cpu"])
    assert _types(seen["spec"].test.transform)[:2] == [T.Resize, T.CenterCrop]
    assert result["test_images"] == 4 and result["test_acc_top5"] == 1.0  # 2 classes: top-2

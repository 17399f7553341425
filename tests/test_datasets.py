"""The on-disk datasets (no download): an image folder and CIFAR-10's python format, both
generated here, loaded by ndarts.data and searched on for a few steps."""
import pickle

import numpy as np
import pytest
import torch

from ndarts.data import CIFAR_MEAN, CIFAR_STD, load_dataset
from ndarts.searcher import SearchConfig, Searcher
from ndarts.trainer import TrainConfig, Trainer


def _search(tmp_path, **kw):
    cfg = SearchConfig(layers=3, init_channels=4, batch_size=4, epochs=1, max_steps=2, report_freq=0,
                       out=str(tmp_path / "run"), **kw)
    s = Searcher(cfg)
    s.run_search()
    return s


def test_image_folder_search(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for split, count in (("train", 8), ("val", 2)):
        for cls in ("cat", "dog", "eel"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(12, 30)), int(rng.integers(12, 30)))  # mixed sizes: resized on load
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    spec = load_dataset("imagefolder", root, image_size=16, augment=True)
    assert (spec.num_classes, spec.in_channels, len(spec.train), len(spec.test)) == (3, 3, 24, 6)
    x, y = spec.train[0]
    assert x.shape == (3, 16, 16) and 0 <= y < 3
    s = _search(tmp_path, dataset="imagefolder", data=str(root), image_size=16)
    assert (tmp_path / "run" / "genotype.json").exists() and s.model.classifier.out_features == 3


def _write_cifar10(root, per_batch):
    """CIFAR-10's python layout (cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar10_from_disk(tmp_path, monkeypatch):
    import torchvision

    _write_cifar10(tmp_path / "cifar", per_batch=8)
    # generated files cannot match the real archive's md5 sums, which torchvision verifies
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    spec = load_dataset("cifar10", tmp_path / "cifar", augment=True)
    assert (spec.num_classes, spec.in_channels, len(spec.train), len(spec.test)) == (10, 3, 40, 8)
    x, _ = spec.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # the files' images, in torchvision's layout, are the dataset's (test split: not augmented)
    raw = torchvision.datasets.CIFAR10(str(tmp_path / "cifar"), train=False)
    want = torchvision.transforms.functional.normalize(torchvision.transforms.functional.to_tensor(raw[0][0]),
                                                       CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"])
    assert torch.equal(x, want) and spec.test[0][1] == raw[0][1]
    _search(tmp_path, dataset="cifar10", data=str(tmp_path / "cifar"))
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    # the evaluation network's training, with DARTS's cutout
    cfg = TrainConfig(dataset="cifar10", data=str(tmp_path / "cifar"), cutout=16, init_channels=4, layers=3,
                      auxiliary=False, batch_size=8, epochs=1, max_steps=2, report_freq=0, out=str(tmp_path / "train"))
    Trainer(cfg).fit()
    assert (tmp_path / "train" / "metrics.jsonl").read_text().count("\n") == 1


def test_cifar10_missing_or_corrupt_files_are_named(tmp_path, monkeypatch):
    import torchvision

    from ndarts.errors import NdartsError

    (tmp_path / "empty").mkdir()
    with pytest.raises(NdartsError, match="not found or corrupt"):
        load_dataset("cifar10", tmp_path / "empty")
    _write_cifar10(tmp_path / "bad", per_batch=2)
    (tmp_path / "bad" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    with pytest.raises(NdartsError, match="corrupt"):
        load_dataset("cifar10", tmp_path / "bad")


def test_a_cifar_download_that_fails_is_named(tmp_path, monkeypatch):
    """--download without a network: the error says the download failed (not that a file is unreadable)."""
    import urllib.error

    import torchvision

    from ndarts.errors import NdartsError

    def offline(self):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(NdartsError, match=r"downloading cifar10 into .*c10 failed: .*Name or service not known"):
        load_dataset("cifar10", tmp_path / "c10", download=True)


def _image_folder(root, classes_per_split, count=2, seed=None):
    """root/<split>/<class>/<i>.png of random pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, classes in classes_per_split.items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_a_test_folder_lacking_a_class_keeps_the_training_labels(tmp_path):
    """val/ without 'cat': ImageFolder alone would label val's dogs 0 and eels 1 (train: cat 0, dog 1, eel 2)."""
    root = tmp_path / "imgs"
    _image_folder(root, {"train": ["cat", "dog", "eel"], "val": ["dog", "eel"]}, seed=torch.seed() % 2**32)
    spec = load_dataset("imagefolder", root, image_size=8, augment=False)
    assert spec.test.classes == spec.train.classes == ["cat", "dog", "eel"]
    for path, label in spec.test.samples:
        assert spec.train.classes[label] in path
    assert sorted(spec.test.targets) == [1, 1, 2, 2]
    assert sorted(int(spec.test[i][1]) for i in range(len(spec.test))) == [1, 1, 2, 2]


def test_a_test_folder_with_an_unknown_class_is_named(tmp_path):
    from ndarts.errors import NdartsError

    root = tmp_path / "imgs"
    _image_folder(root, {"train": ["cat", "dog"], "test": ["cat", "dog", "yak"]})
    with pytest.raises(NdartsError, match=r"test has classes the training folder lacks: \['yak'\]"):
        load_dataset("imagefolder", root, image_size=8, augment=False)


def _tiny_folder(root, bad: bool = False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    if bad:
        (root / "train" / "cat" / "bad.png").write_text("not an image\n")
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_named_in_one_line(tmp_path, workers):
    """Was PIL's UnidentifiedImageError with an 18-line traceback mid-run (in a worker: the worker's
    traceback inside the message too)."""
    from ndarts.data import BatchStream
    from ndarts.errors import NdartsError

    spec = load_dataset("imagefolder", _tiny_folder(tmp_path / "imgs", bad=True), image_size=8)
    stream = BatchStream(spec.train, range(len(spec.train)), 8, seed=0, stream=0, workers=workers)
    with pytest.raises(NdartsError) as exc:
        list(stream.iterate(0))
    message = str(exc.value)
    assert "\n" not in message and "bad.png" in message and "not an image file" in message, message


def test_search_cli_names_an_unreadable_image(tmp_path, capsys):
    from ndarts import search

    root = _tiny_folder(tmp_path / "imgs", bad=True)
    with pytest.raises(SystemExit) as exc:
        search.main(["--dataset", "imagefolder", "--data", str(root), "--image-size", "8", "--layers", "3",
                     "--init-channels", "4", "--batch-size", "4", "--epochs", "1", "--max-steps", "2",
                     "--report-freq", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: cannot read the image ") and "\n" not in err, err


@pytest.mark.parametrize("name", ["imagefolder", "cifar10"])
def test_a_tilde_in_data_is_the_home_directory(tmp_path, monkeypatch, name):
    """``--data=~/x`` reaches us unexpanded (the shell expands ~ only at a word's start): every
    dataset expands it, as imagenet16-120 did."""
    from ndarts.errors import NdartsError

    monkeypatch.setenv("HOME", str(tmp_path))
    if name == "imagefolder":
        _tiny_folder(tmp_path / "imgs")
        assert len(load_dataset(name, "~/imgs", image_size=8).train) == 4
    else:
        with pytest.raises(NdartsError, match=f"directory {tmp_path}/missing does not exist"):
            load_dataset(name, "~/missing")


# ----------------------------------------------------------------------------- an image folder's augmentation
def _folder_stream(root, workers, seed):
    from ndarts.data import BatchStream

    spec = load_dataset("imagefolder", root, image_size=8, augment=True)
    return BatchStream(spec.train, range(len(spec.train)), 3, seed=seed, stream=0, workers=workers)


def _batches(stream, pass_idx, start=0):
    return [(x.clone(), y.clone()) for x, y in stream.iterate(pass_idx, start)]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_folders_augmentation_is_a_function_of_the_pass(tmp_path, workers, fresh_seed):
    """Its random crops and flips (torchvision's, drawn from torch's RNG) are those of the item's place
    in the pass: the same for any --workers, for a pass resumed at a later batch, whatever torch's
    RNG holds; and reading leaves torch's RNG as it was (the search's noise draws from it)."""
    root = tmp_path / "imgs"
    _image_folder(root, {"train": ["cat", "dog", "eel"]}, count=3, seed=fresh_seed % 2**32)
    one = _batches(_folder_stream(root, 0, fresh_seed), 1)
    stream = _folder_stream(root, workers, fresh_seed)
    torch.manual_seed(fresh_seed + 1)
    state = torch.get_rng_state()
    other = _batches(stream, 1)
    assert torch.equal(torch.get_rng_state(), state)
    tail = _batches(stream, 1, start=2)
    assert len(one) == len(other) == 3 and len(tail) == 1
    for (x, y), (x2, y2) in zip(one, other):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(tail[0][0], one[2][0])
    # the augmentation is on: the same images, another pass, other crops
    same = _folder_stream(root, 0, fresh_seed)
    same.shuffle = False
    a, b = _batches(same, 1), _batches(same, 2)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))
    assert any(not torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))


def test_a_resumed_image_folder_search_is_the_uninterrupted_one(tmp_path, monkeypatch):
    """Stopped after epoch 1 of 2 and resumed (with a DataLoader worker): the α of the uninterrupted
    run, bit for bit (the folder's augmentation and the loader's seeds were drawn from torch's RNG)."""
    root = tmp_path / "imgs"
    _image_folder(root, {"train": ["cat", "dog"], "val": ["cat", "dog"]}, count=6, seed=0)

    def cfg(out, **kw):
        return SearchConfig(dataset="imagefolder", data=str(root), image_size=8, layers=3, init_channels=4,
                            batch_size=3, epochs=2, max_steps=2, report_freq=0, workers=1, out=str(tmp_path / out),
                            **kw)

    full = Searcher(cfg("full"))
    full.run_search()

    class Killed(Exception):
        pass

    real_epoch = Searcher._epoch

    def stop_before_the_second(self, epoch):
        if epoch == 1:
            raise Killed
        real_epoch(self, epoch)

    monkeypatch.setattr(Searcher, "_epoch", stop_before_the_second)
    with pytest.raises(Killed):
        Searcher(cfg("cut")).run_search()
    monkeypatch.setattr(Searcher, "_epoch", real_epoch)
    torch.manual_seed(4321)
    resumed = Searcher(cfg("cut", resume=True))
    resumed.run_search()
    for a, b in zip(resumed.model.arch_parameters(), full.model.arch_parameters()):
        assert torch.equal(a, b)

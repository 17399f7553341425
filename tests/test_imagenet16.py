"""ImageNet16-120 (NAS-Bench-201's third dataset) from files in its pickled format, made here."""
import pickle

import numpy as np
import pytest
import torch

from ndarts.data import load_dataset
from ndarts.errors import NdartsError
from ndarts.imagenet16 import MEAN, STD, TRAIN_FILES, VAL_FILE
from ndarts.searcher import SearchConfig, Searcher


def write_imagenet16(root, rng, per_file=24):
    """ImageNet16's files under root: random images, labels 1..1000 (about a third of them ≤ 120).
    Returns {file: (data [n, 768] uint8, labels [n])}."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in (*TRAIN_FILES, VAL_FILE):
        data = rng.integers(0, 256, (per_file, 3 * 16 * 16), dtype=np.uint8)
        labels = rng.integers(1, 361, per_file).tolist()  # classes 1..360: a third of them kept
        labels[0] = 120  # the last class kept, and one dropped: the bounds of the filter
        labels[1] = 121
        with open(root / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "mean": data.mean(0)}, f)
        written[name] = (data, np.asarray(labels))
    return written


def test_loads_the_120_classes_in_the_benchmarks_layout(tmp_path, fresh_seed):
    written = write_imagenet16(tmp_path / "ImageNet16", np.random.default_rng(fresh_seed))
    spec = load_dataset("imagenet16-120", str(tmp_path / "ImageNet16"))
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (120, 3, 16)
    for part, names in ((spec.train, TRAIN_FILES), (spec.test, (VAL_FILE,))):
        data = np.concatenate([written[n][0] for n in names])
        labels = np.concatenate([written[n][1] for n in names])
        keep = labels <= 120
        assert torch.equal(part.labels, torch.from_numpy(labels[keep] - 1))
        assert int(part.labels.max()) == 119 and int(part.labels.min()) >= 0
        # rows are R, G, B planes of 16×16: the stored images and their normalised values
        assert torch.equal(part.images, torch.from_numpy(data[keep]).view(-1, 3, 16, 16))
        i = int(torch.randint(len(part), ()))
        x, y = part[i]
        want = (torch.from_numpy(data[keep][i]).view(3, 16, 16).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) \
            / torch.tensor(STD).view(3, 1, 1)
        torch.testing.assert_close(x, want)
        assert y == int(labels[keep][i]) - 1
    assert spec.train.augmentation.padding == 2 and spec.train.augmentation.flip


def test_missing_or_corrupt_files_are_named(tmp_path):
    with pytest.raises(NdartsError, match="needs --data DIR"):
        load_dataset("imagenet16-120", None)
    root = tmp_path / "ImageNet16"
    write_imagenet16(root, np.random.default_rng(0))
    (root / "train_data_batch_7").unlink()
    with pytest.raises(NdartsError, match="lacks ImageNet16's train_data_batch_7"):
        load_dataset("imagenet16-120", str(root))
    (root / "train_data_batch_7").write_bytes(b"not a pickle")
    with pytest.raises(NdartsError, match="train_data_batch_7 is not an ImageNet16 batch"):
        load_dataset("imagenet16-120", str(root))
    with open(root / "train_data_batch_7", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [1, 2, 3, 4]}, f)
    with pytest.raises(NdartsError, match=r"want \[N, 768\]"):
        load_dataset("imagenet16-120", str(root))


@pytest.mark.slow
def test_a_nas_bench_201_search_on_it(tmp_path):
    write_imagenet16(tmp_path / "ImageNet16", np.random.default_rng(1))
    cfg = SearchConfig(dataset="imagenet16-120", data=str(tmp_path / "ImageNet16"), space="nas-bench-201",
                       cells_per_stage=1, init_channels=4, batch_size=16, max_steps=2, epochs=1, report_freq=0,
                       out=str(tmp_path / "run"))
    searcher = Searcher(cfg)
    genotype = searcher.run_search()
    assert searcher.model.classifier.out_features == 120
    assert (tmp_path / "run" / "genotype.json").read_text().count(genotype.arch_string()) == 1

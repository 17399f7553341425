"""A search on a caller's own in-memory images (`Searcher(cfg, data=DataSpec(...))`, as the README shows),
the training of its cell on them (`Trainer(cfg, data=...)`), and the clear errors for images, labels or a
spec that do not fit together."""
import json
import math

import pytest
import torch

from ndarts.data import DataSpec, InMemoryDataset
from ndarts.searcher import SearchConfig, Searcher
from ndarts.trainer import TrainConfig, Trainer


def _images(n, classes, channels=3, size=10, generator=None):
    """Images whose mean carries the class (a learnable signal), labels drawn fresh."""
    y = torch.randint(0, classes, (n,), generator=generator)
    x = torch.randn(n, channels, size, size, generator=generator) + y.view(-1, 1, 1, 1).float() / classes
    return x, y


def test_a_search_on_own_images(tmp_path):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    n, classes, batch = 37, 3, 4
    x, y = _images(n, classes, channels=2, generator=g)
    spec = DataSpec("mine", InMemoryDataset(x, y), None, classes, 2, 10)
    cfg = SearchConfig(dataset="mine", layers=3, steps=2, init_channels=4, batch_size=batch, epochs=2,
                       report_freq=0, out=str(tmp_path / "run"))
    s = Searcher(cfg, data=spec)
    assert s.model.classifier.out_features == classes
    s.run_search()
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(math.isfinite(e["train_loss"]) and math.isfinite(e["val_loss"]) for e in epochs)
    genotype = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert len(genotype["normal"]) == len(genotype["reduce"]) == 2 * cfg.steps
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "mine"


def test_training_the_found_cell_on_own_images(tmp_path):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    classes = 3
    train, test = _images(30, classes, channels=2, generator=g), _images(11, classes, channels=2, generator=g)
    spec = DataSpec("mine", InMemoryDataset(*train), InMemoryDataset(*test), classes, 2, 10)
    cfg = TrainConfig(genotype="NoisyDARTS-a", dataset="mine", layers=3, init_channels=4, batch_size=8, epochs=2,
                      report_freq=0, auxiliary=False, drop_path_prob=0.0, out=str(tmp_path / "train"))
    trainer = Trainer(cfg, data=spec)
    assert trainer.model.classifier.out_features == classes
    trainer.fit()
    epochs = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(math.isfinite(e["test_loss"]) and 0.0 <= e["test_acc"] <= 1.0 for e in epochs)
    assert (tmp_path / "train" / "best.pt").exists()


def _spec(x, y, classes=4, channels=3, size=10):
    return DataSpec("mine", InMemoryDataset(x, y), None, classes, channels, size)


@pytest.mark.parametrize("make,error,message", [
    (lambda: _spec(torch.randn(8, 10, 10), torch.zeros(8, dtype=torch.long)), ValueError,
     "images must be [N, C, H, W], got shape (8, 10, 10)"),
    (lambda: _spec(torch.zeros(8, 3, 10, 10, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)), TypeError,
     "images must be floating point (normalised), got torch.uint8"),
    (lambda: _spec(torch.randn(8, 3, 10, 10), torch.zeros(8, 1, dtype=torch.long)), ValueError,
     "labels must be [N] class indices, got shape (8, 1)"),
    (lambda: _spec(torch.randn(8, 3, 10, 10), torch.zeros(8)), TypeError,
     "labels must be integer class indices, got torch.float32"),
    (lambda: _spec(torch.randn(8, 3, 10, 10), torch.zeros(6, dtype=torch.long)), ValueError,
     "got 8 images and 6 labels"),
    (lambda: _spec(torch.randn(0, 3, 10, 10), torch.zeros(0, dtype=torch.long)), ValueError,
     "at least one image"),
    (lambda: _spec(torch.randn(8, 3, 10, 10).index_fill_(0, torch.tensor([5]), float("nan")),
                   torch.zeros(8, dtype=torch.long)), ValueError, "NaN or Inf"),
    (lambda: _spec(torch.randn(8, 3, 10, 10), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])), ValueError,
     "num_classes=4, but its train labels run from 0 to 4"),
    (lambda: _spec(torch.randn(8, 3, 10, 10), torch.tensor([0, 1, -1, 3, 0, 0, 1, 2])), ValueError,
     "labels run from -1 to 3"),
    (lambda: _spec(torch.randn(8, 3, 10, 10), torch.zeros(8, dtype=torch.long), channels=1), ValueError,
     "in_channels=1, but its train images have 3 channels"),
    (lambda: _spec(torch.randn(8, 3, 10, 12), torch.zeros(8, dtype=torch.long)), ValueError,
     "image_size=10 (square images), but its train images are 10×12"),
    (lambda: _spec(torch.randn(8, 3, 10, 10), torch.zeros(8, dtype=torch.long), classes=0), ValueError,
     "num_classes must be an int >= 1, got 0"),
    (lambda: DataSpec("mine", InMemoryDataset(torch.randn(8, 3, 10, 10), torch.zeros(8, dtype=torch.long)),
                      InMemoryDataset(torch.randn(4, 1, 10, 10), torch.zeros(4, dtype=torch.long)), 4, 3, 10),
     ValueError, "its test images have 1 channels"),
    (lambda: InMemoryDataset([[0.0]], torch.zeros(1, dtype=torch.long)), TypeError, "takes two tensors"),
])
def test_images_labels_and_spec_that_do_not_fit_are_named(make, error, message):
    with pytest.raises(error) as exc:
        make()
    assert message in str(exc.value)


def test_integer_labels_of_any_width_are_class_indices():
    x, y = _images(9, 3)
    data = InMemoryDataset(x, y.to(torch.int32))
    assert data.y.dtype == torch.long and torch.equal(data.y, y)
    xb, yb = data.batch(torch.tensor([4, 0, 7]))
    assert torch.equal(xb, x[[4, 0, 7]]) and torch.equal(yb, y[[4, 0, 7]])

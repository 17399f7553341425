"""The search loop end to end: what a search epoch costs beyond its steps.

Issue 4's target is a whole 50-epoch search in 15 minutes, not only a fast step: an epoch is 391
search steps (CIFAR-10's 25 000 w-half images at batch 64), each with its two batches made
(DARTS's random crop and flip), its loss and accuracy counted and its finiteness checked, then
the evaluation of the α half (DARTS's infer()). Timed here with ndarts.searcher.Searcher itself,
on random CIFAR-shaped images (ndarts.image_tensors.ImageTensors with DARTS's augmentation; no
download), the network of test_bench_search_step.py (SPEC §6's supernet):

- test_search_loop: the loop's time per step (Searcher._train_epoch over STEPS steps) against the
  bare step in the same run (the same step called back to back on fixed batches: the figure of
  test_bench_search_step.py), the evaluation's time per image (eval_batch_size), what the graph
  step's new learning rate costs (once an epoch; first order: a fill of its device tensor, no new
  capture: `recapture_s`) and what a capture costs (once a search: `capture_s`), and their
  projection to 50 epochs of
  CIFAR-10 (extra_info `projected_search_min`). GPU: --fused --cuda-graph, the target's
  configuration, with the default convs and with `--triton-convs separable`. CPU: the default
  search (reference ops).
- test_cifar_batches: one step's two training batches made by ndarts (ImageTensors on the device)
  against torchvision's transforms in a DataLoader, the pipeline DARTS uses (and ndarts did until
  2026-12-01).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from bench_common import CUDA, sync
from ndarts.data import CIFAR_MEAN, CIFAR_STD, BatchStream, DataSpec
from ndarts.image_tensors import Augmentation, ImageTensors
from ndarts.search_step import search_step
from ndarts.searcher import SearchConfig, Searcher
from test_bench_search_step import CONFIG, GPU_CONFIG

EPOCHS, CIFAR_TRAIN = 50, 50_000  # the projection: a 50-epoch search on CIFAR-10's training set
# steps timed (GPU: enough to average over graph replays; CPU: seconds); the evaluation is capped alike
STEPS = 100 if CUDA else 6
EVAL_BATCH = 256 if CUDA else 32
WARM_STEPS = 4  # the first epoch: the graph step's eager warm-up and capture (3 steps), compile, allocator


def _random_cifar(n: int, image: int, seed: int = 0) -> DataSpec:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, image, image), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    train = ImageTensors(images, labels, CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"], Augmentation(padding=4, flip=True))
    return DataSpec("cifar10", train, None, 10, 3, image)


def _searcher(tmp_path, max_steps: int, triton_convs: str = "none") -> Searcher:
    c = CONFIG
    # enough images for STEPS steps on each half and the capped evaluation (the full set on a GPU)
    n = CIFAR_TRAIN if CUDA else 2 * max(STEPS * c.batch, STEPS * EVAL_BATCH) + 2 * c.batch
    cfg = SearchConfig(dataset="cifar10", batch_size=c.batch, init_channels=c.channels, layers=c.layers,
                       space=c.space, noise=c.noise, epochs=EPOCHS, max_steps=max_steps, report_freq=0,
                       eval_batch_size=EVAL_BATCH, out=str(tmp_path / "run"), fused=CUDA, cuda_graph=CUDA,
                       triton_convs=triton_convs, device="cuda" if CUDA else "cpu")
    return Searcher(cfg, data=_random_cifar(n, c.image))


# the loop around the default graph step, then around fused_graph_sepconv's (`--triton-convs
# separable`: the candidate default of test_bench_search_step.py), GPU only
LOOP_IMPLS = {"fused_graph": "none", "fused_graph_sepconv": "separable"} if CUDA else {"reference": "none"}


@pytest.mark.parametrize("impl", list(LOOP_IMPLS))
def test_search_loop(benchmark, device, tmp_path, impl):
    s = _searcher(tmp_path, WARM_STEPS, LOOP_IMPLS[impl])
    # epoch 0's learning rate and noise scale throughout: the graph step captured in the warm epoch
    # is replayed (a new epoch's rate: timed on its own below; a first-order step sets it on the
    # device without a new capture, ndarts.device_lr_sgd)
    lr = s.scheduler.get_last_lr()[0]
    scale = s.cfg.noise_config().scale_at(0, s.cfg.epochs)
    s._epoch(0)  # warm: capture, compile, cuDNN's choices, the evaluation's shapes
    s.cfg.max_steps = STEPS
    s.model.set_noise_scale(scale)

    def loop():
        s._train_epoch(0, lr, scale)  # ends with the meter's read: the device is done

    benchmark.pedantic(loop, rounds=1, iterations=1)
    if benchmark.stats is None:
        return
    loop_ms = benchmark.stats.stats.median * 1e3 / STEPS

    t0 = time.perf_counter()
    s.evaluate(s.eval_stream, 1)
    eval_s = time.perf_counter() - t0
    eval_images = min(STEPS, len(s.eval_stream)) * EVAL_BATCH

    # the bare step, same network, same run: fixed batches, no data, no meter, no check
    (x, y), (xv, yv) = next(iter(s.train_stream.iterate(0))), next(s.val_iter)
    key = None if s.scale_on_device else scale  # the loop's key (Searcher._train_epoch): its graph is replayed
    if s.graph_step is not None:
        def step():
            return s.graph_step(x, y, xv, yv, lr, key=key)
    else:
        weights = s.model.weight_parameters()

        def step():
            return search_step(s.architect, s.model, s.criterion, s.w_opt, weights, s.cfg.grad_clip, x, y, xv, yv, lr)
    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(STEPS):
        step()
    sync(device)
    step_ms = (time.perf_counter() - t0) * 1e3 / STEPS
    recapture_s = capture_s = 0.0
    if s.graph_step is not None:
        # once an epoch: the cosine schedule's new learning rate (first order: set on the device)
        t0 = time.perf_counter()
        s.graph_step(x, y, xv, yv, lr * 0.999, key=key)
        sync(device)
        recapture_s = time.perf_counter() - t0 - step_ms / 1e3
        # a capture (once a search; forced here by a new key)
        t0 = time.perf_counter()
        s.graph_step(x, y, xv, yv, lr * 0.999, key=("new", scale))
        sync(device)
        capture_s = time.perf_counter() - t0 - step_ms / 1e3

    c = CONFIG
    steps_per_epoch = (CIFAR_TRAIN // 2 + c.batch - 1) // c.batch
    eval_ms_per_image = eval_s * 1e3 / eval_images
    epoch_s = (steps_per_epoch * loop_ms + CIFAR_TRAIN // 2 * eval_ms_per_image) / 1e3 + recapture_s
    benchmark.group = f"search_loop {c.name}"
    benchmark.extra_info.update({
        "kind": "search_loop", "impl": impl, "config": dataclasses.asdict(c),
        "config_name": c.name, "device": str(device), "steps_timed": STEPS,
        "loop_step_ms": loop_ms, "bare_step_ms": step_ms, "loop_overhead_ms": loop_ms - step_ms,
        "recapture_s": recapture_s, "capture_s": capture_s, "eval_batch_size": EVAL_BATCH, "eval_images_timed": eval_images, "eval_ms_per_image": eval_ms_per_image,
        "projected_epoch_s": epoch_s, "projected_search_min": EPOCHS * epoch_s / 60,
        # the evaluations' part of it: what --eval-every N saves, (N - 1) / N of it
        "projected_eval_min": EPOCHS * CIFAR_TRAIN // 2 * eval_ms_per_image / 6e4,
        "projection": f"{EPOCHS} epochs × ({steps_per_epoch} loop steps + {CIFAR_TRAIN // 2} evaluated images "
                      "+ a new learning rate)",
        "targets": ["<= 15 min for the 50-epoch search"] if c == GPU_CONFIG else [],
    })


class _TorchvisionCifar(torch.utils.data.Dataset):
    """CIFAR as torchvision holds it (uint8 HWC arrays) with DARTS's train transform."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor):
        import torchvision.transforms as T

        self.data = images_u8.permute(0, 2, 3, 1).numpy()
        self.targets = labels.tolist()
        self.transform = T.Compose([T.RandomCrop(self.data.shape[1], padding=4), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"])])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(np.ascontiguousarray(self.data[i]))), self.targets[i]


@pytest.mark.parametrize("impl", ["image_tensors", "torchvision"])
def test_cifar_batches(benchmark, device, impl):
    c = CONFIG
    spec = _random_cifar(4096, 32)
    dataset = spec.train if impl == "image_tensors" else _TorchvisionCifar(spec.train.images, spec.train.labels)
    streams = [BatchStream(dataset, range(s, 4096, 2), c.batch, seed=0, stream=s, device=device) for s in (0, 1)]
    its = [iter(()) for _ in streams]
    passes = [0, 0]

    def two_batches():  # a search step's w batch and α batch, on the device
        out = []
        for k, st in enumerate(streams):
            batch = next(its[k], None)
            if batch is None:
                passes[k] += 1
                its[k] = st.iterate(passes[k])
                batch = next(its[k])
            out.append(batch)
        sync(device)
        return out

    two_batches()
    benchmark.pedantic(two_batches, rounds=20 if CUDA else 10, warmup_rounds=2, iterations=1)
    if benchmark.stats is None:
        return
    benchmark.group = f"cifar_batches b{c.batch}"
    benchmark.extra_info.update({"kind": "cifar_batches", "impl": impl, "batch": c.batch, "device": str(device),
                                 "time_ms": benchmark.stats.stats.median * 1e3,
                                 "what": "one search step's two augmented 32x32 batches, on the device"})

"""Training a genotype's evaluation network from scratch (the DARTS evaluation protocol).

Reads top to bottom: build (data, network, optimizer, schedule) → maybe resume → for each
epoch: set the drop-path probability (linear ramp, as DARTS), train (cross-entropy + 0.4 ×
auxiliary loss, grad clip 5), test, write metrics and an atomic checkpoint (+ best.pt).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from .cell_layout import no_normal_cell_note
from .checkpoint import (CheckpointError, atomic_write_bytes, first_sentence, load_checkpoint, load_optimizer_state,
                         position_schedule, require_keys, save_checkpoint)
from .config_checks import (require_amp_device, require_epochs_cover, require_ints, require_numbers,
                            require_optimizer_settings, require_seed)
from .data import BatchStream, DataSpec, load_dataset
from .errors import NdartsError
from .finite_watch import FiniteWatch
from .eval_model import NETWORKS, build_network, count_parameters
from .genotype import Genotype, load_genotype
from .meters import EpochMeter, steps_per_epoch, steps_phrase, topk_correct
from .determinism import deterministic_setup
from .losses import CrossEntropy
from .distributed import gather_rng_states, rank_seed, restore_rank_rng
from .rng import rng_state, seed_everything
from .rundir import RunDir, summary_writer_class, write_scalars
from .searcher import record_data_source, resolve_device

CHECKPOINT_KIND = "ndarts-train"
AMP_MODES = ("none", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "step")
# Settings a resumed run must share with its checkpoint (others, like --epochs, may change).
STRUCTURAL = ("dataset", "network", "genotype_dict", "init_channels", "layers", "auxiliary", "seed",
              "batch_size", "image_size", "amp", "lr_schedule")


@dataclass
class TrainConfig:
    genotype: str = "NoisyDARTS-a"
    steps: int = 4  # intermediate nodes per cell the genotype must have (DARTS: 4)
    network: str = "cifar"
    # data
    dataset: str = "digits"  # with data=DataSpec(...): the spec's name
    data: str | None = None
    own_data: bool = False  # the images were a caller's DataSpec (Trainer(data=...)): a resume needs them again
    download: bool = False
    image_size: int = 32
    workers: int = 0
    cutout: int = 16
    augment: bool = True
    # schedule (the DARTS CIFAR evaluation protocol)
    epochs: int = 600
    batch_size: int = 96
    learning_rate: float = 0.025
    learning_rate_min: float = 0.0
    lr_schedule: str = "cosine"
    lr_gamma: float = 0.97  # per-epoch decay of the step schedule (DARTS ImageNet)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    # network
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    # run
    seed: int = 0
    deterministic: bool = False  # bitwise-repeatable on CUDA too (ndarts.determinism)
    out: str = "runs/train"
    resume: bool = False
    device: str = "auto"
    amp: str = "none"
    report_freq: int = 50
    max_steps: int | None = None  # steps per epoch cap (train and test), for quick runs
    tensorboard: bool = False
    genotype_dict: dict | None = None  # the resolved cell, filled in by resolve_genotype() (with resume: the run's)

    def validate(self) -> None:
        if self.network not in NETWORKS:
            raise NdartsError(f"unknown --network {self.network!r}; choose one of {NETWORKS}")
        if self.amp not in AMP_MODES:
            raise NdartsError(f"unknown --amp {self.amp!r}; choose one of {AMP_MODES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise NdartsError(f"unknown --lr-schedule {self.lr_schedule!r}; choose one of {LR_SCHEDULES}")
        require_ints(self, 1, "epochs", "batch_size", "init_channels", "layers", "steps", "image_size", "max_steps")
        require_ints(self, 0, "workers", "report_freq", "cutout")
        require_optimizer_settings(self)
        require_seed(self)
        require_numbers(self, "lr_gamma", low_open=True)
        require_numbers(self, "auxiliary_weight")
        require_numbers(self, "drop_path_prob", "label_smoothing", high=1.0, high_open=True)

    def resolve_genotype(self) -> Genotype:
        """The cell, loaded from `genotype`; with resume and genotype_dict set, that cell: the one
        the run recorded (the CLI passes it on where --genotype is not given again), which goes on
        even where the file it was read from has moved or changed since."""
        if self.resume and self.genotype_dict is not None:
            g = Genotype.from_dict(self.genotype_dict, steps=self.steps)
        else:
            g = load_genotype(self.genotype, steps=self.steps)
        self.genotype_dict = g.to_dict()
        return g

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Divergence(NdartsError):
    pass


class Evaluation(NamedTuple):
    """A test of a network: mean cross-entropy, top-1 and top-5 accuracy (None without a test split)."""
    loss: float | None
    acc: float | None
    acc_top5: float | None


def image_transforms_for(network: str) -> str:
    """An image folder's transforms (ndarts.data.IMAGE_TRANSFORMS) for a network's protocol: DARTS's
    ImageNet crops for the ImageNet network, whose published numbers are of those, for its training
    and for ndarts.evaluate alike; the squashing resize for the CIFAR network."""
    return "imagenet" if network == "imagenet" else "resize"


def autocast_context(device: torch.device, amp: str):
    """Mixed precision for the forward pass: bf16 or fp16 autocast, or nothing."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class Trainer:
    def __init__(self, cfg: TrainConfig, dist=None, data: DataSpec | None = None):
        """data: a caller's own dataset (DataSpec of InMemoryDatasets, say) in place of cfg.dataset's."""
        cfg.validate()
        self.cfg = cfg
        self._data = data
        record_data_source(cfg, data)
        self.genotype = cfg.resolve_genotype()
        self.dist = dist  # ndarts.distributed.DistContext or None
        self.rank0 = dist is None or dist.rank == 0
        self.device = dist.device if dist is not None else resolve_device(cfg.device)
        require_amp_device(cfg.amp, self.device)
        writer_cls = summary_writer_class() if cfg.tensorboard and self.rank0 else None  # fail before touching --out
        self.run = RunDir(cfg.out, cfg.resume, rank0=self.rank0, command="train")
        # deterministic mode: process-wide, before the run's first CUDA op (cuBLAS reads its workspace
        # setting as it starts), undone if the set-up fails
        with self.run.removed_if_unused(), deterministic_setup(cfg.deterministic):
            if self.run.resuming:
                self.run.check_data_source(cfg.own_data)
                self.run.check_same_config(cfg.to_dict(), STRUCTURAL)
            seed_everything(rank_seed(cfg.seed, dist.rank if dist is not None else 0))
            self._build()
            self.start_epoch, self.best_acc, self.best_epoch = 0, None, None
            self.final_acc = None  # the test accuracy of the last epoch done (DARTS's reported figure)
            if self.run.resuming:
                self._load_checkpoint(self.run.checkpoint)
            # a resumed run records the settings it goes on with (a longer --epochs, say): the next resume reads them
            self.run.write_config(cfg.to_dict())
        self.writer = writer_cls(log_dir=str(self.run.track(self.run.path / "tensorboard"))) if writer_cls else None

    # ------------------------------------------------------------------ set-up
    def _build(self):
        cfg, dev = self.cfg, self.device
        spec = self._data if self._data is not None else load_dataset(
            cfg.dataset, cfg.data, cfg.download, cfg.image_size, augment=cfg.augment and cfg.dataset != "digits",
            cutout=cfg.cutout, image_transforms=image_transforms_for(cfg.network))
        self.spec = spec
        train_idx = list(range(len(spec.train)))
        if self.dist is not None:
            train_idx = self.dist.shard(train_idx)
        # a last batch of one image would break BatchNorm in training mode: drop it then
        self.train_stream = BatchStream(spec.train, train_idx, cfg.batch_size, cfg.seed, stream=0,
                                        workers=cfg.workers, drop_last=len(train_idx) % cfg.batch_size == 1,
                                        device=dev)
        self.test_stream = None
        if spec.test is not None:
            test_idx = list(range(len(spec.test)))
            if self.dist is not None:  # every rank tests its own share, the sums are all-reduced
                test_idx = test_idx[self.dist.rank::self.dist.world_size]
            self.test_stream = BatchStream(spec.test, test_idx, cfg.batch_size, cfg.seed, stream=2,
                                           workers=cfg.workers, shuffle=False, device=dev)
        try:
            model = build_network(cfg.network, self.genotype, cfg.init_channels, spec.num_classes, cfg.layers,
                                  cfg.auxiliary, in_channels=spec.in_channels, drop_path_prob=0.0)
        except ValueError as e:
            raise NdartsError(f"cannot build the evaluation network: {e}") from None
        self.model = model.to(dev)
        self.forward_model = self.dist.wrap(self.model) if self.dist is not None else self.model
        self.criterion = CrossEntropy(label_smoothing=cfg.label_smoothing)  # ndarts.losses: deterministic mode's too
        self.test_criterion = CrossEntropy()
        self.optimizer = torch.optim.SGD(self.model.parameters(), cfg.learning_rate, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        if cfg.lr_schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, cfg.epochs,
                                                                        eta_min=cfg.learning_rate_min)
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 1, gamma=cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler(dev.type) if cfg.amp == "fp16" else None

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self, epoch_done: int, rng_ranks=None) -> dict:
        return {
            "kind": CHECKPOINT_KIND,
            "epoch": epoch_done,
            "config": json.dumps(self.cfg.to_dict()),
            "genotype": self.genotype.to_dict(),
            "num_classes": self.spec.num_classes,
            "in_channels": self.spec.in_channels,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,  # the epochs done when best.pt was written
            "test_acc": self.final_acc,  # this epoch's: the final figure of a resume with no epoch left to run
            "rng": rng_state(),
            # under torchrun: every rank's RNG state (rank r goes on with its own drop-path masks)
            "world_size": self.dist.world_size if self.dist is not None else 1,
            "rng_ranks": rng_ranks,
        }

    def _load_checkpoint(self, path):
        state = load_checkpoint(path, map_location=self.device)
        require_keys(state, ("kind", "epoch", "model", "optimizer", "scheduler", "rng"), path)
        require_epochs_cover(int(state["epoch"]), self.cfg.epochs, path)
        if state["kind"] != CHECKPOINT_KIND:
            raise CheckpointError(f"{path} is a {state['kind']!r} checkpoint, not a training checkpoint")
        try:
            self.model.load_state_dict(state["model"])
            # its momentum buffers; the learning rate, momentum and weight decay are this run's settings
            load_optimizer_state(self.optimizer, state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not fit this network/configuration: "
                                  f"{first_sentence(e, 300)}") from None
        # the schedule of this run's settings (--epochs, --learning-rate(-min), --lr-gamma) at the
        # epoch reached, not the checkpoint's scheduler state, which would go on with the old ones
        position_schedule(self.scheduler, int(state["epoch"]))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        restore_rank_rng(state, self.dist, self.cfg.seed, self.start_epoch, self.run.log)
        self.best_acc, self.best_epoch = state.get("best_acc"), state.get("best_epoch")
        self.final_acc = state.get("test_acc")
        if self.rank0 and self.best_epoch is not None and self.best_epoch == self.start_epoch:
            self._repair_best(path)
        self.run.truncate_metrics(self.start_epoch)
        self.run.log(f"resumed from {path} after epoch {self.start_epoch}")

    def _repair_best(self, path):
        """The checkpoint resumed from is its run's best epoch: best.pt must be that same state. An
        epoch that improves writes checkpoint.pt, then best.pt; a run killed between the two (or
        failing to write best.pt) left best.pt an older epoch's, which no later epoch would replace
        unless it did better still. Copied here, best.pt is what the uninterrupted run wrote."""
        best = self.run.path / "best.pt"
        data = path.read_bytes()
        if not best.is_file() or best.read_bytes() != data:
            atomic_write_bytes(best, data)
            self.run.log(f"best.pt was not the checkpoint of epoch {self.best_epoch}, the best so far: rewritten")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict | None:
        cfg = self.cfg
        if self.rank0:
            world = f", {self.dist.world_size} processes" if self.dist is not None else ""
            self.run.log(f"train: {cfg.genotype} ({cfg.network} network, C {cfg.init_channels}, {cfg.layers} cells) "
                         f"on {cfg.dataset}, {self.device}{world}, amp {cfg.amp}, "
                         f"{count_parameters(self.model) / 1e6:.3f} M params (auxiliary tower excluded), "
                         f"{steps_phrase(len(self.train_stream), cfg.max_steps)}"
                         + (", deterministic algorithms" if cfg.deterministic else ""))
            note = no_normal_cell_note(cfg.layers, "so the genotype's normal cell is not used")
            if note:
                self.run.log(note)
        return self.run.run_epochs(self.start_epoch, cfg.epochs, self._epoch, writer=self.writer, out_of_memory=(
            f"at --batch-size {cfg.batch_size}: lower --batch-size (e.g. {max(1, cfg.batch_size // 2)}), "
            "or use --amp bf16"))

    def _epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs  # DARTS's linear ramp
        lr = self.scheduler.get_last_lr()[0]
        t0 = time.time()
        train = self._train_epoch(epoch)
        test_loss, test_acc, test_top5 = self.evaluate()
        self.scheduler.step()
        record = {"epoch": epoch, "lr": lr, "drop_path_prob": self.model.drop_path_prob, **train,
                  "test_loss": test_loss, "test_acc": test_acc, "test_acc_top5": test_top5,
                  "seconds": time.time() - t0}
        self.final_acc = test_acc
        rng_ranks = gather_rng_states(self.dist)  # a collective: before the other ranks return
        if not self.rank0:
            return record
        improved = test_acc is not None and (self.best_acc is None or test_acc > self.best_acc)
        if improved:
            self.best_acc, self.best_epoch = test_acc, epoch + 1
        record["best_acc"] = self.best_acc
        self.run.append_metrics(record)
        state = self._checkpoint_state(epoch + 1, rng_ranks)
        # checkpoint.pt first: a kill before best.pt is written leaves a checkpoint that is its own
        # best_epoch, and the resume copies it to best.pt (_repair_best)
        save_checkpoint(state, self.run.checkpoint)
        if improved:
            save_checkpoint(state, self.run.path / "best.pt")
        if self.writer is not None:
            write_scalars(self.writer, record, ("train_loss", "train_acc", "test_loss", "test_acc", "test_acc_top5",
                                                "lr"), epoch + 1)
        test = "no test split" if test_acc is None else (f"test loss {test_loss:.4f} acc {test_acc:.4f} top-5 "
                                                          f"{test_top5:.4f} (best {self.best_acc:.4f})")
        self.run.log(f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.5f} train loss {train['train_loss']:.4f} "
                     f"acc {train['train_acc']:.4f} | {test} | {record['seconds']:.1f}s")
        return record

    def _train_epoch(self, epoch: int) -> dict:
        cfg, dev = self.cfg, self.device
        self.forward_model.train()
        meter = EpochMeter()
        # checked on the device, read at progress lines and at the end of the epoch (no sync per
        # step); fp16's GradScaler skips the steps with inf/NaN gradients itself
        watch = FiniteWatch(("training loss",) if self.scaler is not None else ("training loss", "gradient"))
        n_steps = steps_per_epoch(len(self.train_stream), cfg.max_steps)
        for step, (x, y) in enumerate(self.train_stream.iterate(epoch)):
            if step >= n_steps:
                break
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with autocast_context(dev, cfg.amp):
                logits, logits_aux = self.forward_model(x)
                loss = self.criterion(logits, y)
                if logits_aux is not None:
                    loss = loss + cfg.auxiliary_weight * self.criterion(logits_aux, y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)  # skips the step on inf/NaN gradients (fp16 overflow)
                self.scaler.update()
                watch.update(step, (loss,))
            else:
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                watch.update(step, (loss, grad_norm))
            meter.update(loss, logits, y)
            if cfg.report_freq and (step + 1) % cfg.report_freq == 0:
                self._stop_if_diverged(watch, epoch)
            meter.log_progress(self.run, epoch, step, n_steps, cfg.report_freq)
        self._stop_if_diverged(watch, epoch)
        return meter.summary(n_steps, self.dist)

    def _stop_if_diverged(self, watch: FiniteWatch, epoch: int):
        bad = watch.first_bad()
        if bad is not None:
            self._diverged(epoch, bad[1], bad[0])

    def _diverged(self, epoch, step, what):
        raise Divergence(f"non-finite {what} at epoch {epoch + 1}, step {step + 1}: stopping; "
                         + self.run.after_stop("lower --learning-rate (or use --amp none)", epoch))

    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Loss, top-1 and top-5 accuracy on the test split (all None without one). Under torchrun
        every rank tests its share with rank 0's BatchNorm statistics, those the checkpoint saves (DDP
        broadcasts them only at the start of a forward, and every rank's training batches moved its own)."""
        if self.test_stream is None:
            return Evaluation(None, None, None)
        if self.dist is not None:
            self.dist.broadcast_buffers(self.model)
        return evaluate_model(self.model, self.test_stream, self.device, self.cfg.amp, self.cfg.max_steps,
                              dist=self.dist)


@torch.no_grad()
def evaluate_model(model, stream: BatchStream, device, amp: str = "none", max_steps=None, dist=None) -> Evaluation:
    """Mean cross-entropy, top-1 and top-5 accuracy of `model` (eval mode) over `stream`; under DDP
    (`dist`) every rank tests its share and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sum_loss = torch.zeros((), device=device)  # on the device: one sync at the end, not one per batch
    correct = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for step, (x, y) in enumerate(stream.iterate(0)):
        if max_steps is not None and step >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits, _ = model(x)
        logits = logits.float()
        sum_loss += criterion(logits, y)
        correct += (logits.argmax(1) == y).sum()
        correct5 += topk_correct(logits, y, 5)
        n += y.shape[0]
    model.train(was_training)
    tot_loss, correct, correct5 = float(sum_loss), int(correct), int(correct5)
    if dist is not None:
        tot_loss, correct, correct5, n = dist.sum_scalars(tot_loss, correct, correct5, n)
    n = max(n, 1)
    return Evaluation(tot_loss / n, correct / n, correct5 / n)

"""The NoisyDARTS search loop: alternate α steps (α half) and w steps (w half), epoch by epoch.

Reads top to bottom: build (data, model, optimizers) → maybe resume → for each epoch: set the
noise decay, train (α step, then w step, per batch), evaluate on the α half, derive the genotype,
write metrics, genotype and an atomic checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import torch

from .architect import Architect
from .cell_layout import no_normal_cell_note
from .config_checks import (require_epochs_cover, require_ints, require_numbers, require_optimizer_settings,
                            require_seed)
from .conv_tuning import AUTO_CANDIDATES, TUNING_CALLS, synthetic_batch, tune_triton_convs
from .checkpoint import (CheckpointError, first_sentence, load_checkpoint, load_optimizer_state, position_schedule,
                         require_keys, save_checkpoint)
from .determinism import deterministic_setup
from .data import BatchStream, DataSpec, EndlessStream, load_dataset, split_halves
from .grouped_state import convert_optimizer_state
from .errors import NdartsError
from .finite_watch import FiniteWatch
from .genotype import save_genotype
from .graph_step import GraphedEvaluation, evaluation_sums, make_graph_step
from .losses import CrossEntropy
from .meters import EpochMeter, steps_per_epoch, steps_phrase
from .noise import NoiseConfig
from .nasbench201.network import Nb201SearchNetwork
from .operations import NAS_BENCH_201, SPACES
from .distributed import gather_rng_states, rank_seed, restore_rank_rng
from .rng import rng_state, seed_everything, set_rng_state
from .rundir import RunDir, summary_writer_class, write_scalars
from .search_model import SearchNetwork
from .search_step import search_step

# Settings a resumed run must share with its checkpoint (others, like --epochs, may change).
STRUCTURAL = ("dataset", "space", "layers", "init_channels", "steps", "order", "noise", "noise_lambda",
              "noise_mean", "noise_mixture", "noise_decay", "noise_position", "arch_activation", "seed",
              "batch_size", "train_portion", "image_size")
STRUCTURAL_NB201 = ("cells_per_stage",)  # and for the NAS-Bench-201 space (older runs never had it)
UNUSED_NB201 = ("layers", "steps")  # its network has --cells-per-stage instead


def structural_settings(space: str) -> tuple:
    """The settings a resumed search must share with its checkpoint: those its network and data depend on."""
    if space == NAS_BENCH_201:
        return tuple(k for k in STRUCTURAL if k not in UNUSED_NB201) + STRUCTURAL_NB201
    return STRUCTURAL

SEARCH_AMP = {"none": None, "bf16": torch.bfloat16}  # --amp: the autocast dtype
# --triton-convs: the cells' convolutions on ndarts' Triton kernels, as SearchNetwork's
# (fused_depthwise_conv, fused_pointwise_conv, fused_separable_conv); they run where the other search
# kernels do (inside a --cuda-graph capture, or everywhere with --backend triton). Opt-in: not yet
# timed on a GPU. separable: each depthwise → 1×1 pair of the batched stacks on one fused kernel.
TRITON_CONVS = {"none": (False, False, False), "depthwise": (True, False, False),
                "depthwise-wgrad": ("weight_grad", False, False), "pointwise": (False, True, False),
                "all": (True, True, False), "separable": (False, False, True)}


@dataclass
class SearchConfig:
    # data
    dataset: str = "digits"  # with data=DataSpec(...): the spec's name
    data: str | None = None
    own_data: bool = False  # the images were a caller's DataSpec (Searcher(data=...)): a resume needs them again
    download: bool = False
    image_size: int = 32
    workers: int = 0
    train_portion: float = 0.5
    eval_batch_size: int = 256  # the α half's evaluation each epoch (eval-mode BatchNorm: any size, the same math)
    eval_every: int = 1  # evaluate the α half every N epochs and after the last (1: each epoch, as DARTS)
    # schedule (the official NoisyDARTS search)
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 0.05
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum for w (NAS-Bench-201's DARTS protocol: ndarts.search's preset)
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4
    arch_weight_decay: float = 1e-3
    order: str = "first"
    # network
    init_channels: int = 16
    layers: int = 8
    steps: int = 4
    space: str = "noisydarts"
    cells_per_stage: int = 5  # the NAS-Bench-201 space's network: 3 stages of N cells (its N = 5)
    arch_activation: str = "softmax"
    # noise
    noise: str = "gaussian"
    noise_lambda: float = 0.2
    noise_mean: float | None = None
    noise_mixture: str = "additive"
    noise_decay: bool = False
    noise_position: str = "output"
    # run
    seed: int = 2
    out: str = "runs/search"
    resume: bool = False
    device: str = "auto"
    fused: bool = False
    backend: str | None = None
    cuda_graph: bool = False  # replay the whole search step (and the evaluation's batches) as CUDA graphs (ndarts.graph_step)
    batch_edge_convs: bool = True  # the sep/dil convs of all edges leaving a node as one batched stack
    amp: str = "none"  # "bf16": the network under bf16 autocast (α, softmax, sums, logits fp32)
    channels_last: bool | None = None  # activations in NHWC; None: on a CPU with the torch ops
    triton_convs: str = "none"  # a TRITON_CONVS key, or "auto": the fastest of AUTO_CANDIDATES, timed here
    triton_convs_chosen: str | None = None  # what "auto" chose (config.json): a resumed run keeps it, untimed
    cudnn_benchmark: bool | None = None  # cuDNN times its algorithms per conv shape (CUDA); None: as the process has it
    deterministic: bool = False  # bitwise-repeatable on CUDA too (ndarts.determinism): deterministic algorithms only
    tensorboard: bool = False  # scalars per epoch into OUT/tensorboard
    report_freq: int = 50
    max_steps: int | None = None  # steps per epoch cap, for quick runs
    hessian_every: int = 0  # dominant Hessian eigenvalue of L_val w.r.t. α every N epochs (0: off)
    extra: dict = field(default_factory=dict)

    def noise_config(self) -> NoiseConfig:
        return NoiseConfig(kind=self.noise, lam=self.noise_lambda, mean=self.noise_mean,
                           mixture=self.noise_mixture, decay=self.noise_decay,
                           reduction_position=self.noise_position)

    def validate(self) -> None:
        if self.space not in SPACES:
            raise NdartsError(f"unknown search space {self.space!r}; choose one of {sorted(SPACES)}")
        require_ints(self, 1, "epochs", "batch_size", "eval_batch_size", "eval_every", "init_channels", "layers",
                     "steps", "image_size", "max_steps", "cells_per_stage")
        require_ints(self, 0, "workers", "report_freq", "hessian_every")
        require_optimizer_settings(self)
        require_seed(self)
        self._check_nesterov()
        require_numbers(self, "arch_learning_rate", low_open=True)
        require_numbers(self, "arch_weight_decay")
        if self.amp not in SEARCH_AMP:
            raise NdartsError(f"--amp must be one of {sorted(SEARCH_AMP)} for the search, got {self.amp!r} "
                              "(fp16 would need loss scaling)")
        if self.triton_convs not in TRITON_CONVS and self.triton_convs != "auto":
            raise NdartsError(f"--triton-convs must be auto or one of {sorted(TRITON_CONVS)}, "
                              f"got {self.triton_convs!r}")
        if self.space == NAS_BENCH_201 and self.triton_convs not in ("none", "auto"):
            raise NdartsError(f"--triton-convs {self.triton_convs} applies to the DARTS spaces' sep/dil convs; "
                              f"the {NAS_BENCH_201} space has none (drop the flag)")
        if self.triton_convs_chosen is not None and self.triton_convs_chosen not in TRITON_CONVS:
            raise NdartsError(f"triton_convs_chosen must be one of {sorted(TRITON_CONVS)}, got {self.triton_convs_chosen!r}")
        require_numbers(self, "train_portion", low_open=True, high=1.0, high_open=True)
        if self.deterministic and self.cudnn_benchmark:
            raise NdartsError("--deterministic and --cudnn-benchmark: the benchmark picks each convolution's cuDNN "
                              "algorithm by timing it, so two runs may compute differently; drop --cudnn-benchmark")
        if self.deterministic and self.triton_convs == "auto":
            raise NdartsError("--deterministic and --triton-convs auto: auto keeps the variant that was fastest "
                              "when timed, so two runs may compute differently; name one (--triton-convs "
                              f"{'|'.join(TRITON_CONVS)})")
        if self.order not in ("first", "second"):
            raise NdartsError(f"unknown --order {self.order!r}; choose first or second")
        try:
            self.noise_config()
        except ValueError as e:
            raise NdartsError(str(e)) from None

    def _check_nesterov(self) -> None:
        """Nesterov's look-ahead needs a momentum (torch's SGD refuses it with a traceback): one line."""
        if self.nesterov and self.momentum == 0:
            raise NdartsError("--nesterov needs a momentum > 0 (--momentum 0 given): pass --no-nesterov or a momentum")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def record_data_source(cfg, data: DataSpec | None) -> None:
    """A run on a caller's DataSpec records its name as the dataset, and that it was the caller's:
    a command-line resume or ndarts.evaluate, which could load only a named dataset (digits, the
    default), refuse the run instead of going on with other images."""
    cfg.own_data = data is not None
    if data is not None:
        cfg.dataset = data.name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NdartsError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NdartsError(f"--device {name}: CUDA is not available on this machine")
    return dev


# what the loop watches each step (FiniteWatch), and how a divergence names it
# (and each of the network's α tensors, "alphas")
WATCHED = ("loss", "arch_loss", "grad_norm")
WATCHED_AS = {"loss": "training loss", "arch_loss": "validation (α) loss", "grad_norm": "weight gradient",
              "alphas": "architecture weights α"}


class Divergence(NdartsError):
    pass


class Searcher:
    """data: a DataSpec to search on instead of loading cfg.dataset (a caller's own in-memory images,
    e.g. ndarts.image_tensors.ImageTensors; a resumed run must be given the same data)."""

    def __init__(self, cfg: SearchConfig, dist=None, data: DataSpec | None = None):
        cfg.validate()
        self.cfg = cfg
        self._data = data
        record_data_source(cfg, data)
        self.dist = dist  # ndarts.distributed.DistContext or None
        self.rank0 = dist is None or dist.rank == 0
        self.device = dist.device if dist is not None else resolve_device(cfg.device)
        writer_cls = summary_writer_class() if cfg.tensorboard and self.rank0 else None  # fail before touching --out
        self.run = RunDir(cfg.out, cfg.resume, rank0=self.rank0, command="search")
        # deterministic mode: process-wide, before the run's first CUDA op (cuBLAS reads its workspace
        # setting as it starts), undone if the set-up fails
        with self.run.removed_if_unused(), deterministic_setup(cfg.deterministic):
            if dist is not None:
                dist.barrier()  # every rank has checked the run directory before rank 0 writes into it
            if self.run.resuming:
                self.run.check_data_source(cfg.own_data)
                self.run.check_same_config(cfg.to_dict(), structural_settings(cfg.space))
                self._keep_checkpoint_layout()
            seed_everything(rank_seed(cfg.seed, dist.rank if dist is not None else 0))
            self._build()
            self.start_epoch = 0
            if self.run.resuming:
                self._load_checkpoint()
            # a resumed run records the settings it goes on with (a longer --epochs, say): the next resume reads them
            self.run.write_config(cfg.to_dict())
        self.writer = writer_cls(log_dir=str(self.run.track(self.run.path / "tensorboard"))) if writer_cls else None

    # ------------------------------------------------------------------ set-up
    def _keep_checkpoint_layout(self):
        """A resumed run keeps the conv layout of its checkpoint (batch_edge_convs; runs from before
        the option are per edge): the same math either way, but the optimizer's momentum is stored
        per parameter, and the two layouts have different parameters. With --triton-convs auto it
        keeps the variant the run chose."""
        config = self.run.read_config()
        if config is None:
            return  # no config.json and no readable checkpoint: loading it names the problem
        saved = config.get("batch_edge_convs", False)
        if saved != self.cfg.batch_edge_convs:
            self.run.log(f"note: resuming with batch_edge_convs={saved}, the layout of the checkpoint")
            self.cfg.batch_edge_convs = saved
        # --triton-convs auto: the variant the run chose, not a new timing that may choose another
        # (another variant rounds differently: the resumed run would not be the uninterrupted one)
        if self.cfg.triton_convs == "auto" == config.get("triton_convs") and config.get("triton_convs_chosen"):
            self.cfg.triton_convs_chosen = config["triton_convs_chosen"]

    def _build(self):
        cfg, dev = self.cfg, self.device
        spec = self._data if self._data is not None else load_dataset(
            cfg.dataset, cfg.data, cfg.download, cfg.image_size, augment=cfg.dataset != "digits")
        self.spec = spec
        w_idx, a_idx = split_halves(len(spec.train), seed=0, portion=cfg.train_portion)
        if self.dist is not None:
            w_idx, a_idx = self.dist.shard(w_idx), self.dist.shard(a_idx)
        # batches are made on the device where the dataset fits in memory (CIFAR: ndarts.image_tensors)
        self.train_stream = BatchStream(spec.train, w_idx, cfg.batch_size, cfg.seed, stream=0, workers=cfg.workers,
                                        device=dev)
        self.val_stream = BatchStream(spec.train, a_idx, cfg.batch_size, cfg.seed, stream=1, workers=cfg.workers,
                                      device=dev)
        self.val_iter = EndlessStream(self.val_stream)
        # the epoch's evaluation on the α half, as DARTS's infer() (its images augmented as the α steps' are)
        self.eval_stream = BatchStream(spec.train, a_idx, cfg.eval_batch_size, cfg.seed, stream=1,
                                       workers=cfg.workers, device=dev)

        if cfg.fused and dev.type != "cuda" and (cfg.backend or "auto") == "auto":
            self.run.log("note: --fused on a CPU uses the reference implementation of the fused op "
                         "(the Triton kernels need CUDA, or TRITON_INTERPRET=1 with --backend triton)")
        if dev.type == "cuda" and cfg.cudnn_benchmark is not None:
            # process-wide, as DARTS's search script sets it; cuDNN then times its algorithms on the
            # first call of each conv shape (the eager warm-up steps before a --cuda-graph capture)
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        if cfg.cuda_graph:
            self._check_graph_step_allowed()  # before any tuning step is captured
        self.criterion = CrossEntropy()  # deterministic mode's own formulation there (ndarts.losses)
        self.triton_convs = self._choose_triton_convs()  # a TRITON_CONVS key ("auto": the fastest here)
        self.model = self._new_model(self.triton_convs)
        self.w_opt, self.a_opt, self.architect = self._optimizers(self.model)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=cfg.learning_rate_min)
        self.forward_model = self.dist.wrap(self.model) if self.dist is not None else self.model
        self.graph_step = self._make_graph_step() if cfg.cuda_graph else None
        self.scale_on_device = self.model.noise_scale_is_read_on_device  # the graph step's key: see _train_epoch
        # the evaluation's full batches as one CUDA graph too, captured once for the whole search
        self.graph_eval = GraphedEvaluation(self.model) if cfg.cuda_graph else None

    def _new_model(self, triton_convs: str) -> SearchNetwork | Nb201SearchNetwork:
        """A search network of this run's configuration on its device, its cells' convolutions as
        `triton_convs` (a TRITON_CONVS key) says (the DARTS spaces)."""
        cfg, spec = self.cfg, self.spec
        depthwise, pointwise, separable = TRITON_CONVS[triton_convs]
        try:
            if cfg.space == NAS_BENCH_201:
                model = Nb201SearchNetwork(cfg.init_channels, spec.num_classes, cfg.cells_per_stage, cfg.noise_config(),
                                           fused=cfg.fused, in_channels=spec.in_channels,
                                           arch_activation=cfg.arch_activation, backend=cfg.backend,
                                           channels_last=cfg.channels_last, autocast=SEARCH_AMP[cfg.amp])
                return model.to(self.device)
            model = SearchNetwork(cfg.init_channels, spec.num_classes, cfg.layers, SPACES[cfg.space],
                                  cfg.noise_config(), fused=cfg.fused, steps=cfg.steps, multiplier=cfg.steps,
                                  in_channels=spec.in_channels, arch_activation=cfg.arch_activation,
                                  backend=cfg.backend, batch_edge_convs=cfg.batch_edge_convs,
                                  autocast=SEARCH_AMP[cfg.amp], channels_last=cfg.channels_last,
                                  fused_depthwise_conv=depthwise, fused_pointwise_conv=pointwise,
                                  fused_separable_conv=separable)
        except ValueError as e:
            raise NdartsError(f"cannot build the search network: {e}") from None
        return model.to(self.device)

    def _optimizers(self, model):
        """(w optimizer, α optimizer, architect) of a model, as the search steps them."""
        cfg = self.cfg
        w_opt = torch.optim.SGD(model.weight_parameters(), cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=cfg.arch_learning_rate, betas=(0.5, 0.999),
                                 weight_decay=cfg.arch_weight_decay, capturable=cfg.cuda_graph)
        architect = Architect(model, a_opt, w_opt, self.criterion, cfg.order, cfg.momentum, cfg.weight_decay,
                              grad_hook=self.dist.all_reduce_mean if self.dist is not None else None)
        return w_opt, a_opt, architect

    def _choose_triton_convs(self) -> str:
        """cfg.triton_convs, or with "auto" the fastest candidate timed on this device (ndarts.conv_tuning)."""
        cfg = self.cfg
        if cfg.space == NAS_BENCH_201:
            if cfg.triton_convs == "auto":
                cfg.triton_convs_chosen = "none"  # nothing to time: the space has no sep/dil convs
            return "none"
        if cfg.triton_convs != "auto":
            if cfg.triton_convs != "none":
                why_not = self._why_conv_kernels_idle()
                if why_not:
                    self.run.log(f"note: --triton-convs {cfg.triton_convs} changes nothing here ({why_not})")
            return cfg.triton_convs
        if cfg.triton_convs_chosen is not None:
            self.run.log(f"--triton-convs auto: {cfg.triton_convs_chosen}, as this run chose before")
            return cfg.triton_convs_chosen
        why_not = self._why_conv_kernels_idle()
        if why_not:
            self.run.log(f"--triton-convs auto: none ({why_not})")
            cfg.triton_convs_chosen = "none"
            return "none"
        candidates = [c for c in AUTO_CANDIDATES if cfg.batch_edge_convs or not TRITON_CONVS[c][2]]
        spec = self.spec
        batch = synthetic_batch(cfg.batch_size, spec.in_channels, spec.image_size, spec.num_classes, self.device)
        state = rng_state()  # the candidates' networks draw weights and noise: the search after them must not differ
        try:
            result = tune_triton_convs(candidates, self._tuning_step, batch, cfg.learning_rate, self.device,
                                       **TUNING_CALLS["graph" if cfg.cuda_graph else "eager"])
        finally:
            set_rng_state(state)
        self.run.log(result.summary())
        cfg.triton_convs_chosen = result.choice  # into config.json
        return result.choice

    def _why_conv_kernels_idle(self) -> str | None:
        """Why --triton-convs would change nothing in this run (None: it would)."""
        cfg = self.cfg
        if self.dist is not None:
            return "not tuned under torchrun, where the Triton convs run only with --backend triton"
        from .backend import BackendError, requested_backend, resolve_backend

        try:
            resolved = resolve_backend(cfg.backend, self.device)
        except BackendError as e:
            raise NdartsError(str(e)) from None
        if resolved != "triton":
            return f"the search kernels run on the torch backend on {self.device}"
        if not cfg.cuda_graph and requested_backend(cfg.backend) != "triton":
            return "the Triton convs run only inside a --cuda-graph capture or with --backend triton"
        return None

    def _tuning_step(self, triton_convs: str):
        """The step this run would take, on a fresh network whose convolutions run as triton_convs."""
        cfg = self.cfg
        model = self._new_model(triton_convs)
        w_opt, _, architect = self._optimizers(model)
        if cfg.cuda_graph:
            return make_graph_step(model, architect, w_opt, self.criterion, cfg.grad_clip)
        weights = model.weight_parameters()
        return lambda x, y, xv, yv, lr: search_step(architect, model, self.criterion, w_opt, weights,
                                                     cfg.grad_clip, x, y, xv, yv, lr)

    def _check_graph_step_allowed(self):
        cfg = self.cfg
        if self.device.type != "cuda":
            raise NdartsError("--cuda-graph needs a CUDA device")
        if self.dist is not None:
            raise NdartsError("--cuda-graph is not supported with torchrun/DDP; drop one of them")
        if cfg.fused:
            from .backend import resolve_backend

            if resolve_backend(cfg.backend, self.device) != "triton":
                raise NdartsError("--cuda-graph with --fused needs the Triton backend (the torch backend reads "
                                  "its noise seed on the host, which a CUDA graph cannot capture)")

    def _make_graph_step(self):
        return make_graph_step(self.model, self.architect, self.w_opt, self.criterion, self.cfg.grad_clip)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self, epoch_done: int, rng_ranks=None) -> dict:
        return {
            "kind": "ndarts-search",
            "epoch": epoch_done,
            "config": json.dumps(self.cfg.to_dict()),
            "model": self.model.state_dict(),
            "w_optimizer": self.w_opt.state_dict(),
            "a_optimizer": self.a_opt.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "val_stream": self.val_iter.state_dict(),
            "rng": rng_state(),
            # under torchrun: every rank's RNG state (rank r continues its own noise stream)
            "world_size": self.dist.world_size if self.dist is not None else 1,
            "rng_ranks": rng_ranks,
        }

    def _load_checkpoint(self):
        path = self.run.checkpoint
        state = load_checkpoint(path, map_location=self.device)
        require_keys(state, ("kind", "epoch", "model", "w_optimizer", "a_optimizer", "scheduler", "val_stream", "rng"), path)
        require_epochs_cover(int(state["epoch"]), self.cfg.epochs, path)
        if state["kind"] != "ndarts-search":
            raise CheckpointError(f"{path} is a {state['kind']!r} checkpoint, not a search checkpoint")
        try:
            # a run checkpointed in an earlier layout of the grouped convs: its momentum follows the weights
            convert_optimizer_state(self.model, state["model"], state["w_optimizer"])
            self.model.load_state_dict(state["model"])
            # their state; the learning rates, momentum and weight decays are this run's settings
            load_optimizer_state(self.w_opt, state["w_optimizer"])
            load_optimizer_state(self.a_opt, state["a_optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not fit this network/configuration: {first_sentence(e, 300)}") from None
        # the schedule of this run's settings (--epochs, --learning-rate(-min)) at the epoch reached,
        # not the checkpoint's scheduler state, which would go on with the old ones
        position_schedule(self.scheduler, int(state["epoch"]))
        self.val_iter.load_state_dict(state["val_stream"])
        self.start_epoch = int(state["epoch"])
        self._restore_rng(state)
        self.run.truncate_metrics(self.start_epoch)
        self.run.log(f"resumed from {path} after epoch {self.start_epoch}")

    def _restore_rng(self, state: dict):
        restore_rank_rng(state, self.dist, self.cfg.seed, self.start_epoch, self.run.log)

    # ------------------------------------------------------------------ the loop
    def run_search(self):
        cfg = self.cfg
        if self.rank0:
            n_w = sum(p.numel() for p in self.model.weight_parameters())
            self.run.log(f"search: {cfg.dataset} on {self.device}, {cfg.space} space, noise {cfg.noise} "
                         f"λ={cfg.noise_lambda}, {cfg.order} order, {'fused' if cfg.fused else 'reference'} mixed ops, "
                         f"{n_w / 1e6:.3f} M weights, {steps_phrase(len(self.train_stream), cfg.max_steps)}"
                         + (f", {self.dist.world_size} processes × batch {cfg.batch_size}" if self.dist is not None else "")
                         + (", CUDA-graph steps" if cfg.cuda_graph else "")
                         + (", deterministic algorithms" if cfg.deterministic else ""))
            if self.device.type == "cuda" and self.dist is None and not cfg.cuda_graph:
                # eager GPU steps are launch-bound: the graph step was 6× faster on an H200 (RESULTS.md)
                self.run.log("tip: --fused --cuda-graph replays each search step as one CUDA graph "
                             "(6× faster steps on an H200, benchmarks/RESULTS.md)")
            note = cfg.space != NAS_BENCH_201 and no_normal_cell_note(
                cfg.layers, "so the normal cell's α gets no gradient and its derived cell is not searched")
            if note:
                self.run.log(note)
        self.run.run_epochs(self.start_epoch, cfg.epochs, self._epoch, writer=self.writer, out_of_memory=(
            f"at --batch-size {cfg.batch_size}: lower --batch-size (e.g. {max(1, cfg.batch_size // 2)}) "
            "or --init-channels"))
        genotype = self.model.genotype()
        if self.rank0:
            save_genotype(genotype, self.run.path / "genotype.json")
            self.run.log(f"final genotype: {genotype.to_json()}")
            if cfg.space == NAS_BENCH_201:
                self.run.log(f"its accuracy in the benchmark: python -m ndarts.nasbench201 {self.run.path} "
                             "--benchmark FILE (README: NAS-Bench-201)")
        return genotype

    def _epoch(self, epoch: int):
        cfg, model = self.cfg, self.model
        scale = cfg.noise_config().scale_at(epoch, cfg.epochs)
        model.set_noise_scale(scale)
        lr = self.scheduler.get_last_lr()[0]
        t0 = time.time()
        train = self._train_epoch(epoch, lr, scale)
        val_loss = val_acc = None  # JSON null, no TensorBoard scalar, no point on the curve
        if self.evaluates_after(epoch):
            val_loss, val_acc = self.evaluate(self.eval_stream, epoch)
        self.scheduler.step()
        genotype = model.genotype()
        skips = genotype.skip_counts()
        record = {
            "epoch": epoch, "lr": lr, "noise_scale": scale, **train,
            "val_loss": val_loss, "val_acc": val_acc,
            "skip_normal": skips[0], "skip_reduce": skips[1],  # None: no reduction cell (NAS-Bench-201)
            **model.arch_record(),
            "genotype": genotype.to_dict(), "seconds": time.time() - t0,
        }
        if self.rank0 and cfg.hessian_every and (epoch + 1) % cfg.hessian_every == 0:
            from .hessian import measure_on_stream

            t_hessian = time.time()
            record["hessian_eigenvalue"] = measure_on_stream(model, self.criterion, self.val_stream, self.device)
            record["hessian_seconds"] = time.time() - t_hessian
            record["seconds"] = time.time() - t0  # the epoch's time includes the measurement
        rng_ranks = gather_rng_states(self.dist)
        if self.rank0:
            self.run.append_metrics(record)
            save_genotype(genotype, self.run.track(self.run.path / "genotypes" / f"epoch_{epoch:03d}.json"))
            save_checkpoint(self._checkpoint_state(epoch + 1, rng_ranks), self.run.checkpoint)
            if self.writer is not None:
                write_scalars(self.writer, record, ("train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                                    "noise_scale", "skip_normal", "skip_reduce",
                                                    "hessian_eigenvalue"), epoch + 1)
        if self.dist is not None:
            self.dist.barrier()  # the checkpoint is on disk before any rank goes on (or reads it on a restart)
        self.run.log(f"epoch {epoch + 1}/{cfg.epochs} train loss {train['train_loss']:.4f} acc {train['train_acc']:.3f} "
                     + (f"| val loss {val_loss:.4f} acc {val_acc:.3f} " if val_loss is not None else "| val - ")
                     + (f"| skips normal {skips[0]} reduce {skips[1]} " if skips[1] is not None else f"| skips {skips[0]} ")
                     + (f"| hessian eigenvalue {record['hessian_eigenvalue']:.4g} ({record['hessian_seconds']:.1f}s) "
                        if "hessian_eigenvalue" in record else "")
                     + f"| {record['seconds']:.1f}s")

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the α half is evaluated after `epoch` (0-based): every --eval-every epochs and the last."""
        return (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs

    def _train_epoch(self, epoch: int, lr: float, noise_scale: float) -> dict:
        cfg, dev = self.cfg, self.device
        self.forward_model.train()
        weights = self.model.weight_parameters()
        meter = EpochMeter()
        # no host sync per step: the losses, the gradient norm and α are checked on the device, and
        # read where a progress line is logged and at the end of the epoch (before its checkpoint)
        watch = FiniteWatch(WATCHED + ("alphas",) * len(self.model.arch_parameters()))
        n_steps = steps_per_epoch(len(self.train_stream), cfg.max_steps)
        for step, (x, y) in enumerate(self.train_stream.iterate(epoch)):
            if step >= n_steps:
                break
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            xv, yv = next(self.val_iter)
            xv, yv = xv.to(dev, non_blocking=True), yv.to(dev, non_blocking=True)

            if self.graph_step is not None:
                # replayed as one CUDA graph, captured once: the noise scale (--noise-decay's new
                # one each epoch) and lr (the w update's and a second-order step's ξ) are read on the
                # device
                key = None if self.scale_on_device else noise_scale
                loss, logits, arch_loss, grad_norm = self.graph_step(x, y, xv, yv, lr, key=key)
            else:
                loss, logits, arch_loss, grad_norm = search_step(
                    self.architect, self.forward_model, self.criterion, self.w_opt, weights, cfg.grad_clip,
                    x, y, xv, yv, lr)
            watch.update(step, (loss, arch_loss, grad_norm, *self.model.arch_parameters()))
            meter.update(loss, logits, y)
            if cfg.report_freq and (step + 1) % cfg.report_freq == 0:
                self._stop_if_diverged(watch, epoch)
            meter.log_progress(self.run, epoch, step, n_steps, cfg.report_freq)
        self._stop_if_diverged(watch, epoch)
        return meter.summary(n_steps, self.dist)

    def _evaluate_batch(self, x, y):
        """(summed loss, correct count) of one batch, replayed as a CUDA graph with --cuda-graph."""
        if self.graph_eval is not None:
            try:
                return self.graph_eval(x, y)
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError as e:
                if self.graph_eval.captures:
                    raise
                # the step's graph is what --cuda-graph promises; the evaluation may stay eager
                self.run.log(f"the evaluation is not replayed as a CUDA graph ({str(e).splitlines()[0]}): "
                             "evaluating eagerly")
                self.graph_eval = None
        return evaluation_sums(self.model, x, y)

    def _stop_if_diverged(self, watch: FiniteWatch, epoch: int):
        bad = watch.first_bad()
        if bad is not None:
            what, step = bad
            raise Divergence(f"non-finite {WATCHED_AS[what]} at epoch {epoch + 1}, step {step + 1}: stopping; "
                             + self.run.after_stop("lower the learning rates", epoch))

    @torch.no_grad()
    def evaluate(self, stream: BatchStream, epoch: int) -> tuple[float, float]:
        if self.dist is not None:
            self.dist.broadcast_buffers(self.model)  # every rank evaluates the model rank 0 checkpoints
        self.model.eval()
        sum_loss = torch.zeros((), device=self.device)  # on the device: one sync at the end, not one per batch
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        for step, (x, y) in enumerate(stream.iterate(0)):
            if self.cfg.max_steps is not None and step >= self.cfg.max_steps:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            batch_loss, batch_correct = self._evaluate_batch(x, y)
            sum_loss += batch_loss  # before the next replay overwrites the graph's outputs (same stream)
            correct += batch_correct
            n += y.shape[0]
        self.model.train()
        tot_loss, correct = float(sum_loss), int(correct)
        if self.dist is not None:
            tot_loss, correct, n = self.dist.sum_scalars(tot_loss, correct, n)
        return tot_loss / max(n, 1), correct / max(n, 1)

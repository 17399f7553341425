"""Multi-process search under torchrun (CPU, gloo, 2 processes).

Each test launches ``python -m torch.distributed.run --nproc_per_node=2 tests/test_distributed.py
--dump DIR [--freeze-bn] -- <search flags>``: this file, run as a script, is the real search CLI
(``ndarts.search.main``) with one test-only addition: every rank saves its α and weights to
DIR/rank{r}.pt after the search, so the test can compare the ranks.

What is checked:
- α and the weights are bitwise identical on both ranks after a search with noise (each rank its
  own noise): first order with the reference mixed op, second order with the fused one; the
  ranks' RNG streams differ and the checkpoint keeps each.
- Equivalence: with ``--noise none`` a 2-process search equals a 1-process search whose batch at
  every step is the union of the two ranks' batches (the global batch). BatchNorm in training
  mode normalises with per-rank batch statistics, so the two cannot agree with it; the
  equivalence runs hold every BatchNorm in eval mode (running statistics: mean 0, variance 1,
  no sample interacts with another), which leaves DDP's gradient averaging, the α all-reduce,
  the sharding and the optimizers as the only things compared.
- ``--resume`` under torchrun: 1 epoch, then resumed to 2; only rank 0 writes the run files.
- NAS-Bench-201's space (one α, ``alphas_cell``): the ranks end identical too.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

TINY_ANY_SPACE = ["--dataset", "digits", "--init-channels", "4", "--batch-size", "8", "--max-steps", "2", "--device",
                  "cpu", "--report-freq", "0"]
TINY = TINY_ANY_SPACE + ["--layers", "3"]  # the DARTS spaces (NAS-Bench-201's refuses --layers)


# ----------------------------------------------------------------------------- worker (under torchrun)
def freeze_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm in eval mode for good (``model.train()`` no longer reaches it)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = lambda mode=True, m=m: m


def _worker(argv: list[str]) -> None:
    from ndarts import search as cli
    from ndarts.searcher import Searcher

    sep = argv.index("--")
    opts, search_argv = argv[:sep], argv[sep + 1:]
    dump = Path(opts[opts.index("--dump") + 1])
    build, run_search = Searcher._build, Searcher.run_search

    def build_and_freeze(self):
        build(self)
        if "--freeze-bn" in opts:
            freeze_batchnorm(self.model)

    def run_and_dump(self):
        genotype = run_search(self)
        rank = self.dist.rank if self.dist is not None else 0
        dump.mkdir(parents=True, exist_ok=True)
        torch.save({n: p.detach().clone() for n, p in self.model.named_parameters()}, dump / f"rank{rank}.pt")
        return genotype

    Searcher._build, Searcher.run_search = build_and_freeze, run_and_dump
    cli.main(search_argv)


# ----------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(dump: Path, search_args: list[str], freeze_bn=False, nproc=2) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, "--dump", str(dump)]
    cmd += ["--freeze-bn"] if freeze_bn else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # the CPU path of --fused is the reference (no Triton needed)
    proc = subprocess.run(cmd + ["--"] + search_args, capture_output=True, text=True, env=env, timeout=180,
                          cwd=Path(__file__).resolve().parents[1])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{out[-6000:]}"
    assert "Grad strides do not match bucket view strides" not in out  # grads_strided_as_weights
    return out


def load_ranks(dump: Path, n=2) -> list[dict]:
    return [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(n)]


def assert_ranks_identical(ranks: list[dict]) -> None:
    for name, p in ranks[0].items():
        for r, other in enumerate(ranks[1:], 1):
            assert torch.equal(p, other[name]), f"{name} differs between rank 0 and rank {r}"


def assert_checkpoint_of_ranks(out: Path, ranks: list[dict]) -> None:
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert torch.equal(ckpt["model"]["alphas_normal"], ranks[0]["alphas_normal"])
    # each rank drew its own noise (distributed.rank_seed); the checkpoint keeps every rank's RNG state
    rng = ckpt["rng_ranks"]
    assert ckpt["world_size"] == 2 and len(rng) == 2
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("fused", [False, True])
def test_weight_grads_keep_the_weights_strides_as_ddp_compares_them(fused):
    """channels_last on a CPU (the default there): a 1×1 conv weight after a strided input and the
    depthwise weights get gradients whose strides differ from theirs in size-1 dimensions, which
    DDP's bucket views warn about on every process; grads_strided_as_weights (DistContext.wrap)
    gives each gradient its weight's strides. One process: DDP needs none to be compared."""
    from ndarts.distributed import grads_strided_as_weights
    from ndarts.search_model import SearchNetwork

    def mismatched(model):
        torch.manual_seed(0)
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        return [n for n, p in model.named_weight_parameters() if p.grad is not None and p.grad.stride() != p.stride()]

    torch.manual_seed(0)
    plain = SearchNetwork(C=4, num_classes=10, layers=3, fused=fused, channels_last=True)
    fixed = SearchNetwork(C=4, num_classes=10, layers=3, fused=fused, channels_last=True)
    fixed.load_state_dict(plain.state_dict())
    assert mismatched(plain)  # what the hooks are for
    grads_strided_as_weights(fixed)
    assert mismatched(fixed) == []
    for (n, p), q in zip(plain.named_weight_parameters(), fixed.weight_parameters()):
        assert torch.equal(p.grad, q.grad), n  # a view with other strides: the same values


def test_second_order_fused_alpha_identical_on_every_rank(tmp_path):
    # (first order with the reference op: test_resume_under_torchrun)
    out = tmp_path / "run"
    torchrun(tmp_path / "dump", TINY + ["--epochs", "1", "--order", "second", "--fused", "--out", str(out)])
    ranks = load_ranks(tmp_path / "dump")
    assert_ranks_identical(ranks)  # α and weights, bitwise
    assert_checkpoint_of_ranks(out, ranks)


def test_nas_bench_201_search_alpha_identical_on_every_rank(tmp_path):
    """NAS-Bench-201's space under torchrun: its one α (alphas_cell) is kept out of DDP, broadcast and
    all-reduced like the DARTS cells' α; the ranks end with the same α and weights."""
    out = tmp_path / "run"
    torchrun(tmp_path / "dump", TINY_ANY_SPACE + ["--epochs", "1", "--space", "nas-bench-201", "--cells-per-stage", "1",
                                        "--fused", "--out", str(out)])
    ranks = load_ranks(tmp_path / "dump")
    assert "alphas_cell" in ranks[0]
    assert_ranks_identical(ranks)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert torch.equal(ckpt["model"]["alphas_cell"], ranks[0]["alphas_cell"])


class _UnionStream:
    """The global batch of a multi-process run: rank 0's batch, then rank 1's, ... at every step."""

    def __init__(self, streams):
        self.streams = streams

    def __len__(self):
        return len(self.streams[0])

    def iterate(self, pass_idx, start=0):
        for parts in zip(*(s.iterate(pass_idx, start) for s in self.streams)):
            yield torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def single_process_over_global_batch(cfg, world_size: int):
    """The 1-process search that sees, at every step, the union of the world_size ranks' batches."""
    from ndarts.data import BatchStream, EndlessStream, split_halves
    from ndarts.distributed import DistContext
    from ndarts.searcher import Searcher

    s = Searcher(cfg)
    freeze_batchnorm(s.model)
    w_idx, a_idx = split_halves(len(s.spec.train), seed=0, portion=cfg.train_portion)
    shards = [DistContext(r, world_size, r, torch.device("cpu")) for r in range(world_size)]
    s.train_stream = _UnionStream([BatchStream(s.spec.train, d.shard(w_idx), cfg.batch_size, cfg.seed, stream=0)
                                   for d in shards])
    s.val_stream = _UnionStream([BatchStream(s.spec.train, d.shard(a_idx), cfg.batch_size, cfg.seed, stream=1)
                                 for d in shards])
    s.val_iter = EndlessStream(s.val_stream)
    s.eval_stream = _UnionStream([BatchStream(s.spec.train, d.shard(a_idx), cfg.eval_batch_size, cfg.seed, stream=1)
                                  for d in shards])
    initial = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1); 2 threads on a loaded 2-core CI box crawl
    try:
        s.run_search()
    finally:
        torch.set_num_threads(threads)
    return s, initial


ATOL, RTOL = 2e-6, 1e-4


@pytest.mark.parametrize("order", ["first", "second"])
def test_two_processes_equal_one_process_over_the_global_batch(tmp_path, order):
    from ndarts.search import build_parser, config_from_args

    args = TINY + ["--epochs", "1", "--noise", "none", "--order", order]
    torchrun(tmp_path / "dump", args + ["--out", str(tmp_path / "ddp")], freeze_bn=True)
    ranks = load_ranks(tmp_path / "dump")
    assert_ranks_identical(ranks)

    cfg = config_from_args(build_parser().parse_args(args + ["--out", str(tmp_path / "single")]))
    ref, initial = single_process_over_global_batch(cfg, world_size=2)
    params = dict(ref.model.named_parameters())
    for name, p in ranks[0].items():
        torch.testing.assert_close(p, params[name].detach(), atol=ATOL, rtol=RTOL,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for name in ("alphas_normal", "alphas_reduce"):  # the comparison is sensitive: α moved ≫ the tolerance
        assert (params[name] - initial[name]).abs().max() > 20 * ATOL
    ddp_metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    ref_metrics = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):  # aggregated over the ranks
        assert ddp_metrics[0][key] == pytest.approx(ref_metrics[0][key], rel=1e-4, abs=1e-6), key


def test_resume_under_torchrun(tmp_path):
    out = tmp_path / "run"
    args = TINY + ["--out", str(out)]  # first order, reference mixed ops, Gaussian noise
    torchrun(tmp_path / "dump1", args + ["--epochs", "1"])
    assert_ranks_identical(load_ranks(tmp_path / "dump1"))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    log = torchrun(tmp_path / "dump2", args + ["--epochs", "2", "--resume"])
    assert "resumed from" in log
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # rank 0 alone appends
    assert json.loads(lines[0]) == first
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert (out / "genotype.json").is_file() and (out / "genotypes" / "epoch_001.json").is_file()
    ranks = load_ranks(tmp_path / "dump2")
    assert_ranks_identical(ranks)
    assert_checkpoint_of_ranks(out, ranks)


# ----------------------------------------------------------------------------- ndarts.train under torchrun
TRAIN_TINY = ["--dataset", "digits", "--layers", "3", "--init-channels", "4", "--batch-size", "32", "--device", "cpu",
              "--report-freq", "0", "--drop-path-prob", "0.3"]


def torchrun_train(args: list[str], nproc=2) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "ndarts.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def test_training_under_torchrun_tests_what_it_saves_and_resumes_as_the_uninterrupted_run(tmp_path):
    """Two processes of ndarts.train: each epoch's test uses rank 0's BatchNorm statistics, the
    checkpoint's (ndarts.evaluate on it gives the logged loss; each rank's training batches had moved
    its own); a run stopped after epoch 1 and resumed is the uninterrupted one bit for bit (every
    rank goes on with its own drop-path stream: the checkpoint keeps each rank's RNG state)."""
    from ndarts import evaluate

    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun_train(TRAIN_TINY + ["--epochs", "2", "--out", str(full)])
    torchrun_train(TRAIN_TINY + ["--epochs", "1", "--out", str(cut)])
    torchrun_train(TRAIN_TINY + ["--epochs", "2", "--out", str(cut), "--resume"])
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (full, cut))
    assert a["world_size"] == b["world_size"] == 2 and len(b["rng_ranks"]) == 2
    assert not torch.equal(a["rng_ranks"][0]["torch"], a["rng_ranks"][1]["torch"])
    for r in range(2):
        assert torch.equal(a["rng_ranks"][r]["torch"], b["rng_ranks"][r]["torch"]), r
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    logged = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
    result = evaluate.main(["--checkpoint", str(full / "checkpoint.pt"), "--json"])
    assert result["test_loss"] == pytest.approx(logged["test_loss"], rel=1e-5)
    assert result["test_acc"] == pytest.approx(logged["test_acc"], abs=1e-9)


def test_rank_seeds_of_neighbouring_seeds_do_not_meet():
    """Rank 0 draws what one process with the seed draws; no rank of one seed takes another
    seed's stream (seed + rank did: rank 1 of seed s was rank 0 of seed s + 1)."""
    from ndarts.distributed import rank_seed

    assert [rank_seed(s, 0) for s in range(5)] == list(range(5))
    assert all(rank_seed(s, 1) != rank_seed(s + 1, 0) for s in range(50))
    seeds = {rank_seed(s, r, e) for s in range(50) for r in range(8) for e in (0, 3)}
    assert len(seeds) == 50 * 8 * 2  # every (seed, rank, epoch) its own stream
    assert rank_seed(7, 3, 2) == rank_seed(7, 3, 2) and 0 <= rank_seed(7, 3, 2) < 2**63


if __name__ == "__main__":
    _worker(sys.argv[1:])

"""Input the command-line tools used to take with a traceback or silently: a --seed out of range, a
checkpoint whose fields have the wrong type, flags the run would ignore (--noise none with a noise
flag, --lr-gamma with the cosine schedule, ...), a --data that is a file. Each is one clear line
(exit code 2) before anything is built or written; what worked before still works."""
import json
import random

import numpy as np
import pytest
import torch

from ndarts import evaluate, search, train
from ndarts.checkpoint import CheckpointError, load_checkpoint, require_keys
from ndarts.config_checks import SEED_HIGH, SEED_LOW
from ndarts.data import ITEM_SEED_SALT, BatchStream, InMemoryDataset, load_dataset
from ndarts.distributed import rank_seed
from ndarts.errors import NdartsError
from ndarts.rng import seed_everything
from ndarts.rundir import explicit_flags
from test_train_cli import expect_user_error

TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--max-steps", "1", "--epochs", "1",
        "--report-freq", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny training run and search run (one step each) to take checkpoints from."""
    root = tmp_path_factory.mktemp("runs")
    train.main([*TINY, "--out", str(root / "train")])
    search.main([*TINY, "--out", str(root / "search")])
    return root


# ----------------------------------------------------------------------------- bug 4: --seed
@pytest.mark.parametrize("cli,seed", [(search, "100000000000000"), (train, "-9300000000000"),
                                      (search, str(2**64)), (train, str(SEED_HIGH)), (search, str(SEED_LOW - 1))],
                         ids=["search-1e14", "train-neg", "search-2**64", "train-high", "search-low"])
def test_a_seed_out_of_range_is_one_line(tmp_path, capsys, cli, seed):
    """Was: ValueError "Overflow when unpacking long long" from the first batch's generator
    (data.BatchStream: seed * 1_000_003 + ...), or from torch.manual_seed above 2**64."""
    out = tmp_path / "run"
    expect_user_error(capsys, cli.main, [*TINY, "--out", str(out), f"--seed={seed}"],
                      "--seed must be an integer in [-2**43, 2**44)", f"got {int(seed)}")
    assert not out.exists()


@pytest.mark.parametrize("seed", [SEED_LOW, -1, 0, 2**32 - 1, 1_700_000_000_000, SEED_HIGH - 1])
def test_every_seed_in_range_derives_seeds_torch_takes(seed):
    """The range's edges: each generator seeded from --seed (the process's, every rank's, and each
    batch stream's for any pass and salt) is one torch takes."""
    with torch.random.fork_rng(devices=[]):
        state = random.getstate(), np.random.get_state()
        try:
            seed_everything(seed)
            for rank, epoch in ((0, 0), (1, 0), (3, 7)):
                torch.manual_seed(rank_seed(seed, rank, epoch))
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
    data = InMemoryDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    for stream in (0, 1, 2):
        s = BatchStream(data, range(4), 2, seed, stream)
        for pass_idx in (0, 1, 10**6):
            for salt in (0, 500_009, ITEM_SEED_SALT, ITEM_SEED_SALT + 1):
                s._generator(pass_idx, salt)
        assert len(s.batches(0)) == 2


@pytest.mark.parametrize("cli,seed", [(search, SEED_HIGH - 1), (train, SEED_LOW)], ids=["search", "train"])
def test_the_edges_of_the_seed_range_run(tmp_path, cli, seed):
    cli.main([*TINY, "--out", str(tmp_path / "run"), f"--seed={seed}"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == seed


# ----------------------------------------------------------------------------- bug 7: checkpoint fields
def _corrupt(src, dst, **fields):
    state = torch.load(src, weights_only=True)
    state.update(fields)
    torch.save(state, dst)


EVALUATE_BAD = [
    (dict(model=None), "'model' is None, not a state dict of tensors"),  # was TypeError from load_state_dict
    (dict(model={"stem.0.weight": 1.0}), "'model' is a dict, not a state dict of tensors"),
    (dict(epoch="x"), "'epoch' is the string 'x', not an int >= 0"),  # was ValueError from int()
    (dict(num_classes="10"), "'num_classes' is the string '10', not an int >= 1"),
    (dict(config=None), "'config' is None, not a JSON string"),
    (dict(config="[1, 2]"), "unusable configuration"),
    (dict(kind=3), "'kind' is int 3, not a string"),
]


@pytest.mark.parametrize("fields,message", EVALUATE_BAD, ids=[m for _, m in EVALUATE_BAD])
def test_evaluate_names_a_checkpoint_field_of_the_wrong_type(runs, tmp_path, capsys, fields, message):
    bad = tmp_path / "bad.pt"
    _corrupt(runs / "train" / "best.pt", bad, **fields)
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(bad)], str(bad), message)


def test_evaluate_names_a_missing_epoch(runs, tmp_path, capsys):
    """Was: KeyError 'epoch' after the whole test split had been evaluated."""
    state = torch.load(runs / "train" / "best.pt", weights_only=True)
    del state["epoch"]
    torch.save(state, tmp_path / "bad.pt")
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "bad.pt")], "missing ['epoch']")


SEARCH_BAD = [
    (dict(model=None), "'model' is None"),  # was TypeError: 'NoneType' object is not iterable
    (dict(epoch="x"), "'epoch' is the string 'x', not an int >= 0"),  # was ValueError from int()
    (dict(epoch=True), "'epoch' is bool True"),
    (dict(w_optimizer=None), "'w_optimizer' is None, not an optimizer state dict"),
    (dict(a_optimizer={"state": {}}), "'a_optimizer' is a dict, not an optimizer state dict"),
    (dict(val_stream={}), "'val_stream' is a dict, not a stream position"),
    (dict(rng=None), "'rng' is None, not an RNG state"),
    (dict(rng_ranks="x"), "'rng_ranks' is the string 'x'"),
    (dict(world_size=0), "'world_size' is int 0, not an int >= 1"),
]
TRAIN_BAD = [
    (dict(model=None), "'model' is None"),
    (dict(optimizer=[1]), "'optimizer' is a list, not an optimizer state dict"),
    (dict(best_acc="x"), "'best_acc' is the string 'x', not a number or None"),
    (dict(rng={"torch": torch.zeros(3)}), "'rng' is a dict, not an RNG state"),
]


@pytest.mark.parametrize("cli,run,fields,message", [(search, "search", *b) for b in SEARCH_BAD]
                         + [(train, "train", *b) for b in TRAIN_BAD],
                         ids=[f"search-{m}" for _, m in SEARCH_BAD] + [f"train-{m}" for _, m in TRAIN_BAD])
def test_resume_names_a_checkpoint_field_of_the_wrong_type(runs, tmp_path, capsys, cli, run, fields, message):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(runs / run, out)
    _corrupt(out / "checkpoint.pt", out / "checkpoint.pt", **fields)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    expect_user_error(capsys, cli.main, ["--out", str(out), "--resume", "--epochs", "2"],
                      "is not a complete ndarts checkpoint", message)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_the_checkpoints_ndarts_writes_pass_the_type_checks(runs):
    search_keys = ("kind", "epoch", "model", "w_optimizer", "a_optimizer", "scheduler", "val_stream", "rng")
    train_keys = ("kind", "epoch", "config", "genotype", "model", "num_classes", "in_channels", "optimizer",
                  "scheduler", "rng")
    require_keys(load_checkpoint(runs / "search" / "checkpoint.pt"), search_keys, "search")
    for name in ("checkpoint.pt", "best.pt"):
        require_keys(load_checkpoint(runs / "train" / name), train_keys, name)
    with pytest.raises(CheckpointError, match="'epoch' is float 1.0"):
        require_keys({"epoch": 1.0}, ("epoch",), "x.pt")


# ----------------------------------------------------------------------------- bug 8: ignored flags
@pytest.mark.parametrize("flags,named", [
    (["--noise-lambda", "0.5"], "--noise-lambda"),
    (["--noise-mean", "0.1"], "--noise-mean"),
    (["--noise-mixture", "multiplicative"], "--noise-mixture"),
    (["--noise-mixture", "additive"], "--noise-mixture"),  # the default, but given: still ignored
    (["--noise-decay"], "--noise-decay"),
    (["--noise-position", "input"], "--noise-position"),
    (["--noise-lambda", "0.5", "--noise-decay"], "--noise-lambda, --noise-decay would be ignored: drop those flags"),
])
def test_noise_flags_with_noise_none_are_refused(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    expect_user_error(capsys, search.main, [*TINY, "--out", str(out), "--noise", "none", *flags],
                      "--noise none injects no noise", named)
    assert not out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--no-auxiliary", "--auxiliary-weight", "0.7"], "--auxiliary-weight weights the auxiliary tower's loss"),
    (["--lr-schedule", "cosine", "--lr-gamma", "0.5"], "--lr-gamma is the step schedule's decay per epoch; this "
                                                       "run's --lr-schedule is cosine"),
    (["--lr-gamma", "0.5"], "this run's --lr-schedule is cosine"),  # cosine by default
    (["--lr-schedule", "step", "--learning-rate-min", "0.001"], "--learning-rate-min is the cosine schedule's floor"),
    (["--dataset", "imagefolder", "--network", "imagenet", "--learning-rate-min", "0.001"],
     "this run's --lr-schedule is step"),  # step by the imagenet preset
])
def test_training_flags_the_run_would_ignore_are_refused(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    expect_user_error(capsys, train.main, [*TINY, "--out", str(out), *flags], message)
    assert not out.exists()


def _config(cli, argv):
    parser = cli.build_parser()
    return cli.config_from_args(parser.parse_args(argv), explicit_flags(parser, argv))


def test_flags_the_run_uses_are_accepted():
    assert _config(search, ["--noise", "uniform", "--noise-lambda", "0.5", "--noise-decay", "--out", "x"]).noise_decay
    assert _config(search, ["--noise", "none", "--out", "x"]).noise == "none"
    assert _config(train, ["--lr-schedule", "step", "--lr-gamma", "0.5", "--out", "x"]).lr_gamma == 0.5
    assert _config(train, ["--auxiliary-weight", "0.7", "--out", "x"]).auxiliary_weight == 0.7
    assert _config(train, ["--no-auxiliary", "--out", "x"]).auxiliary is False
    imagenet = ["--dataset", "imagefolder", "--network", "imagenet", "--out", "x"]
    assert _config(train, [*imagenet, "--lr-gamma", "0.9"]).lr_gamma == 0.9
    cosine = _config(train, [*imagenet, "--lr-schedule", "cosine", "--learning-rate-min", "0.001"])
    assert (cosine.lr_schedule, cosine.learning_rate_min) == ("cosine", 0.001)
    # without explicit_flags' answer (a caller's parsed namespace), the flags that differ from their defaults
    with pytest.raises(NdartsError, match="--lr-gamma"):
        train.config_from_args(train.build_parser().parse_args(["--lr-gamma", "0.5", "--out", "x"]))
    with pytest.raises(NdartsError, match="--noise-decay"):
        search.config_from_args(search.build_parser().parse_args(["--noise", "none", "--noise-decay", "--out", "x"]))


def test_a_resume_takes_the_runs_settings_and_refuses_ignored_flags_given_with_it(tmp_path, capsys):
    """Settings read from the run's config.json are not flags given: a run of --noise none (its
    recorded λ 0.2) or of --no-auxiliary (its recorded weight 0.4) resumes; given again with --resume,
    the ignored flag is refused."""
    s, t = tmp_path / "s", tmp_path / "t"
    s.mkdir(), t.mkdir()
    (s / "config.json").write_text(json.dumps(_config(search, ["--noise", "none", "--out", str(s)]).to_dict()))
    (t / "config.json").write_text(json.dumps(_config(train, ["--no-auxiliary", "--out", str(t)]).to_dict()))
    assert _config(search, ["--out", str(s), "--resume"]).noise_lambda == 0.2
    assert _config(train, ["--out", str(t), "--resume"]).auxiliary_weight == 0.4
    expect_user_error(capsys, search.main, ["--out", str(s), "--resume", "--noise-lambda", "0.3"], "--noise-lambda")
    expect_user_error(capsys, train.main, ["--out", str(t), "--resume", "--auxiliary-weight", "0.3"],
                      "--auxiliary-weight", "this run has no tower")


# ----------------------------------------------------------------------------- bug 9: --data advice
def test_evaluate_data_with_an_embedded_dataset_says_to_leave_data_out(runs, tmp_path, capsys):
    """Was: "pass --dataset NAME with --data", a flag evaluate does not have."""
    argv = ["--checkpoint", str(runs / "train" / "best.pt"), "--data", str(tmp_path)]
    err = expect_user_error(capsys, evaluate.main, argv, "trained on digits", "leave --data out")
    assert "--dataset" not in err


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet16-120", "imagefolder"])
def test_data_that_is_a_file_is_named_so(tmp_path, capsys, dataset):
    """Was: "dataset directory F does not exist" (or "F/train does not exist") for an existing file F."""
    f = tmp_path / "afile"
    f.write_bytes(b"not a directory")
    with pytest.raises(NdartsError, match=f"--data {f} is a file, not a directory"):
        load_dataset(dataset, f)
    out = tmp_path / "run"
    err = expect_user_error(capsys, search.main, ["--dataset", dataset, "--data", str(f), "--out", str(out)],
                            "is a file, not a directory")
    assert "does not exist" not in err and not out.exists()
    if dataset.startswith("cifar"):
        argv = ["--dataset", dataset, "--data", str(f), "--download", "--out", str(out)]
        expect_user_error(capsys, search.main, argv, "is a file, not a directory")


def test_a_missing_data_directory_is_still_named_missing(tmp_path):
    with pytest.raises(NdartsError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")


# ----------------------------------------------------------------------------- bug 10: the README's limit
def test_the_readme_states_that_the_triton_backend_has_no_double_backward():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Drop the fused MixedOp into a DARTS code base", 1)[1].split("\n## ", 1)[0]
    flat = " ".join(section.split())
    assert "No double backward on the Triton backend" in flat and 'backend="torch"' in flat
    assert "finite difference" in flat


def test_the_triton_backend_has_no_double_backward_and_the_reference_has(fresh_seed):
    """What the README says: create_graph=True gives the first derivative on both backends; the
    second is the reference's only, and on Triton it is an error naming the op and the way out
    (Triton's interpreter on a CPU) -- also for a loss linear in the sum, whose incoming gradient
    needs no graph (a kernel marked once_differentiable silently dropped its part there)."""
    from ndarts import noisy_mixed_sum

    ops = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(4)]
    w = torch.rand(4, requires_grad=True)
    for loss in (lambda y: y.pow(2).sum(), lambda y: y.sum()):
        firsts = {}
        for backend in ("triton", "torch"):
            y = noisy_mixed_sum(ops, w, backend=backend)
            (firsts[backend],) = torch.autograd.grad(loss(y), w, create_graph=True)
        torch.testing.assert_close(firsts["triton"], firsts["torch"], rtol=1e-5, atol=1e-5)
        second = torch.autograd.grad(firsts["torch"].sum(), [w, *ops], allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in second)
        with pytest.raises(RuntimeError, match="the Triton backend has no second derivative.*backend='torch'"):
            torch.autograd.grad(firsts["triton"].sum(), [w, *ops], allow_unused=True)
    # a first-order backward is as before: plain gradients, no graph kept
    y = noisy_mixed_sum(ops, w, backend="triton")
    grads = torch.autograd.grad(y.pow(2).sum(), [w, *ops])
    assert all(not g.requires_grad for g in grads)


@pytest.mark.parametrize("seed", [10**14, -(10**13), 2**64, 1.5])
def test_the_python_api_refuses_a_seed_out_of_range(seed):
    """SearchConfig / TrainConfig.validate (what Searcher and Trainer call) check the seed as the CLIs do."""
    from ndarts.searcher import SearchConfig
    from ndarts.trainer import TrainConfig

    for cfg in (SearchConfig(seed=seed), TrainConfig(seed=seed)):
        with pytest.raises(NdartsError, match="--seed must be an integer in"):
            cfg.validate()

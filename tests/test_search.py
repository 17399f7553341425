"""The search end to end on the embedded data: one epoch, run files, determinism, resume, CLI errors."""
import contextlib
import json
import math
import subprocess
import sys

import pytest
import torch

from ndarts.errors import NdartsError
from ndarts.search import main
from ndarts.searcher import SearchConfig, Searcher

TINY = ["--layers", "3", "--init-channels", "4", "--batch-size", "16", "--max-steps", "3", "--report-freq", "2"]


def _cfg(out, **kw):
    base = dict(dataset="digits", layers=3, init_channels=4, batch_size=16, max_steps=3, epochs=2,
                report_freq=0, out=str(out))
    base.update(kw)
    return SearchConfig(**base)


def _alphas(searcher):
    return [a.detach().clone() for a in searcher.model.arch_parameters()]


class _Killed(Exception):
    """Raised in place of an epoch: a run killed after the checkpoint of the epoch before it."""


@contextlib.contextmanager
def _killed_before_epoch(monkeypatch, stop: int = 1):
    """The search run inside stops where epoch `stop` (0-based) would begin (the checkpoint of
    epoch stop − 1 written)."""
    real_epoch = Searcher._epoch

    def stop_before(self, epoch):
        if epoch == stop:
            raise _Killed
        real_epoch(self, epoch)

    monkeypatch.setattr(Searcher, "_epoch", stop_before)
    with pytest.raises(_Killed):
        yield
    monkeypatch.setattr(Searcher, "_epoch", real_epoch)


def test_one_epoch_end_to_end_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    main([*TINY, "--epochs", "1", "--out", str(out), "--fused"])
    printed = capsys.readouterr().out
    assert "step 2/3" in printed and "img/s" in printed  # progress with throughput
    config = json.loads((out / "config.json").read_text())
    assert config["fused"] is True and config["noise"] == "gaussian" and config["noise_lambda"] == 0.2
    assert config["space"] == "noisydarts" and config["order"] == "first"
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "skip_normal", "skip_reduce", "lr", "noise_scale"):
        assert key in record
    alphas = torch.tensor(record["alphas_normal"])
    assert alphas.shape == (14, 7)
    torch.testing.assert_close(alphas.sum(1), torch.ones(14))
    genotype = json.loads((out / "genotype.json").read_text())
    assert genotype == json.loads((out / "genotypes" / "epoch_000.json").read_text())
    assert record["skip_normal"] == sum(op == "skip_connect" for op, _ in genotype["normal"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert {"alphas_normal", "alphas_reduce"} <= set(state["model"])
    assert "log.txt" in {p.name for p in out.iterdir()}


def test_same_seed_same_alpha_and_genotype(tmp_path):
    """CPU, same seed: identical α (bitwise) and genotype, noise included."""
    runs = []
    for name in ("a", "b"):
        s = Searcher(_cfg(tmp_path / name))
        g = s.run_search()
        runs.append((_alphas(s), g))
    (a1, g1), (a2, g2) = runs
    assert g1 == g2
    for x, y in zip(a1, a2):
        assert torch.equal(x, y)
    s = Searcher(_cfg(tmp_path / "c", seed=3))
    s.run_search()
    assert not torch.equal(_alphas(s)[0], a1[0])


def test_eval_every_skips_evaluations_and_changes_nothing_else(tmp_path, monkeypatch):
    """--eval-every 2 over 3 epochs evaluates after epochs 2 and 3 (the last) only; the search
    itself (α, genotype, training losses) is exactly that of a run evaluating every epoch."""
    every = Searcher(_cfg(tmp_path / "every", epochs=3))
    g_every = every.run_search()
    evaluated = []
    real_evaluate = Searcher.evaluate

    def counting(self, stream, epoch):
        evaluated.append(epoch)
        return real_evaluate(self, stream, epoch)

    monkeypatch.setattr(Searcher, "evaluate", counting)
    sparse = Searcher(_cfg(tmp_path / "sparse", epochs=3, eval_every=2))
    assert sparse.run_search() == g_every
    assert evaluated == [1, 2]
    for x, y in zip(_alphas(sparse), _alphas(every)):
        assert torch.equal(x, y)
    read = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("every", "sparse")]
    assert [r["val_acc"] is None for r in read[1]] == [True, False, False]
    for full, part in zip(*read):
        assert part["train_loss"] == full["train_loss"]
        if part["val_loss"] is not None:
            assert (part["val_loss"], part["val_acc"]) == (full["val_loss"], full["val_acc"])
    assert "| val - |" in (tmp_path / "sparse" / "log.txt").read_text()


@pytest.mark.parametrize("order", ["first", "second"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, order):
    """Stopped after epoch 1 of 3 and resumed: exactly the α and genotype of an uninterrupted run."""
    full = Searcher(_cfg(tmp_path / "full", epochs=3, order=order))
    g_full = full.run_search()

    with _killed_before_epoch(monkeypatch):
        Searcher(_cfg(tmp_path / "cut", epochs=3, order=order)).run_search()
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = Searcher(_cfg(tmp_path / "cut", epochs=3, order=order, resume=True))
    assert resumed.start_epoch == 1
    g_resumed = resumed.run_search()
    assert g_resumed == g_full
    for x, y in zip(_alphas(resumed), _alphas(full)):
        assert torch.equal(x, y)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_bare_resume_continues_the_run_with_its_own_settings(tmp_path, monkeypatch):
    """`--out DIR --resume` alone, after a run started with non-default flags (--fused, a learning
    rate, λ, epochs): the run goes on with its own settings from config.json, not this command's
    defaults, and ends exactly as the uninterrupted run; a flag given with --resume wins."""
    flags = [*TINY, "--epochs", "3", "--learning-rate", "0.03", "--noise-lambda", "0.3", "--fused", "--eval-every", "2"]
    main([*flags, "--out", str(tmp_path / "full")])

    with _killed_before_epoch(monkeypatch):
        main([*flags, "--out", str(tmp_path / "cut")])
    main(["--out", str(tmp_path / "cut"), "--resume"])
    read = {run: json.loads((tmp_path / run / "config.json").read_text()) for run in ("full", "cut")}
    for config in read.values():
        config.pop("out"), config.pop("resume")
    assert read["cut"] == read["full"]
    assert (read["cut"]["epochs"], read["cut"]["learning_rate"], read["cut"]["fused"]) == (3, 0.03, True)
    records = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("full", "cut")}
    assert [r["epoch"] for r in records["cut"]] == [0, 1, 2]
    assert records["cut"][-1]["alphas_normal"] == records["full"][-1]["alphas_normal"]
    assert records["cut"][-1]["genotype"] == records["full"][-1]["genotype"]
    # a flag given now overrides the run's (a longer schedule), and is recorded for the next resume
    main(["--out", str(tmp_path / "cut"), "--resume", "--epochs", "4"])
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["epochs"] == 4
    assert [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


def test_a_run_without_config_json_resumes_with_its_checkpoints_settings(tmp_path, monkeypatch, capsys):
    """checkpoint.pt copied alone into a directory (no config.json): `--out DIR --resume` reads the run's
    settings from the checkpoint (not the digits preset's 5 cells, which would not fit it), checks a
    flag given now against them, and ends as the uninterrupted run."""
    flags = [*TINY, "--epochs", "2", "--learning-rate", "0.03", "--noise-lambda", "0.3"]
    main([*flags, "--out", str(tmp_path / "full")])
    with _killed_before_epoch(monkeypatch):
        main([*flags, "--out", str(tmp_path / "cut")])
    (tmp_path / "moved").mkdir()
    (tmp_path / "cut" / "checkpoint.pt").rename(tmp_path / "moved" / "checkpoint.pt")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "moved"), "--resume", "--noise-lambda", "0.2"])
    assert "--noise-lambda: checkpoint 0.3, now 0.2" in capsys.readouterr().err
    main(["--out", str(tmp_path / "moved"), "--resume"])
    assert "has no config.json: the run's settings are read from its checkpoint.pt" in capsys.readouterr().out
    config = json.loads((tmp_path / "moved" / "config.json").read_text())
    assert (config["layers"], config["learning_rate"], config["noise_lambda"], config["epochs"]) == (3, 0.03, 0.3, 2)
    last = {run: json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1])
            for run in ("full", "moved")}
    assert last["moved"]["epoch"] == 1 and last["moved"]["alphas_normal"] == last["full"]["alphas_normal"]


def test_explicit_flags_and_resume_settings(tmp_path):
    """Which flags a command line gives (the others come from the run's config.json on --resume)."""
    from ndarts.rundir import explicit_flags
    from ndarts.search import build_parser, config_from_args

    parser = build_parser()
    argv = ["--out", str(tmp_path), "--resume", "--fused", "--learning-rate", "0.05", "--no-batch-edge-convs"]
    assert explicit_flags(parser, argv) == {"out", "resume", "fused", "learning_rate", "batch_edge_convs"}
    assert explicit_flags(parser, []) == set()
    saved = {**SearchConfig(epochs=7, learning_rate=0.02, fused=True, layers=6, max_steps=None).to_dict(),
             "out": "elsewhere", "resume": False}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    args = parser.parse_args(["--out", str(tmp_path), "--resume", "--learning-rate", "0.05"])
    cfg = config_from_args(args, explicit_flags(parser, ["--out", str(tmp_path), "--resume", "--learning-rate", "0.05"]))
    assert (cfg.epochs, cfg.layers, cfg.fused, cfg.max_steps) == (7, 6, True, None)  # the run's, not the digits preset's
    assert cfg.learning_rate == 0.05 and cfg.out == str(tmp_path) and cfg.resume  # given now
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(NdartsError, match="corrupt"):
        config_from_args(args, explicit_flags(parser, ["--out", str(tmp_path), "--resume"]))


@pytest.mark.parametrize("layout", ["old_grouped_layout", "split_input_layout"])
def test_resume_from_a_checkpoint_of_an_earlier_grouped_layout(tmp_path, monkeypatch, layout):
    """A run checkpointed in an earlier grouped-conv layout (before the edge-major one: weights and
    SGD momentum in the channel-major order; before the two inputs shared a group: one group
    more, the parameters in another order) resumes with today's layout and ends exactly as an
    uninterrupted run."""
    import earlier_layouts

    full = Searcher(_cfg(tmp_path / "full", epochs=2))
    g_full = full.run_search()
    cut = Searcher(_cfg(tmp_path / "cut", epochs=1))
    cut.run_search()
    path = tmp_path / "cut" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    params = len(state["w_optimizer"]["param_groups"][0]["params"])
    state["model"] = getattr(earlier_layouts, layout)(state["model"], state["w_optimizer"])
    assert len(state["w_optimizer"]["param_groups"][0]["params"]) > params  # one group more per cell
    torch.save(state, path)
    resumed = Searcher(_cfg(tmp_path / "cut", epochs=2, resume=True))
    assert resumed.start_epoch == 1
    assert resumed.run_search() == g_full
    for x, y in zip(_alphas(resumed), _alphas(full)):
        assert torch.equal(x, y)


def test_darts_flags_give_the_original_darts_search(tmp_path):
    out = tmp_path / "darts"
    main([*TINY, "--epochs", "1", "--out", str(out), "--space", "darts", "--noise", "none",
          "--learning-rate", "0.025", "--order", "second"])
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert torch.tensor(record["alphas_normal"]).shape == (14, 8)
    assert all(op != "none" for op, _ in record["genotype"]["normal"])


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ndarts.search", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["--noise-lambda", "-0.5"], "noise lambda must be a finite number >= 0"),
    (["--space", "enas"], "invalid choice: 'enas'"),
    (["--noise", "cauchy"], "invalid choice: 'cauchy'"),
    (["--dataset", "cifar10", "--data", "/nonexistent/cifar"], "dataset directory /nonexistent/cifar does not exist"),
    (["--dataset", "imagefolder", "--data", "/nonexistent/imgs"], "train does not exist"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
    (["--device", "tpu:0" if torch.cuda.is_available() else "cuda:7"], "--device"),
])
def test_cli_errors_are_one_clear_line(tmp_path, args, message):
    r = _run_cli(*args, "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()  # a failed start leaves no empty run directory


def test_a_failed_start_keeps_a_directory_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    r = _run_cli("--dataset", "cifar10", "--data", str(tmp_path / "none"), "--out", str(out))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert out.is_dir()


def test_resume_needs_a_run_directory(tmp_path):
    r = _run_cli("--resume")
    assert r.returncode == 2 and "--resume needs --out" in r.stderr
    r = _run_cli("--resume", "--out", str(tmp_path / "empty"))
    assert r.returncode == 2 and "nothing to resume" in r.stderr


def test_resume_with_a_corrupt_or_incompatible_checkpoint(tmp_path):
    out = tmp_path / "run"
    main([*TINY, "--epochs", "1", "--out", str(out)])
    r = _run_cli(*TINY, "--epochs", "2", "--out", str(out), "--resume", "--layers", "4")
    assert r.returncode == 2 and "different configuration" in r.stderr and "layers" in r.stderr
    (out / "checkpoint.pt").write_bytes(b"\x00garbage" * 10)
    r = _run_cli(*TINY, "--epochs", "2", "--out", str(out), "--resume")
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    main([*TINY, "--epochs", "2", "--out", str(out), "--tensorboard"])
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "val_acc", "skip_normal", "skip_reduce", "noise_scale"} <= tags
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("val_loss")] == pytest.approx([r["val_loss"] for r in records])


def test_resume_keeps_the_conv_layout_of_the_checkpoint(tmp_path):
    """A run with per-edge convs (or from before batch_edge_convs existed) resumes per edge: the
    optimizer's momentum is stored per parameter."""
    out = tmp_path / "per_edge"
    Searcher(_cfg(out, epochs=1, batch_edge_convs=False)).run_search()
    resumed = Searcher(_cfg(out, epochs=2, resume=True))
    assert resumed.start_epoch == 1 and resumed.cfg.batch_edge_convs is False
    assert all(cell.edge_groups is None for cell in resumed.model.cells)
    resumed.run_search()
    assert "layout of the checkpoint" in (out / "log.txt").read_text()


def test_bf16_autocast_search(tmp_path):
    out = tmp_path / "bf16"
    main([*TINY, "--epochs", "1", "--out", str(out), "--amp", "bf16"])
    assert json.loads((out / "config.json").read_text())["amp"] == "bf16"
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(map(torch.isfinite, torch.tensor([record["train_loss"], record["val_loss"]])))
    r = _run_cli(*TINY, "--amp", "fp16", "--out", str(tmp_path / "fp16"))
    assert r.returncode == 2 and "invalid choice: 'fp16'" in r.stderr


def test_triton_convs_and_cudnn_benchmark_options(tmp_path):
    """--triton-convs swaps the cells' convs for the Triton ones (here: the Triton backend in the
    interpreter, one step), --cudnn-benchmark is recorded; a bad value is one clear line."""
    from ndarts.depthwise_conv import SearchDepthwiseConv2d
    from ndarts.edge_groups import GroupedConvStack
    from ndarts.pointwise_conv import SearchPointwiseConv2d

    cfg = _cfg(tmp_path / "convs", layers=1, steps=1, init_channels=2, batch_size=2, max_steps=1, epochs=1,
               fused=True, backend="triton", triton_convs="all", cudnn_benchmark=True,
               eval_batch_size=2)  # the interpreter runs each program: the smallest evaluation
    s = Searcher(cfg)
    kinds = {type(m) for m in s.model.modules()}
    assert {SearchDepthwiseConv2d, SearchPointwiseConv2d} <= kinds
    s.run_search()
    saved = json.loads((tmp_path / "convs" / "config.json").read_text())
    assert saved["triton_convs"] == "all" and saved["cudnn_benchmark"] is True
    wgrad = Searcher(_cfg(tmp_path / "wgrad", layers=1, steps=1, triton_convs="depthwise-wgrad"))
    assert {m.kernels for m in wgrad.model.modules() if isinstance(m, SearchDepthwiseConv2d)} == {"weight_grad"}
    assert not any(isinstance(m, SearchPointwiseConv2d) for m in wgrad.model.modules())
    separable = Searcher(_cfg(tmp_path / "separable", layers=1, steps=2, triton_convs="separable"))
    stacks = [m for m in separable.model.modules() if isinstance(m, GroupedConvStack)]
    assert stacks and all(m.fused_separable for m in stacks)
    assert not any(m.fused_separable for m in s.model.modules() if isinstance(m, GroupedConvStack))
    r = _run_cli(*TINY, "--triton-convs", "winograd", "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "invalid choice: 'winograd'" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(Exception, match="--triton-convs must be auto or one of"):
        Searcher(_cfg(tmp_path / "bad2", triton_convs="winograd"))


def test_the_header_counts_the_steps_an_epoch_runs(tmp_path):
    from ndarts.meters import steps_per_epoch, steps_phrase

    assert (steps_per_epoch(12, None), steps_per_epoch(12, 5), steps_per_epoch(12, 40)) == (12, 5, 12)
    assert steps_phrase(12, None) == steps_phrase(12, 12) == "12 steps/epoch"
    assert steps_phrase(12, 2) == "2 of 12 steps/epoch (--max-steps)"
    s = Searcher(_cfg(tmp_path / "run", max_steps=2, epochs=1, layers=3, steps=1))
    s.run_search()
    total = len(s.train_stream)
    assert total > 2
    assert f"2 of {total} steps/epoch (--max-steps)" in (tmp_path / "run" / "log.txt").read_text()


def test_settings_given_with_resume_are_the_ones_the_run_goes_on_with(tmp_path, monkeypatch):
    """A resume with new learning rates, momentum, weight decays, epochs and floor: the optimizers
    take them (not the checkpoint's), and the cosine schedule is the new one at the epoch reached
    (never below the new floor), as config.json records."""
    with _killed_before_epoch(monkeypatch):
        Searcher(_cfg(tmp_path / "cut", epochs=3, max_steps=1)).run_search()
    new = dict(epochs=5, learning_rate=0.5, learning_rate_min=0.1, momentum=0.1, weight_decay=0.01,
               arch_learning_rate=0.1, arch_weight_decay=0.02)
    resumed = Searcher(_cfg(tmp_path / "cut", max_steps=1, resume=True, **new))
    (w,), (a,) = resumed.w_opt.param_groups, resumed.a_opt.param_groups
    assert (w["momentum"], w["weight_decay"], a["lr"], a["weight_decay"]) == (0.1, 0.01, 0.1, 0.02)
    assert (resumed.architect.momentum, resumed.architect.weight_decay) == (0.1, 0.01)
    resumed.run_search()
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == 0.05  # the epoch before the resume, as it ran
    cosine = [0.1 + 0.4 * (1 + math.cos(math.pi * t / 5)) / 2 for t in range(1, 5)]
    assert lrs[1:] == pytest.approx(cosine, rel=1e-12) and min(lrs[1:]) >= 0.1
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["learning_rate"] == 0.5


@pytest.mark.parametrize("space", ["noisydarts", "darts"])
@pytest.mark.parametrize("dataset,batch", [("cifar10", 128), ("digits", 64)])
def test_the_darts_spaces_keep_the_noisydarts_recipe(space, dataset, batch):
    """The nas-bench-201 space's preset (its protocol) leaves the DARTS spaces' defaults alone."""
    from ndarts.rundir import explicit_flags
    from ndarts.search import build_parser, config_from_args

    argv = ["--space", space, "--dataset", dataset, "--out", "x"]
    cfg = config_from_args(build_parser().parse_args(argv), explicit_flags(build_parser(), argv))
    assert (cfg.learning_rate, cfg.learning_rate_min, cfg.momentum, cfg.nesterov, cfg.weight_decay,
            cfg.batch_size, cfg.arch_learning_rate, cfg.arch_weight_decay) == (0.05, 0.001, 0.9, False, 3e-4,
                                                                              batch, 3e-4, 1e-3)


def test_nesterov_is_a_flag_of_the_w_optimizer(tmp_path):
    from ndarts.search import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--nesterov", "--out", str(tmp_path / "run"), *TINY]))
    assert cfg.nesterov is True and cfg.space == "noisydarts"
    (group,) = Searcher(cfg).w_opt.param_groups
    assert group["nesterov"] is True and group["momentum"] == 0.9
    (group,) = Searcher(_cfg(tmp_path / "plain")).w_opt.param_groups
    assert group["nesterov"] is False
    with pytest.raises(NdartsError, match="--nesterov needs a momentum > 0"):
        _cfg(tmp_path / "x", nesterov=True, momentum=0.0).validate()


def test_a_resume_may_turn_nesterov_on_or_off(tmp_path, monkeypatch):
    """--nesterov given with --resume: the SGD goes on with it (load_optimizer_state keeps this run's
    nesterov, not the checkpoint's) and the momentum buffers it saved, and config.json records it."""
    with _killed_before_epoch(monkeypatch):
        Searcher(_cfg(tmp_path / "cut", epochs=3, max_steps=1)).run_search()
    for nesterov in (True, False):
        resumed = Searcher(_cfg(tmp_path / "cut", epochs=3, max_steps=1, resume=True, nesterov=nesterov))
        (group,) = resumed.w_opt.param_groups
        assert group["nesterov"] is nesterov and resumed.start_epoch == 1
        assert resumed.w_opt.state and all("momentum_buffer" in st for st in resumed.w_opt.state.values())
    resumed = Searcher(_cfg(tmp_path / "cut", epochs=3, max_steps=1, resume=True, nesterov=True))
    resumed.run_search()
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["nesterov"] is True
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_a_cli_resume_of_a_search_on_own_data_is_refused(tmp_path, capsys):
    """A search on a caller's DataSpec records its name and that it was the caller's; `--resume`
    from the command line, which would go on with the digits, refuses it in one line."""
    from ndarts.data import DataSpec, InMemoryDataset

    x, y = torch.randn(24, 1, 8, 8), torch.arange(24) % 3
    out = tmp_path / "own"
    Searcher(_cfg(out, epochs=1, max_steps=1, steps=2), data=DataSpec("mydata", InMemoryDataset(x, y), None, 3, 1, 8)).run_search()
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["own_data"]) == ("mydata", True)
    assert "search: mydata on" in (out / "log.txt").read_text()
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data its caller supplied in Python ('mydata'" in err
    with pytest.raises(NdartsError, match="pass the same data again"):
        Searcher(_cfg(out, epochs=2, max_steps=1, steps=2, dataset="mydata", resume=True))

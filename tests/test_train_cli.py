"""python -m ndarts.train / ndarts.evaluate end to end on the embedded digits dataset (tiny network)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ndarts import evaluate, train
from ndarts.trainer import Divergence, Evaluation, TrainConfig, Trainer


ENV1 = {**os.environ, "OMP_NUM_THREADS": "1"}

TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--max-steps", "2", "--seed", "3"]


def run_train(out, *extra):
    return train.main(TINY + ["--out", str(out), *extra])


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def expect_user_error(capsys, fn, argv, *fragments):
    with pytest.raises(SystemExit) as exc:
        fn(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


@pytest.mark.slow
def test_train_resume_evaluate(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run_train(a, "--epochs", "1", "--tensorboard")
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["genotype_dict"]["normal"] and cfg["init_channels"] == 4
    assert [r["epoch"] for r in metrics(a)] == [0]
    assert (a / "checkpoint.pt").stat().st_size > 0 and (a / "best.pt").stat().st_size > 0
    assert list((a / "tensorboard").glob("events.out.tfevents.*"))
    # a run is never overwritten
    expect_user_error(capsys, train.main, TINY + ["--out", str(a), "--epochs", "2"], "--resume")
    # resuming (with a longer schedule) gives exactly the run done in one go
    run_train(a, "--epochs", "2", "--resume")
    run_train(b, "--epochs", "2")
    ra, rb = metrics(a), metrics(b)
    assert [r["epoch"] for r in ra] == [0, 1]
    for x, y in zip(ra, rb):
        for k in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "drop_path_prob"):
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-9), k
    assert rb[1]["lr"] < rb[0]["lr"]  # cosine schedule
    capsys.readouterr()

    # evaluate: the whole test split, independent of the batch size
    r1 = evaluate.main(["--checkpoint", str(b / "checkpoint.pt"), "--json", "--batch-size", "7"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r2 = evaluate.main(["--checkpoint", str(b / "checkpoint.pt"), "--batch-size", "100"])
    assert out["test_images"] == 359 and out["epoch"] == 2
    assert out["test_loss"] == pytest.approx(r1["test_loss"])
    assert r1["test_loss"] == pytest.approx(r2["test_loss"], rel=1e-5) and r1["test_acc"] == r2["test_acc"]
    assert 0.0 <= r1["test_acc"] <= 1.0 and r1["test_loss"] > 0
    # best.pt is the epoch with the best (capped) test accuracy
    best = torch.load(b / "best.pt", weights_only=True)
    assert best["best_acc"] == max(r["test_acc"] for r in rb)

    # a checkpoint cut short is refused with one line
    data = (b / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "cut.pt")], "cut.pt")
    # digits is embedded: a --data would be ignored
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(b / "checkpoint.pt"), "--data", str(tmp_path)],
                      "--data is for")
    # a resume with another network is refused
    expect_user_error(capsys, train.main, TINY[:1] + ["6"] + TINY[2:] + ["--out", str(a), "--epochs", "3", "--resume"],
                      "--init-channels: checkpoint 4, now 6")


def test_bare_resume_keeps_the_run_settings(tmp_path):
    """`--out DIR --resume` with only a longer --epochs: the network, batch and learning rate are
    the run's own (config.json), not this command's defaults (C 16 and 8 cells on digits); the
    run ends as the one done in one go with those settings."""
    a, b = tmp_path / "a", tmp_path / "b"
    run_train(a, "--epochs", "1", "--learning-rate", "0.01", "--no-auxiliary")
    train.main(["--out", str(a), "--resume", "--epochs", "2"])
    run_train(b, "--epochs", "2", "--learning-rate", "0.01", "--no-auxiliary")
    read = [json.loads((run / "config.json").read_text()) for run in (a, b)]
    for config in read:
        config.pop("out"), config.pop("resume")
    assert read[0] == read[1] and read[0]["init_channels"] == 4 and read[0]["auxiliary"] is False
    ra, rb = metrics(a), metrics(b)
    assert [r["epoch"] for r in ra] == [0, 1]
    for x, y in zip(ra, rb):
        for k in ("lr", "train_loss", "test_loss"):
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-9), k


def test_bf16_autocast_and_no_auxiliary(tmp_path):
    run_train(tmp_path / "r", "--epochs", "1", "--amp", "bf16", "--no-auxiliary", "--genotype", "DARTS_V2")
    (r,) = metrics(tmp_path / "r")
    assert r["train_loss"] > 0 and torch.isfinite(torch.tensor(r["test_loss"]))
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("auxiliary_head") for k in state["model"])


def test_divergence_names_epoch_and_step_and_keeps_checkpoint(tmp_path):
    run_train(tmp_path / "r", "--epochs", "1")
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    cfg = train.config_from_args(train.build_parser().parse_args(
        TINY + ["--out", str(tmp_path / "r"), "--epochs", "3", "--resume"]))
    trainer = Trainer(cfg)
    trainer.criterion = lambda logits, y: (logits * float("nan")).sum()
    with pytest.raises(Divergence, match=r"epoch 2, step 1") as exc:
        trainer.fit()
    assert f"checkpoint ({tmp_path / 'r' / 'checkpoint.pt'}, after epoch 1) is kept" in str(exc.value)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    assert len(metrics(tmp_path / "r")) == 1


def test_out_of_memory_names_the_batch_size(tmp_path, monkeypatch, capsys):
    def oom(self, epoch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Trainer, "_epoch", oom)
    expect_user_error(capsys, train.main, TINY + ["--out", str(tmp_path / "r"), "--epochs", "1"],
                      "--batch-size 16", "lower --batch-size")


@pytest.mark.parametrize("genotype, fragment", [
    ("NoSuchNet", "neither a zoo genotype"),
    ('{"normal": [["sep_conv_3x3", 0]', "not valid JSON"),
    (json.dumps({"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]] * 3, "normal_concat": [2, 3, 4],
                 "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]] * 3, "reduce_concat": [2, 3, 4]}),
     "3 intermediate nodes; this network is built for 4 (ndarts.train: --steps 3 builds it for 3)"),
    (json.dumps({"normal": [["sep_conv_3x3", 0]] * 7, "normal_concat": [2], "reduce": [], "reduce_concat": [2]}),
     "even number of edges"),
    (json.dumps({"normal": [["conv_9x9", 0], ["sep_conv_3x3", 1]] * 4, "normal_concat": [2, 3, 4, 5],
                 "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]] * 4, "reduce_concat": [2, 3, 4, 5]}),
     "unknown operation"),
])
def test_genotype_errors_are_one_line(tmp_path, capsys, genotype, fragment):
    expect_user_error(capsys, train.main, TINY + ["--out", str(tmp_path / "r"), "--genotype", genotype], fragment)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_evaluate_errors(tmp_path, capsys):
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "none.pt")], "no checkpoint")
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "none.pt"), "--workers", "-1"],
                      "--workers must be >= 0, got -1")
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "none.pt"), "--batch-size", "0"],
                      "--batch-size must be >= 1, got 0")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint at all" * 10)
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "junk.pt")], "junk.pt")
    torch.save({"kind": "ndarts-search", "epoch": 1}, tmp_path / "search.pt")
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "search.pt")], "search checkpoint")
    torch.save({"kind": "ndarts-train", "epoch": 1, "config": "{}", "genotype": {}, "model": {},
                "num_classes": 10, "in_channels": 1}, tmp_path / "hollow.pt")
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "hollow.pt")], "unusable")


def test_presets_and_explicit_flags():
    parse = lambda *a: train.config_from_args(train.build_parser().parse_args([*a, "--out", "x"]))  # noqa: E731
    digits = parse()
    assert (digits.dataset, digits.init_channels, digits.layers, digits.cutout) == ("digits", 16, 8, 0)
    assert digits.epochs <= 20
    c10 = parse("--dataset", "cifar10")
    d = TrainConfig()
    assert (c10.epochs, c10.batch_size, c10.init_channels, c10.layers, c10.learning_rate) == (600, 96, 36, 20, 0.025)
    assert (c10.momentum, c10.weight_decay, c10.auxiliary, c10.auxiliary_weight) == (0.9, 3e-4, True, 0.4)
    assert (c10.cutout, c10.drop_path_prob, c10.grad_clip, c10.lr_schedule) == (16, 0.2, 5.0, "cosine")
    assert c10.label_smoothing == d.label_smoothing == 0.0
    inet = parse("--dataset", "imagefolder", "--network", "imagenet")
    assert (inet.init_channels, inet.layers, inet.label_smoothing, inet.image_size) == (48, 14, 0.1, 224)
    assert parse("--epochs", "3", "--init-channels", "8").epochs == 3
    assert parse("--dataset", "cifar10", "--cutout", "0", "--layers", "8").cutout == 0


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    expect_user_error(capsys, train.main, TINY + ["--out", str(tmp_path / "r"), "--epochs", "1", "--tensorboard"],
                      "pip install tensorboard")
    assert not (tmp_path / "r").exists()  # nothing written: the same command works once it is installed


@pytest.mark.slow
def test_cli_subprocess_errors_exit_2_without_traceback(tmp_path):
    (tmp_path / "bad.pt").write_text("garbage")
    for args in (["-m", "ndarts.train", "--genotype", "NoSuchNet", "--out", str(tmp_path / "r")],
                 ["-m", "ndarts.evaluate", "--checkpoint", str(tmp_path / "bad.pt")]):
        p = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV1, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and p.stderr.startswith("error: ")
        assert len(p.stderr.strip().splitlines()) == 1


def test_a_training_checkpoint_records_the_settings_a_resume_reads(tmp_path):
    """Without config.json the run's settings come from checkpoint.pt (rundir.saved_config); a checkpoint
    that cannot be read gives none (the resume's own load then names the problem)."""
    from ndarts.rundir import saved_config

    run_train(tmp_path / "a", "--epochs", "1", "--learning-rate", "0.01")
    written = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").unlink()
    assert saved_config(tmp_path / "a") == written
    assert saved_config(tmp_path / "a")["learning_rate"] == 0.01
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert saved_config(tmp_path / "a") is None
    assert saved_config(tmp_path / "nothing") is None


def test_help_shows_no_misleading_defaults(capsys):
    """Flags show no "(default: True)" (--no-auxiliary's default is the tower's, not the flag's), options
    defaulting to None (a preset's) no "(default: None)", help that states its default no second one."""
    import ndarts.__main__
    from ndarts import search

    texts = {m.__name__: " ".join(m.build_parser().format_help().split()) for m in (train, search, evaluate)}
    for name, text in texts.items():
        for wrong in ("(default: True)", "(default: False)", "(default: None)"):
            assert wrong not in text, (name, wrong)
    train_help = texts["ndarts.train"]
    assert "leave out the auxiliary tower (default: with it" in train_help
    assert "default 600 (10 on digits, 250 imagenet)" in train_help and "default 600 (10 on digits, 250 imagenet) (" not in train_help
    assert "--device DEVICE auto, cpu, cuda or cuda:N (default: auto)" in train_help  # still where it informs
    assert "Genotype(...)" in train_help and "run directory" in train_help
    assert "test on at most N batches" in train_help  # --max-steps caps the test too
    assert "evaluation on at most N batches" in texts["ndarts.search"]
    ndarts.__main__.main()
    genotype_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  genotype ")]
    assert "predict" in genotype_line[0]


@pytest.mark.parametrize("args,message", [
    (["--data", "/tmp/nope"], "--data is for --dataset cifar10/cifar100/imagenet16-120/imagefolder; digits"),
    (["--image-size", "16"], "--image-size is for --dataset imagefolder"),
    (["--dataset", "cifar10", "--data", "/tmp/nope", "--image-size", "64"], "cifar10's images are 32x32"),
    (["--download"], "--download fetches --dataset cifar10/cifar100 only; digits is embedded"),
])
def test_data_flags_the_dataset_would_ignore_are_refused(tmp_path, capsys, args, message):
    from ndarts import search

    for cli in (train, search):
        expect_user_error(capsys, cli.main, TINY + ["--out", str(tmp_path / "r"), *args], message)
        assert not (tmp_path / "r").exists()


def test_evaluate_refuses_fp16_on_a_cpu(tmp_path, capsys):
    """As ndarts.train does (it ran fp32 silently): before the checkpoint is read."""
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(tmp_path / "none.pt"), "--amp", "fp16",
                                              "--device", "cpu"], "--amp fp16 needs a CUDA device")


def _lrs(run_dir):
    return [r["lr"] for r in metrics(run_dir)]


def test_settings_given_with_resume_are_the_ones_the_training_goes_on_with(tmp_path):
    """--learning-rate, --momentum, --weight-decay, --epochs and the floor given with --resume are
    used (the optimizer's, and the cosine schedule's at the epoch reached), as config.json says;
    so is a new --lr-gamma of the step schedule."""
    a, s = tmp_path / "a", tmp_path / "s"
    run_train(a, "--epochs", "3", "--max-steps", "1")
    train.main(["--out", str(a), "--resume", "--epochs", "5", "--learning-rate", "0.5", "--learning-rate-min", "0.1",
                "--momentum", "0.1", "--weight-decay", "0.01"])
    (group,) = torch.load(a / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert (group["momentum"], group["weight_decay"]) == (0.1, 0.01)
    cosine = [0.1 + 0.4 * (1 + math.cos(math.pi * t / 5)) / 2 for t in (3, 4)]
    assert _lrs(a)[3:] == pytest.approx(cosine, rel=1e-12) and min(_lrs(a)[3:]) >= 0.1

    run_train(s, "--epochs", "1", "--max-steps", "1", "--lr-schedule", "step", "--learning-rate", "0.1")
    train.main(["--out", str(s), "--resume", "--epochs", "3", "--lr-gamma", "0.5"])
    assert _lrs(s) == pytest.approx([0.1, 0.05, 0.025], rel=1e-12)


def test_a_kill_between_checkpoint_and_best_is_repaired_by_the_resume(tmp_path, monkeypatch):
    """An epoch that improves writes checkpoint.pt, then best.pt: killed between the two, best.pt is
    an older epoch's; the resume makes it the checkpoint it continues from (its run's best)."""
    import ndarts.trainer as trainer_module

    cfg = dict(init_channels=4, layers=3, batch_size=16, max_steps=1, seed=3, report_freq=0, out=str(tmp_path / "r"))
    accuracies = iter([0.5, 0.9])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: Evaluation(1.0, *[next(accuracies)] * 2))
    Trainer(TrainConfig(epochs=1, **cfg)).fit()

    class Killed(BaseException):
        pass

    real_save = trainer_module.save_checkpoint

    def killed_at_best(state, path):
        if path.name == "best.pt":
            raise Killed
        real_save(state, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", killed_at_best)
    with pytest.raises(Killed):
        Trainer(TrainConfig(epochs=2, resume=True, **cfg)).fit()
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=True)["epoch"] == 1  # stale
    resumed = Trainer(TrainConfig(epochs=2, resume=True, **cfg))
    assert resumed.best_acc == 0.9
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert (best["epoch"], best["best_acc"]) == (2, 0.9)
    assert (tmp_path / "r" / "best.pt").read_bytes() == (tmp_path / "r" / "checkpoint.pt").read_bytes()


def test_a_resume_trains_the_recorded_cell_when_the_genotype_file_is_gone(tmp_path, capsys):
    """--genotype FILE, then the file moved away (or rewritten): a --resume without --genotype goes on
    with the cell the run recorded; one naming another cell is refused as before."""
    from ndarts.genotype import load_genotype

    cell = tmp_path / "g1.json"
    cell.write_text(load_genotype("NoisyDARTS-a").to_json())
    a = tmp_path / "a"
    run_train(a, "--genotype", str(cell), "--epochs", "1", "--max-steps", "1")
    cell.unlink()
    train.main(["--out", str(a), "--resume", "--epochs", "2"])
    assert [r["epoch"] for r in metrics(a)] == [0, 1]
    cell.write_text(load_genotype("DARTS_V2").to_json())
    train.main(["--out", str(a), "--resume", "--epochs", "3"])
    assert json.loads((a / "config.json").read_text())["genotype_dict"] == load_genotype("NoisyDARTS-a").to_dict()
    expect_user_error(capsys, train.main, ["--out", str(a), "--resume", "--epochs", "4", "--genotype", str(cell)],
                      "--genotype: checkpoint")


def test_a_run_on_own_data_is_not_resumed_or_evaluated_on_the_digits(tmp_path, capsys):
    """Trained on a caller's DataSpec: config.json and the log name it; the command line's --resume and
    ndarts.evaluate, which would read the digits in its place, refuse it in one line."""
    from ndarts.data import DataSpec, InMemoryDataset

    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 10
    spec = DataSpec("mydata", InMemoryDataset(x[:30], y[:30]), InMemoryDataset(x[30:], y[30:]), 10, 1, 8)
    out = tmp_path / "own"
    Trainer(TrainConfig(init_channels=4, layers=3, batch_size=16, max_steps=1, epochs=1, report_freq=0,
                        out=str(out)), data=spec).fit()
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["own_data"]) == ("mydata", True)
    assert "on mydata," in (out / "log.txt").read_text()
    capsys.readouterr()
    expect_user_error(capsys, evaluate.main, ["--checkpoint", str(out / "best.pt")],
                      "data its caller supplied in Python ('mydata'")
    expect_user_error(capsys, train.main, ["--out", str(out), "--resume", "--epochs", "2"],
                      "data its caller supplied in Python ('mydata'")


def _own_top5(model, x, y, batch):
    """Top-5 accuracy of `model` on (x, y), in batches of `batch` as the test ran them, by torch.topk."""
    hits = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            logits, _ = model(x[i:i + batch])
            hits += int((torch.topk(logits, 5, dim=1).indices == y[i:i + batch, None]).any(dim=1).sum())
    return hits / len(y)


def test_top5_is_torch_topks_in_metrics_the_log_and_evaluate(tmp_path, capsys):
    """DARTS's ImageNet results are top-1/top-5: each epoch's test (metrics.jsonl, the log line) and
    ndarts.evaluate (text and --json) give top-5 as torch.topk counts it, the top-1 keys unchanged."""
    from ndarts.data import load_dataset

    run_train(tmp_path / "r", "--epochs", "1")
    (record,) = metrics(tmp_path / "r")
    model, _, _ = evaluate.load_trained_network(tmp_path / "r" / "checkpoint.pt")
    test = load_dataset("digits").test
    # the epoch's test: --max-steps 2 batches of 16, in order
    assert record["test_acc_top5"] == pytest.approx(_own_top5(model, test.x[:32], test.y[:32], 16), abs=1e-12)
    assert record["test_acc"] <= record["test_acc_top5"] < 1.0
    assert f"top-5 {record['test_acc_top5']:.4f} (best" in (tmp_path / "r" / "log.txt").read_text()
    capsys.readouterr()
    result = evaluate.main(["--checkpoint", str(tmp_path / "r" / "checkpoint.pt"), "--json", "--batch-size", "64"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = _own_top5(model, test.x, test.y, 64)
    assert printed["test_acc_top5"] == result["test_acc_top5"] == pytest.approx(want, abs=1e-12)
    assert {"test_loss", "test_acc"} <= set(printed)
    evaluate.main(["--checkpoint", str(tmp_path / "r" / "checkpoint.pt"), "--batch-size", "64"])
    assert f"top-5 {want:.4f} ({want * 100:.2f} %" in capsys.readouterr().out


def test_evaluate_model_sums_the_top5_count_across_ranks():
    """Under DDP each rank tests its share: the top-5 hits are all-reduced with the top-1 hits and the
    image count (here a stand-in for the all-reduce adds another rank's 10 images, 4 top-1 and 7 top-5)."""
    from ndarts.data import BatchStream, InMemoryDataset
    from ndarts.trainer import evaluate_model

    class TwoRanks:
        def sum_scalars(self, *values):  # (loss, top-1 hits, top-5 hits, images)
            return tuple(v + o for v, o in zip(values, (20.0, 4, 7, 10)))

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 8)

        def forward(self, x):
            return self.fc(x.flatten(1)), None

    torch.manual_seed(0)
    model, x, y = Linear(), torch.randn(30, 6, 1, 1), torch.arange(30) % 8
    stream = BatchStream(InMemoryDataset(x, y), range(30), 7, seed=0, stream=2, shuffle=False)
    with torch.no_grad():
        logits, _ = model(x)
    top1 = int((logits.argmax(1) == y).sum())
    top5 = int((torch.topk(logits, 5, dim=1).indices == y[:, None]).any(1).sum())
    alone, summed = evaluate_model(model, stream, "cpu"), evaluate_model(model, stream, "cpu", dist=TwoRanks())
    assert top1 < top5 < 30
    assert (alone.acc, alone.acc_top5) == (top1 / 30, top5 / 30)
    assert (summed.acc, summed.acc_top5) == ((top1 + 4) / 40, (top5 + 7) / 40)


def test_the_closing_line_gives_the_final_epochs_accuracy_then_the_best(tmp_path, monkeypatch, capsys):
    """DARTS reports the last epoch's test accuracy; the best epoch's, chosen on the test split, comes
    second. A resume with no epoch left to run still knows the last one's (from the checkpoint)."""
    accuracies = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: Evaluation(1.0, *[next(accuracies)] * 2))
    capsys.readouterr()
    run_train(tmp_path / "r", "--epochs", "3", "--max-steps", "1")
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == f"final test accuracy 0.7000 (best 0.9000 at epoch 2); run directory: {tmp_path / 'r'}"
    train.main(["--out", str(tmp_path / "r"), "--resume", "--epochs", "3"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == out

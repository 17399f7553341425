"""Run directories at the edges of a run: stopped in its first epoch (before any checkpoint),
failing to start, resumed by the other command, resumed with settings its network ignores."""
import json
import os
import random

import pytest
import torch

from ndarts.backend import BackendError
from ndarts.checkpoint import CheckpointError
from ndarts.errors import NdartsError
from ndarts.rundir import RunDir
from ndarts.searcher import SearchConfig, Searcher, structural_settings
from ndarts.train import main as train_main


def _cfg(out, **kw):
    base = dict(dataset="digits", layers=3, init_channels=4, batch_size=16, max_steps=2, epochs=2,
                report_freq=0, out=str(out))
    base.update(kw)
    return SearchConfig(**base)


def _stop_in_epoch(monkeypatch, exc, epoch=0):
    """The search's _epoch raises `exc` at the start of `epoch`; returns the undo."""
    real = Searcher._epoch

    def stop(self, e):
        if e == epoch:
            raise exc
        real(self, e)

    monkeypatch.setattr(Searcher, "_epoch", stop)
    return lambda: monkeypatch.setattr(Searcher, "_epoch", real)


def test_a_run_interrupted_in_its_first_epoch_starts_again_with_resume(tmp_path, monkeypatch, capsys):
    seed = random.randrange(1000)
    full = Searcher(_cfg(tmp_path / "full", seed=seed))
    g_full = full.run_search()

    out = tmp_path / "cut"
    undo = _stop_in_epoch(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        Searcher(_cfg(out, seed=seed)).run_search()
    undo()
    assert not (out / "checkpoint.pt").exists() and (out / "config.json").exists()
    log = (out / "log.txt").read_text()
    assert f"interrupted: python -m ndarts.search --out {out} --resume starts it again" in log
    with pytest.raises(NdartsError, match="already holds a run; pass --resume"):
        Searcher(_cfg(out, seed=seed))

    torch.manual_seed(seed + 1)  # whatever the process did in between must not matter
    resumed = Searcher(_cfg(out, seed=seed, resume=True))
    assert resumed.start_epoch == 0
    assert resumed.run_search() == g_full
    for x, y in zip(resumed.model.arch_parameters(), full.model.arch_parameters()):
        assert torch.equal(x, y)
    assert "holds no checkpoint.pt (the run stopped in its first epoch)" in (out / "log.txt").read_text()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_an_interrupt_after_a_checkpoint_names_the_epoch_a_resume_continues_after(tmp_path, monkeypatch):
    undo = _stop_in_epoch(monkeypatch, KeyboardInterrupt(), epoch=1)
    with pytest.raises(KeyboardInterrupt):
        Searcher(_cfg(tmp_path / "run", epochs=3)).run_search()
    undo()
    assert "--resume continues after epoch 1, its last checkpoint" in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_failing_in_its_first_epoch_leaves_no_run_behind(tmp_path, monkeypatch, existed):
    """A start that fails (here: a backend the machine lacks, at the first step) removes what it
    wrote, so that the corrected command runs without --resume; a directory the user made stays."""
    out = tmp_path / "run"
    if existed:
        out.mkdir()
        (out / "notes.md").write_text("mine")
    undo = _stop_in_epoch(monkeypatch, BackendError("the Triton kernels need a CUDA device"))
    with pytest.raises(BackendError):
        Searcher(_cfg(out)).run_search()
    undo()
    if existed:
        assert sorted(p.name for p in out.iterdir()) == ["notes.md"]
    else:
        assert not out.exists()
    Searcher(_cfg(out, epochs=1)).run_search()
    assert (out / "checkpoint.pt").exists()


def test_a_failure_after_a_checkpoint_keeps_the_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    undo = _stop_in_epoch(monkeypatch, NdartsError("diverged"), epoch=1)
    with pytest.raises(NdartsError):
        Searcher(_cfg(out)).run_search()
    undo()
    assert {"config.json", "log.txt", "checkpoint.pt", "metrics.jsonl"} <= {p.name for p in out.iterdir()}


def test_a_run_that_never_started_is_not_resumed(tmp_path):
    for out in (tmp_path / "missing", tmp_path):
        with pytest.raises(NdartsError, match="nothing to resume"):
            RunDir(out, resume=True)


def test_resuming_the_other_commands_run_names_it(tmp_path, capsys):
    search_run = tmp_path / "search"
    Searcher(_cfg(search_run, epochs=1)).run_search()
    with pytest.raises(SystemExit) as exit_:
        train_main(["--out", str(search_run), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "holds a run of ndarts.search, not of ndarts.train" in err
    assert f"python -m ndarts.search --out {search_run} --resume" in err

    train_run = tmp_path / "train"
    train_run.mkdir()
    (train_run / "config.json").write_text(json.dumps({"genotype_dict": {"normal": []}, "network": "cifar"}))
    with pytest.raises(NdartsError, match="holds a run of ndarts.train, not of ndarts.search"):
        Searcher(_cfg(train_run, resume=True))


def test_a_changed_setting_is_named_by_its_flag_briefly(tmp_path):
    run = RunDir(tmp_path / "run", resume=False, command="train")
    long_genotype = {"normal": [["sep_conv_3x3", i % 2] for i in range(8)], "reduce": [["max_pool_3x3", 0]] * 8}
    run.write_config({"genotype_dict": long_genotype, "layers": 8, "order": None})
    with pytest.raises(CheckpointError) as e:
        run.check_same_config({"genotype_dict": {**long_genotype, "normal": []}, "layers": 20}, ("genotype_dict", "layers"))
    message = str(e.value)
    assert "--genotype: checkpoint {" in message and "--layers: checkpoint 8, now 20" in message
    assert len(message.replace(str(run.path), "")) < 330 and "genotype_dict" not in message


def test_nas_bench_201_resume_ignores_the_darts_network_flags():
    settings = structural_settings("nas-bench-201")
    assert "cells_per_stage" in settings and "init_channels" in settings
    assert "layers" not in settings and "steps" not in settings
    darts = structural_settings("noisydarts")
    assert "layers" in darts and "cells_per_stage" not in darts


def test_a_training_run_interrupted_in_its_first_epoch_starts_again_with_resume(tmp_path, monkeypatch):
    from ndarts.trainer import Trainer

    tiny = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--max-steps", "2", "--epochs", "1"]
    real = Trainer._epoch

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_epoch", interrupted)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train_main([*tiny, "--out", str(out)])
    assert exit_.value.code == 130
    assert "python -m ndarts.train --out" in (out / "log.txt").read_text()
    monkeypatch.setattr(Trainer, "_epoch", real)
    train_main(["--out", str(out), "--resume"])
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0]
    assert (out / "checkpoint.pt").exists() and (out / "best.pt").exists()


class _Writer:
    closed = False

    def close(self):
        self.closed = True


@pytest.mark.parametrize("command", ["search", "train"])
def test_the_shared_epoch_loop_returns_the_last_result_and_closes_the_writer(tmp_path, command):
    run, writer, seen = RunDir(tmp_path / "r", resume=False, command=command), _Writer(), []
    start, stop = random.randrange(3), random.randrange(3, 6)
    last = run.run_epochs(start, stop, lambda e: seen.append(e) or {"epoch": e}, "advice", writer=writer)
    assert seen == list(range(start, stop)) and last == {"epoch": stop - 1} and writer.closed
    assert run.run_epochs(stop, stop, seen.append, "advice") is None and len(seen) == stop - start


@pytest.mark.parametrize("exc, error", [(KeyboardInterrupt(), KeyboardInterrupt),
                                        (torch.cuda.OutOfMemoryError("CUDA out of memory"), NdartsError)])
def test_the_shared_epoch_loop_on_an_interrupt_or_out_of_memory(tmp_path, exc, error):
    run, writer = RunDir(tmp_path / "r", resume=False, command="train"), _Writer()
    stop_at = random.randrange(1, 4)

    def epoch(e):
        if e == stop_at:
            raise exc
        run.checkpoint.write_bytes(b"stand-in")  # as a finished epoch writes its checkpoint

    with pytest.raises(error) as raised:
        run.run_epochs(0, 5, epoch, "at --batch-size 7: lower it", writer=writer)
    assert writer.closed and run.checkpoint.exists()  # a run past its first checkpoint is kept
    if error is NdartsError:
        assert str(raised.value) == "CUDA out of memory at --batch-size 7: lower it"
    else:
        log = (tmp_path / "r" / "log.txt").read_text()
        assert f"python -m ndarts.train --out {tmp_path / 'r'} --resume continues after epoch {stop_at}" in log


def _disk_full(monkeypatch, module):
    """`module`'s checkpoint writes fail as on a full disk (after its metrics and genotype are written)."""
    def full(state, path):
        raise NdartsError(f"no space left on the device while writing {path}; the previous version of the file is kept")

    monkeypatch.setattr(module, "save_checkpoint", full)


def test_a_run_failing_at_its_first_checkpoint_removes_its_records(tmp_path, monkeypatch):
    """The first checkpoint fails (a full disk): the metrics, genotypes/ and tensorboard/ written in
    the epoch go with config.json and log.txt, and the rerun's metrics are its own. Records that are
    not a run's (no config.json) are never deleted: the run refuses their directory."""
    import ndarts.searcher as searcher_module

    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _disk_full(m, searcher_module)
        with pytest.raises(NdartsError, match="no space left"):
            Searcher(_cfg(out, max_steps=1, tensorboard=True)).run_search()
    assert not out.exists()
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 0}\n')  # left by a run whose clean-up could not finish
    with pytest.raises(NdartsError, match="holds metrics.jsonl but no run"):
        Searcher(_cfg(out, max_steps=1))
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 0}\n' and sorted(os.listdir(out)) == ["metrics.jsonl"]
    (out / "metrics.jsonl").unlink()
    Searcher(_cfg(out, max_steps=1)).run_search()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_a_training_failing_at_its_first_checkpoint_removes_its_records(tmp_path, monkeypatch):
    import ndarts.trainer as trainer_module

    out = tmp_path / "train"
    _disk_full(monkeypatch, trainer_module)
    with pytest.raises(SystemExit):
        train_main(["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--max-steps", "1",
                    "--epochs", "1", "--out", str(out)])
    assert not out.exists()


def test_a_resume_of_a_lone_corrupt_checkpoint_names_only_that(tmp_path, capsys):
    """checkpoint.pt alone, cut short: the resume says it is corrupt in a whole sentence, without a
    note on the conv layout it could not have read from it."""
    from ndarts.search import main as search_main

    out = tmp_path / "run"
    Searcher(_cfg(out, epochs=1, max_steps=1)).run_search()
    data = (out / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        search_main(["--out", str(cut), "--resume"])
    printed = capsys.readouterr()
    assert "batch_edge_convs" not in printed.out
    err = printed.err.strip()
    assert "is corrupt or not a checkpoint" in err and "\n" not in err
    assert err.endswith(".)") and "your checkpoint file is)" not in err, err


def test_a_directory_in_use_by_another_run_is_refused(tmp_path):
    """Rank 0's process locks its directory: a run of another process into it is refused while the
    first lives, with nothing of the first touched; a killed run's lock goes with its process. In one
    process RunDirs of a directory share the lock, which goes when the last one is released."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    hold = ("import sys, time\nfrom ndarts.rundir import RunDir\n"
            f"r = RunDir({str(out)!r}, resume=False)\nprint('locked', flush=True)\ntime.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for resume in (False, True):
            if resume:
                (out / "config.json").write_text("{}")  # a run to resume, still running
            with pytest.raises(NdartsError, match="in use by another ndarts run"):
                RunDir(out, resume=resume)
        assert sorted(os.listdir(out)) == ["config.json"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    (out / "config.json").unlink()
    first = RunDir(out, resume=False)  # the killed holder's lock is gone
    second = RunDir(out, resume=False)  # this process's: shared
    probe = [sys.executable, "-c", f"from ndarts.rundir import RunDir\nRunDir({str(out)!r}, resume=False).release()"]
    for held in (first, second, None):
        r = subprocess.run(probe, capture_output=True, text=True)
        assert (r.returncode != 0 and "in use by another ndarts run" in r.stderr) == (held is not None), r.stderr
        if held is not None:
            held.release()


def test_an_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in ("", "  "):
        with pytest.raises(NdartsError, match="--out is empty"):
            RunDir(out, resume=False)
    assert os.listdir(tmp_path) == []


def test_files_a_new_run_would_overwrite_are_kept(tmp_path):
    """A directory holding a run's files but no run (no config.json) is refused, its files intact;
    files of other names do not stop a run."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    RunDir(out, resume=False).release()
    name = random.choice(["log.txt", "metrics.jsonl", "genotype.json", "best.pt"])
    (out / name).write_text("precious")
    with pytest.raises(NdartsError, match=f"holds {name} but no run"):
        Searcher(_cfg(out, max_steps=1))
    assert sorted(os.listdir(out)) == sorted(["notes.txt", name]) and (out / name).read_text() == "precious"


def test_temporary_files_a_killed_write_left_are_removed(tmp_path):
    """An atomic write killed between its temporary file and the rename leaves `.NAME.XXXXXXXX.tmp`:
    the next run of the directory removes those (in it and in genotypes/), and nothing else."""
    out = tmp_path / "run"
    (out / "genotypes").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    stale = [out / f".checkpoint.pt.{os.urandom(4).hex()}.tmp", out / f".best.pt.{os.urandom(4).hex()}.tmp",
             out / "genotypes" / f".epoch_003.json.{os.urandom(4).hex()}.tmp"]
    kept = [out / ".notes.tmp", out / "genotypes" / "epoch_000.json", out / ".checkpoint.pt.zz.tmp"]
    for f in stale + kept:
        f.write_bytes(b"x" * 100)
    RunDir(out, resume=True).release()
    assert [f.exists() for f in stale] == [False] * len(stale)
    assert [f.exists() for f in kept] == [True] * len(kept)


def test_a_failed_metrics_write_is_one_error(tmp_path):
    """The epoch's metrics record cannot be written (here its path is a directory; a full or
    read-only disk alike): an NdartsError naming the file, not an OSError traceback."""
    r = RunDir(tmp_path / "run", resume=False)
    (tmp_path / "run" / "metrics.jsonl").mkdir()
    with pytest.raises(NdartsError, match=r"cannot write .*metrics\.jsonl"):
        r.append_metrics({"epoch": 0})
    r.release()

"""Reliability: untrusted files, crashes, divergence, clear errors, and fuzzed input checks."""
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ndarts.checkpoint as ckpt
from ndarts import NoiseConfig, noisy_mixed_sum
from ndarts.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ndarts.errors import NdartsError
from ndarts.searcher import SearchConfig, Searcher

TINY = ["--layers", "3", "--init-channels", "4", "--batch-size", "16", "--max-steps", "3", "--report-freq", "0"]


def _search(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ndarts.search", *TINY, *args], capture_output=True, text=True,
                          timeout=timeout)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- untrusted files
def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _RunsCode(marker)}, f)
    with pytest.raises(CheckpointError, match="would run code"), warnings.catch_warnings():
        warnings.simplefilter("error")  # the refusal is the whole message: no torch warning beside it
        load_checkpoint(path)
    torch.save({"epoch": 1, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_resume_from_an_evil_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    assert _search("--epochs", "1", "--out", str(out)).returncode == 0
    marker = tmp_path / "pwned"
    torch.save({"kind": "ndarts-search", "model": _RunsCode(marker)}, out / "checkpoint.pt")
    r = _search("--epochs", "2", "--out", str(out), "--resume")
    assert r.returncode == 2 and "would run code" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [(b"", "corrupt"), (b"PK\x03\x04garbage", "corrupt"),
                                           (b"plain text", "corrupt")])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")


def _misfit(path, change):
    """The checkpoint at path with one weight of its model, drawn at random, reshaped or removed; its key."""
    state = torch.load(path, weights_only=True)
    keys = [k for k, v in state["model"].items() if v.dim() > 0]
    key = keys[int(torch.randint(len(keys), (1,)))]
    if change == "shape":
        state["model"][key] = torch.zeros(state["model"][key].numel() + 1)
    else:
        del state["model"][key]
    save_checkpoint(state, path)
    return key


@pytest.mark.parametrize("change,problem", [("shape", "size mismatch"), ("missing", "Missing key")])
def test_weights_that_do_not_fit_name_the_weight(tmp_path, change, problem):
    """A checkpoint whose weights do not fit the network: the error names the weight and what is wrong
    (torch's message begins with a line that names neither)."""
    from ndarts.evaluate import load_trained_network
    from ndarts.trainer import TrainConfig, Trainer

    cfg = SearchConfig(dataset="digits", layers=3, steps=2, init_channels=4, batch_size=8, max_steps=1, epochs=1,
                       report_freq=0, out=str(tmp_path / "s"))
    Searcher(cfg).run_search()
    key = _misfit(tmp_path / "s" / "checkpoint.pt", change)
    cfg.epochs, cfg.resume = 2, True
    with pytest.raises(CheckpointError, match="does not fit") as e:
        Searcher(cfg)
    assert problem in str(e.value) and key in str(e.value)

    tcfg = TrainConfig(genotype="DARTS_V2", dataset="digits", layers=3, init_channels=4, batch_size=8, max_steps=1,
                       epochs=1, report_freq=0, out=str(tmp_path / "t"))
    Trainer(tcfg).fit()
    key = _misfit(tmp_path / "t" / "checkpoint.pt", change)
    with pytest.raises(CheckpointError, match="do not fit") as e:
        load_trained_network(tmp_path / "t" / "checkpoint.pt")
    assert problem in str(e.value) and key in str(e.value)
    tcfg.epochs, tcfg.resume = 2, True
    with pytest.raises(CheckpointError, match="does not fit") as e:
        Trainer(tcfg)
    assert problem in str(e.value) and key in str(e.value)


# ----------------------------------------------------------------------------- crashes
def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "w": torch.arange(5)}, path)
    before = path.read_bytes()

    def killed(*_):
        raise KeyboardInterrupt  # stands for SIGKILL between the write and the rename

    monkeypatch.setattr(ckpt.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.arange(7)}, path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1}, path)

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full)
    with pytest.raises(NdartsError, match="no space left"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077, None])
def test_atomic_writes_follow_the_umask(tmp_path, umask, fresh_seed):
    """New files get 0666 less the umask, as open() gives (was 0600 from tempfile.mkstemp); a
    rewritten file keeps its permission bits. None: a random umask."""
    from ndarts.genotype import save_genotype, zoo

    umask = int(torch.randint(0o100, (1,))) if umask is None else umask
    old = os.umask(umask)
    try:
        save_checkpoint({"epoch": 1}, tmp_path / "checkpoint.pt")
        ckpt.atomic_write_text(tmp_path / "run" / "config.json", "{}\n")
        save_genotype(zoo()["DARTS_V2"], tmp_path / "run" / "genotypes" / "epoch_000.json")
    finally:
        os.umask(old)
    for path in (tmp_path / "checkpoint.pt", tmp_path / "run" / "config.json",
                 tmp_path / "run" / "genotypes" / "epoch_000.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    path, mode = tmp_path / "checkpoint.pt", 0o600 | int(torch.randint(0o100, (1,)))
    path.chmod(mode)
    save_checkpoint({"epoch": 2}, path)
    assert path.stat().st_mode & 0o777 == mode and load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "run"]  # no temporary left behind


def test_killed_search_resumes_from_the_last_complete_checkpoint(tmp_path):
    """SIGKILL at an arbitrary moment after the first checkpoint; --resume completes the run."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ndarts.search", *TINY, "--epochs", "4", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(float(torch.rand(())) * 0.8)  # somewhere in the next epoch, maybe mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert 1 <= done <= 4
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 4
    assert json.loads((out / "genotype.json").read_text())["normal"]


# ----------------------------------------------------------------------------- divergence
def test_divergence_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert _search("--epochs", "1", "--out", str(out)).returncode == 0
    before = (out / "checkpoint.pt").read_bytes()
    r = _search("--epochs", "3", "--out", str(out), "--resume", "--learning-rate", "1e30")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "non-finite" in r.stderr and "epoch 2, step" in r.stderr and "last good checkpoint" in r.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


# ----------------------------------------------------------------------------- clear errors
def test_out_that_holds_a_run_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    assert _search("--epochs", "1", "--out", str(out)).returncode == 0
    before = (out / "checkpoint.pt").read_bytes()
    r = _search("--epochs", "1", "--out", str(out))
    assert r.returncode == 2 and "already holds a run" in r.stderr and "--resume" in r.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


def test_unwritable_run_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _search("--epochs", "1", "--out", str(blocker / "run"))
    assert r.returncode == 2 and "cannot write to the run directory" in r.stderr and "Traceback" not in r.stderr


def test_cuda_out_of_memory_names_the_batch_size(tmp_path, monkeypatch):
    def oom(self, epoch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Searcher, "_epoch", oom)
    cfg = SearchConfig(layers=3, init_channels=4, batch_size=256, epochs=1, out=str(tmp_path / "run"))
    with pytest.raises(NdartsError, match=r"out of memory at --batch-size 256: lower --batch-size \(e.g. 128\)"):
        Searcher(cfg).run_search()


# ----------------------------------------------------------------------------- fuzzed input checks
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32]


@st.composite
def _fused_inputs(draw):
    k = draw(st.integers(0, 10))
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from(_DTYPES))
    ops = []
    for _ in range(k):
        s = shape if draw(st.booleans()) or not shape else shape[:-1] + (shape[-1] + 1,)
        d = dtype if draw(st.integers(0, 9)) else draw(st.sampled_from(_DTYPES))
        t = torch.randn(s, dtype=torch.float64) * 3
        ops.append(t.to(d))
    n_w = k if draw(st.integers(0, 5)) else draw(st.integers(0, 12))
    w_rank2 = draw(st.integers(0, 9)) == 0
    w = torch.rand(n_w).reshape(n_w, 1) if w_rank2 else torch.rand(n_w)
    skip = draw(st.one_of(st.none(), st.integers(-1, 11)))
    return ops, w, skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fused_inputs())
def test_fused_op_input_checks_agree_with_reference(inputs):
    """Triton (interpreter) and the reference: the same result, or the same clear error."""
    ops, w, skip = inputs
    outcomes = {}
    for backend in ("triton", "torch"):
        try:
            outcomes[backend] = noisy_mixed_sum(ops, w, skip, NoiseConfig(), training=False, backend=backend)
        except (ValueError, TypeError) as e:
            assert str(e).startswith("noisy_mixed_sum:"), e  # ours, not from deep inside
            outcomes[backend] = e
    tri, ref = outcomes["triton"], outcomes["torch"]
    if isinstance(ref, Exception):
        assert type(tri) is type(ref) and str(tri) == str(ref)
    elif isinstance(tri, Exception):
        # the one documented difference: the reference also takes float64
        assert ops[0].dtype == torch.float64 and "Triton backend takes" in str(tri)
    else:
        expect = sum(wi.double() * o.double() for wi, o in zip(w, ops))
        tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[ops[0].dtype]
        torch.testing.assert_close(tri.double(), expect, atol=tol * 10, rtol=tol)
        torch.testing.assert_close(ref.double(), expect, atol=tol * 10, rtol=tol)

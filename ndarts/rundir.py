"""A run directory: resolved config, log, per-epoch metrics, genotypes, checkpoints.

    DIR/config.json          the resolved configuration
    DIR/log.txt              everything printed
    DIR/metrics.jsonl        one JSON object per finished epoch
    DIR/genotypes/epoch_NNN.json, DIR/genotype.json
    DIR/checkpoint.pt        the last complete epoch (atomic), DIR/best.pt (training)
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import sys
import time
import weakref
from pathlib import Path

from .checkpoint import CheckpointError, atomic_write_text, load_checkpoint
from .config_checks import flag
from .errors import NdartsError

CHECKPOINT = "checkpoint.pt"


# what a run writes into its directory besides its checkpoint and config.json: a new run refuses a
# directory that holds any of them (it would delete or overwrite them) but no run
RUN_FILES = ("log.txt", "metrics.jsonl", "genotype.json", "genotypes", "tensorboard", "best.pt")
# the temporary file of an atomic write (checkpoint.atomic_write_bytes) that a kill left behind
_STALE_TEMP = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


class RunDir:
    """command: "search" or "train", the ndarts command whose run this is (a resume refuses the
    other's run directory).

    Rank 0's process holds an exclusive lock on the directory (flock, where the platform has it)
    from here until its epochs end (run_epochs) or its start fails: a run of another process into
    the same --out, started at the same time, is refused instead of interleaving its files with this
    one's. A killed process's lock goes with it. Within one process the lock is shared (counted):
    the Python API may hold several RunDirs of a directory, one after another or side by side."""

    def __init__(self, path, resume: bool, rank0: bool = True, command: str = "search"):
        if not str(path).strip():
            raise NdartsError("--out is empty: name the run directory")
        self.path = Path(path)
        self.rank0 = rank0
        self.command = command
        self.checkpoint = self.path / CHECKPOINT
        self._lock = None
        has_checkpoint, has_config = self._check_contents(resume)
        self.created = rank0 and not self.path.exists()
        self._new_files: list[Path] = []  # written by this run where nothing was: removed again if it fails to start
        if rank0:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise NdartsError(f"cannot write to the run directory {self.path}: {e.strerror or e}") from None
            key = _lock_directory(self.path)
            # given up by release(), or when this RunDir is collected, or at the process's end
            self._lock = weakref.finalize(self, _unlock_directory, key) if key is not None else None
            try:
                probe = self.path / ".write_probe"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                self.release()
                raise NdartsError(f"cannot write to the run directory {self.path}: {e.strerror or e}") from None
            try:  # again, now that no other run can be starting in it
                has_checkpoint, has_config = self._check_contents(resume)
            except BaseException:
                self.release()
                raise
            self._remove_stale_temps()
        if resume:
            self._check_command()
        # --resume where the run stopped before its first checkpoint (killed in its first epoch):
        # nothing to load, the run starts again from the beginning with its settings
        self.resuming = resume and has_checkpoint
        if rank0 and not self.resuming and (self.path / "metrics.jsonl").exists():
            # the records of the run a bare --resume starts again (it never checkpointed): this
            # run's epochs must not follow them
            (self.path / "metrics.jsonl").unlink(missing_ok=True)
        if self.resuming and not has_config:
            self.log(f"note: {self.path} has no config.json: the run's settings are read from its {CHECKPOINT}")
        if resume and not has_checkpoint:
            self.log(f"note: {self.path} holds no {CHECKPOINT} (the run stopped in its first epoch): "
                     "starting it again from the beginning, with its settings")

    def _check_contents(self, resume: bool) -> tuple[bool, bool]:
        """(has a checkpoint, has a config.json); refuses a resume of nothing, a new run into a run's
        directory, and a new run into a directory holding files it would overwrite."""
        has_checkpoint, has_config = self.checkpoint.exists(), (self.path / "config.json").exists()
        if resume and not (has_checkpoint or has_config):
            raise NdartsError(f"nothing to resume: {self.path} holds no run ({CHECKPOINT} does not exist)")
        if (has_checkpoint or has_config) and not resume:
            raise NdartsError(f"{self.path} already holds a run; pass --resume to continue it, "
                              "or choose another --out (a run is never overwritten)")
        if not resume:
            clash = [name for name in RUN_FILES if (self.path / name).exists()]
            if clash:
                raise NdartsError(f"{self.path} holds {', '.join(clash)} but no run (no config.json): a new run "
                                  "would overwrite them; choose another --out or move them")
        return has_checkpoint, has_config

    def _remove_stale_temps(self) -> None:
        """Removes the temporary files of atomic writes that a killed run left (the lock is held:
        no other run of this directory is writing one)."""
        for folder in (self.path, self.path / "genotypes"):
            with contextlib.suppress(OSError):
                for f in folder.iterdir():
                    if _STALE_TEMP.fullmatch(f.name) and f.is_file():
                        with contextlib.suppress(OSError):
                            f.unlink()

    def release(self) -> None:
        """Gives up the directory's lock (idempotent): the run's epochs are over, or it failed to start."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock()

    def _check_command(self) -> None:
        saved = saved_config(self.path)
        other = run_command(saved) if saved is not None else None
        if other is not None and other != self.command:
            raise NdartsError(f"{self.path} holds a run of ndarts.{other}, not of ndarts.{self.command}: "
                              f"continue it with python -m ndarts.{other} --out {self.path} --resume")

    @contextlib.contextmanager
    def removed_if_unused(self):
        """Around a run's start (its set-up and its epochs): where it fails (missing data, a backend
        this machine lacks) before its first checkpoint, the files this run wrote where there were
        none (its config.json, log.txt, metrics.jsonl, genotypes/, tensorboard/) are removed again,
        and the directory if this RunDir created it and nothing else is in it, so that a failed start
        leaves no run directory behind that would refuse the corrected command, nor records a rerun
        would follow. An interrupt (Ctrl-C) keeps them: --resume starts that run again."""
        try:
            yield
        except Exception:
            if self.rank0 and not self.resuming and not self.checkpoint.exists():
                self._remove_new_files()
                if self.created:
                    with contextlib.suppress(OSError):
                        self.path.rmdir()  # only ever an empty directory
            self.release()
            raise
        except BaseException:  # an interrupt: the files stay for --resume
            self.release()
            raise

    def _remove_new_files(self) -> None:
        """Removes what track() noted, the latest first (a directory after the files in it)."""
        for f in reversed(self._new_files):
            with contextlib.suppress(OSError):
                if f.is_dir():
                    shutil.rmtree(f)  # made by this run: only its files are in it
                else:
                    f.unlink()

    def run_epochs(self, start: int, stop: int, epoch, out_of_memory: str, writer=None):
        """epoch(e) for e in [start, stop), the loop both commands share; returns the last epoch's
        result (None when none ran). Inside removed_if_unused; a Ctrl-C logs how to go on
        (interrupted) and is raised again; CUDA running out of memory becomes an NdartsError with
        `out_of_memory`'s advice; the TensorBoard `writer` (or None) is closed however it ends."""
        import torch

        result, epochs_saved = None, start
        try:
            with self.removed_if_unused():  # a run failing in its first epoch (an unusable backend, say)
                try:
                    for e in range(start, stop):
                        result = epoch(e)
                        epochs_saved = e + 1
                finally:  # closed before a failed start removes its directory
                    if writer is not None:
                        writer.close()
                    self.release()
        except KeyboardInterrupt:
            self.interrupted(epochs_saved)
            raise
        except torch.cuda.OutOfMemoryError:
            raise NdartsError(f"CUDA out of memory {out_of_memory}") from None
        return result

    def interrupted(self, epochs_saved: int) -> None:
        """Logs an interrupt (Ctrl-C) and how to go on from it."""
        how = (f"continues after epoch {epochs_saved}, its last checkpoint" if self.checkpoint.exists()
               else "starts it again (no epoch had finished)")
        self.log(f"interrupted: python -m ndarts.{self.command} --out {self.path} --resume {how}")

    def after_stop(self, fix: str, epochs_done: int) -> str:
        """What is kept of a run stopped by an error in its epochs, and how to go on: `fix` (what
        to change) then --resume where a checkpoint or the run's config.json stays, else a new start
        (a run stopped before its first checkpoint leaves nothing: removed_if_unused)."""
        if self.checkpoint.exists():
            return (f"the last good checkpoint ({self.checkpoint}, after epoch {epochs_done}) is kept; {fix} and "
                    "--resume, or start again")
        if not self.resuming and (self.path / "config.json") not in self._new_files:
            return f"no epoch had finished (no checkpoint); {fix} and --resume, which starts the run again"
        return f"no epoch had finished, so nothing of the run is kept; {fix} and start it again"

    def track(self, path) -> Path:
        """Notes a file (or directory) of the run about to be written, and a new directory it goes
        into: where they did not exist, a start failing before the first checkpoint removes them
        again (removed_if_unused). Returns the path."""
        path = Path(path)
        for p in (path.parent, path) if path.parent != self.path else (path,):
            if not p.exists() and p not in self._new_files:
                self._new_files.append(p)
        return path

    def check_data_source(self, own_data: bool) -> None:
        """A run on data its caller supplied in Python resumes only with data supplied again."""
        saved = self.read_config()
        if saved and saved.get("own_data") and not own_data:
            raise NdartsError(f"{own_data_problem(saved, self.path)}: pass the same data again "
                              f"({'Searcher' if self.command == 'search' else 'Trainer'}(cfg, data=...))")

    def write_config(self, config: dict) -> None:
        if self.rank0:
            self.track(self.path / "config.json")
            atomic_write_text(self.path / "config.json", json.dumps(config, indent=1, sort_keys=True) + "\n")

    def read_config(self) -> dict | None:
        return saved_config(self.path)

    def check_same_config(self, config: dict, keys) -> None:
        """A resumed run must share these settings with the run it continues."""
        saved = self.read_config()
        if saved is None:
            return
        diff = [f"{flag_name(k)}: checkpoint {short_repr(saved.get(k))}, now {short_repr(config.get(k))}"
                for k in keys if saved.get(k) != config.get(k)]
        if diff:
            raise CheckpointError(f"the checkpoint in {self.path} is from a different configuration: " + "; ".join(diff))

    def log(self, msg: str) -> None:
        if not self.rank0:
            return
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        self.track(self.path / "log.txt")
        try:
            with open(self.path / "log.txt", "a") as f:
                f.write(line + "\n")
        except OSError as e:
            print(f"warning: cannot append to {self.path / 'log.txt'}: {e.strerror}", file=sys.stderr)

    def append_metrics(self, record: dict) -> None:
        if not self.rank0:
            return
        path = self.track(self.path / "metrics.jsonl")
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a line cut short is dropped by metrics() and rewritten by the resume
            kept = f" (the last checkpoint, {self.checkpoint}, is kept: --resume redoes the epoch)" \
                if self.checkpoint.exists() else ""
            raise NdartsError(f"cannot write {path}: {e.strerror or e}{kept}") from None

    def metrics(self) -> list[dict]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after it is gone too
        return out

    def truncate_metrics(self, epochs_done: int) -> None:
        """Keeps the records of epochs < epochs_done (a resume redoes the rest)."""
        if not self.rank0:
            return
        kept = [r for r in self.metrics() if r.get("epoch", -1) < epochs_done]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))


def run_command(config: dict) -> str | None:
    """The ndarts command ("search" or "train") whose settings `config` holds, None where unknown."""
    if "order" in config and "space" in config:
        return "search"
    if "genotype_dict" in config:
        return "train"
    return None


FLAGS = {"genotype_dict": "--genotype"}  # settings recorded under another name than their flag's


def flag_name(key: str) -> str:
    """The command-line flag of a recorded setting."""
    return FLAGS.get(key) or flag(key)


def short_repr(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def summary_writer_class():
    """torch.utils.tensorboard's SummaryWriter, or a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NdartsError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def write_scalars(writer, record: dict, keys, step: int) -> None:
    """The numeric values of `keys` in a metrics record, as TensorBoard scalars."""
    for k in keys:
        if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool):
            writer.add_scalar(k, record[k], step)
    writer.flush()


def explicit_flags(parser: argparse.ArgumentParser, argv=None) -> frozenset[str]:
    """The destinations of the options given on the command line `argv` (None: sys.argv), not left
    at their defaults: parsed into a namespace that already holds a marker for every option, which
    argparse then leaves where no option sets it."""
    unset = object()
    marked = argparse.Namespace(**{dest: unset for dest in vars(parser.parse_args([]))})
    return frozenset(k for k, v in vars(parser.parse_args(argv, namespace=marked)).items() if v is not unset)


def given_flags(parser: argparse.ArgumentParser, args, given=None) -> frozenset[str]:
    """The destinations given on the command line: `given` (explicit_flags' answer) where known, else
    those whose value in `args` differs from the parser's default (a caller that parsed itself)."""
    if given is not None:
        return given
    defaults = vars(parser.parse_args([]))
    return frozenset(k for k, v in vars(args).items() if v != defaults.get(k))


def config_values(args, presets, kind: str, drop=(), given=None) -> dict:
    """The settings of a CLI run: the flags given, then each preset for what is still unset, and
    --out defaulting to runs/<kind>-<time> (but required with --resume).

    With --resume, every setting not given on this command line is the run's own, from its
    config.json: ``--out DIR --resume`` alone continues the run as it was started (its epochs,
    learning rates, --fused, ...), not with this command's defaults; a flag given now overrides it
    (those the checkpoint's network depends on must then still agree with it: the Searcher and
    Trainer check). given: the destinations given explicitly (explicit_flags); None counts every
    option as given."""
    values = {k: v for k, v in vars(args).items() if v is not None and k not in drop}
    if args.out is None:
        if args.resume:
            raise NdartsError("--resume needs --out DIR: the run directory to continue")
        values["out"] = f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    elif args.resume and given is not None:
        saved = saved_config(args.out) or {}
        if saved.get("own_data"):
            raise NdartsError(f"{own_data_problem(saved, args.out)}, which the command line cannot load: "
                              "resume it from Python with the same data (README: own images)")
        for k in vars(args):
            if k in saved and k not in given and k not in drop and k not in ("out", "resume"):
                values[k] = saved[k]
    for preset in presets:
        for k, v in preset.items():
            values.setdefault(k, v)
    return values


def own_data_problem(config: dict, path) -> str:
    """What is wrong with continuing or evaluating a run on data its caller supplied, without it."""
    return (f"{path} is a run on data its caller supplied in Python ({config.get('dataset')!r}, a DataSpec), "
            "not a dataset ndarts loads")


def saved_config(path) -> dict | None:
    """The config.json of the run directory `path`; where it is missing (a checkpoint.pt copied alone to
    another machine, say), the settings its checkpoint records; None where neither is there."""
    p = Path(path) / "config.json"
    if not p.exists():
        return checkpoint_config(Path(path) / CHECKPOINT)
    try:
        config = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise NdartsError(f"{p} is unreadable or corrupt: {e}") from None
    if not isinstance(config, dict):
        raise NdartsError(f"{p} is corrupt: it holds a {type(config).__name__}, not the run's settings")
    return config


def checkpoint_config(path) -> dict | None:
    """The settings a search or training checkpoint records (its "config"), None where there is no
    readable checkpoint (the resume that loads it then names the problem). Read once per file version."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    config = _checkpoint_config(str(path), stat.st_mtime_ns, stat.st_size)
    return dict(config) if config is not None else None  # the cached one stays as read


@functools.lru_cache(maxsize=4)
def _checkpoint_config(path: str, mtime_ns: int, size: int) -> dict | None:
    try:
        config = json.loads(load_checkpoint(path).get("config"))
    except (CheckpointError, TypeError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None


# the directories this process holds locked: realpath -> [descriptor holding the flock, holders]
_LOCKED: dict[str, list[int]] = {}


def _lock_directory(path: Path) -> str | None:
    """Takes an exclusive, non-blocking flock on the directory `path` for this process (or counts one
    more holder of the one it has); returns the key that _unlock_directory gives it up with. None
    where the platform or file system has no flock: the run is then not guarded."""
    try:
        import fcntl
    except ImportError:
        return None
    key = os.path.realpath(path)
    if key in _LOCKED:
        _LOCKED[key][1] += 1
        return key
    try:
        fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NdartsError(f"{path} is in use by another ndarts run (started at the same time, or still running): "
                          "wait for it to end, or choose another --out") from None
    except OSError:  # some network file systems
        os.close(fd)
        return None
    _LOCKED[key] = [fd, 1]
    return key


def _unlock_directory(key: str) -> None:
    """One holder fewer of the lock _lock_directory gave `key`; the last one closes its descriptor
    (the flock goes with it)."""
    held = _LOCKED.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _LOCKED[key]
        os.close(held[0])

"""Checkpoints and run files: written atomically, loaded without executing code.

Writes go to a temporary file in the same directory, are flushed and fsynced, then renamed over
the target (atomic on POSIX) and the directory is fsynced: a run killed at any moment leaves
either the previous complete file or the new complete file, never half of one. The written file
gets the mode open() would give it: an existing target's permission bits, else 0666 less the
process umask.
Loads use ``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""
from __future__ import annotations

import errno
import io
import os
import pickle
import pickletools
import secrets
import stat
import warnings
from pathlib import Path

import torch

from .errors import NdartsError


class CheckpointError(NdartsError):
    pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty temporary file next to `path`, open for writing: (fd, its name). Created with
    mode 0666, as open() creates a file, so the process umask applies (tempfile.mkstemp's files
    are 0600 whatever the umask); where `path` exists, its permission bits are copied instead."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:  # no target yet
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except OSError:  # keeps the umask's mode
                pass
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path.parent))


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as e:
        raise NdartsError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # an error or an interrupt: the target keeps its previous content
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        if e.errno == errno.ENOSPC:
            raise NdartsError(f"no space left on the device while writing {path}; "
                              "the previous version of the file is kept") from None
        raise NdartsError(f"cannot write {path}: {e.strerror or e}") from None
    _fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(state: dict, path) -> None:
    """Serialises to memory first, so a failure never touches the file on disk."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _plain_pickle_runs_code(path: Path) -> bool:
    """Reads the opcodes of a bare (non-zip) pickle without executing it: does it import or call?"""
    try:
        data = path.read_bytes()
        return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(data))
    except Exception:
        return False


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():
            # torch's note on a plain pickle file (not its own format): its error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if blocked or _plain_pickle_runs_code(path):
            detail = f" [{blocked[0][:200]}]" if blocked else ""
            raise CheckpointError(f"refusing to load {path}: it holds objects that would run code on load "
                                  f"(only tensors and plain data are accepted){detail}") from None
        raise CheckpointError(f"{path} is corrupt or not a checkpoint (not a torch file of tensors and plain data)") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError) as e:
        raise CheckpointError(f"{path} is corrupt or not a checkpoint ({type(e).__name__}: {first_sentence(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an ndarts checkpoint (top level is {type(state).__name__})")
    return state


def first_sentence(error: BaseException, limit: int = 200) -> str:
    """The first sentence of an error's message, whole (torch's load errors go on with advice that
    a cut would leave mid-sentence), shortened at a word with "..." only where it is still long."""
    text = " ".join(str(error).split())
    end = text.find(". ")
    if end != -1:
        text = text[:end + 1]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


# an optimizer's hyperparameters (torch's SGD and Adam): a resumed run's come from its settings
OPTIMIZER_SETTINGS = ("lr", "initial_lr", "momentum", "dampening", "nesterov", "weight_decay", "betas", "eps",
                      "amsgrad", "maximize")


def load_optimizer_state(optimizer, saved: dict) -> None:
    """Loads an optimizer's state from a checkpoint (momentum buffers, Adam's moments and step
    counts) but keeps the hyperparameters the optimizer was just built with from this run's
    settings: torch's load_state_dict brings back the checkpoint's, so a learning rate, momentum
    or weight decay given with --resume would be recorded in config.json and silently ignored."""
    kept = [{k: group[k] for k in OPTIMIZER_SETTINGS if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, kept):
        group.update(settings)


def position_schedule(scheduler, epochs_done: int) -> None:
    """Takes a freshly built (never stepped) learning-rate scheduler to where it is after
    `epochs_done` epochs by stepping it as the run does, once per epoch: the floats of a run that
    went through those epochs with this run's settings (bit for bit the uninterrupted run's where
    nothing changed), also where a resume changes --epochs, the learning rates or the decay. A
    restored scheduler state would not: torch's schedulers are chainable, each lr computed from
    the last one, so the old schedule would go on (past the new floor, say)."""
    with warnings.catch_warnings():
        # no optimizer step between these steps: that is the point of replaying them
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        for _ in range(epochs_done):
            scheduler.step()


def require_keys(state: dict, keys, path) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete ndarts checkpoint: missing {missing}")

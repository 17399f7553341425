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
from collections.abc import Mapping
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
    """The checkpoint has every one of `keys`, and each field it has that ndarts knows (CHECKPOINT_FIELDS:
    the named keys and the optional ones) is of the type its writer gives it: a state dict of
    tensors, an int epoch, ... A field of another type (a checkpoint edited or written by other
    code) is one CheckpointError naming it, not a TypeError from deep inside load_state_dict."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete ndarts checkpoint: missing {missing}")
    require_field_types(state, path)


def require_field_types(state: dict, path) -> None:
    """Each field of `state` that CHECKPOINT_FIELDS describes is of its type; else one
    CheckpointError naming the fields that are not."""
    wrong = []
    for key in state:
        if key not in CHECKPOINT_FIELDS:
            continue
        fits, what = CHECKPOINT_FIELDS[key]
        value = state[key]
        if not fits(value):
            wrong.append(f"{key!r} is {_describe(value)}, not {what}")
    if wrong:
        raise CheckpointError(f"{path} is not a complete ndarts checkpoint: {'; '.join(wrong)}")


def _describe(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, (bool, int, float)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    return f"a {type(value).__name__}"


def _is_int(value, minimum=None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_tensor_dict(value) -> bool:
    """A module's state dict: names to tensors."""
    return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items())


def _is_optimizer_state(value) -> bool:
    """torch.optim's state_dict(): {"state": {index: {...}}, "param_groups": [{"params": [...], ...}]}."""
    return (isinstance(value, Mapping) and isinstance(value.get("state"), Mapping)
            and all(isinstance(s, Mapping) for s in value["state"].values())
            and isinstance(value.get("param_groups"), (list, tuple))
            and all(isinstance(g, Mapping) and isinstance(g.get("params"), (list, tuple))
                    for g in value["param_groups"]))


def _is_rng_state(value) -> bool:
    """rng.rng_state(): torch's byte state, NumPy's MT19937 (624 keys) and Python's (625 words)."""
    if not isinstance(value, Mapping):
        return False
    t, n, p = value.get("torch"), value.get("numpy"), value.get("python")
    return (isinstance(t, torch.Tensor) and t.dtype == torch.uint8
            and isinstance(n, Mapping) and isinstance(n.get("keys"), torch.Tensor) and n["keys"].numel() == 624
            and not n["keys"].is_floating_point() and _is_int(n.get("pos")) and _is_int(n.get("has_gauss"))
            and _is_number(n.get("cached_gaussian"))
            and isinstance(p, Mapping) and _is_int(p.get("version")) and isinstance(p.get("state"), (list, tuple))
            and len(p["state"]) == 625 and all(_is_int(w) for w in p["state"])
            and (p.get("gauss") is None or _is_number(p.get("gauss")))
            and ("cuda" not in value or (isinstance(value["cuda"], (list, tuple))
                                         and all(isinstance(c, torch.Tensor) for c in value["cuda"]))))


def _is_stream_position(value) -> bool:
    """data.EndlessStream.state_dict(): {"pass": p, "step": s}."""
    return isinstance(value, Mapping) and _is_int(value.get("pass"), 0) and _is_int(value.get("step"), 0)


def _or_none(fits):
    return lambda value: value is None or fits(value)


# the fields of the search's and the training's checkpoints: (does a value fit, what it must be)
CHECKPOINT_FIELDS = {
    "kind": (lambda v: isinstance(v, str), "a string"),
    "epoch": (lambda v: _is_int(v, 0), "an int >= 0"),
    "config": (lambda v: isinstance(v, str), "a JSON string"),
    "genotype": (lambda v: isinstance(v, Mapping), "a dict"),
    "num_classes": (lambda v: _is_int(v, 1), "an int >= 1"),
    "in_channels": (lambda v: _is_int(v, 1), "an int >= 1"),
    "model": (_is_tensor_dict, "a state dict of tensors"),
    "optimizer": (_is_optimizer_state, "an optimizer state dict (state, param_groups)"),
    "w_optimizer": (_is_optimizer_state, "an optimizer state dict (state, param_groups)"),
    "a_optimizer": (_is_optimizer_state, "an optimizer state dict (state, param_groups)"),
    "scheduler": (lambda v: isinstance(v, Mapping), "a scheduler state dict"),
    "scaler": (_or_none(lambda v: isinstance(v, Mapping)), "a GradScaler state dict or None"),
    "val_stream": (_is_stream_position, "a stream position {'pass': int, 'step': int}"),
    "rng": (_is_rng_state, "an RNG state (torch, numpy, python)"),
    "rng_ranks": (_or_none(lambda v: isinstance(v, (list, tuple)) and all(_is_rng_state(r) for r in v)),
                  "a list of RNG states or None"),
    "world_size": (lambda v: _is_int(v, 1), "an int >= 1"),
    "best_acc": (_or_none(_is_number), "a number or None"),
    "best_epoch": (_or_none(lambda v: _is_int(v, 0)), "an int >= 0 or None"),
    "test_acc": (_or_none(_is_number), "a number or None"),
}

"""Range checks of a run's settings (SearchConfig, TrainConfig): each failure is one NdartsError naming
the flag and the value it got, raised before anything is built or written.

Without them a negative momentum or weight decay ended in a traceback from inside torch.optim, and a
negative --grad-clip silently flipped every clipped gradient (clip_grad_norm_ scales by max_norm/norm).
"""

from __future__ import annotations

import math
import numbers

from .errors import NdartsError
from .operations import NAS_BENCH_201

# the search flags one kind of space's network has no use for: given, they would be silently ignored
NB201_UNUSED = {"layers": "--layers (its network has --cells-per-stage instead)",
                "batch_edge_convs": "--batch-edge-convs (its cells have no sep/dil convs)",
                "noise_position": "--noise-position (its cells have no stride-2 edges)"}
DARTS_UNUSED = {"cells_per_stage": "--cells-per-stage (the DARTS network has --layers instead)"}
# the search flags that shape the noise: --noise none injects none, so they would be silently ignored
NOISE_SETTINGS = ("noise_lambda", "noise_mean", "noise_mixture", "noise_decay", "noise_position")

# --seed's range: every seed derived from it stays one torch's generators take ([-2**63, 2**64)).
# A batch stream's generator is seeded with seed * 1_000_003 + stream * 10_007 + pass + salt
# (data.BatchStream._generator, salt < 10**6), the process with the seed itself
# (rng.seed_everything) and, for the other ranks, a hash of it (distributed.rank_seed): at
# 2**44 * 1_000_003 the first is still ~8.5e17 below 2**64, at -2**43 * 1_000_003 ~4.3e17 above
# -2**63. Negative seeds work (as they did); any 32-bit seed, and a millisecond timestamp, fits.
SEED_LOW, SEED_HIGH = -2**43, 2**44


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def require_amp_device(amp: str, device) -> None:
    """fp16 autocast (with its GradScaler) runs on CUDA only."""
    if amp == "fp16" and device.type == "cpu":
        raise NdartsError("--amp fp16 needs a CUDA device; on a CPU use --amp bf16")


def require_space_flags(space: str, given) -> None:
    """Refuses the search flags given (destinations, rundir.explicit_flags) that `space`'s network
    would silently ignore, as --triton-convs is refused on the NAS-Bench-201 space: a run that
    looks configured but is not."""
    unused = NB201_UNUSED if space == NAS_BENCH_201 else DARTS_UNUSED
    found = [what for name, what in unused.items() if name in given]
    if found:
        raise NdartsError(f"the {space} space does not use {', '.join(found)}: drop "
                          + ("the flag" if len(found) == 1 else "those flags"))


def require_noise_flags(noise: str, given) -> None:
    """Refuses the noise flags given (destinations, rundir.explicit_flags) with --noise none, which
    injects no noise and so ignores them all: a plain DARTS search that looks like a noisy one."""
    if noise != "none":
        return
    found = [flag(name) for name in NOISE_SETTINGS if name in given]
    if found:
        raise NdartsError(f"--noise none injects no noise, so {', '.join(found)} would be ignored: drop "
                          + ("the flag" if len(found) == 1 else "those flags") + " or pass --noise gaussian/uniform")


def require_train_flags(cfg, given) -> None:
    """Refuses the training flags given (destinations, rundir.explicit_flags) that this run's settings
    (flags, presets or, with --resume, the run's own) would silently ignore: --auxiliary-weight
    without the auxiliary tower, --lr-gamma (the step schedule's decay) with the cosine schedule,
    --learning-rate-min (the cosine schedule's floor) with the step schedule."""
    if "auxiliary_weight" in given and not cfg.auxiliary:
        raise NdartsError("--auxiliary-weight weights the auxiliary tower's loss, and this run has no tower "
                          "(--no-auxiliary): drop --auxiliary-weight, or --no-auxiliary")
    if "lr_gamma" in given and cfg.lr_schedule != "step":
        raise NdartsError(f"--lr-gamma is the step schedule's decay per epoch; this run's --lr-schedule is "
                          f"{cfg.lr_schedule}: drop --lr-gamma, or pass --lr-schedule step")
    if "learning_rate_min" in given and cfg.lr_schedule != "cosine":
        raise NdartsError(f"--learning-rate-min is the cosine schedule's floor; this run's --lr-schedule is "
                          f"{cfg.lr_schedule}: drop --learning-rate-min, or pass --lr-schedule cosine")


def require_seed(cfg) -> None:
    """--seed is an integer in [SEED_LOW, SEED_HIGH): outside, a seed derived from it overflows
    torch's 64-bit generator seed (a traceback from inside the first epoch)."""
    v = cfg.seed
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not SEED_LOW <= v < SEED_HIGH:
        raise NdartsError(f"--seed must be an integer in [-2**43, 2**44) = [{SEED_LOW}, {SEED_HIGH}), got {v!r}")


def require_ints(cfg, minimum: int, *names: str) -> None:
    """Each named setting is an int >= minimum; a setting left at None (optional) passes."""
    for name in names:
        v = getattr(cfg, name)
        if v is not None and v < minimum:
            raise NdartsError(f"{flag(name)} must be >= {minimum}, got {v}")


def require_numbers(cfg, *names: str, low: float = 0.0, low_open: bool = False, high: float | None = None,
                    high_open: bool = False, what: str | None = None) -> None:
    """Each named setting is a finite number in the interval from low to high (open ends where asked)."""
    for name in names:
        v = getattr(cfg, name)
        fine = math.isfinite(v) and (v > low if low_open else v >= low)
        if high is not None:
            fine = fine and (v < high if high_open else v <= high)
        if not fine:
            if what is None and high is None:
                what = f"> {low:g}" if low_open else f">= {low:g}"
            elif what is None:
                what = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise NdartsError(f"{flag(name)} must be {what}, got {v}")


def require_optimizer_settings(cfg) -> None:
    """The SGD settings both runs share: learning rates, the cosine floor, momentum, weight decay, clipping."""
    require_numbers(cfg, "learning_rate", low_open=True)
    require_numbers(cfg, "learning_rate_min", high=cfg.learning_rate,
                    what=f"in [0, --learning-rate] = [0, {cfg.learning_rate:g}]")
    require_numbers(cfg, "momentum", high=1.0, high_open=True)
    require_numbers(cfg, "weight_decay")
    require_numbers(cfg, "grad_clip", low_open=True)


def require_epochs_cover(done: int, epochs: int, checkpoint) -> None:
    """A resume may lengthen a run (a larger --epochs), not shorten it below the epochs already done."""
    if done > epochs:
        raise NdartsError(f"{checkpoint} has done {done} epochs, more than --epochs {epochs}: a resume may "
                          f"lengthen a run, not shorten it (pass --epochs {done} or more)")

"""The first non-finite step of a run, watched on the device.

Reading ``torch.isfinite(loss)`` on the host after every step makes the host wait for the step to
finish, so it cannot launch the next one while the GPU runs this one: with a search step replayed
as one CUDA graph and its batches made on the device (ndarts.image_tensors), that wait was the
only host sync of a step. The watch keeps, per quantity, the first step at which it was non-finite,
as a device tensor updated by a few small launches; the loop reads it (one sync) where it logs and
before it writes a checkpoint, so a diverged run still stops before its checkpoint and names the step.
"""
from __future__ import annotations

import torch

NEVER = torch.iinfo(torch.int64).max


class FiniteWatch:
    def __init__(self, names):
        self.names = tuple(names)
        self._first = None  # int64 [len(names)] on the device: the first bad step of each, NEVER if none

    def update(self, step: int, values) -> None:
        """values: one tensor per name (any shape; a non-finite element marks the step)."""
        if len(values) != len(self.names):
            raise ValueError(f"FiniteWatch: {len(values)} values for {len(self.names)} names")
        # a tensor's sum is non-finite when an element is (or when finite ones overflow fp32: ~1e38,
        # a diverged run too); one launch per tensor, then one for the lot
        sums = torch.stack([v.detach().float().sum() for v in values])
        bad_at = torch.where(torch.isfinite(sums), NEVER, step)
        self._first = bad_at if self._first is None else torch.minimum(self._first, bad_at)

    def first_bad(self) -> tuple[str, int] | None:
        """(name, step) of the earliest non-finite value seen since the last reset, or None (one sync)."""
        if self._first is None:
            return None
        first = self._first.tolist()
        step = min(first)
        return None if step == NEVER else (self.names[first.index(step)], step)

    def reset(self) -> None:
        self._first = None

"""Running loss / accuracy of a training epoch, its progress line and its cross-rank total.

The sums stay on the device (no host sync per step): they are read where a line is logged and at
the end of the epoch."""
from __future__ import annotations

import time


class EpochMeter:
    def __init__(self):
        self._loss, self._correct, self.n = None, None, 0  # device tensors: Σ loss·batch, Σ correct
        self.t_start = time.time()

    def update(self, loss, logits, y) -> None:
        n = y.shape[0]
        loss_sum = loss.detach().float() * n
        correct = (logits.detach().argmax(1) == y).sum()
        self._loss = loss_sum if self._loss is None else self._loss + loss_sum
        self._correct = correct if self._correct is None else self._correct + correct
        self.n += n

    @property
    def loss(self) -> float:
        return 0.0 if self._loss is None else float(self._loss)

    @property
    def correct(self) -> int:
        return 0 if self._correct is None else int(self._correct)

    def log_progress(self, run, epoch: int, step: int, n_steps: int, every: int) -> None:
        """A line every `every` steps (0: never) with the running loss, accuracy and throughput."""
        if not every or (step + 1) % every:
            return
        loss, correct = self.loss, self.correct  # the sync: the time below counts the steps done
        rate = self.n / max(time.time() - self.t_start, 1e-9)
        run.log(f"  epoch {epoch + 1} step {step + 1}/{n_steps} loss {loss / self.n:.4f} "
                f"acc {correct / self.n:.4f} | {rate:.0f} img/s")

    def summary(self, n_steps: int, dist=None) -> dict:
        """Totals over every rank (under DDP) as train_loss / train_acc."""
        loss, correct, n = self.loss, self.correct, self.n
        if dist is not None:
            loss, correct, n = dist.sum_scalars(loss, correct, n)
        return {"train_loss": loss / max(n, 1), "train_acc": correct / max(n, 1), "steps": n_steps}


def topk_correct(logits, y, k: int = 5):
    """How many rows of `logits` hold their label `y` among their k highest scores, k capped at the
    number of classes (top-5 of a 3-class problem is top-3): a device tensor, so that a test sums it
    per batch without a host sync. DARTS's ImageNet results are top-1 and top-5."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y.unsqueeze(1)).any(dim=1).sum()


def steps_per_epoch(stream_steps: int, max_steps: int | None) -> int:
    """The steps an epoch runs: the stream's, or --max-steps where that is fewer."""
    return stream_steps if max_steps is None else min(max_steps, stream_steps)


def steps_phrase(stream_steps: int, max_steps: int | None) -> str:
    """'12 steps/epoch', or '2 of 12 steps/epoch (--max-steps)' for a capped run, for a run's header line."""
    n = steps_per_epoch(stream_steps, max_steps)
    return f"{n} steps/epoch" if n == stream_steps else f"{n} of {stream_steps} steps/epoch (--max-steps)"

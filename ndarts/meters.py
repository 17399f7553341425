"""Running loss / accuracy of a training epoch, its progress line and its cross-rank total."""
from __future__ import annotations

import time


class EpochMeter:
    def __init__(self):
        self.loss, self.correct, self.n = 0.0, 0, 0
        self.t_start = time.time()

    def update(self, loss, logits, y) -> None:
        n = y.shape[0]
        self.loss += float(loss.detach()) * n
        self.correct += int((logits.argmax(1) == y).sum())
        self.n += n

    def log_progress(self, run, epoch: int, step: int, n_steps: int, every: int) -> None:
        """A line every `every` steps (0: never) with the running loss, accuracy and throughput."""
        if not every or (step + 1) % every:
            return
        rate = self.n / max(time.time() - self.t_start, 1e-9)
        run.log(f"  epoch {epoch + 1} step {step + 1}/{n_steps} loss {self.loss / self.n:.4f} "
                f"acc {self.correct / self.n:.4f} | {rate:.0f} img/s")

    def summary(self, n_steps: int, dist=None) -> dict:
        """Totals over every rank (under DDP) as train_loss / train_acc."""
        loss, correct, n = self.loss, self.correct, self.n
        if dist is not None:
            loss, correct, n = dist.sum_scalars(loss, correct, n)
        return {"train_loss": loss / max(n, 1), "train_acc": correct / max(n, 1), "steps": n_steps}

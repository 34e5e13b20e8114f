"""A live progress bar (loss, accuracy, images/s) that stays quiet when output is not a terminal."""

from __future__ import annotations

import sys
import time

import torch
from tqdm import tqdm


class EpochProgress:
    """tqdm over one epoch's batches; refreshes its numbers at most every 0.2 s, so reading
    them back from the device costs nothing noticeable."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)
        self.started = time.perf_counter()
        self.shown_at = 0.0

    def __call__(self, index: int, loss: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.shown_at >= 0.2 or index + 1 == self.bar.total:
            self.shown_at = now
            self.bar.set_postfix(
                loss=f"{float(loss):.4f}",
                acc=f"{float(correct) / max(seen, 1):.4f}",
                img_s=f"{seen / max(now - self.started, 1e-9):,.0f}",
                refresh=False,
            )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""Where a run stands between epochs (Progress, and a resumed run's, put back from its
checkpoint) and what it hands back at the end (TrainResult)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taolu.engine.loop import EpochStart
from taolu.run.setup import OptimParts, Resume


@dataclass
class TrainResult:
    """What `taolu.train` returns. `model` holds the best checkpoint's weights, in eval mode."""

    run_dir: Path
    best_val_acc: float
    final_val_acc: float
    model: nn.Module
    history: list[dict[str, float]]
    summary: dict[str, Any] = field(repr=False)
    best_checkpoint: Path | None  # None after --lr-find, which trains nothing
    last_checkpoint: Path | None
    suggested_lr: float | None = None  # set by --lr-find


@dataclass
class Progress:
    """Where the run stands between epochs."""

    epoch: int = 0  # epochs complete
    step: int = 0  # optimizer steps taken
    elapsed_before: float = 0.0  # seconds trained in earlier sessions of this run
    best_val_acc: float = -1.0
    best_epoch: int = 0
    partial: EpochStart | None = None  # the rest of an epoch a stop interrupted
    stopped_early: bool = False
    recoveries: list[dict[str, Any]] = field(default_factory=list)  # --on-nan recover's
    clock: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.clock


def resume_progress(
    resume: Resume | None, optim: OptimParts, generator: torch.Generator
) -> Progress:
    """A fresh run's start; or, in one step, a resumed run put back where its checkpoint left
    it: weights, EMA, optimizer, schedule, random streams, and the place in the epochs."""
    if resume is None:
        return Progress()
    state, steps, source = resume.state, optim.total_steps, resume.run_dir
    state.restore(optim.stepper, optim.schedule, generator, total_steps=steps, source=source)
    partial = EpochStart.from_dict(state.partial_epoch) if state.partial_epoch else None
    return Progress(
        state.epoch,
        state.step,
        state.elapsed_seconds,
        state.best_val_acc,
        state.best_epoch,
        partial,
        recoveries=list(state.recoveries),
    )

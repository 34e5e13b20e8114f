"""--on-nan recover: when a step's loss is NaN or infinite, go back to where the epoch started
(kept in memory, not re-read from disk), cut the learning rate, and train the epoch again."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from taolu.engine.loop import EpochResult, EpochStart, NonFiniteLoss
from taolu.engine.step import StepperState
from taolu.errors import TrainingError
from taolu.run.progress import Progress
from taolu.run.records import Records
from taolu.run.setup import Run

logger = logging.getLogger("taolu")

MAX_RECOVERIES = 3  # a fourth NaN in one run stops it, as --on-nan stop would
LR_FACTOR = 0.25  # each recovery divides the lr (the whole schedule) by 4


@dataclass
class EpochStartState:
    """Everything an epoch changes, as it stood when the epoch began: the step's state
    (weights, optimizer, EMA, grad scaler), the schedule, the random streams, the step count,
    and the rest of a stopped epoch being resumed."""

    stepper: StepperState
    schedule: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    step: int
    partial: EpochStart | None

    @classmethod
    def take(cls, run: Run, progress: Progress) -> EpochStartState:
        return cls(
            run.optim.stepper.snapshot(),
            copy.deepcopy(run.optim.schedule.state_dict()),
            run.generator.get_state(),
            torch.get_rng_state(),
            progress.step,
            progress.partial,
        )

    def put_back(self, run: Run, progress: Progress) -> None:
        run.optim.stepper.restore(self.stepper)
        run.optim.schedule.load_state_dict(copy.deepcopy(self.schedule))
        run.generator.set_state(self.generator)
        torch.set_rng_state(self.torch_rng)
        progress.step, progress.partial = self.step, self.partial


def recover(
    run: Run,
    records: Records,
    progress: Progress,
    epoch: int,
    bad: NonFiniteLoss,
    start: EpochStartState,
) -> None:
    """Put the run back to `start`, lower the lr, and record why; after MAX_RECOVERIES,
    stop with a TrainingError naming what was tried."""
    config, schedule = run.config, run.optim.schedule
    old_lr = config.lr * schedule.lr_scale
    where = f"epoch {epoch}, batch {bad.batch + 1}: the loss became {bad.loss}"
    if len(progress.recoveries) >= MAX_RECOVERIES:
        tried = " -> ".join(f"{r['old_lr']:.3g}" for r in progress.recoveries)
        raise TrainingError(
            f"{where} again after {MAX_RECOVERIES} recoveries (each went back to the start of "
            f"its epoch and divided the lr by {1 / LR_FACTOR:g}: {tried} -> {old_lr:.3g}); "
            f"training stopped before that batch changed any weight. {records.kept()} Look "
            "for broken samples (taolu data check), try a much lower --lr, --clip-grad 1, or "
            "--on-nan skip."
        )
    scale = schedule.lr_scale * LR_FACTOR  # recoveries within one epoch compound
    start.put_back(run, progress)  # the schedule too, at the scale the epoch began with
    schedule.scale(scale / schedule.lr_scale)
    new_lr = config.lr * schedule.lr_scale
    step = progress.step + bad.batch // run.optim.stepper.accumulate + 1
    progress.recoveries.append(
        {"epoch": epoch, "step": step, "loss": str(bad.loss), "old_lr": old_lr, "new_lr": new_lr}
    )
    records.log.log_recovery(len(progress.recoveries), new_lr, step)
    if run.compute.cluster.is_main:
        logger.warning(
            "%s; went back to the weights epoch %d started from and lowered the lr from %.3g to "
            "%.3g (recovery %d of %d; --on-nan recover)",
            where,
            epoch,
            old_lr,
            new_lr,
            len(progress.recoveries),
            MAX_RECOVERIES,
        )


def train_or_recover(
    run: Run,
    records: Records,
    progress: Progress,
    epoch: int,
    train_steps: Callable[[Run, Records, Progress, int], EpochResult],
) -> EpochResult:
    """The epoch's steps, taken again from the epoch's start at a lower lr whenever a loss
    is not finite (--on-nan recover); --on-nan stop raises instead, and --on-nan skip's
    skipped batches are warned about. A loss still not finite at the end is an error."""
    config = run.config
    recovering = config.on_nan == "recover"
    start = EpochStartState.take(run, progress) if recovering else None
    while True:
        try:
            trained = train_steps(run, records, progress, epoch)
            break
        except NonFiniteLoss as bad:
            if start is None:
                raise TrainingError(
                    f"epoch {epoch}, batch {bad.batch + 1}: the loss became {bad.loss}; "
                    f"training stopped before that batch changed any weight. {records.kept()} "
                    f"Try a lower --lr (it is {config.lr:g}), --clip-grad, or --on-nan recover "
                    "(the default)."
                ) from None
            recover(run, records, progress, epoch, bad, start)
    if not math.isfinite(trained.loss):
        skipped = f" ({trained.skipped_batches} batches skipped)" if trained.skipped_batches else ""
        raise TrainingError(
            f"training diverged in epoch {epoch}: the loss became {trained.loss}{skipped}. "
            f"{records.kept()} Try a lower --lr (it is {config.lr:g})."
        )
    if trained.skipped_batches:
        logger.warning(
            "epoch %d: skipped %d batches whose loss was NaN or infinite (--on-nan skip)",
            epoch,
            trained.skipped_batches,
        )
    return trained

"""One training epoch and one evaluation pass, with every input passed explicitly."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from taolu.data.loaders import Batches, BatchTransform
from taolu.engine.distributed import SINGLE_PROCESS, Cluster, gather_to_main, sum_across
from taolu.engine.metrics import ClassMetrics, ClassReport
from taolu.engine.optim import LrSchedule
from taolu.engine.precision import Precision
from taolu.engine.step import Stepper


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    seconds: float
    step_losses: list[float] = field(default_factory=list)  # one per optimizer step
    steps: int = 0  # optimizer steps taken
    skipped_batches: int = 0  # batches left out because their loss was NaN or infinite
    grad_norm: float | None = None  # mean global gradient norm (before clipping)
    report: ClassReport | None = None  # evaluation only: per-class metrics
    # evaluation with keep_outputs: softmax probabilities (N, classes) and labels (N,) on the
    # CPU, and up to `keep_outputs` misclassified images as (uint8 images, true, predicted)
    probabilities: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    misclassified: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    step_lrs: list[float] = field(default_factory=list)  # the lr of each optimizer step
    step_grad_norms: list[float] = field(default_factory=list)
    # Set when a stop was requested (SIGTERM, Ctrl-C) mid-epoch: how the epoch stands.
    stopped: EpochStart | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EpochStart:
    """Where an epoch (re)starts: a fresh epoch by default; after a stop mid-epoch, the rest of
    its order and the sums so far, so the resumed epoch ends as an uninterrupted one would."""

    order: torch.Tensor | None = None  # the samples still to come (None: draw a new order)
    first_batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0
    steps: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict) -> EpochStart:
        return cls(**values)


class NonFiniteLoss(Exception):
    """A training step's loss was NaN or infinite and --on-nan is stop or recover."""

    def __init__(self, batch: int, loss: float):
        super().__init__(f"batch {batch}: loss {loss}")
        self.batch, self.loss = batch, loss


def steps_per_epoch(batches: int, accumulate: int) -> int:
    return -(-batches // accumulate)


def train_one_epoch(
    stepper: Stepper,
    batches: Batches,
    schedule: LrSchedule,
    generator: torch.Generator,
    *,
    on_nan: str = "stop",
    start: EpochStart | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor, int], None] | None = None,
    inspect_gradients: Callable[[nn.Module], None] | None = None,
) -> EpochResult:
    """Every batch through `stepper`; an optimizer step (and a schedule step) every
    `stepper.accumulate` batches.

    on_nan: "stop" and "recover" raise NonFiniteLoss before the bad batch touches the
        weights (the caller recovers); "skip" leaves the batch out.
    start: continues an epoch stopped part way. When `should_stop()` answers True after an
        optimizer step, the epoch ends there and `stopped` says how to continue it.
    on_step(i, loss, correct, images_seen) gets device tensors, so a GPU is only synchronised
        when the caller reads them. Loss and accuracy are summed on the device.
    inspect_gradients: called with the network at the epoch's last optimizer step, gradients
        still in place (gradient histograms).
    """
    stepper.train_mode()
    start = start or EpochStart()
    tally = EpochTally(start, stepper.transform.mean.device)
    window = StepWindow(stepper, schedule)
    planned, accumulate = len(batches), stepper.accumulate
    stepper.optimizer.zero_grad(set_to_none=True)
    stopped = None
    order = start.order if start.order is not None else batches.order(generator)
    started = time.perf_counter() - start.seconds
    batch_list = batches.iterate(generator, order=order)
    for index, (images, labels) in enumerate(batch_list, start=start.first_batch):
        loss, logits = stepper.forward(images, labels, generator)
        if not stepper.finite(loss):
            if on_nan != "skip":
                raise NonFiniteLoss(index, float(loss.detach()))
            tally.skipped += 1
        else:
            window_start = index - index % accumulate
            stepper.backward(loss, min(accumulate, planned - window_start))
            window.losses.append(loss.detach())
            tally.add(loss.detach(), logits.detach(), labels)
            if on_step is not None:
                on_step(index, loss.detach(), tally.correct, tally.seen)
        if (index + 1) % accumulate == 0 or index + 1 == planned:
            if index + 1 == planned and inspect_gradients is not None and window.losses:
                inspect_gradients(stepper.network)
            window.finish()
            tally.steps += 1
            if should_stop is not None and index + 1 < planned and should_stop():
                done = index + 1 - start.first_batch  # batches taken from `order` here
                rest = order[done * batches.batch_size :].cpu()
                stopped = tally.paused(rest, index + 1, time.perf_counter() - started)
                break
    if window.losses:  # undecodable files left the last window short
        window.finish()
        tally.steps += 1
    seconds = time.perf_counter() - started
    return tally.result(window, stepper.cluster, seconds, stopped)


class EpochTally:
    """A training epoch's sums so far, kept on the device (read once, at the end)."""

    def __init__(self, start: EpochStart, device: torch.device):
        self.loss_sum = torch.tensor(start.loss_sum, device=device)
        self.correct = torch.tensor(start.correct, device=device, dtype=torch.long)
        self.seen, self.skipped, self.steps = start.seen, start.skipped, start.steps

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        batch = labels.shape[0]
        self.seen += batch
        self.loss_sum += loss * batch
        self.correct += (logits.argmax(1) == labels).sum()

    def paused(self, order: torch.Tensor, next_batch: int, seconds: float) -> EpochStart:
        """How to continue the epoch from `next_batch`, `order` holding the samples to come."""
        return EpochStart(
            order=order,
            first_batch=next_batch,
            loss_sum=float(self.loss_sum),
            correct=int(self.correct),
            seen=self.seen,
            skipped=self.skipped,
            steps=self.steps,
            seconds=seconds,
        )

    def result(
        self, window: StepWindow, cluster: Cluster, seconds: float, stopped: EpochStart | None
    ) -> EpochResult:
        """The epoch's figures, summed over every process."""
        device = self.loss_sum.device
        loss_sum, correct, seen_count = sum_across(
            cluster, self.loss_sum, self.correct, torch.tensor(self.seen, device=device)
        )
        seen = int(seen_count)
        norms = window.grad_norms
        return EpochResult(
            loss=float(loss_sum) / max(seen, 1) if seen else float("nan"),
            acc=float(correct) / max(seen, 1),
            images=seen,
            seconds=seconds,
            step_losses=_floats(window.step_losses),
            steps=self.steps,
            skipped_batches=self.skipped,
            grad_norm=float(torch.stack(norms).mean()) if norms else None,
            step_lrs=window.lrs,
            step_grad_norms=_floats(norms),
            stopped=stopped,
        )


class StepWindow:
    """The batches of the optimizer step under way, and what each finished step recorded."""

    def __init__(self, stepper: Stepper, schedule: LrSchedule):
        self.stepper, self.schedule = stepper, schedule
        self.losses: list[torch.Tensor] = []  # of the batches whose gradients wait
        self.step_losses: list[torch.Tensor] = []
        self.grad_norms: list[torch.Tensor] = []
        self.lrs: list[float] = []

    def finish(self) -> None:
        """One optimizer step from the window's gradients. A window whose every batch was
        skipped applies nothing, but the schedule still advances: it follows the run's
        position."""
        self.lrs.append(self.stepper.lr)
        if self.losses:
            self.grad_norms.append(self.stepper.apply())
            self.step_losses.append(torch.stack(self.losses).mean())
            self.losses.clear()
        self.schedule.step()


def _floats(values: list[torch.Tensor]) -> list[float]:
    """Device scalars as floats, read in one transfer."""
    return [float(value) for value in torch.stack(values).float().cpu()] if values else []


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    transform: BatchTransform,
    loss_fn: nn.Module,
    precision: Precision,
    classes: list[str] | None = None,
    keep_outputs: int = 0,
    cluster: Cluster = SINGLE_PROCESS,
) -> EpochResult:
    """Mean loss and top-1 accuracy over every sample of `batches`, counted once each; with
    `classes`, also the per-class report (top-5, precision/recall/F1, confusion matrix).
    With `keep_outputs` > 0, also every probability and label (PR curves) and that many
    misclassified images (TensorBoard).

    Under DDP each process evaluates its own share of the split (no sample twice, none
    padded in); the sums and the confusion matrix are added across processes, and rank 0
    receives every probability."""
    model.eval()
    device = transform.mean.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    metrics = ClassMetrics(classes, device) if classes else None
    probabilities, all_labels, wrong = [], [], []
    wrong_count = 0
    seen = 0
    started = time.perf_counter()
    for images, labels in batches.iterate():
        with precision.autocast():
            logits = model(transform(images))
        loss_sum += loss_fn(logits.float(), labels) * labels.shape[0]
        predicted = logits.argmax(1)
        correct += (predicted == labels).sum()
        seen += labels.shape[0]
        if metrics is not None:
            metrics.update(logits, labels)
        if keep_outputs:
            probabilities.append(logits.float().softmax(1).cpu())
            all_labels.append(labels.cpu())
            if wrong_count < keep_outputs:
                missed = (predicted != labels).nonzero().flatten()[: keep_outputs - wrong_count]
                if len(missed):
                    wrong.append(
                        (images[missed].cpu(), labels[missed].cpu(), predicted[missed].cpu())
                    )
                    wrong_count += len(missed)
    loss_sum, correct, seen_count = sum_across(
        cluster, loss_sum, correct, torch.tensor(seen, device=device)
    )
    seen = int(seen_count)
    result = EpochResult(
        loss=float(loss_sum) / max(seen, 1),
        acc=float(correct) / max(seen, 1),
        images=seen,
        seconds=time.perf_counter() - started,
        report=metrics.report(cluster) if metrics is not None and seen else None,
    )
    if keep_outputs:
        shares = gather_to_main(
            cluster, (torch.cat(probabilities), torch.cat(all_labels)) if probabilities else None
        )
        shares = [share for share in shares or [] if share is not None]
        if shares:
            result.probabilities = torch.cat([share[0] for share in shares])
            result.labels = torch.cat([share[1] for share in shares])
        if wrong:
            result.misclassified = tuple(torch.cat(parts) for parts in zip(*wrong, strict=True))
    return result

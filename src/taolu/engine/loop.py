"""One training epoch and one evaluation pass, with every input passed explicitly."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from taolu.data.loaders import Batches, BatchTransform
from taolu.engine.distributed import (
    SINGLE_PROCESS,
    Cluster,
    all_agree,
    gather_to_main,
    sum_across,
)
from taolu.engine.metrics import ClassMetrics, ClassReport
from taolu.engine.optim import LrSchedule
from taolu.engine.precision import Precision


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
    """A training step's loss was NaN or infinite and --on-nan is stop."""

    def __init__(self, batch: int, loss: float):
        super().__init__(f"batch {batch}: loss {loss}")
        self.batch, self.loss = batch, loss


@dataclass(frozen=True)
class StepRules:
    """How each batch becomes an optimizer step, beyond forward-backward-step.

    accumulate: batches whose gradients add up before one optimizer step.
    clip_grad: clip the global gradient norm to this (0 = off).
    on_nan: "stop" raises NonFiniteLoss before the bad batch touches the weights; "skip"
        leaves the batch out.
    mix: mixup/cutmix, (inputs, labels) -> (mixed inputs, soft targets (B, classes)).
    ema: the averaged model, updated after every optimizer step.
    """

    accumulate: int = 1
    clip_grad: float = 0.0
    on_nan: str = "stop"
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    # Called with the model at the epoch's last optimizer step, gradients still in place
    # (gradient histograms).
    inspect_gradients: Callable[[nn.Module], None] | None = None
    cluster: Cluster = SINGLE_PROCESS  # under DDP: the NaN verdict and the epoch's sums are shared
    # Asked after every optimizer step; True ends the epoch there (a stop was requested).
    should_stop: Callable[[], bool] | None = None


def steps_per_epoch(batches: int, accumulate: int) -> int:
    return -(-batches // accumulate)


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    transform: BatchTransform,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LrSchedule,
    precision: Precision,
    generator: torch.Generator,
    scaler: torch.amp.GradScaler | None = None,
    rules: StepRules = StepRules(),
    on_step: Callable[[int, torch.Tensor, torch.Tensor, int], None] | None = None,
    after_train_mode: Callable[[nn.Module], None] | None = None,
    start: EpochStart | None = None,
) -> EpochResult:
    """Forward, loss, backward for every batch; an optimizer step every `rules.accumulate`.

    `start` continues an epoch stopped part way; when `rules.should_stop()` answers True after
    an optimizer step, the epoch ends there and `stopped` says how to continue it.

    `on_step(i, loss, correct, images_seen)` gets device tensors, so a GPU is only synchronised
    when the caller reads them. Loss and accuracy are summed on the device.
    """
    model.train()
    if after_train_mode is not None:  # e.g. frozen BatchNorm layers back to eval mode
        after_train_mode(model)
    device = transform.mean.device
    start = start or EpochStart()
    loss_sum = torch.tensor(start.loss_sum, device=device)
    correct = torch.tensor(start.correct, device=device, dtype=torch.long)
    step_losses, grad_norms, seen, skipped = [], [], start.seen, start.skipped
    planned = len(batches)
    window_losses = []  # losses of the batches whose gradients wait for the next step
    step_lrs: list[float] = []
    optimizer.zero_grad(set_to_none=True)
    steps = start.steps
    stopped = None
    order = start.order if start.order is not None else batches.order(generator)
    started = time.perf_counter() - start.seconds
    batch_list = batches.iterate(generator, order=order)
    for index, (images, labels) in enumerate(batch_list, start=start.first_batch):
        inputs = transform(images, generator)  # (B, C, H, W), augmented and normalised
        targets = labels
        if rules.mix is not None:
            inputs, targets = rules.mix(inputs, labels)  # targets (B, classes), soft
        with precision.autocast():
            logits = model(inputs)  # (B, classes)
            loss = loss_fn(logits, targets)
        # One host sync per step: the price of acting before a bad batch touches the weights.
        # Under DDP every process must take the same decision, or the others would wait.
        if not all_agree(rules.cluster, bool(torch.isfinite(loss.detach()))):
            if rules.on_nan == "stop":
                raise NonFiniteLoss(index, float(loss.detach()))
            skipped += 1
            loss = None
        window_start = index - index % rules.accumulate
        window = min(rules.accumulate, planned - window_start)
        if loss is not None:
            scaled = loss / window if window > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            window_losses.append(loss.detach())
            batch = labels.shape[0]
            seen += batch
            loss_sum += loss.detach() * batch
            correct += (logits.detach().argmax(1) == labels).sum()
            if on_step is not None:
                on_step(index, loss.detach(), correct, seen)
        if (index + 1) % rules.accumulate == 0 or index + 1 == planned:
            step_lrs.append(optimizer.param_groups[0]["lr"])
            if index + 1 == planned and rules.inspect_gradients is not None and window_losses:
                rules.inspect_gradients(model)
            _finish_step(
                model, optimizer, scaler, rules, schedule, window_losses, step_losses, grad_norms
            )
            steps += 1
            if rules.should_stop is not None and index + 1 < planned and rules.should_stop():
                done = index + 1 - start.first_batch  # batches taken from `order` here
                stopped = EpochStart(
                    order=order[done * batches.batch_size :].cpu(),
                    first_batch=index + 1,
                    loss_sum=float(loss_sum),
                    correct=int(correct),
                    seen=seen,
                    skipped=skipped,
                    steps=steps,
                    seconds=time.perf_counter() - started,
                )
                break
    if window_losses:  # undecodable files left the last window short
        step_lrs.append(optimizer.param_groups[0]["lr"])
        _finish_step(
            model, optimizer, scaler, rules, schedule, window_losses, step_losses, grad_norms
        )
        steps += 1
    seconds = time.perf_counter() - started
    loss_sum, correct, seen_count = sum_across(
        rules.cluster, loss_sum, correct, torch.tensor(seen, device=device)
    )
    seen = int(seen_count)
    return EpochResult(
        loss=float(loss_sum) / max(seen, 1) if seen else float("nan"),
        acc=float(correct) / max(seen, 1),
        images=seen,
        seconds=seconds,
        step_losses=[float(value) for value in torch.stack(step_losses).float().cpu()]
        if step_losses
        else [],
        steps=steps,
        skipped_batches=skipped,
        grad_norm=float(torch.stack(grad_norms).mean()) if grad_norms else None,
        step_lrs=step_lrs,
        step_grad_norms=[float(v) for v in torch.stack(grad_norms).cpu()] if grad_norms else [],
        stopped=stopped,
    )


def _finish_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rules: StepRules,
    schedule: LrSchedule,
    window_losses: list[torch.Tensor],
    step_losses: list[torch.Tensor],
    grad_norms: list[torch.Tensor],
) -> None:
    """End one optimizer step: measure (and clip) the gradient norm, step, update the EMA,
    clear the gradients, advance the schedule. A window whose every batch was skipped
    applies nothing, but the schedule still advances: it follows the run's position."""
    if window_losses:
        if scaler is not None:
            scaler.unscale_(optimizer)  # measure and clip the true gradients, not scaled ones
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients)
        if rules.clip_grad > 0:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), rules.clip_grad, norm)
        grad_norms.append(norm.detach())
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rules.ema is not None:
            rules.ema.update_parameters(model)
        step_losses.append(torch.stack(window_losses).mean())
        window_losses.clear()
    schedule.step()


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
    padded in); the sums and torchmetrics' counts are added across processes, and rank 0
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
        report=metrics.report() if metrics is not None and seen else None,
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

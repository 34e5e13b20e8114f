"""One training epoch and one evaluation pass, with every input passed explicitly."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from taolu.data.loaders import Batches, BatchTransform
from taolu.engine.precision import Precision


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    seconds: float
    step_losses: list[float] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    transform: BatchTransform,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: Precision,
    generator: torch.Generator,
    scaler: torch.amp.GradScaler | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor, int], None] | None = None,
    after_train_mode: Callable[[nn.Module], None] | None = None,
) -> EpochResult:
    """Forward, loss, backward, step for every batch.

    `on_step(i, loss, correct, images_seen)` gets device tensors, so a GPU is only synchronised
    when the caller reads them. Loss and accuracy are summed on the device.
    """
    model.train()
    if after_train_mode is not None:  # e.g. frozen BatchNorm layers back to eval mode
        after_train_mode(model)
    device = transform.mean.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    step_losses, seen = [], 0
    started = time.perf_counter()
    for index, (images, labels) in enumerate(batches.iterate(generator)):
        inputs = transform(images, generator)  # (B, C, H, W), augmented and normalised
        with precision.autocast():
            logits = model(inputs)  # (B, classes)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        batch = labels.shape[0]
        seen += batch
        loss_sum += loss.detach() * batch
        correct += (logits.detach().argmax(1) == labels).sum()
        step_losses.append(loss.detach())
        if on_step is not None:
            on_step(index, loss.detach(), correct, seen)
    seconds = time.perf_counter() - started
    return EpochResult(
        loss=float(loss_sum) / max(seen, 1),
        acc=float(correct) / max(seen, 1),
        images=seen,
        seconds=seconds,
        step_losses=[float(value) for value in torch.stack(step_losses).float().cpu()]
        if step_losses
        else [],
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    transform: BatchTransform,
    loss_fn: nn.Module,
    precision: Precision,
) -> EpochResult:
    """Mean loss and top-1 accuracy over every sample of `batches`, counted once each."""
    model.eval()
    device = transform.mean.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    started = time.perf_counter()
    for images, labels in batches.iterate():
        with precision.autocast():
            logits = model(transform(images))
        loss_sum += loss_fn(logits.float(), labels) * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.shape[0]
    return EpochResult(
        loss=float(loss_sum) / max(seen, 1),
        acc=float(correct) / max(seen, 1),
        images=seen,
        seconds=time.perf_counter() - started,
    )

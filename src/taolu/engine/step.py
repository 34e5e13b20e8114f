"""The training step, one object for the training loop and the lr finder alike: augment and
normalise a batch, mix it, forward and loss under autocast, backward (scaled, accumulated) and,
once a window of batches is in, measure and clip the gradient norm, step, update the EMA."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from taolu.data.loaders import BatchTransform
from taolu.engine.distributed import SINGLE_PROCESS, Cluster, all_agree
from taolu.engine.optim import base_lr
from taolu.engine.precision import Precision

# (inputs, labels) -> (mixed inputs, soft targets (B, classes))
Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Stepper:
    """How each batch becomes part of an optimizer step. The loop decides what to do with a
    non-finite loss, when a window ends and when the lr schedule moves; the lr finder sets
    the lr itself. Both take exactly this step.

    network: what runs forward: the model, or its DDP / torch.compile wrapper.
    model: the plain module whose state dict checkpoints hold (default: `network`).
    accumulate: batches whose gradients add up before one optimizer step.
    clip_grad: clip the global gradient norm to this (0 = off).
    ema: the averaged model, updated after every optimizer step.
    cluster: under DDP, the finite-loss verdict is taken by every process together.
    after_train_mode: called after `network.train()` (frozen BatchNorm layers back to eval).
    """

    network: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    transform: BatchTransform
    model: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    accumulate: int = 1
    clip_grad: float = 0.0
    mix: Mix | None = None
    ema: AveragedModel | None = None
    cluster: Cluster = SINGLE_PROCESS
    after_train_mode: Callable[[nn.Module], None] | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = self.network

    @property
    def lr(self) -> float:
        """The base lr now (what --lr sets, as the schedule has it): every param group's lr
        is a share of it."""
        return base_lr(self.optimizer)

    def train_mode(self) -> None:
        self.network.train()
        if self.after_train_mode is not None:
            self.after_train_mode(self.network)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits (B, classes)) of one batch, augmented, normalised and mixed."""
        inputs = self.transform(images, generator)  # (B, C, H, W), augmented and normalised
        targets = labels
        if self.mix is not None:
            inputs, targets = self.mix(inputs, labels)  # targets (B, classes), soft
        with self.precision.autocast():
            logits = self.network(inputs)  # (B, classes)
            loss = self.loss_fn(logits, targets)
        return loss, logits

    def finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite, in every process. One host sync per step: the price of
        acting before a bad batch touches the weights; under DDP every process must take the
        same decision, or the others would wait."""
        return all_agree(self.cluster, bool(torch.isfinite(loss.detach())))

    def backward(self, loss: torch.Tensor, window: int) -> None:
        """Add this batch's gradients, as one of `window` batches of an optimizer step."""
        scaled = loss / window if window > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()

    def apply(self) -> torch.Tensor:
        """End an optimizer step: measure (and clip) the global gradient norm, step, clear the
        gradients, update the EMA. Returns the norm before clipping (a device tensor)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # measure and clip true gradients, not scaled
        gradients = [p.grad for p in self.network.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients)
        if self.clip_grad > 0:
            torch.nn.utils.clip_grads_with_norm_(self.network.parameters(), self.clip_grad, norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.network)
        return norm.detach()

    def snapshot(self) -> StepperState:
        """A copy, in memory, of everything a step changes: weights and buffers, optimizer
        state and each group's lr, the EMA and the grad scaler."""
        return StepperState(
            model=copy.deepcopy(self.model.state_dict()),
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            # Tensor lrs (fused/capturable optimizers) are cloned: they are filled in place.
            lrs=[_copy_lr(group["lr"]) for group in self.optimizer.param_groups],
            ema=copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None,
            scaler=copy.deepcopy(self.scaler.state_dict()) if self.scaler is not None else None,
        )

    def restore(self, state: StepperState) -> None:
        """Back to `state` (from `snapshot`), gradients cleared."""
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        for group, lr in zip(self.optimizer.param_groups, state.lrs, strict=True):
            set_lr(group, lr)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.load_state_dict(state.ema)
        if self.scaler is not None:
            self.scaler.load_state_dict(state.scaler)


@dataclass
class StepperState:
    """What `Stepper.snapshot` keeps."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    lrs: list[float | torch.Tensor]
    ema: dict[str, Any] | None
    scaler: dict[str, Any] | None


def set_lr(group: dict, lr: float | torch.Tensor) -> None:
    """Set a parameter group's lr. A tensor lr (fused/capturable optimizers) is filled in
    place: replacing it would break the optimizer's use of that tensor."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def _copy_lr(lr: float | torch.Tensor) -> float | torch.Tensor:
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


def build_mix(mixup: float, cutmix: float, classes: int) -> Mix | None:
    """torchvision's batch MixUp / CutMix (one of them per batch when both are on)."""
    if not (mixup or cutmix):
        return None
    from torchvision.transforms import v2

    chosen = []
    if mixup:
        chosen.append(v2.MixUp(alpha=mixup, num_classes=classes))
    if cutmix:
        chosen.append(v2.CutMix(alpha=cutmix, num_classes=classes))
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights (and BatchNorm statistics).

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates, as
    TensorFlow's ExponentialMovingAverage does, so the average is not dominated by the random
    initial weights in short runs."""
    if not decay:
        return None

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], count) -> None:
        updates = int(count)
        weight = 1.0 - min(decay, (1 + updates) / (10 + updates))
        for mean, value in zip(averaged, current, strict=True):
            if mean.is_floating_point():
                mean.lerp_(value, weight)
            else:  # counters such as BatchNorm's batches seen are copied, not averaged
                mean.copy_(value)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)

"""The loss, the optimizer and the learning-rate schedule, each from explicit arguments."""

from __future__ import annotations

import torch
from torch import nn


def build_loss(label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decaying biases and norm scales only fights the normalisation; decay weights alone.
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, name: str, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    groups = _decay_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, *, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule stepped once per optimizer step over `total_steps`."""
    if name == "onecycle" and total_steps >= 2:
        # Warm up over the first quarter, anneal to ~0 by the end (Smith's one-cycle policy).
        # torch divides by the warm-up length, so very short runs get at least 1.5 steps of it.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total_steps,
            pct_start=max(0.25, 1.5 / total_steps),
            cycle_momentum=False,
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name in ("constant", "onecycle"):  # a one-step run has no cycle to follow
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown scheduler {name!r}")

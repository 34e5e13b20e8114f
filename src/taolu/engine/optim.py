"""The loss, the optimizer and the learning-rate schedule, each from explicit arguments."""

from __future__ import annotations

import torch
from torch import nn


def build_loss(label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def _parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, head: str | None, backbone_lr_scale: float
) -> list[dict]:
    """Weights decay, biases and norm scales do not (decaying them only fights the
    normalisation); with a `head` named, everything else learns at lr * backbone_lr_scale."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            in_head = head is None or name == head or name.startswith(head + ".")
            groups.setdefault((in_head, parameter.ndim > 1), []).append(parameter)
    return [
        {
            "params": members,
            "lr": lr if in_head else lr * backbone_lr_scale,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (in_head, decays), members in sorted(groups.items())
    ]


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    head: str | None = None,
    backbone_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, lr, weight_decay, head, backbone_lr_scale)
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
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=max(0.25, 1.5 / total_steps),
            cycle_momentum=False,
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name in ("constant", "onecycle"):  # a one-step run has no cycle to follow
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown scheduler {name!r}")

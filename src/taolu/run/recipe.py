"""The default recipe, chosen for the data at hand: the options a user did not set are filled
in from what the data and the model are (image count, size, channels, classes, pretrained)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from taolu.config import TrainConfig

# Fewer optimizer steps than this per epoch and a one-cycle schedule has too few to follow.
MIN_STEPS_PER_EPOCH = 8
MIN_BATCH_SIZE = 16
# Pretrained weights are already good: a fifth of the scratch default (0.05) fine-tunes them
# without wrecking what they learned.
PRETRAINED_SGD_LR = 0.01


def choose_recipe(
    config: TrainConfig, chosen: Collection[str], *, train_images: int, pretrained: bool
) -> tuple[TrainConfig, list[str]]:
    """`config` with the data-dependent defaults applied where the user chose nothing, and
    the reasons for each change (empty when the defaults stand as they are)."""
    changes: dict[str, object] = {}
    reasons: list[str] = []
    if "batch_size" not in chosen and train_images < MIN_STEPS_PER_EPOCH * config.batch_size:
        batch = MIN_BATCH_SIZE
        while batch * 2 * MIN_STEPS_PER_EPOCH <= train_images and batch * 2 < config.batch_size:
            batch *= 2
        if batch < config.batch_size:
            changes["batch_size"] = batch
            reasons.append(
                f"batch {batch} so {train_images} images give >= "
                f"{min(MIN_STEPS_PER_EPOCH, max(train_images // batch, 1))} steps an epoch"
            )
    if pretrained and "lr" not in chosen and config.optimizer == "sgd":
        changes["lr"] = PRETRAINED_SGD_LR
        reasons.append(f"lr {PRETRAINED_SGD_LR} to fine-tune pretrained weights gently")
    return dataclasses.replace(config, **changes), reasons


def describe_recipe(
    config: TrainConfig, augment: str, precision: str, device: str, processes: int = 1
) -> str:
    """One line naming every choice that shapes the run, each overridable by its flag."""
    schedule = config.scheduler
    if config.warmup_epochs and config.scheduler in ("cosine", "step", "constant", "plateau"):
        schedule += f" after {config.warmup_epochs:g} warm-up epochs"
    optimizer = f"{config.optimizer} lr {config.lr:g}"
    if config.optimizer in ("sgd", "rmsprop") and config.momentum:
        nesterov = " nesterov" if config.optimizer == "sgd" and config.nesterov else ""
        optimizer += f" momentum {config.momentum:g}{nesterov}"
    parts = [
        config.model,
        optimizer,
        f"weight decay {config.weight_decay:g}",
        schedule,
        _batch(config.batch_size, config.accumulate, processes),
        f"{config.epochs} epochs",
        f"label smoothing {config.label_smoothing:g}",
        f"augment {augment}",
    ]
    parts += [
        f"{name} {getattr(config, name):g}"
        for name in ("mixup", "cutmix", "ema")
        if getattr(config, name)
    ]
    if config.clip_grad:
        parts.append(f"clip grad {config.clip_grad:g}")
    if config.class_weights != "none":
        parts.append(f"class weights {config.class_weights}")
    if config.sampler != "shuffle":
        parts.append(f"{config.sampler} sampler")
    parts.append(f"{precision} on {device}")
    return ", ".join(parts)


def _batch(batch_size: int, accumulate: int, processes: int) -> str:
    """--batch-size is per process and per accumulation step; say what an optimizer step sees."""
    text = f"batch {batch_size}"
    if accumulate > 1:
        text += f" x{accumulate} accumulated"
    if processes > 1:
        text += f" per process x {processes} processes"
    if accumulate > 1 or processes > 1:
        text += f" = {batch_size * accumulate * processes} per optimizer step"
    return text

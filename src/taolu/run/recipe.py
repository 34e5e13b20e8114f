"""The default recipe: the options a user did not set, decided from what the run knows about
its network (taolu's tuned nets, normalisation layers, pretrained weights) and its data (how
many images), each decision with the reason the recipe line prints.

Every rule was measured with benchmarks/recipe_zoo.py (13 user networks and data sets, taolu
against plain SGD and Adam loops on the same tensors); the figures are in README.md."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass

from taolu.config import TrainConfig
from taolu.engine.optim import DENSE_FAN_IN, is_adaptive

# taolu's own nets whose SGD recipe (lr 0.05, Nesterov, one-cycle, batch 64) was tuned on
# mnist5k: 99.2% best, 95% after epoch 1 (benchmarks/default_recipe.py, vs_tutorial.py).
TUNED_NETS = ("fastcnn", "resnet9")
TUNED_SGD_LR = 0.05
# Pretrained weights are already good: a fifth of the scratch lr fine-tunes them without
# wrecking what they learned.
PRETRAINED_SGD_LR = 0.01
# Fewer optimizer steps than this per epoch and a one-cycle schedule has too few to follow.
MIN_STEPS_PER_EPOCH = 8
MIN_BATCH_SIZE = 16
# With few images, epochs are cheap: when --epochs is not given, at least this many optimizer
# steps in all.
MIN_TOTAL_STEPS = 300
MAX_AUTO_EPOCHS = 100


@dataclass(frozen=True)
class Traits:
    """What the recipe knows before the run starts."""

    train_images: int
    tuned: bool  # one of TUNED_NETS, built by taolu
    normalised: bool  # the net has normalisation layers (BatchNorm, GroupNorm, LayerNorm, ...)
    pretrained: bool  # --weights
    kind: str  # what the net is, in the recipe line's words ("your nn.Module", "resnet18", ...)
    widest_dense: int = 0  # the most inputs any of its Linear layers reads (0: none)


@dataclass(frozen=True)
class Recipe:
    config: TrainConfig  # every option decided; lr still "auto" when `sweep_lr`
    notes: list[str]  # why, for the recipe line
    sweep_lr: bool  # a range test before training picks the lr


def choose_recipe(config: TrainConfig, chosen: Collection[str], traits: Traits) -> Recipe:
    """`config` with the recipe's choices where the user chose nothing, and why."""
    changes: dict[str, object] = {}
    notes: list[str] = []
    batch = config.batch_size
    if "batch_size" not in chosen:
        batch = _small_data_batch(config.batch_size, traits.train_images)
        if batch < config.batch_size:
            changes["batch_size"] = batch
            steps = _steps_per_epoch(traits.train_images, batch)
            plural = "s" if steps != 1 else ""
            notes.append(
                f"batch {batch}: {traits.train_images} images give {steps} step{plural} an epoch"
            )
    shrunk = batch / config.batch_size if "batch_size" not in chosen else 1.0
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = _optimizer(traits, shrunk < 1)
        changes["optimizer"] = optimizer
        if optimizer == "adamw":
            notes.append(f"AdamW for {_why_adaptive(traits, shrunk < 1)}")
    if config.fan_in_lr == "auto":
        changes["fan_in_lr"] = "on" if is_adaptive(optimizer) else "off"
        if is_adaptive(optimizer) and traits.widest_dense > DENSE_FAN_IN:
            notes.append(
                f"Linear layers past {DENSE_FAN_IN} inputs (up to {traits.widest_dense}) learn "
                f"at lr x {DENSE_FAN_IN}/inputs"
            )
    sweep = False
    if config.lr == "auto":
        tuned_lr = _tuned_sgd_lr(traits) if optimizer == "sgd" and "lr" not in chosen else None
        if tuned_lr is None:
            sweep = True
        else:
            changes["lr"] = tuned_lr * shrunk  # linear scaling with the batch
            if shrunk < 1:
                notes.append(f"lr {tuned_lr:g} x {batch}/{config.batch_size} for the batch")
    if "epochs" not in chosen:
        per_epoch = _steps_per_epoch(traits.train_images, batch)
        if per_epoch * config.epochs < MIN_TOTAL_STEPS:
            wanted = math.ceil(MIN_TOTAL_STEPS / per_epoch)
            epochs = min(wanted, MAX_AUTO_EPOCHS)
            changes["epochs"] = epochs
            aim = (
                f"short of {MIN_TOTAL_STEPS}: at most {MAX_AUTO_EPOCHS} epochs are chosen for you"
                if wanted > epochs
                else f"at least {MIN_TOTAL_STEPS}"
            )
            total = per_epoch * epochs
            notes.append(f"{epochs} epochs: few images, so {total} steps in all ({aim})")
    return Recipe(dataclasses.replace(config, **changes), notes, sweep)


def _steps_per_epoch(images: int, batch: int) -> int:
    return max(-(-images // batch), 1)  # the last, partial batch is a step too


def _small_data_batch(default: int, images: int) -> int:
    """The largest power of two (at least MIN_BATCH_SIZE, at most `default`) that still gives
    MIN_STEPS_PER_EPOCH steps an epoch."""
    if images >= MIN_STEPS_PER_EPOCH * default:
        return default
    batch = MIN_BATCH_SIZE
    while batch * 2 * MIN_STEPS_PER_EPOCH <= images and batch * 2 < default:
        batch *= 2
    return min(batch, default)


def _optimizer(traits: Traits, small_data: bool) -> str:
    """SGD where its lr is known (taolu's tuned nets on enough data; pretrained weights);
    AdamW everywhere else. Measured: AdamW with a range-tested lr matched or beat SGD on every
    recipe-benchmark case outside the tuned one, by up to 0.75 (resnet18 from scratch on 384
    photos: 0.96 against 0.21; the seed's Tudui stops on a NaN with SGD at 0.05)."""
    if traits.pretrained or (traits.tuned and not small_data):
        return "sgd"
    return "adamw"


def _why_adaptive(traits: Traits, small_data: bool) -> str:
    if traits.tuned and small_data:
        return "few images"
    if not traits.normalised:
        return f"{traits.kind} (no normalisation layers)"
    return traits.kind


def _tuned_sgd_lr(traits: Traits) -> float | None:
    if traits.pretrained:
        return PRETRAINED_SGD_LR
    if traits.tuned:
        return TUNED_SGD_LR
    return None


def describe_recipe(
    config: TrainConfig, augment: str, precision: str, device: str, processes: int = 1
) -> str:
    """One line naming every choice that shapes the run, each overridable by its flag."""
    schedule = config.scheduler
    if config.warmup_epochs and config.scheduler in ("cosine", "step", "constant", "plateau"):
        schedule += f" after {config.warmup_epochs:g} warm-up epochs"
    lr = config.lr if isinstance(config.lr, str) else f"{config.lr:.3g}"
    optimizer = f"{config.optimizer} lr {lr}"
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

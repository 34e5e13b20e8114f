"""The routine's phases before the epochs, each one call from the run's config to a small typed
object: the data (`make_data` -> RunData), the recipe (`settle_recipe` -> the final config),
the network (`make_model` -> ModelParts), the loss and optimizer (`make_optim` -> OptimParts).
This layer alone turns `TrainConfig` into explicit arguments for the parts below."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from taolu.config import TrainConfig
from taolu.data.bundle import DataBundle
from taolu.data.loaders import (
    Batches,
    BatchTransform,
    Preprocessing,
    balanced_sample_weights,
    split_labels,
)
from taolu.data.pipeline import DataOptions, TrainingData, batch_transforms, load_training_data
from taolu.engine.batchnorm import slow_batchnorm
from taolu.engine.distributed import SINGLE_PROCESS
from taolu.engine.loop import steps_per_epoch
from taolu.engine.metrics import TOP5_MIN_CLASSES
from taolu.engine.optim import LrSchedule, balanced_class_weights, build_loss, build_optimizer
from taolu.engine.step import Stepper, build_ema, build_mix
from taolu.errors import ConfigError
from taolu.layout import RunDir
from taolu.metric_names import VAL_TOP5_ACC, lower_is_better
from taolu.models import build_model, model_kind
from taolu.models.anatomy import has_norm_layers, materialise_lazy_layers, widest_dense_layer
from taolu.run.lifecycle import Compute, StopRequest
from taolu.run.recipe import TUNED_NETS, Recipe, Traits, choose_recipe, describe_recipe
from taolu.run.transfer import prepare_transfer
from taolu.train_state import TrainState


@dataclass(frozen=True)
class UserParts:
    """What a Python caller may hand over instead of names: their own model and Datasets."""

    model: nn.Module | None = None
    train_data: Dataset | None = None
    val_data: Dataset | None = None
    classes: list[str] | None = None
    # Splits already read and made (the label search's folds): trained on as they are.
    splits: DataBundle | None = None


@dataclass(frozen=True)
class Resume:
    """A run to continue: its directory and the state its last checkpoint holds."""

    run_dir: Path
    state: TrainState


def prepare_data(options: TrainConfig, parts: UserParts, resume: Resume | None) -> TrainingData:
    """The data set: file-based data is decoded once into the cache when it fits. A resumed
    run reads the split its split.json recorded and keeps its preprocessing."""
    return load_training_data(
        DataOptions.taken_from(options),
        train_data=parts.train_data,
        val_data=parts.val_data,
        classes=parts.classes,
        manifest=RunDir(resume.run_dir).manifest if resume else None,
        preprocessing=Preprocessing.from_dict(resume.state.preprocessing) if resume else None,
        splits=parts.splits,
    )


def build_network(
    options: TrainConfig,
    users_model: nn.Module | None,
    prepared: TrainingData,
    resume: Resume | None,
) -> nn.Module:
    """The user's module, or the net `options.model` names sized for the data (resumed: a
    layer list from the list the checkpoint holds, never from the file its config names);
    lazy layers (nn.LazyLinear, ...) get their sizes from one dry batch here, before the
    recipe looks at the net and before the optimizer, the weight average and the graph need
    its parameters."""
    bundle = prepared.bundle
    model = users_model
    if model is None:
        model = build_model(
            options.model,
            bundle.channels,
            bundle.size,
            len(bundle.classes),
            weights=options.weights,
            layers=resume.state.model_spec if resume is not None else None,
        )
    materialise_lazy_layers(model, bundle.channels, bundle.size)
    return model


def settle_recipe(
    options: TrainConfig,
    chosen: Collection[str],
    prepared: TrainingData,
    network: nn.Module,
    *,
    users_model: bool,
    resumed: bool,
) -> Recipe:
    """The run's final config: the recipe's choices for the options the user did not set, and
    why (a resumed run keeps the recipe its config.yaml recorded). Nothing but the data and
    the bare network was made from `options` before."""
    recipe = Recipe(options, [], sweep_lr=False)
    if not resumed:
        traits = Traits(
            train_images=len(prepared.bundle.train),
            tuned=not users_model and options.model in TUNED_NETS,
            normalised=has_norm_layers(network),
            widest_dense=widest_dense_layer(network),
            pretrained=bool(options.weights),
            kind="your nn.Module" if users_model else _model_kind_words(options.model),
        )
        recipe = choose_recipe(options, chosen, traits)
    classes = len(prepared.bundle.classes)
    if recipe.config.monitor == VAL_TOP5_ACC and classes < TOP5_MIN_CLASSES:
        raise ConfigError(
            f"option 'monitor': {VAL_TOP5_ACC} needs at least {TOP5_MIN_CLASSES} classes; "
            f"this data has {classes}"
        )
    return recipe


def _model_kind_words(name: str) -> str:
    kind = model_kind(name)
    if kind == "spec":
        return "a layer list"
    if kind == "factory":
        return f"your factory {name}"
    return f"{name} from scratch" if kind in ("torchvision", "timm") else name


@dataclass
class RunData:
    """Both splits as batches on the device, and how batches are normalised and augmented."""

    prepared: TrainingData
    train: Batches
    val: Batches
    train_transform: BatchTransform
    eval_transform: BatchTransform
    augment: str  # the augmentation used, in the recipe's words
    channels_last: bool  # the memory format of the batches, and so of the model
    train_labels: torch.Tensor | None  # only where the imbalance options need them

    @property
    def bundle(self) -> DataBundle:
        return self.prepared.bundle


def make_data(
    config: TrainConfig, prepared: TrainingData, compute: Compute, users_model: bool
) -> RunData:
    """Batches of each split (this process's share under DDP), and the batch transforms."""
    device, cluster = compute.device, compute.cluster
    data = prepared.bundle
    imbalance_options = config.sampler == "balanced" or config.class_weights == "auto"
    train_labels = split_labels(data.train) if imbalance_options else None
    sharing = dict(workers=prepared.workers, skips=prepared.skips)
    shard = (cluster.rank, cluster.world_size)
    train = Batches(
        data.train,
        config.batch_size,
        device,
        shuffle=True,
        sample_weights=balanced_sample_weights(train_labels)
        if config.sampler == "balanced"
        else None,
        shard=shard,
        **sharing,
    )
    val = Batches(
        data.val, max(config.batch_size, 256), device, shuffle=False, shard=shard, **sharing
    )
    # channels_last speeds up convolutions on CPU and GPU. `auto` keeps it off for a user's
    # nn.Module, whose forward() may call .view(), which needs the default memory layout.
    channels_last = config.channels_last == "on" or (
        config.channels_last == "auto" and not users_model and device.type in ("cpu", "cuda")
    )
    train_transform, eval_transform, augment = batch_transforms(
        config.augment, prepared, device, channels_last
    )
    return RunData(
        prepared, train, val, train_transform, eval_transform, augment, channels_last, train_labels
    )


@dataclass
class ModelParts:
    """The network, as checkpoints hold it and as it runs."""

    model: nn.Module  # the plain module on the device: what checkpoints hold
    network: nn.Module  # what runs it: its DDP and/or torch.compile wrapper, or `model`
    evaluated: nn.Module  # what validation runs: the EMA's module when kept
    ema: torch.optim.swa_utils.AveragedModel | None
    name: str | None  # the name taolu built it from; None for the user's own module
    after_train_mode: Callable[[nn.Module], None] | None  # frozen BatchNorm back to eval
    fine_tune_head: str | None  # the head --fine-tune trains alone first
    # BatchNorm whose running statistics lag (engine/batchnorm.py): measured afresh before
    # each evaluation
    recalibrate_batchnorm: bool = False


def make_model(
    config: TrainConfig,
    network: nn.Module,
    data: RunData,
    compute: Compute,
    *,
    users_model: bool,
    resumed: bool,
) -> ModelParts:
    """`network` (from build_network) with --weights/--freeze applied, on the device; the
    EMA copy; the DDP and torch.compile wrappers, which only run it (so state dicts never
    carry their prefixes)."""
    device, cluster = compute.device, compute.cluster
    model = network
    after_train_mode, fine_tune_head = prepare_transfer(
        model,
        weights=config.weights,
        model_name=config.model,
        freeze_mode=config.freeze,
        fine_tune=config.fine_tune,
        resumed=resumed,
        verbose=config.verbose,
    )
    model = model.to(device)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = build_ema(model, config.ema)
    network = model
    if cluster.active:  # DDP averages the gradients across processes during backward()
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    network = torch.compile(network) if config.compile else network
    # Validation runs the plain module under DDP: the wrapper would broadcast buffers on
    # every forward.
    evaluated = ema.module if ema is not None else (model if cluster.active else network)
    name = None if users_model else config.model
    return ModelParts(
        model,
        network,
        evaluated,
        ema,
        name,
        after_train_mode,
        fine_tune_head,
        recalibrate_batchnorm=slow_batchnorm(model),
    )


@dataclass
class OptimParts:
    """The training step and the lr schedule it follows."""

    stepper: Stepper
    schedule: LrSchedule
    eval_loss_fn: nn.Module  # unweighted, so validation loss compares across runs
    epoch_steps: int  # optimizer steps an epoch
    total_steps: int


def make_optim(
    config: TrainConfig, parts: ModelParts, data: RunData, compute: Compute
) -> OptimParts:
    """The loss (class-weighted with --class-weights auto), the optimizer, the lr schedule,
    and the Stepper that takes each training step with them."""
    optimizer = make_optimizer(config, parts.model, parts.fine_tune_head)
    epoch_steps = steps_per_epoch(len(data.train), config.accumulate)
    total_steps = config.epochs * epoch_steps
    schedule = LrSchedule(
        optimizer,
        config.scheduler,
        total_steps=total_steps,
        steps_per_epoch=epoch_steps,
        warmup_epochs=config.warmup_epochs,
        step_epochs=config.step_epochs,
        gamma=config.lr_gamma,
        plateau_patience=config.plateau_patience,
        plateau_mode="min" if lower_is_better(config.monitor) else "max",
    )
    stepper = make_stepper(config, parts, data, compute, optimizer)
    eval_loss_fn = build_loss(config.label_smoothing).to(compute.device)
    return OptimParts(stepper, schedule, eval_loss_fn, epoch_steps, total_steps)


def make_optimizer(
    config: TrainConfig, model: nn.Module, fine_tune_head: str | None
) -> torch.optim.Optimizer:
    """The optimizer over `model`'s trainable parameters, per the config."""
    return build_optimizer(
        model,
        config.optimizer,
        # --lr-find (and the range test of --lr auto) set every lr themselves.
        lr=config.lr if not isinstance(config.lr, str) else 1.0,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
        head=fine_tune_head,
        backbone_lr_scale=config.backbone_lr_scale,
        dense_fan_in_rule=config.fan_in_lr == "on",
    )


def make_stepper(
    config: TrainConfig,
    parts: ModelParts,
    data: RunData,
    compute: Compute,
    optimizer: torch.optim.Optimizer,
    *,
    alone: bool = False,
) -> Stepper:
    """The training step with the run's loss (class-weighted with --class-weights auto),
    mixing, accumulation, clipping and EMA. `alone`: a step on a copy of the plain module
    in this process only, as the range test of --lr auto takes it (no DDP, no EMA)."""
    device, classes = compute.device, len(data.bundle.classes)
    class_weights = None
    if config.class_weights == "auto":
        class_weights = balanced_class_weights(data.train_labels, classes).to(device)
    return Stepper(
        parts.model if alone else parts.network,
        build_loss(config.label_smoothing, class_weights).to(device),
        optimizer,
        compute.precision,
        data.train_transform,
        model=parts.model,
        scaler=compute.precision.grad_scaler(),
        accumulate=config.accumulate,
        clip_grad=config.clip_grad,
        mix=build_mix(config.mixup, config.cutmix, classes),
        ema=None if alone else parts.ema,
        cluster=SINGLE_PROCESS if alone else compute.cluster,
        after_train_mode=parts.after_train_mode,
    )


@dataclass
class Run:
    """The phases' results together: what each epoch, the records and the summary use."""

    config: TrainConfig  # the final config (after the recipe)
    notes: list[str]  # why the recipe changed what it changed
    compute: Compute
    data: RunData
    model: ModelParts
    optim: OptimParts
    generator: torch.Generator  # the one checkpointed stream of data randomness
    stop: StopRequest  # called, it says whether a stop was asked for
    wall_start: float  # time.perf_counter() when the run was asked for

    def recipe(self) -> str:
        """Every choice that shapes the run, in one line."""
        compute = self.compute
        return describe_recipe(
            self.config,
            self.data.augment,
            compute.precision.name,
            str(compute.device),
            compute.cluster.world_size,
        )

    def say(self, text: str) -> None:
        """Print for the user: with --verbose, and in one process only (rank 0)."""
        if self.config.verbose and self.compute.cluster.is_main:
            print(text, flush=True)

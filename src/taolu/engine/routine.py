"""The complete training routine, top to bottom, as the tutorial lays it out:

prepare the data -> build the model -> make the loss and the optimizer -> train -> test -> save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from taolu.config import TrainConfig, config_to_dict, write_config
from taolu.data.loaders import (
    Batches,
    Preprocessing,
    balanced_sample_weights,
    split_labels,
)
from taolu.data.pipeline import (
    batch_transforms,
    load_training_data,
    refuse_too_many_bad_files,
)
from taolu.data.preview import augmented_samples, grid_tensor
from taolu.data.sources import (
    MANIFEST_NAME,
    data_base_folder,
    write_manifest,
)
from taolu.engine import checkpoint as ckpt
from taolu.engine.distributed import (
    barrier,
    device_for,
    join_cluster,
    leave_cluster,
    share_from_main,
)
from taolu.engine.loop import (
    EpochStart,
    NonFiniteLoss,
    StepRules,
    evaluate,
    steps_per_epoch,
    train_one_epoch,
)
from taolu.engine.metrics import TOP5_MIN_CLASSES
from taolu.engine.optim import (
    LrSchedule,
    balanced_class_weights,
    build_loss,
    build_optimizer,
)
from taolu.engine.precision import pick_device, pick_precision
from taolu.engine.recipe import choose_recipe, describe_recipe
from taolu.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from taolu.models import build_model
from taolu.models.spec import stored_layers
from taolu.track.progress import EpochProgress
from taolu.track.runlog import MISCLASSIFIED_SHOWN, RunLog, SilentRunLog, write_json_atomic

logger = logging.getLogger("taolu")


@dataclass
class TrainResult:
    """What `taolu.train` returns. `model` holds the best checkpoint's weights, in eval mode."""

    run_dir: Path
    best_val_acc: float
    final_val_acc: float
    model: nn.Module
    history: list[dict[str, float]]
    summary: dict[str, Any] = field(repr=False)
    best_checkpoint: Path | None  # None after --lr-find, which trains nothing
    last_checkpoint: Path | None
    suggested_lr: float | None = None  # set by --lr-find


@dataclass(frozen=True)
class UserParts:
    """What a Python caller may hand over instead of names: their own model and Datasets."""

    model: nn.Module | None = None
    train_data: Dataset | None = None
    val_data: Dataset | None = None
    classes: list[str] | None = None


def freeze_parameters(model: nn.Module, mode: str) -> Callable[[nn.Module], None]:
    """Freeze per --freeze; returns what keeps frozen BatchNorm layers in eval mode (their
    running statistics belong to the pretrained weights) each time training mode is set."""
    from taolu.models.zoo import freeze, set_frozen_batchnorm_eval

    frozen = freeze(model, mode, head_name(model))
    logger.debug("froze %d parameter tensors (--freeze %s)", len(frozen), mode)
    return set_frozen_batchnorm_eval


def start_from_weights(model: nn.Module, config: TrainConfig) -> Callable | None:
    """Load --weights (strict, but for the replaced head) and apply --freeze."""
    from taolu.models.zoo import load_weights

    if config.weights:
        report = load_weights(model, config.weights, config.model, head=head_name(model))
        if config.verbose:
            print(report.render(), flush=True)
    return freeze_parameters(model, config.freeze) if config.freeze != "none" else None


def train_backbone(model: nn.Module, head: str, trainable: bool, freeze_mode: str) -> None:
    """Switch the backbone's parameters on or off, leaving those --freeze keeps frozen."""
    from taolu.models.zoo import freeze

    for name, parameter in model.named_parameters():
        if not (name == head or name.startswith(head + ".")):
            parameter.requires_grad_(trainable)
    if freeze_mode != "none":
        freeze(model, freeze_mode, head)


def better(row: dict[str, float], best: dict[str, float], monitor: str) -> bool:
    """Whether `row` beats `best` on the monitored metric: losses down, everything else up."""
    key = monitor.replace("/", "_")
    return row[key] < best[key] if key.endswith("loss") else row[key] > best[key]


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Only deterministic kernels while the run lasts (--deterministic); torch's global
    switches are put back afterwards, since `taolu.train` is a library call."""
    if not enabled:
        yield
        return
    import os

    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    # cuBLAS needs a fixed workspace to be deterministic; it must be set before first use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def build_mix(
    mixup: float, cutmix: float, classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
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


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights (and BatchNorm statistics).

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates, as
    TensorFlow's ExponentialMovingAverage does, so the average is not dominated by the random
    initial weights in short runs."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], count) -> None:
        updates = int(count)
        weight = 1.0 - min(decay, (1 + updates) / (10 + updates))
        for mean, value in zip(averaged, current, strict=True):
            if mean.is_floating_point():
                mean.lerp_(value, weight)
            else:  # counters such as BatchNorm's batches seen are copied, not averaged
                mean.copy_(value)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def head_name(model: nn.Module) -> str:
    """The classifier head's dotted name: torchvision's per family, else the last Linear."""
    from taolu.models.zoo import head_path

    try:
        return head_path(model)
    except (ValueError, KeyError, AttributeError):
        linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ConfigError(
                "cannot tell this model's classifier head (no Linear layer)"
            ) from None
        return linears[-1]


def new_run_dir(out: str, name: str) -> Path:
    """OUT/NAME, created empty. Without a name: the first free of train, train2, train3, ...
    A folder that already holds files is never reused: only --resume continues a run."""
    root = Path(out).expanduser()
    if name:
        run_dir = root / name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(
                f"run directory {run_dir} already holds a run; choose another --name, "
                f"or continue it with --resume {run_dir}"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    root.mkdir(parents=True, exist_ok=True)
    for number in range(1, 100_000):
        run_dir = root / ("train" if number == 1 else f"train{number}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                return run_dir
    raise ConfigError(f"no free run directory name left under {root}")


def _say(config: TrainConfig, text: str) -> None:
    if config.verbose:
        print(text, flush=True)


def quiet(config: TrainConfig) -> TrainConfig:
    """The config as processes other than rank 0 print with: silently."""
    return dataclasses.replace(config, verbose=False)


def run_training(
    config: TrainConfig,
    parts: UserParts | None = None,
    *,
    resume_dir: Path | None = None,
    resume_state: dict[str, Any] | None = None,
    chosen: Collection[str] = (),
) -> TrainResult:
    """Train `config` (a fresh run, or the run in `resume_dir` from its last checkpoint).

    `chosen` names the options the user set; the data's default recipe fills in the rest."""
    with deterministic_algorithms(config.deterministic), StopRequest().installed() as stop:
        return _run_training(config, parts, resume_dir, resume_state, chosen, stop)


def _run_training(
    config: TrainConfig,
    parts: UserParts | None,
    resume_dir: Path | None,
    resume_state: dict[str, Any] | None,
    chosen: Collection[str],
    stop: StopRequest,
) -> TrainResult:
    wall_start = time.perf_counter()
    parts = parts or UserParts()
    if resume_state is not None and resume_state["epoch"] >= config.epochs:
        raise ConfigError(
            f"nothing to do: the run in {resume_dir} already completed {resume_state['epoch']} "
            f"epochs; pass a larger --epochs to train further"
        )
    device = pick_device(config.device)
    # Under torchrun: join the other processes; each GPU process drives its own GPU.
    cluster = join_cluster(device)
    device = device_for(device, cluster)
    precision = pick_precision(config.precision, device)
    if config.sync_bn and not (cluster.active and device.type == "cuda"):
        raise ConfigError(
            "option 'sync_bn': synchronised BatchNorm needs several GPU processes "
            "(torchrun --nproc_per_node=N on CUDA); it is not available on the CPU"
        )
    torch.manual_seed(config.seed)
    # One CPU generator drives shuffling and augmentation; its state is checkpointed.
    generator = torch.Generator().manual_seed(config.seed)

    # 1. Prepare the data set: file-based data is decoded once into the cache when it fits.
    prepared = load_training_data(
        config,
        train_data=parts.train_data,
        val_data=parts.val_data,
        classes=parts.classes,
        manifest=resume_dir / MANIFEST_NAME if resume_dir is not None else None,
        preprocessing=Preprocessing.from_dict(resume_state["preprocessing"])
        if resume_state is not None
        else None,
    )
    data, skips, workers = prepared.bundle, prepared.skips, prepared.workers
    preprocessing = prepared.preprocessing
    recipe_notes: list[str] = []
    if resume_state is None:  # a resumed run keeps the recipe its config.yaml recorded
        config, recipe_notes = choose_recipe(
            config, chosen, train_images=len(data.train), pretrained=bool(config.weights)
        )
    if config.monitor == "val/top5_acc" and len(data.classes) < TOP5_MIN_CLASSES:
        raise ConfigError(
            f"option 'monitor': val/top5_acc needs at least {TOP5_MIN_CLASSES} classes; "
            f"this data has {len(data.classes)}"
        )
    imbalance_options = config.sampler == "balanced" or config.class_weights == "auto"
    train_labels = split_labels(data.train) if imbalance_options else None
    train_batches = Batches(
        data.train,
        config.batch_size,
        device,
        shuffle=True,
        workers=workers,
        skips=skips,
        sample_weights=balanced_sample_weights(train_labels)
        if config.sampler == "balanced"
        else None,
        shard=(cluster.rank, cluster.world_size),
    )
    val_batches = Batches(
        data.val,
        max(config.batch_size, 256),
        device,
        shuffle=False,
        workers=workers,
        skips=skips,
        shard=(cluster.rank, cluster.world_size),
    )

    # 2. Build the network model.
    torch.manual_seed(config.seed)
    built_in = parts.model is None
    model = parts.model
    if model is None:
        model = build_model(
            config.model,
            data.channels,
            data.size,
            len(data.classes),
            weights=config.weights,
            # Resumed: the layer list the checkpoint holds, never the file its config names.
            layers=resume_state.get("model_spec") if resume_state is not None else None,
        )
    frozen_norms = None
    if resume_state is None and (config.weights or config.freeze != "none"):
        frozen_norms = start_from_weights(model, config)
    elif config.freeze != "none":  # resumed: the weights come from the checkpoint
        frozen_norms = freeze_parameters(model, config.freeze)
    fine_tune_head = head_name(model) if config.fine_tune else None
    if config.fine_tune:
        from taolu.models.zoo import set_frozen_batchnorm_eval

        frozen_norms = set_frozen_batchnorm_eval
    # channels_last speeds up convolutions on CPU and GPU. `auto` keeps it off for a user's
    # nn.Module, whose forward() may call .view(), which needs the default memory layout.
    channels_last = config.channels_last == "on" or (
        config.channels_last == "auto" and built_in and device.type in ("cpu", "cuda")
    )
    model = model.to(device)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = build_ema(model, config.ema)
    # Checkpoints always hold `model`'s own state dict; DDP and the compiled wrapper only run
    # it. DDP averages the gradients across processes during backward().
    network = model
    if cluster.active:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    network = torch.compile(network) if config.compile else network
    train_transform, eval_transform, augment = batch_transforms(
        config.augment, prepared, device, channels_last
    )

    # 3. Make the loss function and the optimizer.
    class_weights = None
    if config.class_weights == "auto":
        class_weights = balanced_class_weights(train_labels, len(data.classes)).to(device)
    loss_fn = build_loss(config.label_smoothing, class_weights).to(device)
    # Validation loss is the plain (unweighted) loss, comparable across runs and `taolu eval`.
    eval_loss_fn = build_loss(config.label_smoothing).to(device)
    optimizer = build_optimizer(
        model,
        config.optimizer,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
        head=fine_tune_head,
        backbone_lr_scale=config.backbone_lr_scale,
    )
    epoch_steps = steps_per_epoch(len(train_batches), config.accumulate)
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
        plateau_mode="min" if config.monitor.endswith("loss") else "max",
    )
    scaler = precision.grad_scaler()
    rules = StepRules(
        accumulate=config.accumulate,
        clip_grad=config.clip_grad,
        on_nan=config.on_nan,
        mix=build_mix(config.mixup, config.cutmix, len(data.classes)),
        ema=ema,
        cluster=cluster,
        # Under torchrun the agent owns signals: a stop there is a restart from last.pt.
        should_stop=None if cluster.active else stop,
    )
    recipe = describe_recipe(config, augment, precision.name, str(device), cluster.world_size)
    if config.lr_find and cluster.active:
        raise ConfigError("--lr-find runs in one process; start it without torchrun")
    if config.lr_find:  # instead of training: the learning-rate range test
        from taolu.engine.lr_find import sweep_lr

        sweep = sweep_lr(
            network,
            train_batches,
            train_transform,
            loss_fn,
            optimizer,
            precision,
            generator,
            after_train_mode=frozen_norms,
        )
        return report_lr_sweep(config, sweep, optimizer, network, recipe)

    start_epoch, step, elapsed_before, history = 1, 0, 0.0, []
    best_val_acc, best_epoch = -1.0, 0
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
            if ema is not None:
                ema.module.load_state_dict(resume_state["ema_model"])
                ema.n_averaged.fill_(resume_state["ema_updates"])
        except RuntimeError as error:
            raise CheckpointError(
                f"the checkpoint in {resume_dir} does not fit this model: {error}"
            ) from None
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.resume(
            resume_state["scheduler"],
            resume_state["step"],
            same_length=resume_state["total_steps"] == total_steps,
        )
        if scaler is not None and resume_state.get("grad_scaler"):
            scaler.load_state_dict(resume_state["grad_scaler"])
        ckpt.restore_rng_state(resume_state["rng"], generator)
        start_epoch = resume_state["epoch"] + 1
        step = resume_state["step"]
        elapsed_before = resume_state["elapsed_seconds"]
        history = list(resume_state["history"])
        best_val_acc, best_epoch = resume_state["best_val_acc"], resume_state["best_epoch"]

    # Rank 0 alone creates and writes the run directory; the others learn its name.
    run_dir = resume_dir
    if run_dir is None and cluster.is_main:
        run_dir = new_run_dir(config.out, config.name)
    run_dir = share_from_main(cluster, run_dir)
    if cluster.is_main:
        write_config(config, run_dir / "config.yaml")
        if data.listing is not None and resume_state is None:
            write_manifest(data.listing, run_dir / MANIFEST_NAME, data_base_folder(config.data))
    weights_dir = run_dir / ckpt.CHECKPOINT_DIR
    best_path, last_path = weights_dir / ckpt.BEST_NAME, weights_dir / ckpt.LAST_NAME
    log_class = RunLog if cluster.is_main else SilentRunLog
    run_log = log_class(run_dir, history, resume_step=step if resume_state is not None else None)
    if resume_state is None and cluster.is_main:
        images, _ = augmented_samples(prepared, config.augment, count=32, seed=config.seed)
        run_log.log_samples(grid_tensor(images))
        example = torch.zeros(1, data.channels, *data.size, device=device)
        if channels_last:
            example = example.to(memory_format=torch.channels_last)
        run_log.log_graph(model, example)
    _say(
        config if cluster.is_main else quiet(config),
        (
            f"taolu: {config.model} on {data.description}: {len(data.train)} train / "
            f"{len(data.val)} val images, {len(data.classes)} classes, "
            f"{data.channels}x{data.size[0]}x{data.size[1]}; run {run_dir}\n"
            f"taolu: recipe: {recipe}"
            + (f" ({'; '.join(recipe_notes)})" if recipe_notes else "")
            + "; any of it can be changed by its flag"
        ),
    )
    if resume_state is not None:
        _say(config, f"taolu: resuming after epoch {start_epoch - 1} of {config.epochs}")

    def training_state() -> dict[str, Any]:
        """What a checkpoint holds beyond the epoch, step and time it was taken at."""
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else {},
            "total_steps": total_steps,
            "history": run_log.history,
            "best_val_acc": best_val_acc,
            "best_epoch": best_epoch,
            "rng": ckpt.rng_state(generator),
            "config": config_to_dict(config),
            "classes": list(data.classes),
            "preprocessing": preprocessing.to_dict(),
            "model_name": config.model if built_in else None,
            "model_spec": stored_layers(model),  # a layer list itself, not its file's path
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "confusion_matrix": [],
        }
        if ema is not None:  # eval, predict and export use these averaged weights
            state["ema_model"] = ema.module.state_dict()
            state["ema_updates"] = int(ema.n_averaged)
        return state

    # 4. Train and 5. test, epoch by epoch; 6. save after each.
    loop_start = time.perf_counter()
    train_seconds = sum(row["train_seconds"] for row in history)
    train_images = sum(row["train_images"] for row in history)
    final_val: dict[str, float] = {}
    stopped_early = False
    epoch_start = None
    if resume_state is not None and resume_state.get("partial_epoch"):
        epoch_start = EpochStart.from_dict(resume_state["partial_epoch"])  # stopped mid-epoch
    for epoch in range(start_epoch, config.epochs + 1):
        if stop():
            raise TrainingInterrupted(
                stop.message(f"before epoch {epoch}", last_path, run_dir), stop.exit_code
            )
        if config.fine_tune:
            # The first --fine-tune epochs train the head alone; then the backbone joins in.
            train_backbone(model, fine_tune_head, epoch > config.fine_tune, config.freeze)
        progress = EpochProgress(config.progress, len(train_batches), f"epoch {epoch}")
        histogram_epoch = bool(config.histograms) and epoch % config.histograms == 0
        epoch_rules = rules
        if histogram_epoch:  # gradient histograms at the epoch's last step, before zero_grad
            at_step = step + epoch_steps
            epoch_rules = dataclasses.replace(
                rules,
                inspect_gradients=functools.partial(
                    run_log.log_histograms, step=at_step, gradients=True
                ),
            )
        try:
            trained = train_one_epoch(
                network,
                train_batches,
                train_transform,
                loss_fn,
                optimizer,
                schedule,
                precision,
                generator,
                scaler,
                epoch_rules,
                on_step=progress,
                after_train_mode=frozen_norms,
                start=epoch_start,
            )
        except NonFiniteLoss as bad:
            run_log.close()
            raise TrainingError(
                f"epoch {epoch}, batch {bad.batch + 1}: the loss became {bad.loss}; training "
                f"stopped before that batch changed any weight. "
                + _kept_checkpoints(best_path, last_path)
                + f" Try a lower --lr (it is {config.lr:g}), --clip-grad, or --on-nan skip."
            ) from None
        finally:
            progress.close()
        if not math.isfinite(trained.loss):
            run_log.close()
            skipped = trained.skipped_batches
            skipped = f" ({skipped} batches skipped)" if skipped else ""
            raise TrainingError(
                f"training diverged in epoch {epoch}: the loss became {trained.loss}{skipped}. "
                + _kept_checkpoints(best_path, last_path)
                + f" Try a lower --lr (it is {config.lr:g})."
            )
        if trained.skipped_batches:
            logger.warning(
                "epoch %d: skipped %d batches whose loss was NaN or infinite (--on-nan skip)",
                epoch,
                trained.skipped_batches,
            )
        run_log.log_steps(step + 1, trained.step_losses, trained.step_lrs, trained.step_grad_norms)
        step += trained.steps - (epoch_start.steps if epoch_start is not None else 0)
        epoch_start = None
        if trained.stopped is not None:  # SIGTERM or Ctrl-C: save where the epoch stands
            ckpt.save_checkpoint(
                {
                    **training_state(),
                    "epoch": epoch - 1,
                    "step": step,
                    "elapsed_seconds": elapsed_before + time.perf_counter() - loop_start,
                    "partial_epoch": trained.stopped.to_dict(),
                },
                last_path,
            )
            run_log.close()
            where = (
                f"in epoch {epoch} after {trained.stopped.first_batch} of "
                f"{len(train_batches)} batches"
            )
            raise TrainingInterrupted(stop.message(where, last_path, run_dir), stop.exit_code)
        if histogram_epoch:
            run_log.log_histograms(model, step, gradients=False)
        tested = evaluate(
            # the plain module: DDP's wrapper would broadcast buffers on every forward
            ema.module if ema is not None else (model if cluster.active else network),
            val_batches,
            eval_transform,
            eval_loss_fn,
            precision,
            classes=data.classes,
            keep_outputs=MISCLASSIFIED_SHOWN,
            cluster=cluster,
        )
        if data.listing is not None:  # files decoded per epoch may only now prove unreadable
            refuse_too_many_bad_files(data, skips, config.max_bad_fraction, config.data)
        train_seconds += trained.seconds
        train_images += trained.images
        report = tested.report
        row = {
            "epoch": epoch,
            "elapsed_seconds": round(elapsed_before + time.perf_counter() - loop_start, 4),
            "train_loss": trained.loss,
            "train_acc": trained.acc,
            "val_loss": tested.loss,
            "val_acc": tested.acc,
            **{f"val_{name}": value for name, value in report.scalars.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "grad_norm": trained.grad_norm,
            "skipped_batches": trained.skipped_batches,
            "train_images_per_second": round(trained.images_per_second, 1),
            "train_seconds": trained.seconds,
            "train_images": trained.images,
            "per_class": report.per_class,
        }
        run_log.log_epoch(row, step)
        run_log.log_evaluation(
            step,
            data.classes,
            tested.probabilities,
            tested.labels,
            tested.misclassified,
            report.confusion_matrix,
        )
        final_val = row
        improved = best_epoch == 0 or better(row, run_log.history[best_epoch - 1], config.monitor)
        if improved:
            best_val_acc, best_epoch = tested.acc, epoch
        schedule.end_epoch(row[config.monitor.replace("/", "_")])
        state = {
            **training_state(),
            "epoch": epoch,
            "step": step,
            "elapsed_seconds": row["elapsed_seconds"],
            "confusion_matrix": report.confusion_matrix,
        }
        if cluster.is_main:
            ckpt.save_checkpoint(state, last_path)
            if improved:
                ckpt.copy_checkpoint(last_path, best_path)
        barrier(cluster)  # no process runs ahead of a checkpoint still being written
        if stop() and epoch < config.epochs:  # asked to stop while this epoch was evaluated
            run_log.close()
            raise TrainingInterrupted(
                stop.message(f"after epoch {epoch}", last_path, run_dir), stop.exit_code
            )
        _say(
            config if cluster.is_main else quiet(config),
            (
                f"epoch {epoch:>3}/{config.epochs}  train loss {trained.loss:.4f} acc "
                f"{trained.acc:.4f}  val loss {tested.loss:.4f} acc {tested.acc:.4f}  "
                f"{trained.images_per_second:,.0f} img/s  {row['elapsed_seconds']:.1f}s"
            ),
        )
        if config.patience and epoch - best_epoch >= config.patience and epoch < config.epochs:
            stopped_early = True
            _say(
                config if cluster.is_main else quiet(config),
                f"taolu: stopping early: no better {config.monitor} for "
                f"{config.patience} epochs (best at epoch {best_epoch})",
            )
            break

    summary: dict[str, Any] = {}
    if cluster.is_main:  # rank 0 writes the records; the other processes keep their weights
        best_state = ckpt.load_checkpoint(best_path)
        model.load_state_dict(ckpt.inference_weights(best_state))
        model.eval()
        best_row = run_log.history[best_epoch - 1]
        summary = {
            "best_val_acc": best_val_acc,
            "best_epoch": best_epoch,
            "monitor": config.monitor,
            "best_metrics": {
                key: value
                for key, value in best_row.items()
                if key.startswith(("train_", "val_")) and isinstance(value, float)
            },
            "stopped_early": stopped_early,
            "final_val_acc": final_val["val_acc"],
            "final_val_loss": final_val["val_loss"],
            "epochs_completed": final_val["epoch"],
            "train_seconds": round(final_val["elapsed_seconds"], 3),
            "images_per_second": round(train_images / max(train_seconds, 1e-9), 1),
            "wall_seconds": round(time.perf_counter() - wall_start, 3),
            "device": str(device),
            "processes": cluster.world_size,
            "precision": precision.name,
            "recipe": recipe,
            "cache": prepared.cache,
            "skipped_files": skips.as_list(),
            "skipped_batches": sum(row.get("skipped_batches", 0) for row in run_log.history),
            "model": config.model,
            "data": data.description,
            "classes": list(data.classes),
            "train_samples": len(data.train),
            "val_samples": len(data.val),
            # Of the best checkpoint's epoch: what `best.pt` (and eval, predict) deliver.
            "per_class": best_row["per_class"],
            "confusion_matrix": best_state["confusion_matrix"],
            "run_dir": str(run_dir),
            "best_checkpoint": str(best_path),
            "last_checkpoint": str(last_path),
        }
        run_log.write_summary(summary)
        run_log.log_hparams(
            config_to_dict(config),
            {
                "hparams/best_val_acc": best_val_acc,
                "hparams/best_val_macro_f1": best_row.get("val_macro_f1", float("nan")),
                "hparams/final_val_acc": final_val["val_acc"],
                "hparams/final_val_loss": final_val["val_loss"],
            },
            step,
        )
        run_log.close()
        if config.report:
            write_run_report(model, val_batches, eval_transform, precision, run_dir)
        _say(
            config,
            (
                f"taolu: best val acc {best_val_acc:.4f} (epoch {best_epoch}) -> {best_path}; "
                f"records in {run_dir}"
            ),
        )
    else:
        run_log.close()
        model.eval()
    leave_cluster(cluster)
    return TrainResult(
        run_dir=run_dir,
        best_val_acc=best_val_acc,
        final_val_acc=final_val["val_acc"],
        model=model,
        history=run_log.history,
        summary=summary,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
    )


@torch.no_grad()
def write_run_report(
    model: nn.Module,
    val_batches: Batches,
    eval_transform: Any,
    precision: Any,
    run_dir: Path,
    count: int = 32,
) -> None:
    """report/: the best model's predictions on the first validation images (kept for
    `taolu report` to redraw), then the plots and report.html. A report that cannot be drawn
    is warned about; the run's results stand."""
    try:
        from safetensors.torch import save_file

        from taolu.track.pictures import to_uint8
        from taolu.track.report import write_report

        images, labels = next(iter(val_batches.iterate()))
        images, labels = images[:count], labels[:count]
        with precision.autocast():
            probabilities = model(eval_transform(images)).float().softmax(1)
        confidence, predicted = probabilities.max(1)
        folder = run_dir / "report"
        folder.mkdir(exist_ok=True)
        samples = {
            "images": to_uint8(images).contiguous().cpu(),
            "labels": labels.cpu(),
            "predicted": predicted.cpu(),
            "confidence": confidence.cpu(),
        }
        save_file(samples, str(folder / "val_samples.safetensors"))
        write_report(run_dir)
    except Exception as error:  # plotting must never cost the user a finished run
        logger.warning("could not write the report in %s: %s", run_dir / "report", error)


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM while a run trains: the first asks for a stop after the
    current optimizer step, where a `last` checkpoint is saved that resumes exactly; a second
    Ctrl-C stops at once. Called, it answers whether a stop was asked for."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle the signals while the run lasts (main thread only; under torchrun the
        agent's own handling stays), then put the previous handlers back."""
        import signal
        import threading

        from taolu.engine.distributed import launched_by_torchrun

        if threading.current_thread() is not threading.main_thread() or launched_by_torchrun():
            yield self
            return

        def handle(number: int, frame: Any) -> None:
            if self.signal_name is not None and number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: at once
            self.signal_name = signal.Signals(number).name
            print(
                f"\ntaolu: {self.signal_name}: stopping after the current step and saving "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

        previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in previous:
            signal.signal(number, handle)
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def message(self, where: str, last_path: Path, run_dir: Path) -> str:
        return (
            f"stopped by {self.signal_name} {where}; saved {last_path}. "
            f"Resume with: taolu train --resume {run_dir}"
        )

    @property
    def exit_code(self) -> int:
        return 143 if self.signal_name == "SIGTERM" else 130  # 128 + the signal's number


def _kept_checkpoints(best_path: Path, last_path: Path) -> str:
    if not best_path.is_file():
        return "No checkpoint was saved yet."
    return f"The best checkpoint so far is {best_path}; the last complete epoch is in {last_path}."


def report_lr_sweep(
    config: TrainConfig,
    sweep: Any,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    recipe: str,
) -> TrainResult:
    """--lr-find's records: lr_find.csv and .png, summary.json and the suggested --lr."""
    from taolu.engine.lr_find import write_lr_sweep

    # The sweep reports the first parameter group's lr; under --fine-tune that is the
    # backbone's, at lr * backbone_lr_scale, so it is scaled back to the head's (--lr's).
    group_lrs = [group["lr"] for group in optimizer.param_groups]
    to_config_lr = max(group_lrs) / group_lrs[0]
    run_dir = new_run_dir(config.out, config.name)
    write_config(config, run_dir / "config.yaml")
    csv_path, plot_path = write_lr_sweep(sweep, run_dir)
    suggested = sweep.suggested_lr * to_config_lr
    summary = {
        "lr_find": {
            "suggested_lr": suggested,
            "steps": len(sweep.lrs),
            "stopped_early": sweep.stopped_early,
            "plot": str(plot_path),
            "csv": str(csv_path),
        },
        "recipe": recipe,
        "run_dir": str(run_dir),
    }
    _say(config, f"taolu: learning-rate finder; recipe: {recipe}; run {run_dir}")
    write_json_atomic(summary, run_dir / "summary.json")
    _say(
        config,
        f"taolu: suggested lr {suggested:.3g} (plot: {plot_path}); train with --lr {suggested:.3g}",
    )
    model.eval()
    return TrainResult(
        run_dir=run_dir,
        best_val_acc=float("nan"),
        final_val_acc=float("nan"),
        model=model,
        history=[],
        summary=summary,
        best_checkpoint=None,
        last_checkpoint=None,
        suggested_lr=suggested,
    )

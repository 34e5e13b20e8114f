"""The complete training routine, top to bottom, as the tutorial lays it out:

prepare the data -> build the model -> make the loss and the optimizer -> train -> test -> save.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
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
from taolu.engine.loop import evaluate, train_one_epoch
from taolu.engine.optim import build_loss, build_optimizer, build_scheduler
from taolu.engine.precision import pick_device, pick_precision
from taolu.errors import CheckpointError, ConfigError, TrainingError
from taolu.models import build_model
from taolu.track.progress import EpochProgress
from taolu.track.runlog import RunLog

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
    best_checkpoint: Path
    last_checkpoint: Path


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
    """Whether `row` beats `best` on the monitored metric: accuracy up, loss down."""
    key = monitor.replace("/", "_")
    return row[key] > best[key] if key.endswith("acc") else row[key] < best[key]


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


def run_training(
    config: TrainConfig,
    parts: UserParts | None = None,
    *,
    resume_dir: Path | None = None,
    resume_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `config` (a fresh run, or the run in `resume_dir` from its last checkpoint)."""
    wall_start = time.perf_counter()
    parts = parts or UserParts()
    if resume_state is not None and resume_state["epoch"] >= config.epochs:
        raise ConfigError(
            f"nothing to do: the run in {resume_dir} already completed {resume_state['epoch']} "
            f"epochs; pass a larger --epochs to train further"
        )
    device = pick_device(config.device)
    precision = pick_precision(config.precision, device)
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
    train_batches = Batches(
        data.train, config.batch_size, device, shuffle=True, workers=workers, skips=skips
    )
    val_batches = Batches(
        data.val, max(config.batch_size, 256), device, shuffle=False, workers=workers, skips=skips
    )

    # 2. Build the network model.
    torch.manual_seed(config.seed)
    built_in = parts.model is None
    model = parts.model
    if model is None:
        model = build_model(
            config.model, data.channels, data.size, len(data.classes), weights=config.weights
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
    # channels_last speeds up convolutions on CPU and GPU; only for our own nets, since a
    # user's forward() may call .view(), which needs the default memory layout.
    channels_last = built_in and device.type in ("cpu", "cuda")
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_transform, eval_transform, augment = batch_transforms(
        config.augment, prepared, device, channels_last
    )

    # 3. Make the loss function and the optimizer.
    loss_fn = build_loss(config.label_smoothing).to(device)
    optimizer = build_optimizer(
        model,
        config.optimizer,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        head=fine_tune_head,
        backbone_lr_scale=config.backbone_lr_scale,
    )
    total_steps = config.epochs * len(train_batches)
    scheduler = build_scheduler(optimizer, config.scheduler, lr=config.lr, total_steps=total_steps)
    scaler = precision.grad_scaler()

    start_epoch, step, elapsed_before, history = 1, 0, 0.0, []
    best_val_acc, best_epoch = -1.0, 0
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
        except RuntimeError as error:
            raise CheckpointError(
                f"the checkpoint in {resume_dir} does not fit this model: {error}"
            ) from None
        optimizer.load_state_dict(resume_state["optimizer"])
        if resume_state["total_steps"] == total_steps:
            scheduler.load_state_dict(resume_state["scheduler"])
        else:  # --epochs changed: the schedule is rebuilt for the new length, at this step
            scheduler = build_scheduler(
                optimizer, config.scheduler, lr=config.lr, total_steps=total_steps
            )
            with warnings.catch_warnings():
                # Replaying steps without optimizer steps is deliberate here.
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(resume_state["step"]):
                    scheduler.step()
        if scaler is not None and resume_state.get("grad_scaler"):
            scaler.load_state_dict(resume_state["grad_scaler"])
        ckpt.restore_rng_state(resume_state["rng"], generator)
        start_epoch = resume_state["epoch"] + 1
        step = resume_state["step"]
        elapsed_before = resume_state["elapsed_seconds"]
        history = list(resume_state["history"])
        best_val_acc, best_epoch = resume_state["best_val_acc"], resume_state["best_epoch"]

    run_dir = resume_dir if resume_dir is not None else new_run_dir(config.out, config.name)
    write_config(config, run_dir / "config.yaml")
    if data.listing is not None and resume_state is None:
        write_manifest(data.listing, run_dir / MANIFEST_NAME, data_base_folder(config.data))
    weights_dir = run_dir / ckpt.CHECKPOINT_DIR
    best_path, last_path = weights_dir / ckpt.BEST_NAME, weights_dir / ckpt.LAST_NAME
    run_log = RunLog(run_dir, history, resume_step=step if resume_state is not None else None)
    model_label = config.model
    if resume_state is None:
        images, _ = augmented_samples(prepared, config.augment, count=32, seed=config.seed)
        run_log.log_samples(grid_tensor(images))
    _say(
        config,
        (
            f"taolu: {model_label} on {data.description}: {len(data.train)} train / "
            f"{len(data.val)} val images, {len(data.classes)} classes, "
            f"{data.channels}x{data.size[0]}x{data.size[1]}; {device}, {precision.name}; "
            f"augment {augment}; run {run_dir}"
        ),
    )
    if resume_state is not None:
        _say(config, f"taolu: resuming after epoch {start_epoch - 1} of {config.epochs}")

    # 4. Train and 5. test, epoch by epoch; 6. save after each.
    loop_start = time.perf_counter()
    train_seconds = sum(row["train_seconds"] for row in history)
    train_images = sum(row["train_images"] for row in history)
    final_val: dict[str, float] = {}
    stopped_early = False
    for epoch in range(start_epoch, config.epochs + 1):
        if config.fine_tune:
            # The first --fine-tune epochs train the head alone; then the backbone joins in.
            train_backbone(model, fine_tune_head, epoch > config.fine_tune, config.freeze)
        progress = EpochProgress(config.progress, len(train_batches), f"epoch {epoch}")
        try:
            trained = train_one_epoch(
                model,
                train_batches,
                train_transform,
                loss_fn,
                optimizer,
                scheduler,
                precision,
                generator,
                scaler,
                on_step=progress,
                after_train_mode=frozen_norms,
            )
        finally:
            progress.close()
        if not math.isfinite(trained.loss):
            run_log.close()
            kept = f"; the best checkpoint so far is {best_path}" if best_path.is_file() else ""
            raise TrainingError(
                f"training diverged in epoch {epoch}: the loss became {trained.loss}; "
                f"try a lower --lr (it is {config.lr}){kept}"
            )
        run_log.log_steps(step + 1, trained.step_losses)
        step += len(trained.step_losses)
        tested = evaluate(model, val_batches, eval_transform, loss_fn, precision)
        if data.listing is not None:  # files decoded per epoch may only now prove unreadable
            refuse_too_many_bad_files(data, skips, config.max_bad_fraction, config.data)
        train_seconds += trained.seconds
        train_images += trained.images
        row = {
            "epoch": epoch,
            "elapsed_seconds": round(elapsed_before + time.perf_counter() - loop_start, 4),
            "train_loss": trained.loss,
            "train_acc": trained.acc,
            "val_loss": tested.loss,
            "val_acc": tested.acc,
            "lr": optimizer.param_groups[0]["lr"],
            "train_images_per_second": round(trained.images_per_second, 1),
            "train_seconds": trained.seconds,
            "train_images": trained.images,
        }
        run_log.log_epoch(row, step)
        final_val = row
        improved = best_epoch == 0 or better(row, run_log.history[best_epoch - 1], config.monitor)
        if improved:
            best_val_acc, best_epoch = tested.acc, epoch
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else {},
            "epoch": epoch,
            "step": step,
            "total_steps": total_steps,
            "elapsed_seconds": row["elapsed_seconds"],
            "history": run_log.history,
            "best_val_acc": best_val_acc,
            "best_epoch": best_epoch,
            "rng": ckpt.rng_state(generator),
            "config": config_to_dict(config),
            "classes": list(data.classes),
            "preprocessing": preprocessing.to_dict(),
            "model_name": config.model if built_in else None,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        }
        ckpt.save_checkpoint(state, last_path)
        if improved:
            ckpt.copy_checkpoint(last_path, best_path)
        _say(
            config,
            (
                f"epoch {epoch:>3}/{config.epochs}  train loss {trained.loss:.4f} acc "
                f"{trained.acc:.4f}  val loss {tested.loss:.4f} acc {tested.acc:.4f}  "
                f"{trained.images_per_second:,.0f} img/s  {row['elapsed_seconds']:.1f}s"
            ),
        )
        if config.patience and epoch - best_epoch >= config.patience and epoch < config.epochs:
            stopped_early = True
            _say(
                config,
                f"taolu: stopping early: no better {config.monitor} for "
                f"{config.patience} epochs (best at epoch {best_epoch})",
            )
            break

    model.load_state_dict(ckpt.load_checkpoint(best_path)["model"])
    model.eval()
    summary = {
        "best_val_acc": best_val_acc,
        "best_epoch": best_epoch,
        "monitor": config.monitor,
        "stopped_early": stopped_early,
        "final_val_acc": final_val["val_acc"],
        "final_val_loss": final_val["val_loss"],
        "epochs_completed": final_val["epoch"],
        "train_seconds": round(final_val["elapsed_seconds"], 3),
        "images_per_second": round(train_images / max(train_seconds, 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "device": str(device),
        "precision": precision.name,
        "cache": prepared.cache,
        "skipped_files": skips.as_list(),
        "model": model_label,
        "data": data.description,
        "classes": list(data.classes),
        "train_samples": len(data.train),
        "val_samples": len(data.val),
        "run_dir": str(run_dir),
        "best_checkpoint": str(best_path),
        "last_checkpoint": str(last_path),
    }
    run_log.write_summary(summary)
    run_log.close()
    _say(
        config,
        (
            f"taolu: best val acc {best_val_acc:.4f} (epoch {best_epoch}) -> {best_path}; "
            f"records in {run_dir}"
        ),
    )
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

"""What a run leaves behind: the run directory (config.yaml, split.json, TensorBoard, the CSVs),
a checkpoint after every epoch (last.pt, copied to best.pt when the monitored metric improved),
and at the end summary.json, the best weights in the returned model, and the report."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from taolu.checkpoint import copy_checkpoint, read_state, save_state
from taolu.data.preview import augmented_samples, grid_tensor
from taolu.data.sources import data_base_folder, write_manifest
from taolu.engine.distributed import barrier, share_from_main
from taolu.engine.loop import EpochResult
from taolu.engine.lr_find import write_lr_sweep
from taolu.engine.step import Stepper
from taolu.errors import TrainingInterrupted
from taolu.layout import RunDir, new_run_dir
from taolu.metric_names import (
    CLASS_SCALARS,
    TRAIN_ACC,
    TRAIN_IMAGES_PER_SECOND,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_LOSS,
    VAL_MACRO_F1,
    column,
)
from taolu.models.spec import stored_layers
from taolu.option_values import config_to_dict, write_config
from taolu.run.lr_auto import LrChoice
from taolu.run.outcome import (
    calibrate_best,
    lr_auto_summary,
    resolved_options,
    write_predictions,
)
from taolu.run.progress import Progress, TrainResult
from taolu.run.setup import Resume, Run
from taolu.run.verdict import MIN_VAL_PER_CLASS, judge_run, render
from taolu.track.runlog import RunLog, SilentRunLog
from taolu.train_state import TrainState, rng_state

if TYPE_CHECKING:  # imported by run/tracking.py, and only for --track mlflow
    from taolu.track.mlflow_tracker import MlflowTracker

logger = logging.getLogger("taolu")


class Records:
    """The run directory while the run trains: its RunLog (TensorBoard and the CSVs, rank 0
    only) and its checkpoints."""

    def __init__(
        self,
        run: Run,
        root: Path,
        log: RunLog,
        lr_choice: LrChoice | None = None,
        tracker: MlflowTracker | None = None,
    ):
        self.run, self.dir, self.log = run, RunDir(root), log
        self.lr_choice, self.tracker = lr_choice, tracker
        self.unpublished: tuple[dict[str, Any], EpochResult] | None = None
        # The best epoch's validation probabilities and labels (rank 0): calibration's input.
        self.best_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        bundle, parts = run.data.bundle, run.model
        # What every checkpoint of this run says about it, however far it got.
        self.about = dict(
            config=config_to_dict(run.config),
            classes=list(bundle.classes),
            preprocessing=run.data.prepared.preprocessing.to_dict(),
            model_name=parts.name,
            model_class=f"{type(parts.model).__module__}.{type(parts.model).__qualname__}",
            model_spec=stored_layers(parts.model),  # a layer list itself, not its file's path
            total_steps=run.optim.total_steps,
            background=run.data.prepared.background,
            augmentation={
                "flip": bool(run.data.train_transform.flip),
                "shift": int(run.data.train_transform.shift),
            },
        )

    def announce(self, resumed: bool, progress: Progress) -> None:
        """The run's data, size and directory, and the whole recipe, before the first epoch."""
        run = self.run
        config, bundle = run.config, run.data.bundle
        run.say(
            f"taolu: {config.model} on {bundle.description}: {len(bundle.train)} train / "
            f"{len(bundle.val)} val images, {len(bundle.classes)} classes, "
            f"{bundle.channels}x{bundle.size[0]}x{bundle.size[1]}; run {self.dir.root}\n"
            f"taolu: recipe: {run.recipe()}"
            + (f" ({'; '.join(run.notes)})" if run.notes else "")
            + "; any of it can be changed by its flag"
        )
        if resumed:
            run.say(f"taolu: resuming after epoch {progress.epoch} of {config.epochs}")
        held_out, classes = len(bundle.val), len(bundle.classes)
        if held_out < MIN_VAL_PER_CLASS * classes and run.compute.cluster.is_main:
            logger.warning(
                "the validation split holds %d images for %d classes (fewer than %d a class): "
                "its accuracy moves in steps of %.1f%%; hold out more with --val-fraction, or "
                "give a val/ folder",
                held_out,
                classes,
                MIN_VAL_PER_CLASS,
                100 / max(held_out, 1),
            )

    def state(self, progress: Progress, epoch: int, elapsed: float, **moment: Any) -> TrainState:
        """The checkpoint of this moment: `epoch` epochs complete, `moment` the rest
        (the epoch's confusion matrix, or a stopped epoch's partial_epoch)."""
        stepper: Stepper = self.run.optim.stepper
        ema, scaler = stepper.ema, stepper.scaler
        return TrainState(
            model=stepper.model.state_dict(),
            epoch=epoch,
            step=progress.step,
            elapsed_seconds=elapsed,
            optimizer=stepper.optimizer.state_dict(),
            scheduler=self.run.optim.schedule.state_dict(),
            grad_scaler=scaler.state_dict() if scaler is not None else {},
            history=self.log.history,
            best_val_acc=progress.best_val_acc,
            best_epoch=progress.best_epoch,
            rng=rng_state(self.run.generator),
            # eval, predict and export use these averaged weights
            ema_model=ema.module.state_dict() if ema is not None else None,
            ema_updates=int(ema.n_averaged) if ema is not None else 0,
            recoveries=list(progress.recoveries),
            **self.about,
            **moment,
        )

    def save(self, state: TrainState, improved: bool = False) -> None:
        """last.pt (rank 0), copied to best.pt when `improved`; no process runs ahead of a
        checkpoint still being written."""
        if self.run.compute.cluster.is_main:
            save_state(state, self.dir.last)
            if improved:
                copy_checkpoint(self.dir.last, self.dir.best)
        barrier(self.run.compute.cluster)
        self.publish_epoch()

    def keep_best_outputs(self, tested: EpochResult) -> None:
        """Hold on to a new best epoch's validation probabilities (outcome.calibrate_best's
        and write_predictions' input)."""
        if tested.probabilities is not None and tested.labels is not None:
            self.best_outputs = (tested.probabilities, tested.labels)

    def interrupted(self, where: str) -> TrainingInterrupted:
        """The stop a signal asked for, saying where the run stopped and how to resume it."""
        stop = self.run.stop
        return TrainingInterrupted(
            stop.message(where, self.dir.last, self.dir.root), stop.exit_code
        )

    def kept(self) -> str:
        """Which checkpoints a run that stops now leaves."""
        if not self.dir.best.is_file():
            return "No checkpoint was saved yet."
        return (
            f"The best checkpoint so far is {self.dir.best}; the last complete epoch is in "
            f"{self.dir.last}."
        )

    def gradient_histograms(self, epoch: int) -> Callable[[nn.Module], None]:
        """What logs the epoch's gradient histograms at its last step, before zero_grad."""
        return functools.partial(self.log.log_histograms, epoch=epoch, gradients=True)

    def record_epoch(
        self, epoch: int, elapsed: float, trained: EpochResult, tested: EpochResult
    ) -> dict[str, Any]:
        """The epoch's history row (metrics.csv's columns, and more), in the history and the
        CSVs; TensorBoard gets it from `publish_epoch` once the checkpoint is saved."""
        report = tested.report
        metrics = {
            TRAIN_LOSS: trained.loss,
            TRAIN_ACC: trained.acc,
            VAL_LOSS: tested.loss,
            VAL_ACC: tested.acc,
            **{CLASS_SCALARS[key]: value for key, value in report.scalars.items()},
        }
        row = {
            "epoch": epoch,
            "elapsed_seconds": round(elapsed, 4),
            **{column(name): value for name, value in metrics.items()},
            "lr": self.run.optim.stepper.lr,
            "grad_norm": trained.grad_norm,
            "skipped_batches": trained.skipped_batches,
            column(TRAIN_IMAGES_PER_SECOND): round(trained.images_per_second, 1),
            "train_seconds": trained.seconds,
            "train_images": trained.images,
            "per_class": report.per_class,
        }
        self.log.log_epoch(row)
        self.unpublished = (row, tested)  # TensorBoard's, once the checkpoint is saved
        return row

    def publish_epoch(self) -> None:
        """The recorded epoch's scalars and pictures to TensorBoard (and its numbers to the
        --track tracker), after its checkpoint: an epoch they show is one a resume never
        repeats."""
        if self.unpublished is None:
            return
        row, tested = self.unpublished
        self.unpublished = None
        self.log.log_epoch_scalars(row)
        if self.tracker is not None:
            self.tracker.log_epoch(row)
        self.log.log_evaluation(
            row["epoch"],
            self.run.data.bundle.classes,
            tested.probabilities,
            tested.labels,
            tested.misclassified,
            tested.report.confusion_matrix,
        )

    def log_start(self) -> None:
        """A fresh run's augmented samples and model graph in TensorBoard."""
        run = self.run
        bundle = run.data.bundle
        images, _ = augmented_samples(
            run.data.prepared, run.config.augment, count=32, seed=run.config.seed
        )
        self.log.log_samples(grid_tensor(images))
        example = torch.zeros(1, bundle.channels, *bundle.size, device=run.compute.device)
        if run.data.channels_last:
            example = example.to(memory_format=torch.channels_last)
        self.log.log_graph(run.model.model, example)

    def finish(self, progress: Progress) -> TrainResult:
        """summary.json and the hparams (rank 0), with the best checkpoint's weights loaded
        into the model; the other processes keep their own weights."""
        run, history = self.run, self.log.history
        model = run.model.model
        summary: dict[str, Any] = {}
        if run.compute.cluster.is_main:
            best = read_state(self.dir.best)
            model.load_state_dict(best.inference_weights)
            calibration = calibrate_best(self.best_outputs, best, self.dir.best)
            if run.compute.cluster.world_size == 1:  # DDP gathers in the processes' order
                temperature = 1.0 if calibration is None else calibration.temperature
                write_predictions(run, self.best_outputs, temperature, self.dir.val_predictions)
            summary = self.summary(progress, best)
            if calibration is not None:
                summary["calibration"] = calibration.to_dict()
            findings = judge_run(
                history,
                classes=len(run.data.bundle.classes),
                val_support={name: row["support"] for name, row in summary["per_class"].items()},
                best_val_acc=progress.best_val_acc,
                lr=run.config.lr,
                recoveries=progress.recoveries,
                pretrained=bool(run.config.weights),
                lr_from_range_test=self.lr_choice is not None,
            )
            summary["verdict"] = [finding.to_dict() for finding in findings]
            self.log.write_summary(summary)
            if self.tracker is not None:
                self.tracker.log_summary(summary)
            for line in render(findings):
                logger.warning(line)
            best_row = history[progress.best_epoch - 1]
            self.log.log_hparams(
                config_to_dict(run.config),
                {
                    "val_summary/best_acc": progress.best_val_acc,
                    "val_summary/best_macro_f1": best_row.get(column(VAL_MACRO_F1), float("nan")),
                    "val_summary/final_acc": history[-1][column(VAL_ACC)],
                    "val_summary/final_loss": history[-1][column(VAL_LOSS)],
                },
                history[-1]["epoch"],
            )
        model.eval()
        return TrainResult(
            run_dir=self.dir.root,
            best_val_acc=progress.best_val_acc,
            final_val_acc=history[-1][column(VAL_ACC)],
            model=model,
            history=history,
            summary=summary,
            best_checkpoint=self.dir.best,
            last_checkpoint=self.dir.last,
        )

    def summary(self, progress: Progress, best: TrainState) -> dict[str, Any]:
        """summary.json's contents."""
        run, history = self.run, self.log.history
        best_row, final = history[progress.best_epoch - 1], history[-1]
        bundle, prepared = run.data.bundle, run.data.prepared
        train_seconds = sum(row["train_seconds"] for row in history)
        train_images = sum(row["train_images"] for row in history)
        return {
            "best_val_acc": progress.best_val_acc,
            "best_epoch": progress.best_epoch,
            "monitor": run.config.monitor,
            "best_metrics": {
                key: value
                for key, value in best_row.items()
                if key.startswith(("train_", "val_")) and isinstance(value, float)
            },
            "stopped_early": progress.stopped_early,
            "final_val_acc": final[column(VAL_ACC)],
            "final_val_loss": final[column(VAL_LOSS)],
            "epochs_completed": final["epoch"],
            "train_seconds": round(final["elapsed_seconds"], 3),
            "images_per_second": round(train_images / max(train_seconds, 1e-9), 1),
            "wall_seconds": round(time.perf_counter() - run.wall_start, 3),
            "device": str(run.compute.device),
            "processes": run.compute.cluster.world_size,
            "precision": run.compute.precision.name,
            "recipe": run.recipe(),
            "cache": prepared.cache,
            "skipped_files": prepared.skips.as_list(),
            "skipped_batches": sum(row.get("skipped_batches", 0) for row in history),
            "nan_recoveries": progress.recoveries,
            "lr_auto": lr_auto_summary(self.lr_choice, self.dir.root),
            "resolved": resolved_options(run),
            "model": run.config.model,
            "data": bundle.description,
            "classes": list(bundle.classes),
            "train_samples": len(bundle.train),
            "val_samples": len(bundle.val),
            # Of the best checkpoint's epoch: what `best.pt` (and eval, predict) deliver.
            "per_class": best_row["per_class"],
            "confusion_matrix": best.confusion_matrix,
            "run_dir": str(self.dir.root),
            "best_checkpoint": str(self.dir.best),
            "last_checkpoint": str(self.dir.last),
        }


@contextlib.contextmanager
def open_records(
    run: Run,
    resume: Resume | None,
    progress: Progress,
    lr_choice: LrChoice | None = None,
    tracker: MlflowTracker | None = None,
) -> Iterator[Records]:
    """The run directory (a new one, or the resumed run's), config.yaml and split.json, and
    the RunLog, closed however the run ends; the --track tracker starts with the options.
    Rank 0 alone creates and writes the directory; the other processes learn its name."""
    config, cluster = run.config, run.compute.cluster
    root = resume.run_dir if resume is not None else None
    if root is None and cluster.is_main:
        root = new_run_dir(config.out, config.name)
    layout = RunDir(share_from_main(cluster, root))
    listing = run.data.bundle.listing
    if cluster.is_main:
        write_config(config, layout.config)
        if listing is not None and resume is None:
            write_manifest(listing, layout.manifest, data_base_folder(config.data))
        if lr_choice is not None and lr_choice.sweep is not None:
            write_lr_sweep(lr_choice.sweep, layout.root)  # --lr auto's curve
        if tracker is not None:
            tracker.start(layout.root, config_to_dict(config), layout.mlflow)
    log_class = RunLog if cluster.is_main else SilentRunLog
    history = resume.state.history if resume is not None else []
    resume_step = progress.step if resume is not None else None
    with log_class(layout.root, history, resume_step=resume_step) as log:
        records = Records(run, layout.root, log, lr_choice, tracker)
        if resume is None and cluster.is_main:
            records.log_start()
        records.announce(resume is not None, progress)
        yield records

"""The run directory's records: TensorBoard scalars, metrics.csv, per_class.csv and
summary.json.

TensorBoard's x axis is the optimizer step for what happens every step (train/loss, train/lr,
train/grad_norm) and the epoch for everything recorded once an epoch (accuracy, validation
scores, images, PR curves, histograms), so runs of different sizes line up epoch by epoch.
Tag groups sort so that train/ and val/ come first in Time Series (it opens the first two):
the end-of-run numbers for the HPARAMS tab are val_summary/*, histograms weights/* and
weight_gradients/*."""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Self

import torch

from taolu.atomic_file import write_atomic
from taolu.layout import METRICS_NAME, PER_CLASS_NAME, SUMMARY_NAME
from taolu.metric_names import EPOCH_SCALARS, METRIC_COLUMNS, column
from taolu.track.pictures import RED, captioned_grid, confusion_picture

logger = logging.getLogger("taolu")

PER_CLASS_COLUMNS = ("epoch", "class", "precision", "recall", "f1", "support")
# Each epoch's scalar: its history key (metrics.csv column) -> its TensorBoard tag.
EPOCH_TAGS = {column(name): name for name in EPOCH_SCALARS}
MISCLASSIFIED_SHOWN = 24  # misclassified validation images drawn each epoch


def write_json_atomic(data: Any, path: Path) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _write_csv_atomic(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Rewrite `path` whole from `rows` (missing values stay empty), replacing it atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    write_atomic(path, text.getvalue().encode("utf-8"))


class RunLog:
    """Writes one run's metrics. On resume, `history` (from the checkpoint) is the truth:
    metrics.csv is rewritten from it and TensorBoard drops events past `resume_step`.
    Used as a context manager, it closes its TensorBoard writer however the block ends."""

    def __init__(self, run_dir: Path, history: list[dict[str, float]], resume_step: int | None):
        self.run_dir = run_dir
        self.history = list(history)
        # Imported here: tensorboard takes ~0.4 s to import, which eval and predict (which
        # import this module through the API) never need.
        from torch.utils.tensorboard import SummaryWriter

        # purge_step makes TensorBoard ignore events at or after it from earlier sessions,
        # so steps replayed after a resume are not shown twice.
        self.writer = SummaryWriter(
            log_dir=str(run_dir),
            purge_step=None if resume_step is None else resume_step + 1,
        )
        self._write_csv()

    def log_samples(self, grid: torch.Tensor) -> None:
        """The augmented training inputs, once at the start of a run (train/samples)."""
        self.writer.add_image("train/samples", grid, 0)

    def log_steps(
        self,
        first_step: int,
        losses: list[float],
        lrs: list[float] = (),
        grad_norms: list[float] = (),
    ) -> None:
        """Per optimizer step: train/loss, train/lr and train/grad_norm."""
        for tag, values in (
            ("train/loss", losses),
            ("train/lr", lrs),
            ("train/grad_norm", grad_norms),
        ):
            for offset, value in enumerate(values):
                self.writer.add_scalar(tag, value, first_step + offset)

    def log_graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model graph (traced once, in eval mode so BatchNorm statistics stay put)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about the user's code
                # Traced here without check_trace, which traces again to compare and cost
                # ~0.5 s of every run's start; add_graph takes the traced module as it is
                # (tracing a traced module returns it) and writes the same graph.
                traced = torch.jit.trace(model, example, check_trace=False)
                self.writer.add_graph(traced, example)
        except Exception as error:  # a user's model may not be traceable; the run goes on
            logger.warning("no model graph in TensorBoard: tracing failed: %s", error)
        finally:
            model.train(was_training)

    def log_histograms(self, model: torch.nn.Module, epoch: int, gradients: bool) -> None:
        """The epoch's weight histograms, or gradient histograms while the gradients are in
        place."""
        for name, parameter in model.named_parameters():
            if gradients:
                if parameter.grad is not None:
                    gradient = parameter.grad.float()
                    self.writer.add_histogram(f"weight_gradients/{name}", gradient, epoch)
            else:
                self.writer.add_histogram(f"weights/{name}", parameter.detach().float(), epoch)

    def log_evaluation(
        self,
        epoch: int,
        classes: list[str],
        probabilities: torch.Tensor | None,
        labels: torch.Tensor | None,
        misclassified: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        confusion_matrix: list[list[int]],
    ) -> None:
        """Per epoch: PR curves per class, misclassified images captioned 'true > predicted',
        and the confusion matrix as a picture."""
        if probabilities is not None and labels is not None:
            for index, name in enumerate(classes):
                self.writer.add_pr_curve(
                    f"val_pr/{name}", labels == index, probabilities[:, index], epoch
                )
        if misclassified is not None:
            images, truth, guess = (part[:MISCLASSIFIED_SHOWN] for part in misclassified)
            captions = [f"{classes[t]} > {classes[g]}" for t, g in zip(truth, guess, strict=True)]
            grid = captioned_grid(images, captions, [RED] * len(captions))
            self.writer.add_image("val/misclassified", grid, epoch, dataformats="HWC")
        if confusion_matrix:
            picture = confusion_picture(confusion_matrix, classes)
            self.writer.add_image("val/confusion_matrix", picture, epoch, dataformats="HWC")

    def log_recovery(self, recoveries: int, lr: float, step: int) -> None:
        """A NaN recovery at `step`: how many so far, and the peak lr the run now follows."""
        self.writer.add_scalar("train/nan_recoveries", recoveries, step)
        self.writer.add_scalar("train/recovered_lr", lr, step)

    def log_hparams(self, options: dict[str, Any], results: dict[str, float], epoch: int) -> None:
        """The run's options and final metrics for TensorBoard's HPARAMS tab, written into
        this run's own event file (SummaryWriter.add_hparams would start a separate run); the
        metrics as scalars at the last `epoch`."""
        from torch.utils.tensorboard.summary import hparams

        values = {
            key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in options.items()
        }
        experiment, start, end = hparams(values, results)
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in results.items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One epoch's row: scalars to TensorBoard at its epoch, then metrics.csv and
        per_class.csv."""
        self.history.append(row)
        epoch = row["epoch"]
        for key, tag in EPOCH_TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], epoch)
        for name, scores in row.get("per_class", {}).items():
            for metric in ("precision", "recall", "f1"):
                self.writer.add_scalar(f"val_per_class/{metric}/{name}", scores[metric], epoch)
        self.writer.flush()
        self._write_csv()

    def _write_csv(self) -> None:
        metric_rows = [{key: row.get(key) for key in METRIC_COLUMNS} for row in self.history]
        _write_csv_atomic(self.run_dir / METRICS_NAME, METRIC_COLUMNS, metric_rows)
        class_rows = [
            {"epoch": row["epoch"], "class": name, **scores}
            for row in self.history
            for name, scores in row.get("per_class", {}).items()
        ]
        _write_csv_atomic(self.run_dir / PER_CLASS_NAME, PER_CLASS_COLUMNS, class_rows)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(summary, self.run_dir / SUMMARY_NAME)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


class SilentRunLog(RunLog):
    """What processes other than rank 0 keep under DDP: the history, and no files at all."""

    def __init__(self, run_dir: Path, history: list[dict[str, float]], resume_step: int | None):
        self.run_dir = run_dir
        self.history = list(history)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.history.append(row)

    def _silent(self, *args: Any, **kwargs: Any) -> None:
        return None

    log_samples = log_steps = log_graph = log_histograms = _silent
    log_evaluation = log_hparams = log_recovery = write_summary = close = _silent

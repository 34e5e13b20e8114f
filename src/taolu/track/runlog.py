"""The run directory's records: TensorBoard scalars, metrics.csv, per_class.csv and
summary.json."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

METRIC_COLUMNS = (
    "epoch",
    "elapsed_seconds",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5_acc",  # empty with fewer than 5 classes
    "val_macro_f1",
    "val_balanced_acc",
    "lr",
    "grad_norm",
    "skipped_batches",
    "train_images_per_second",
)
PER_CLASS_COLUMNS = ("epoch", "class", "precision", "recall", "f1", "support")
# Each epoch's scalar -> its TensorBoard tag (split/metric).
EPOCH_TAGS = {
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "val_top5_acc": "val/top5_acc",
    "val_macro_f1": "val/macro_f1",
    "val_balanced_acc": "val/balanced_acc",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "train_images_per_second": "train/images_per_second",
}


def write_json_atomic(data: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _write_csv_atomic(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Rewrite `path` whole from `rows` (missing values stay empty), replacing it atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
    os.replace(temporary, path)


class RunLog:
    """Writes one run's metrics. On resume, `history` (from the checkpoint) is the truth:
    metrics.csv is rewritten from it and TensorBoard drops events past `resume_step`."""

    def __init__(self, run_dir: Path, history: list[dict[str, float]], resume_step: int | None):
        self.run_dir = run_dir
        self.history = list(history)
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

    def log_steps(self, first_step: int, losses: list[float]) -> None:
        for offset, loss in enumerate(losses):
            self.writer.add_scalar("train/loss", loss, first_step + offset)

    def log_epoch(self, row: dict[str, Any], step: int) -> None:
        """One epoch's row: scalars to TensorBoard, then metrics.csv and per_class.csv."""
        self.history.append(row)
        for key, tag in EPOCH_TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], step)
        for name, scores in row.get("per_class", {}).items():
            for metric in ("precision", "recall", "f1"):
                self.writer.add_scalar(f"val_per_class/{metric}/{name}", scores[metric], step)
        self.writer.flush()
        self._write_csv()

    def _write_csv(self) -> None:
        metric_rows = [{key: row.get(key) for key in METRIC_COLUMNS} for row in self.history]
        _write_csv_atomic(self.run_dir / "metrics.csv", METRIC_COLUMNS, metric_rows)
        class_rows = [
            {"epoch": row["epoch"], "class": name, **scores}
            for row in self.history
            for name, scores in row.get("per_class", {}).items()
        ]
        _write_csv_atomic(self.run_dir / "per_class.csv", PER_CLASS_COLUMNS, class_rows)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(summary, self.run_dir / "summary.json")

    def close(self) -> None:
        self.writer.close()

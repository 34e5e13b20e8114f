"""The run directory's records: TensorBoard scalars, metrics.csv and summary.json."""

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
    "lr",
    "train_images_per_second",
)


def write_json_atomic(data: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
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

    def log_epoch(self, row: dict[str, float], step: int) -> None:
        self.history.append(row)
        for key in ("train_acc", "val_loss", "val_acc"):
            split, metric = key.split("_", 1)
            self.writer.add_scalar(f"{split}/{metric}", row[key], step)
        self.writer.add_scalar("lr", row["lr"], step)
        self.writer.add_scalar("train/images_per_second", row["train_images_per_second"], step)
        self.writer.flush()
        self._write_csv()

    def _write_csv(self) -> None:
        path = self.run_dir / "metrics.csv"
        temporary = path.with_name(".metrics.csv.tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            for row in self.history:
                writer.writerow({key: row[key] for key in METRIC_COLUMNS})
        os.replace(temporary, path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(summary, self.run_dir / "summary.json")

    def close(self) -> None:
        self.writer.close()

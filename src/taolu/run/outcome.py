"""What a run works out about itself once training ends: the calibration (temperature and
rejection threshold) written into best.pt, val_predictions.csv (the best model on every
validation image by name), and the parts of summary.json that describe how the run ran (the
options as used, the range test's choice)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from taolu.checkpoint import save_state
from taolu.data.pipeline import split_names
from taolu.engine.calibration import Calibration, calibrate, rescaled
from taolu.inspection import write_val_predictions
from taolu.layout import LR_FIND_CSV, LR_FIND_PLOT
from taolu.run.lr_auto import LrChoice
from taolu.run.setup import Run
from taolu.train_state import TrainState

logger = logging.getLogger("taolu")
Outputs = tuple[torch.Tensor, torch.Tensor]  # validation probabilities (N, classes), labels (N,)


def calibrate_best(outputs: Outputs | None, best: TrainState, path: Path) -> Calibration | None:
    """Fit temperature scaling and the rejection threshold on the best epoch's validation
    outputs and store them in `best` and its file `path`. None when this process never saw
    the best epoch's outputs (a run resumed after it)."""
    if outputs is None:
        return None
    calibration = calibrate(*outputs)
    best.temperature = calibration.temperature
    best.reject_threshold = calibration.reject_threshold
    save_state(best, path)
    return calibration


def write_predictions(run: Run, outputs: Outputs | None, temperature: float, path: Path) -> None:
    """val_predictions.csv: the best epoch's prediction for every validation image by name,
    calibrated by `temperature`, in the split's order (the order of a single process)."""
    if outputs is None:
        return
    probabilities, labels = outputs
    names = split_names(run.data.bundle.val, run.data.prepared.skips)
    if len(names) != len(labels):
        logger.warning(
            "val_predictions.csv not written: %d names for %d predictions", len(names), len(labels)
        )
        return
    scaled = rescaled(probabilities, temperature)
    write_val_predictions(path, names, run.data.bundle.classes, scaled, labels)


def validation_images(run: Run, rows: Collection[int]) -> dict[int, torch.Tensor]:
    """The validation images at val_predictions.csv's row numbers `rows`, fitted but not
    normalised, on the CPU: read from the split in the order evaluation met it (the CSV's
    order, files that could not be read left out, a stream in its own order), stopping after
    the last one wanted. The report's thumbnails and its maps of where the model looked
    both take their images from here."""
    wanted, found, seen = set(rows), {}, 0
    last = max(wanted, default=-1)
    for images, _ in run.data.val.iterate():
        for offset in range(len(images)):
            if seen + offset in wanted:
                found[seen + offset] = images[offset].cpu()
        seen += len(images)
        if seen > last:
            break
    return found


def resolved_options(run: Run) -> dict[str, Any]:
    """The options a setting leaves to the run (auto, 0, -1) as the run used them, for
    the report's configuration table (config.yaml keeps what was asked for)."""
    bundle, prepared = run.data.bundle, run.data.prepared
    preprocessing = prepared.preprocessing
    return {
        "device": str(run.compute.device),
        "precision": run.compute.precision.name,
        "image_size": f"{bundle.size[0]}x{bundle.size[1]}",
        "channels": bundle.channels,
        "augment": run.data.augment,
        "normalize": "mean {} std {}".format(
            *(
                ", ".join(f"{value:.3f}" for value in values)
                for values in (preprocessing.mean, preprocessing.std)
            )
        ),
        "cache": prepared.cache,
        "workers": prepared.workers,
        "channels_last": run.data.channels_last,
        "optimizer": run.config.optimizer,
        "lr": run.config.lr,
    }


def lr_auto_summary(choice: LrChoice | None, root: Path) -> dict[str, Any] | None:
    """What --lr auto's range test chose, and where its curve is (None without one)."""
    if choice is None:
        return None
    return {
        "lr": choice.lr,
        "steps": len(choice.sweep.lrs) if choice.sweep is not None else None,
        "seconds": round(choice.seconds, 3),
        "csv": str(root / LR_FIND_CSV),
        "plot": str(root / LR_FIND_PLOT),
    }

"""Every metric under one name: "val/acc" is the --monitor value and the TensorBoard tag, and
`column` is its one mapping to the metrics.csv column and history key ("val_acc")."""

from __future__ import annotations

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
VAL_TOP5_ACC = "val/top5_acc"  # reported with at least metrics.TOP5_MIN_CLASSES classes
VAL_MACRO_F1 = "val/macro_f1"
VAL_BALANCED_ACC = "val/balanced_acc"
TRAIN_IMAGES_PER_SECOND = "train/images_per_second"

# What --monitor may pick the best checkpoint (and early stopping) by.
MONITORS = (VAL_ACC, VAL_LOSS, VAL_TOP5_ACC, VAL_MACRO_F1, VAL_BALANCED_ACC, TRAIN_ACC, TRAIN_LOSS)
# The class report's scalars (engine.metrics.ClassReport.scalars) by metric name.
CLASS_SCALARS = {
    "top5_acc": VAL_TOP5_ACC,
    "macro_f1": VAL_MACRO_F1,
    "balanced_acc": VAL_BALANCED_ACC,
}
# Logged to TensorBoard once per epoch under their names (train/loss is logged per step).
EPOCH_SCALARS = (
    TRAIN_ACC,
    VAL_LOSS,
    VAL_ACC,
    VAL_TOP5_ACC,
    VAL_MACRO_F1,
    VAL_BALANCED_ACC,
    TRAIN_IMAGES_PER_SECOND,
)


def column(name: str) -> str:
    """metrics.csv's column, and the history row's key, for a metric: "val/acc" -> "val_acc"."""
    return name.replace("/", "_")


def lower_is_better(name: str) -> bool:
    """Losses improve downwards; every other metric upwards."""
    return name.endswith("loss")


def improved(row: dict[str, float], best: dict[str, float], name: str) -> bool:
    """Whether the epoch `row` beats `best` on the metric `name`."""
    key = column(name)
    return row[key] < best[key] if lower_is_better(name) else row[key] > best[key]


# metrics.csv's columns, in order: each epoch's history row has these keys (and per_class).
METRIC_COLUMNS = (
    "epoch",
    "elapsed_seconds",
    column(TRAIN_LOSS),
    column(TRAIN_ACC),
    column(VAL_LOSS),
    column(VAL_ACC),
    column(VAL_TOP5_ACC),  # empty with fewer than 5 classes
    column(VAL_MACRO_F1),
    column(VAL_BALANCED_ACC),
    "lr",
    "grad_norm",
    "skipped_batches",
    column(TRAIN_IMAGES_PER_SECOND),
)

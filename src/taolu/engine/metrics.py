"""Validation metrics beyond top-1, computed by torchmetrics on the device: top-5, per-class
precision/recall/F1, macro-F1, balanced accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

TOP5_MIN_CLASSES = 5  # top-5 of fewer classes is always 100%, so it is not reported


@dataclass
class ClassReport:
    """One evaluation's class-level view. `scalars` holds top5_acc (with >= 5 classes),
    macro_f1 and balanced_acc; `per_class` maps class name -> precision, recall, f1, support."""

    scalars: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class


class ClassMetrics:
    """Accumulates logits and labels batch by batch; `report()` gives the ClassReport."""

    def __init__(self, classes: list[str], device: torch.device):
        self.classes = list(classes)
        count = len(self.classes)
        metrics = {
            # Balanced accuracy is the mean of the per-class recalls.
            "balanced_acc": MulticlassRecall(count, average="macro"),
            "macro_f1": MulticlassF1Score(count, average="macro"),
            "precision": MulticlassPrecision(count, average="none"),
            "recall": MulticlassRecall(count, average="none"),
            "f1": MulticlassF1Score(count, average="none"),
            "confusion_matrix": MulticlassConfusionMatrix(count),
        }
        if count >= TOP5_MIN_CLASSES:
            metrics["top5_acc"] = MulticlassAccuracy(count, top_k=5, average="micro")
        # compute_groups lets metrics built on the same counts share one update.
        self.collection = MetricCollection(metrics).to(device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.collection.update(logits.float(), labels)

    def report(self) -> ClassReport:
        values = self.collection.compute()
        matrix = values["confusion_matrix"].long().cpu()
        support = matrix.sum(1).tolist()
        per_class = {
            name: {
                "precision": float(values["precision"][index]),
                "recall": float(values["recall"][index]),
                "f1": float(values["f1"][index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(self.classes)
        }
        scalars = {
            key: float(values[key])
            for key in ("top5_acc", "macro_f1", "balanced_acc")
            if key in values
        }
        return ClassReport(scalars, per_class, matrix.tolist())

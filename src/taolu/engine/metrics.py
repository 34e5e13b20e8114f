"""Validation metrics beyond top-1, all read off one confusion matrix counted on the device:
per-class precision/recall/F1, macro-F1, balanced accuracy; and top-5 accuracy.

Counted here rather than by torchmetrics: importing torchmetrics pulls in scipy.signal and
matplotlib, about 1.25 s of every `taolu train` and `taolu eval` start (benchmarks/startup.py),
for arithmetic on a C x C matrix. The conventions are torchmetrics' (and scikit-learn's):
a score whose denominator is 0 is 0, and the macro averages leave out a class that neither
occurs nor is predicted; tests/test_engine.py checks the figures against scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taolu.engine.distributed import SINGLE_PROCESS, Cluster, sum_across

TOP5_MIN_CLASSES = 5  # top-5 of fewer classes is always 100%, so it is not reported


@dataclass
class ClassReport:
    """One evaluation's class-level view. `scalars` holds top5_acc (with >= 5 classes),
    macro_f1 and balanced_acc; `per_class` maps class name -> precision, recall, f1, support."""

    scalars: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class


def _share(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), 0.0)


class ClassMetrics:
    """Counts the confusion matrix (and top-5 hits) batch by batch; `report()` adds the
    counts of every process and gives the ClassReport."""

    def __init__(self, classes: list[str], device: torch.device):
        self.classes = list(classes)
        count = len(self.classes)
        self.matrix = torch.zeros(count * count, dtype=torch.long, device=device)
        self.top5_hits = torch.zeros((), dtype=torch.long, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        count = len(self.classes)
        predicted = logits.argmax(1)
        self.matrix += torch.bincount(labels * count + predicted, minlength=count * count)
        self.seen += labels.shape[0]
        if count >= TOP5_MIN_CLASSES:
            top5 = logits.float().topk(5, dim=1).indices
            self.top5_hits += (top5 == labels[:, None]).any(1).sum()

    def report(self, cluster: Cluster = SINGLE_PROCESS) -> ClassReport:
        flat, top5_hits, seen = sum_across(cluster, self.matrix, self.top5_hits, self.seen)
        count = len(self.classes)
        matrix = flat.view(count, count).cpu()
        hits = matrix.diag().double()
        support, predicted = matrix.sum(1).double(), matrix.sum(0).double()
        precision, recall = _share(hits, predicted), _share(hits, support)
        f1 = _share(2 * precision * recall, precision + recall)
        # A class that neither occurs nor is predicted has no score to average.
        present = (support + predicted) > 0
        scalars = {
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "balanced_acc": float(recall[present].mean()) if present.any() else 0.0,
        }
        if count >= TOP5_MIN_CLASSES:
            scalars = {"top5_acc": float(top5_hits) / max(int(seen), 1), **scalars}
        per_class = {
            name: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(self.classes)
        }
        return ClassReport(scalars, per_class, matrix.tolist())

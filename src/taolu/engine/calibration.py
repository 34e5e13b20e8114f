"""How far the model's probabilities can be trusted, measured on the validation split:
temperature scaling (Guo et al. 2017: one number T, logits / T, fitted by the negative
log-likelihood; it changes no prediction, only how sure each one is), the expected
calibration error before and after, the reliability table behind the diagram, and the
confidence thresholds below which a prediction should be answered "unknown"."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

ECE_BINS = 15  # equal-width confidence bins, as the paper and most libraries count them
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# `predict --reject-below auto` keeps this share of the validation images the model gets
# right and answers "unknown" below the confidence that keeps them (the usual operating
# point of out-of-distribution detection, "95% true positive rate"). A threshold chosen for a
# precision instead is no threshold at all for a model whose accuracy already exceeds it
# (measured, benchmarks/reject_unseen.py: at 99% validation accuracy, the 95%-precision
# threshold rejected none of a held-out class; keeping 95% rejects most of it).
KEPT_SHARE = 0.95


@dataclass(frozen=True)
class Calibration:
    """What the validation split says about the model's confidence."""

    temperature: float
    ece_before: float
    ece_after: float
    samples: int
    # The rejection threshold (calibrated confidence) that keeps KEPT_SHARE of the right
    # answers, and what it does on the validation split: the share of images answered
    # "unknown" and the accuracy of the answers still given.
    reject_threshold: float | None = None
    rejected_share: float = 0.0
    answered_accuracy: float = 0.0
    # (mean confidence, accuracy, count) per non-empty bin, after scaling: the diagram.
    reliability: list[tuple[float, float, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "samples": self.samples,
            "reject_threshold": self.reject_threshold,
            "kept_share": KEPT_SHARE,
            "rejected_share": self.rejected_share,
            "answered_accuracy": self.answered_accuracy,
            "reliability": [list(row) for row in self.reliability],
        }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the mean negative log-likelihood of softmax(logits / T):
    a one-dimensional convex problem in log T, solved by L-BFGS, kept within
    [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        value.backward()
        return value

    optimizer.step(loss)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


def reliability_table(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) of each non-empty confidence bin, in order."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    # A confidence of exactly 1.0 belongs to the last bin.
    index = (confidence.double() * bins).long().clamp(max=bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            rows.append(
                (float(confidence[members].double().mean()), float(correct[members].mean()), count)
            )
    return rows


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """The mean gap between confidence and accuracy, bins weighted by their share of samples."""
    return _weighted_gap(reliability_table(probabilities, labels, bins))


def _weighted_gap(rows: list[tuple[float, float, int]]) -> float:
    """The expected calibration error of a reliability table."""
    total = sum(count for _, _, count in rows)
    if not total:
        return 0.0
    return sum(count / total * abs(confidence - accuracy) for confidence, accuracy, count in rows)


def rescaled(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities as temperature scaling gives them: log probabilities are the logits up
    to a constant per image, so softmax(log p / T) is softmax(logits / T)."""
    return (probabilities.double().clamp_min(1e-12).log() / temperature).softmax(dim=1)


def threshold_keeping(
    probabilities: torch.Tensor, labels: torch.Tensor, share: float = KEPT_SHARE
) -> float | None:
    """The highest confidence t such that at least `share` of the right predictions have
    confidence >= t; None when no prediction is right."""
    confidence, predicted = probabilities.max(dim=1)
    right = confidence[predicted == labels].sort(descending=True).values
    if not len(right):
        return None
    return float(right[max(0, math.ceil(share * len(right)) - 1)])


def calibrate(probabilities: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Temperature, ECE before and after, rejection thresholds and the reliability table,
    from the validation split's probabilities (as evaluate keeps them) and labels (see
    `rescaled` for why probabilities serve as well as logits)."""
    probabilities, labels = probabilities.double(), labels.long()
    temperature = fit_temperature(probabilities.clamp_min(1e-12).log(), labels)
    scaled = rescaled(probabilities, temperature)
    reliability = reliability_table(scaled, labels)
    threshold = threshold_keeping(scaled, labels)
    confidence, predicted = scaled.max(dim=1)
    answered = confidence >= threshold if threshold is not None else torch.ones_like(labels).bool()
    right = (predicted == labels)[answered]
    return Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(probabilities, labels),
        ece_after=_weighted_gap(reliability),
        samples=len(labels),
        reject_threshold=threshold,
        rejected_share=float(1 - answered.double().mean()),
        answered_accuracy=float(right.double().mean()) if len(right) else 0.0,
        reliability=reliability,
    )

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
# The precisions a stored rejection threshold is chosen for; `auto` means DEFAULT_PRECISION.
PRECISIONS = (0.9, 0.95, 0.99)
DEFAULT_PRECISION = 0.95


@dataclass(frozen=True)
class Calibration:
    """What the validation split says about the model's confidence."""

    temperature: float
    ece_before: float
    ece_after: float
    samples: int
    # precision (as text, "0.95") -> the lowest calibrated confidence at which the accepted
    # predictions reach it on the validation split; absent where no threshold reaches it.
    thresholds: dict[str, float] = field(default_factory=dict)
    # (mean confidence, accuracy, count) per non-empty bin, after scaling: the diagram.
    reliability: list[tuple[float, float, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "samples": self.samples,
            "reject_thresholds": dict(self.thresholds),
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
    total = len(labels)
    if not total:
        return 0.0
    rows = reliability_table(probabilities, labels, bins)
    return sum(count / total * abs(confidence - accuracy) for confidence, accuracy, count in rows)


def threshold_for_precision(
    probabilities: torch.Tensor, labels: torch.Tensor, precision: float
) -> float | None:
    """The lowest confidence t such that the predictions with confidence >= t are right at
    least `precision` of the time (keeping as many answers as that allows); None when even
    the most confident predictions fall short."""
    confidence, predicted = probabilities.max(dim=1)
    order = confidence.argsort(descending=True)
    confidence, correct = confidence[order], (predicted == labels)[order].double()
    running = correct.cumsum(0) / torch.arange(1, len(correct) + 1, dtype=torch.float64)
    # A cut may only fall between different confidences: equal ones are accepted together.
    last_of_value = torch.ones_like(correct, dtype=torch.bool)
    last_of_value[:-1] = confidence[:-1] != confidence[1:]
    reached = ((running >= precision) & last_of_value).nonzero().flatten()
    if not len(reached):
        return None
    return float(confidence[reached[-1]])


def calibrate(probabilities: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Temperature, ECE before and after, rejection thresholds and the reliability table,
    from the validation split's probabilities (as evaluate keeps them) and labels. Log
    probabilities are the logits up to a constant per image, so scaling them is the same as
    scaling the logits."""
    probabilities, labels = probabilities.double(), labels.long()
    log_probabilities = probabilities.clamp_min(1e-12).log()
    temperature = fit_temperature(log_probabilities, labels)
    scaled = (log_probabilities / temperature).softmax(dim=1)
    thresholds = {}
    for precision in PRECISIONS:
        threshold = threshold_for_precision(scaled, labels, precision)
        if threshold is not None:
            thresholds[f"{precision:g}"] = threshold
    return Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(probabilities, labels),
        ece_after=expected_calibration_error(scaled, labels),
        samples=len(labels),
        thresholds=thresholds,
        reliability=reliability_table(scaled, labels),
    )
